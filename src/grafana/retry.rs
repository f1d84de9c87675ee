//! Retry decisions as data: a pure function from what a remote-write request got back to what
//! happens to the push, and the backoff between attempts.
//!
//! The rules are the remote-write 1.0 specification's:
//! - a 2xx answer means the samples are stored;
//! - a 5xx answer, and a 429, are retried with backoff, waiting at least what a
//!   `Retry-After` header asks (seconds or an HTTP date);
//! - any other answer (a 4xx such as 400 for an out-of-order sample or 401 for a wrong API
//!   key, and 3xx, since a redirected push is not followed) refuses the push for good: sending
//!   it again would get the same answer;
//! - no answer at all (connection refused or reset, DNS, TLS, timeout) is retried like a 5xx.
//!
//! The bounds (attempts, age) are applied by the push thread, not here: Grafana Cloud also
//! answers 429 when an account is over its active-series limit, which no retry cures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much of a response body is kept for logs and reports, in bytes.
pub(crate) const MAX_BODY_BYTES: usize = 1024;

/// What a request got back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome<'a> {
    /// An HTTP answer.
    Answer {
        status: u16,
        /// The `Retry-After` header, if any.
        retry_after: Option<&'a str>,
        body: &'a [u8],
    },
    /// No answer: the transport's reason.
    NoAnswer(&'a str),
}

/// What happens to the push next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Stored.
    Done,
    /// Send it again, not before `at_least` (from a `Retry-After` header) and after a backoff.
    Retry {
        reason: String,
        at_least: Option<Duration>,
        /// Whether the server asked us to slow down (429).
        throttled: bool,
    },
    /// Refused for good; do not send it again.
    Refuse { status: u16, reason: String },
}

/// Decides what follows `outcome`; `now` reads HTTP-date `Retry-After` values.
pub(crate) fn decide(outcome: Outcome<'_>, now: SystemTime) -> Decision {
    match outcome {
        Outcome::NoAnswer(reason) => Decision::Retry {
            reason: format!("no answer: {reason}"),
            at_least: None,
            throttled: false,
        },
        Outcome::Answer { status, .. } if (200..300).contains(&status) => Decision::Done,
        Outcome::Answer {
            status,
            retry_after,
            body,
        } if status == 429 || (500..600).contains(&status) => Decision::Retry {
            reason: format!("HTTP {status}: {}", cut_body(body)),
            at_least: retry_after.and_then(|v| parse_retry_after(v, now)),
            throttled: status == 429,
        },
        Outcome::Answer { status, body, .. } => Decision::Refuse {
            status,
            reason: format!("HTTP {status}: {}{}", cut_body(body), hint(status)),
        },
    }
}

/// What to check, for the answers whose cause is usually on our side.
fn hint(status: u16) -> &'static str {
    match status {
        401 | 403 => {
            " (check the user name, which is the stack's Prometheus instance ID, and that the \
             API key is an access policy token with the metrics:write scope)"
        }
        404 | 405 => " (check the URL: Grafana Cloud's remote-write path is /api/prom/push)",
        300..=399 => " (redirects are not followed: give the URL the server redirects to)",
        413 => " (the push is larger than the server accepts: lower max_label_values)",
        _ => "",
    }
}

