//! Documents: one NDJSON `create` action line and one source line per record, the index
//! name of its UTC day and a deterministic `_id`.
//!
//! An event becomes
//! ```json
//! {"create":{"_index":"event-pipeline-metrics-event-2026.11.25","_id":"9f0c…"}}
//! {"@timestamp":"2026-11-25T06:20:17.623456Z","metric_type":"event","event_name":"TestEvent",
//!  "task_id":"test-123","status":"completed","start_time":"2026-11-25T06:20:16.123456Z",
//!  "end_time":"2026-11-25T06:20:17.623456Z","duration":1.5,"error":null,"retry_count":0,
//!  "process_id":1234}
//! ```
//! (the source on one line), and a network operation
//! ```json
//! {"@timestamp":"…","metric_type":"network","task_id":"job-1/fetch","host":"storage.local",
//!  "port":9000,"operation":"get","start_time":"…","end_time":"…","latency":0.25,
//!  "bytes_sent":1000,"bytes_received":500,"error":null}
//! ```
//! `@timestamp` is the end time (the start time while pending) and picks the day of the index.
//! Times are RFC 3339 UTC with microseconds, clamped to years 1970 to 9999; durations and
//! latency are seconds as numbers.
//!
//! The `_id` is a 128-bit FNV-1a hash, in hex, of the record's kind, identity and times, the
//! same in every process and version of this crate, so a record sent twice (a retried batch,
//! a replay after a restart) is stored once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::record::{EventMetrics, NetworkMetrics};

/// The two kinds of document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricType {
    Event,
    Network,
}

impl MetricType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MetricType::Event => "event",
            MetricType::Network => "network",
        }
    }
}

/// Encodes records into bulk NDJSON for one index prefix.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    event_index: String,
    network_index: String,
}

/// A typical document's size, to size buffers once.
const TYPICAL_DOC: usize = 448;

impl Encoder {
    pub(crate) fn new(prefix: &str) -> Self {
        Encoder {
            event_index: format!("{prefix}-event-"),
            network_index: format!("{prefix}-network-"),
        }
    }

    /// The index of a record of this kind at this time.
    pub(crate) fn index_name(&self, kind: MetricType, at: SystemTime) -> String {
        let mut out = Vec::with_capacity(64);
        self.write_index(&mut out, kind, at);
        String::from_utf8(out).unwrap_or_default()
    }

    fn write_index(&self, out: &mut Vec<u8>, kind: MetricType, at: SystemTime) {
        out.extend_from_slice(match kind {
            MetricType::Event => self.event_index.as_bytes(),
            MetricType::Network => self.network_index.as_bytes(),
        });
        let (y, m, d) = civil_date(clamped_micros(at).div_euclid(86_400_000_000));
        push_digits(out, y as u64, 4);
        out.push(b'.');
        push_digits(out, u64::from(m), 2);
        out.push(b'.');
        push_digits(out, u64::from(d), 2);
    }

    fn write_action(&self, out: &mut Vec<u8>, kind: MetricType, at: SystemTime, id: u128) {
        out.extend_from_slice(b"{\"create\":{\"_index\":\"");
        self.write_index(out, kind, at);
        out.extend_from_slice(b"\",\"_id\":\"");
        push_hex(out, id);
        out.extend_from_slice(b"\"}}\n");
    }

    /// The action and source lines of an event, each ending in `\n`.
    pub(crate) fn event(&self, m: &EventMetrics) -> Vec<u8> {
        let mut out = Vec::with_capacity(TYPICAL_DOC + m.task_id.len() + m.event_name.len());
        let at = m.end_time.unwrap_or(m.start_time);
        let id = event_id(m);
        self.write_action(&mut out, MetricType::Event, at, id);
        out.extend_from_slice(b"{\"@timestamp\":");
        push_time(&mut out, at);
        out.extend_from_slice(b",\"metric_type\":\"event\",\"event_name\":");
        push_str(&mut out, &m.event_name);
        out.extend_from_slice(b",\"task_id\":");
        push_str(&mut out, &m.task_id);
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(m.status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"start_time\":");
        push_time(&mut out, m.start_time);
        out.extend_from_slice(b",\"end_time\":");
        push_opt_time(&mut out, m.end_time);
        out.extend_from_slice(b",\"duration\":");
        push_seconds(&mut out, m.duration());
        out.extend_from_slice(b",\"error\":");
        push_opt_str(&mut out, m.error.as_deref());
        out.extend_from_slice(b",\"retry_count\":");
        push_int(&mut out, u64::from(m.retry_count));
        out.extend_from_slice(b",\"process_id\":");
        push_int(&mut out, u64::from(m.process_id));
        out.extend_from_slice(b"}\n");
        out
    }

