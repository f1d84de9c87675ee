//! The text expositions: the classic Prometheus format (0.0.4) and OpenMetrics 1.0, written
//! from the series model, with content negotiation.
//!
//! Label values are written as both formats require: `\` as `\\`, `"` as `\"` and a line feed
//! as `\n`; every other character, non-ASCII included, is written as is (the formats are
//! UTF-8). Help texts escape `\` and line feeds (and `"` in OpenMetrics).

use std::fmt::Write as _;
use std::sync::Arc;

use crate::series::{le_string, FamilySnapshot, HistogramSnapshot, Kind, SeriesSnapshot, Value};

/// The two text formats a scrape can be answered in.
///
/// ```
/// use pipeline_telemetry::prometheus::ExpositionFormat;
///
/// // What Prometheus 2.x sends: OpenMetrics preferred.
/// let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
///               version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// assert_eq!(ExpositionFormat::negotiate(Some(accept)), ExpositionFormat::OpenMetrics);
/// // curl, browsers, older scrapers: the classic format.
/// assert_eq!(ExpositionFormat::negotiate(None), ExpositionFormat::Prometheus);
/// assert_eq!(ExpositionFormat::negotiate(Some("*/*")), ExpositionFormat::Prometheus);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ExpositionFormat {
    /// The classic Prometheus text format, version 0.0.4; the default, as every scraper
    /// reads it.
    #[default]
    Prometheus,
    /// OpenMetrics text, version 1.0.0 (ends with `# EOF`).
    OpenMetrics,
}

/// `Content-Type` of the classic format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl ExpositionFormat {
    /// The `Content-Type` a response in this format carries.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::ExpositionFormat;
    /// assert!(ExpositionFormat::Prometheus.content_type().starts_with("text/plain"));
    /// ```
    pub const fn content_type(self) -> &'static str {
        match self {
            ExpositionFormat::Prometheus => PROMETHEUS_CONTENT_TYPE,
            ExpositionFormat::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// Chooses the format for an HTTP `Accept` header: OpenMetrics when the client ranks it
    /// above the classic text format (by `q`, then by order), the classic format otherwise,
    /// including when the header is absent or names neither.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::ExpositionFormat;
    /// let asked = "text/plain;q=0.5, application/openmetrics-text;q=0.8";
    /// assert_eq!(ExpositionFormat::negotiate(Some(asked)), ExpositionFormat::OpenMetrics);
    /// ```
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return ExpositionFormat::Prometheus;
        };
        // Best (q, position) for each format; q = 0 means "not acceptable".
        let mut openmetrics = (0.0f32, usize::MAX);
        let mut text = (0.0f32, usize::MAX);
        for (position, range) in accept.split(',').enumerate() {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            let mut valid = true;
            for param in parts {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => match value.parse::<f32>() {
                        Ok(v) if (0.0..=1.0).contains(&v) => q = v,
                        _ => valid = false,
                    },
                    "version" => version = Some(value.to_owned()),
                    _ => {}
                }
            }
            if !valid || q <= 0.0 {
                continue;
            }
            let slot = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    &mut openmetrics
                }
                ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => &mut text,
                _ => continue,
            };
            if q > slot.0 {
                *slot = (q, position);
            }
        }
        let om_wins = openmetrics.0 > text.0 || (openmetrics.0 == text.0 && openmetrics.1 < text.1);
        if openmetrics.0 > 0.0 && om_wins {
            ExpositionFormat::OpenMetrics
        } else {
            ExpositionFormat::Prometheus
        }
    }
}

/// Whether an `Accept-Encoding` header allows gzip (`gzip`, `x-gzip` or `*` with a non-zero
/// `q`, and gzip not refused with `q=0`).
pub(crate) fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(header) = accept_encoding else {
        return false;
    };
    let mut gzip = None;
    let mut any = None;
    for coding in header.split(',') {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0f32), |(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    match gzip {
        Some(q) => q > 0.0,
        None => any.is_some_and(|q| q > 0.0),
    }
}