/// The body as text (lossy), cut to [`MAX_BODY_BYTES`] at a character boundary, with the
/// number of bytes left out.
pub(crate) fn cut_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    if text.len() <= MAX_BODY_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_BODY_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &text[..end], text.len() - end)
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (IMF-fixdate, such as
/// `Wed, 21 Oct 2015 07:28:00 GMT`) read against `now`. A date in the past means no wait.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads an IMF-fixdate (RFC 9110 section 5.6.7), the form servers must send.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = value.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':');
    let hour: u64 = clock.next()?.parse().ok()?;
    let minute: u64 = clock.next()?.parse().ok()?;
    let second: u64 = clock.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || clock.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    let seconds = u64::try_from(days).ok()? * 86_400 + hour * 3_600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Exponential backoff with full jitter: the wait before retry `n` (0 for the first) is drawn
/// uniformly from `[0, min(max, initial * 2^n)]`, so many senders that failed together do not
/// come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The ceiling of the wait before retry `n`.
    pub(crate) fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `n`, `unit` being a uniform draw from `[0, 1]`; at least
    /// `at_least` when the server asked for it.
    pub(crate) fn wait(&self, n: u32, unit: f64, at_least: Option<Duration>) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let ceiling = self.ceiling(n);
        let jittered = Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit)
            .map_or(ceiling, |d| d.min(ceiling));
        at_least.map_or(jittered, |floor| floor.max(jittered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<&str>, body: &[u8]) -> Decision {
        decide(
            Outcome::Answer {
                status,
                retry_after,
                body,
            },
            UNIX_EPOCH + Duration::from_secs(1_445_412_480), // Wed, 21 Oct 2015 07:28:00 GMT
        )
    }

    #[test]
    fn success_is_done() {
        assert_eq!(answer(200, None, b""), Decision::Done);
        assert_eq!(answer(204, None, b""), Decision::Done);
    }

    #[test]
    fn server_errors_and_429_are_retried_honouring_retry_after() {
        for status in [500, 502, 503, 504, 599] {
            assert!(matches!(
                answer(status, None, b"ingester unavailable"),
                Decision::Retry {
                    at_least: None,
                    throttled: false,
                    ..
                }
            ));
        }
        // Grafana Cloud's answer when the account is over its active-series limit.
        let body = b"the request has been rejected because the tenant exceeded the active \
                     series limit (err-mimir-max-series-per-user)";
        match answer(429, Some("7"), body) {
            Decision::Retry {
                reason,
                at_least,
                throttled,
            } => {
                assert!(throttled);
                assert_eq!(at_least, Some(Duration::from_secs(7)));
                assert!(reason.starts_with("HTTP 429: the request has been rejected"));
                assert!(reason.contains("err-mimir-max-series-per-user"));
            }
            other => panic!("{other:?}"),
        }
        match answer(503, Some("Wed, 21 Oct 2015 07:28:30 GMT"), b"") {
            Decision::Retry { at_least, .. } => assert_eq!(at_least, Some(Duration::from_secs(30))),
            other => panic!("{other:?}"),
        }
        // An unreadable header is ignored: plain backoff.
        assert!(matches!(
            answer(429, Some("soon"), b""),
            Decision::Retry { at_least: None, .. }
        ));
    }

    #[test]
    fn other_answers_are_refused_with_the_server_reason_and_a_hint() {
        let out_of_order = b"out of order sample";
        assert_eq!(
            answer(400, None, out_of_order),
            Decision::Refuse {
                status: 400,
                reason: "HTTP 400: out of order sample".into()
            }
        );
        match answer(401, None, b"authentication error: invalid token") {
            Decision::Refuse { status, reason } => {
                assert_eq!(status, 401);
                assert!(reason.contains("invalid token") && reason.contains("metrics:write"));
            }
            other => panic!("{other:?}"),
        }
        for status in [301, 403, 404, 413, 422] {
            assert!(
                matches!(answer(status, Some("1"), b""), Decision::Refuse { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn no_answer_is_retried() {
        assert!(matches!(
            decide(Outcome::NoAnswer("connection refused"), UNIX_EPOCH),
            Decision::Retry { ref reason, at_least: None, throttled: false }
                if reason.contains("connection refused")
        ));
    }

    #[test]
    fn bodies_are_cut_to_1kb_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let cut = cut_body(long.as_bytes());
        let (kept, tail) = cut.split_once('…').unwrap();
        assert!(kept.len() <= MAX_BODY_BYTES && kept.len() >= MAX_BODY_BYTES - 1);
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(tail, format!(" [{} more bytes]", 4000 - kept.len()));
        assert_eq!(cut_body(b"  short\n"), "short");
        assert_eq!(cut_body(b""), "(empty body)");
        assert_eq!(cut_body(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 23:59:60 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(1_709_251_200))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_full_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert_eq!(b.ceiling(200), Duration::from_secs(2));
        assert_eq!(b.wait(3, 0.0, None), Duration::ZERO);
        assert_eq!(b.wait(3, 0.5, None), Duration::from_millis(400));
        assert_eq!(b.wait(3, 1.0, None), Duration::from_millis(800));
        assert_eq!(b.wait(3, 7.0, None), Duration::from_millis(800));
        assert_eq!(b.wait(3, f64::NAN, None), Duration::ZERO);
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.wait(40, 1.0, None), Duration::MAX);
        // Retry-After is a floor, and may exceed the cap.
        assert_eq!(
            b.wait(0, 1.0, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(
            b.wait(3, 1.0, Some(Duration::from_millis(1))),
            Duration::from_millis(800)
        );
    }
}