    /// The action and source lines of a network operation, each ending in `\n`.
    pub(crate) fn network(&self, m: &NetworkMetrics) -> Vec<u8> {
        let mut out = Vec::with_capacity(TYPICAL_DOC + m.task_id.len() + m.host.len());
        let at = m.end_time.unwrap_or(m.start_time);
        let id = network_id(m);
        self.write_action(&mut out, MetricType::Network, at, id);
        out.extend_from_slice(b"{\"@timestamp\":");
        push_time(&mut out, at);
        out.extend_from_slice(b",\"metric_type\":\"network\",\"task_id\":");
        push_str(&mut out, &m.task_id);
        out.extend_from_slice(b",\"host\":");
        push_str(&mut out, &m.host);
        out.extend_from_slice(b",\"port\":");
        push_int(&mut out, u64::from(m.port));
        out.extend_from_slice(b",\"operation\":");
        push_str(&mut out, &m.operation);
        out.extend_from_slice(b",\"start_time\":");
        push_time(&mut out, m.start_time);
        out.extend_from_slice(b",\"end_time\":");
        push_opt_time(&mut out, m.end_time);
        out.extend_from_slice(b",\"latency\":");
        push_seconds(&mut out, m.latency());
        out.extend_from_slice(b",\"bytes_sent\":");
        push_int(&mut out, m.bytes_sent);
        out.extend_from_slice(b",\"bytes_received\":");
        push_int(&mut out, m.bytes_received);
        out.extend_from_slice(b",\"error\":");
        push_opt_str(&mut out, m.error.as_deref());
        out.extend_from_slice(b"}\n");
        out
    }
}

/// The `_index` and `_id` of an encoded document, read back from its action line (for
/// reports about refused documents).
pub(crate) fn index_and_id(doc: &[u8]) -> (String, String) {
    let line = doc.split(|&b| b == b'\n').next().unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Target {
        #[serde(rename = "_index")]
        index: String,
        #[serde(rename = "_id")]
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct Action {
        create: Target,
    }
    serde_json::from_slice::<Action>(line)
        .map(|a| (a.create.index, a.create.id))
        .unwrap_or_default()
}

// ---- deterministic ids -------------------------------------------------------------------

const FNV_OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
const FNV_PRIME: u128 = 0x0000000001000000000000000000013B;

struct Fnv(u128);

impl Fnv {
    fn new(kind: MetricType) -> Self {
        let mut h = Fnv(FNV_OFFSET);
        h.bytes(kind.as_str().as_bytes());
        h
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
    /// A length-prefixed string, so field boundaries cannot shift.
    fn str(&mut self, s: &str) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }
    fn time(&mut self, t: Option<SystemTime>) {
        let nanos: i128 = match t {
            None => i128::MIN,
            Some(t) => match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i128,
                Err(e) => -(e.duration().as_nanos() as i128),
            },
        };
        self.bytes(&nanos.to_le_bytes());
    }
}

/// The `_id` of an event: its name, task id, start and end.
pub(crate) fn event_id(m: &EventMetrics) -> u128 {
    let mut h = Fnv::new(MetricType::Event);
    h.str(&m.event_name);
    h.str(&m.task_id);
    h.time(Some(m.start_time));
    h.time(m.end_time);
    h.0
}

/// The `_id` of a network operation: its task id, host, port, operation, start and end.
pub(crate) fn network_id(m: &NetworkMetrics) -> u128 {
    let mut h = Fnv::new(MetricType::Network);
    h.str(&m.task_id);
    h.str(&m.host);
    h.bytes(&m.port.to_le_bytes());
    h.str(&m.operation);
    h.time(Some(m.start_time));
    h.time(m.end_time);
    h.0
}