/// Writes `value` as a label value, escaped.
pub(crate) fn push_label_value(out: &mut String, value: &str) {
    let mut rest = value;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// Reads back a label value written by [`push_label_value`] (the text between the quotes);
/// `None` for an invalid escape or a bare quote or line feed.
#[cfg(test)]
pub(crate) fn unescape_label_value(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                _ => return None,
            }
        } else if c == '"' || c == '\n' {
            return None;
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn push_help(out: &mut String, help: &str, format: ExpositionFormat) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == ExpositionFormat::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Writes an unsigned integer without going through `fmt`.
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// Writes a float the way both formats read it: `NaN`, `+Inf`, `-Inf`, or the shortest
/// decimal that reads back as the same number.
pub(crate) fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        if v < 0.0 {
            out.push('-');
        }
        push_u64(out, v.abs() as u64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Writes the families in `format`, without a trailing `# EOF` (see [`finish`]).
pub(crate) fn encode(out: &mut String, families: &[FamilySnapshot], format: ExpositionFormat) {
    let mut labels = String::new();
    // The `le` strings of the bounds last seen (histograms usually share one set of bounds).
    let mut les: Vec<String> = Vec::new();
    let mut les_of: Option<Arc<[f64]>> = None;
    for family in families {
        let sample = family.sample_name();
        let described = match (family.kind, format) {
            (Kind::Counter, ExpositionFormat::OpenMetrics) => family.name.as_str(),
            _ => sample.as_str(),
        };
        out.push_str("# HELP ");
        out.push_str(described);
        out.push(' ');
        push_help(out, family.help, format);
        out.push_str("\n# TYPE ");
        out.push_str(described);
        out.push_str(match family.kind {
            Kind::Counter => " counter\n",
            Kind::Gauge => " gauge\n",
            Kind::Histogram => " histogram\n",
        });
        for series in &family.series {
            labels.clear();
            push_labels(&mut labels, series);
            match &series.value {
                Value::Counter(n) => {
                    push_sample_start(out, &sample, "", &labels);
                    push_u64(out, *n);
                    out.push('\n');
                }
                Value::Gauge(v) => {
                    push_sample_start(out, &sample, "", &labels);
                    push_f64(out, *v);
                    out.push('\n');
                }
                Value::Histogram(h) => {
                    if !les_of.as_ref().is_some_and(|b| Arc::ptr_eq(b, &h.bounds)) {
                        les = h.bounds.iter().map(|b| le_string(*b)).collect();
                        les_of = Some(Arc::clone(&h.bounds));
                    }
                    push_histogram(out, &family.name, &labels, h, &les);
                }
            }
        }
    }
}

/// Ends an OpenMetrics exposition.
pub(crate) fn finish(out: &mut String, format: ExpositionFormat) {
    if format == ExpositionFormat::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

fn push_labels(out: &mut String, series: &SeriesSnapshot) {
    for (i, (name, value)) in series.labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        push_label_value(out, value);
        out.push('"');
    }
}

/// `name<suffix>{labels} ` or `name<suffix> `.
fn push_sample_start(out: &mut String, name: &str, suffix: &str, labels: &str) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }
    out.push(' ');
}

fn push_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &HistogramSnapshot,
    les: &[String],
) {
    let les = les
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("+Inf"));
    for (le, count) in les.zip(&h.cumulative) {
        out.push_str(name);
        out.push_str("_bucket{");
        out.push_str(labels);
        if !labels.is_empty() {
            out.push(',');
        }
        out.push_str("le=\"");
        out.push_str(le);
        out.push_str("\"} ");
        push_u64(out, *count);
        out.push('\n');
    }
    push_sample_start(out, name, "_sum", labels);
    push_f64(out, h.sum);
    out.push('\n');
    push_sample_start(out, name, "_count", labels);
    push_u64(out, h.count());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::{PipelineSeries, SeriesConfig};
    use crate::{EventMetrics, Status};
    use proptest::prelude::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn label_values_escape_exactly_backslash_quote_and_newline() {
        let mut out = String::new();
        push_label_value(&mut out, "a\\b\"c\nd é 日本 🚀\t\r");
        assert_eq!(out, "a\\\\b\\\"c\\nd é 日本 🚀\t\r");
        assert_eq!(
            unescape_label_value(&out).as_deref(),
            Some("a\\b\"c\nd é 日本 🚀\t\r")
        );
    }

    proptest! {
        #[test]
        fn any_label_value_round_trips(value in any::<String>()) {
            let mut out = String::new();
            push_label_value(&mut out, &value);
            prop_assert!(!out.contains('\n'));
            // No unescaped quote can end the value early.
            let mut escaped = false;
            for c in out.chars() {
                prop_assert!(escaped || c != '"');
                escaped = !escaped && c == '\\';
            }
            prop_assert_eq!(unescape_label_value(&out), Some(value));
        }

        #[test]
        fn floats_read_back_exactly(v in any::<f64>()) {
            let mut out = String::new();
            push_f64(&mut out, v);
            let back = match out.as_str() {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                s => s.parse().unwrap(),
            };
            prop_assert!(back == v || (back.is_nan() && v.is_nan()));
        }
    }

    #[test]
    fn integers_are_written_plainly() {
        for n in [0, 7, 10, 1_000_000, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        let mut out = String::new();
        push_f64(&mut out, -3.0);
        assert_eq!(out, "-3");
    }

    #[test]
    fn negotiation_follows_q_values_then_order() {
        use ExpositionFormat::*;
        let n = |h: &str| ExpositionFormat::negotiate(Some(h));
        assert_eq!(n("application/openmetrics-text"), OpenMetrics);
        assert_eq!(
            n("application/openmetrics-text; version=0.0.1; charset=utf-8"),
            OpenMetrics
        );
        assert_eq!(n("text/plain;version=0.0.4"), Prometheus);
        assert_eq!(
            n("text/plain;q=0.9, application/openmetrics-text;q=0.8"),
            Prometheus
        );
        assert_eq!(
            n("text/plain;q=0.5, application/openmetrics-text;q=0.8"),
            OpenMetrics
        );
        assert_eq!(n("text/plain, application/openmetrics-text"), Prometheus);
        assert_eq!(n("application/openmetrics-text, text/plain"), OpenMetrics);
        assert_eq!(n("application/openmetrics-text;q=0"), Prometheus);
        assert_eq!(n("application/openmetrics-text;version=9.9.9"), Prometheus);
        assert_eq!(n("application/openmetrics-text;q=nonsense"), Prometheus);
        assert_eq!(n("application/json"), Prometheus);
        assert_eq!(n(""), Prometheus);
        assert_eq!(n("APPLICATION/OpenMetrics-Text;Version=1.0.0"), OpenMetrics);
    }

    #[test]
    fn gzip_only_when_asked() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("*, gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
    }

    fn sample_families() -> Vec<FamilySnapshot> {
        let series = PipelineSeries::new(SeriesConfig {
            buckets: Arc::from(&[0.5, 2.5][..]),
            ..SeriesConfig::default()
        });
        let start = SystemTime::now();
        series.record_event(
            EventMetrics {
                event_name: "TestEvent".into(),
                task_id: "test-123".into(),
                start_time: start,
                end_time: Some(start + Duration::from_millis(1500)),
                status: Status::Completed,
                error: None,
                retry_count: 2,
                process_id: 1234,
            }
            .borrowed(),
        );
        series.snapshot(None)
    }

    const GOLDEN_EVENTS_CLASSIC: &str = "\
# HELP event_duration_seconds Duration of finished events in seconds, by event name and status.
# TYPE event_duration_seconds histogram
event_duration_seconds_bucket{event_name=\"TestEvent\",status=\"completed\",le=\"0.5\"} 0
event_duration_seconds_bucket{event_name=\"TestEvent\",status=\"completed\",le=\"2.5\"} 1
event_duration_seconds_bucket{event_name=\"TestEvent\",status=\"completed\",le=\"+Inf\"} 1
event_duration_seconds_sum{event_name=\"TestEvent\",status=\"completed\"} 1.5
event_duration_seconds_count{event_name=\"TestEvent\",status=\"completed\"} 1
# HELP event_retries_total Retries of finished events, by event name.
# TYPE event_retries_total counter
event_retries_total{event_name=\"TestEvent\"} 2
";

    #[test]
    fn golden_classic_exposition() {
        let mut out = String::new();
        encode(
            &mut out,
            &sample_families()[..2],
            ExpositionFormat::Prometheus,
        );
        finish(&mut out, ExpositionFormat::Prometheus);
        assert_eq!(out, GOLDEN_EVENTS_CLASSIC);
    }

    #[test]
    fn golden_openmetrics_exposition() {
        let mut out = String::new();
        let families = sample_families();
        encode(&mut out, &families[1..2], ExpositionFormat::OpenMetrics);
        encode(&mut out, &families[5..6], ExpositionFormat::OpenMetrics);
        finish(&mut out, ExpositionFormat::OpenMetrics);
        assert_eq!(
            out,
            "# HELP event_retries Retries of finished events, by event name.\n\
             # TYPE event_retries counter\n\
             event_retries_total{event_name=\"TestEvent\"} 2\n\
             # HELP events_in_flight Events started and not yet ended.\n\
             # TYPE events_in_flight gauge\n\
             events_in_flight 0\n\
             # EOF\n"
        );
    }

    #[test]
    fn default_buckets_are_written_as_the_original_writes_them() {
        let les: Vec<String> = crate::series::DEFAULT_BUCKETS
            .iter()
            .map(|b| le_string(*b))
            .collect();
        assert_eq!(
            les,
            [
                "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0",
                "2.5", "5.0", "7.5", "10.0"
            ]
        );
    }

    #[test]
    fn help_escaping_differs_by_format() {
        let mut out = String::new();
        push_help(&mut out, "a \"b\" \\ c\nd", ExpositionFormat::Prometheus);
        assert_eq!(out, "a \"b\" \\\\ c\\nd");
        out.clear();
        push_help(&mut out, "a \"b\"", ExpositionFormat::OpenMetrics);
        assert_eq!(out, "a \\\"b\\\"");
    }
}