// ---- JSON pieces ---------------------------------------------------------------------------

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut Vec<u8>, id: u128) {
    for i in (0..32).rev() {
        out.push(HEX[((id >> (i * 4)) & 0xf) as usize]);
    }
}

/// A JSON string literal with quotes, escaping `"`, `\` and control characters.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_int(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Seconds with up to nine decimals, trailing zeros cut (`1.5`, `0.000123`, `0`).
fn push_seconds(out: &mut Vec<u8>, d: Duration) {
    push_int(out, d.as_secs());
    let mut frac = d.subsec_nanos();
    if frac == 0 {
        return;
    }
    let mut digits = 9;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    out.push(b'.');
    push_digits(out, u64::from(frac), digits);
}

fn push_digits(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = n;
    let mut i = buf.len();
    while n > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = buf.len().saturating_sub(width).min(i);
    out.extend_from_slice(&buf[start..]);
}

/// Microseconds since the epoch, clamped to 1970-01-01 .. 9999-12-31T23:59:59.999999.
fn clamped_micros(t: SystemTime) -> i64 {
    const MAX: i64 = 253_402_300_800_000_000 - 1;
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(MAX).min(MAX),
        Err(_) => 0,
    }
}

fn push_time(out: &mut Vec<u8>, t: SystemTime) {
    out.push(b'"');
    let micros = clamped_micros(t);
    let (y, mo, d) = civil_date(micros.div_euclid(86_400_000_000));
    let in_day = micros.rem_euclid(86_400_000_000) as u64;
    let secs = in_day / 1_000_000;
    push_digits(out, y as u64, 4);
    out.push(b'-');
    push_digits(out, u64::from(mo), 2);
    out.push(b'-');
    push_digits(out, u64::from(d), 2);
    out.push(b'T');
    push_digits(out, secs / 3600, 2);
    out.push(b':');
    push_digits(out, secs / 60 % 60, 2);
    out.push(b':');
    push_digits(out, secs % 60, 2);
    out.push(b'.');
    push_digits(out, in_day % 1_000_000, 6);
    out.extend_from_slice(b"Z\"");
}

fn push_opt_time(out: &mut Vec<u8>, t: Option<SystemTime>) {
    match t {
        Some(t) => push_time(out, t),
        None => out.extend_from_slice(b"null"),
    }
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`).
pub(crate) fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn event() -> EventMetrics {
        let start = UNIX_EPOCH + Duration::from_micros(1_764_051_616_123_456);
        EventMetrics {
            event_name: "TestEvent".into(),
            task_id: "test-123".into(),
            start_time: start,
            end_time: Some(start + Duration::from_millis(1500)),
            status: Status::Completed,
            error: None,
            retry_count: 0,
            process_id: 1234,
        }
    }

    fn lines(doc: &[u8]) -> (serde_json::Value, serde_json::Value) {
        let text = std::str::from_utf8(doc).unwrap();
        assert!(text.ends_with('\n'));
        let mut it = text.lines();
        let action = serde_json::from_str(it.next().unwrap()).unwrap();
        let source = serde_json::from_str(it.next().unwrap()).unwrap();
        assert!(it.next().is_none());
        (action, source)
    }

    #[test]
    fn event_document_has_the_documented_shape() {
        let enc = Encoder::new("event-pipeline-metrics");
        let (action, source) = lines(&enc.event(&event()));
        assert_eq!(
            action["create"]["_index"],
            "event-pipeline-metrics-event-2025.11.25"
        );
        assert_eq!(action["create"]["_id"].as_str().unwrap().len(), 32);
        assert_eq!(
            source,
            serde_json::json!({
                "@timestamp": "2025-11-25T06:20:17.623456Z",
                "metric_type": "event",
                "event_name": "TestEvent",
                "task_id": "test-123",
                "status": "completed",
                "start_time": "2025-11-25T06:20:16.123456Z",
                "end_time": "2025-11-25T06:20:17.623456Z",
                "duration": 1.5,
                "error": null,
                "retry_count": 0,
                "process_id": 1234
            })
        );
    }

    #[test]
    fn network_document_has_the_documented_shape() {
        let start = UNIX_EPOCH + Duration::from_secs(86_400 * 365);
        let m = NetworkMetrics {
            end_time: Some(start + Duration::from_millis(250)),
            bytes_sent: 1000,
            bytes_received: 500,
            error: Some("Connection refused".into()),
            ..NetworkMetrics::new("test-network-1", "localhost", 8080, start)
        };
        let (action, source) = lines(&Encoder::new("p").network(&m));
        assert_eq!(action["create"]["_index"], "p-network-1971.01.01");
        assert_eq!(source["@timestamp"], "1971-01-01T00:00:00.250000Z");
        assert_eq!(source["metric_type"], "network");
        assert_eq!(source["host"], "localhost");
        assert_eq!(source["port"], 8080);
        assert_eq!(source["operation"], "remote_call");
        assert_eq!(source["latency"], 0.25);
        assert_eq!(source["bytes_sent"], 1000);
        assert_eq!(source["bytes_received"], 500);
        assert_eq!(source["error"], "Connection refused");
    }

    #[test]
    fn ids_are_stable_and_distinguish_records() {
        let a = event();
        // Pinned: the id must not change between versions, or replays would duplicate.
        assert_eq!(
            format!("{:032x}", event_id(&a)),
            format!("{:032x}", event_id(&a.clone()))
        );
        let mut b = a.clone();
        b.task_id = "test-124".into();
        assert_ne!(event_id(&a), event_id(&b));
        let mut c = a.clone();
        c.end_time = Some(a.start_time + Duration::from_millis(1501));
        assert_ne!(event_id(&a), event_id(&c));
        // Field boundaries are length-prefixed.
        let mut d = a.clone();
        d.event_name = "TestEventtest".into();
        d.task_id = "-123".into();
        assert_ne!(event_id(&a), event_id(&d));
    }

    #[test]
    fn id_is_pinned() {
        assert_eq!(
            format!("{:032x}", event_id(&event())),
            PINNED_EVENT_ID,
            "the _id of a record changed: documents sent by older versions would be duplicated"
        );
    }

    /// Computed independently (FNV-1a 128 over the same bytes, in Python).
    const PINNED_EVENT_ID: &str = "29bbc76b99fcf74f466403694105a705";

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        push_str(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            serde_json::from_str::<String>(&text).unwrap(),
            "a\"b\\c\nd\u{1}e\u{7f}é"
        );
    }

    #[test]
    fn times_and_days_match_humantime_and_clamp() {
        for micros in [
            0u64,
            1,
            951_782_400_000_000,
            1_709_164_800_123_456,
            4_102_444_799_999_999,
        ] {
            let t = UNIX_EPOCH + Duration::from_micros(micros);
            let mut out = Vec::new();
            push_time(&mut out, t);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text.trim_matches('"'),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
        let mut out = Vec::new();
        push_time(&mut out, UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(out, b"\"1970-01-01T00:00:00.000000Z\"");
        out.clear();
        push_time(&mut out, UNIX_EPOCH + Duration::from_secs(400_000_000_000));
        assert_eq!(out, b"\"9999-12-31T23:59:59.999999Z\"");
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }

    #[test]
    fn seconds_are_plain_numbers() {
        for (d, text) in [
            (Duration::ZERO, "0"),
            (Duration::from_millis(1500), "1.5"),
            (Duration::from_nanos(123), "0.000000123"),
            (Duration::new(3, 10), "3.00000001"),
        ] {
            let mut out = Vec::new();
            push_seconds(&mut out, d);
            assert_eq!(std::str::from_utf8(&out).unwrap(), text);
        }
    }

    #[test]
    fn index_and_id_read_back() {
        let enc = Encoder::new("p");
        let doc = enc.event(&event());
        let (index, id) = index_and_id(&doc);
        assert_eq!(index, "p-event-2025.11.25");
        assert_eq!(id, format!("{:032x}", event_id(&event())));
    }
}
