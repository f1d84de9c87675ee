//! The metric records: one [`EventMetrics`] per event execution, one [`NetworkMetrics`] per
//! network operation.
//!
//! These are the public, owned snapshots handed to queries and publishers. The stores keep a
//! more compact internal form whose strings are shared, so
//! that handing a finished record to a publisher costs reference-count increments, not copies.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::store::{Interner, Name, OwnsHeap, TaskId};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// The longest error message kept, in bytes. Longer messages are cut at a character boundary
/// and end with [`TRUNCATION_MARK`].
pub const MAX_ERROR_BYTES: usize = 4096;

/// What a cut error message ends with.
pub const TRUNCATION_MARK: &str = "… [truncated]";

/// Where an event execution stands.
///
/// Serialized as `"pending"`, `"completed"` or `"failed"`.
///
/// ```
/// use pipeline_telemetry::Status;
/// assert_eq!(Status::Failed.as_str(), "failed");
/// assert_eq!(serde_json::to_string(&Status::Completed).unwrap(), "\"completed\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started and not yet ended.
    Pending,
    /// Ended without an error.
    Completed,
    /// Ended with an error.
    Failed,
}

impl Status {
    /// The lower-case name used in JSON, labels and documents.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metrics for a single event execution.
///
/// `start_time` and `end_time` are wall-clock times for display and export. The stores measure
/// the duration on a monotonic clock and set `end_time = start_time + duration`, so
/// [`duration`](Self::duration) is exact even if the wall clock jumps while the event runs.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pipeline_telemetry::{EventMetrics, Status};
///
/// let start = SystemTime::now();
/// let record = EventMetrics {
///     event_name: "TestEvent".into(),
///     task_id: "test-123".into(),
///     start_time: start,
///     end_time: Some(start + Duration::from_millis(1500)),
///     status: Status::Completed,
///     error: None,
///     retry_count: 0,
///     process_id: 1234,
/// };
/// assert_eq!(record.duration(), Duration::from_millis(1500));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetrics {
    /// Name of the event, such as the job or step it runs.
    pub event_name: String,
    /// Unique identifier of this execution.
    pub task_id: String,
    /// When the event started (wall clock).
    pub start_time: SystemTime,
    /// When the event ended (wall clock); `None` while pending.
    pub end_time: Option<SystemTime>,
    /// Pending, completed or failed.
    pub status: Status,
    /// The error message if the event failed.
    pub error: Option<String>,
    /// How many times the event was retried.
    pub retry_count: u32,
    /// The operating-system process that ran the event.
    pub process_id: u32,
}

impl EventMetrics {
    /// How long the event ran: zero while pending, and zero if `end_time` is before
    /// `start_time` (possible only in records built by hand).
    pub fn duration(&self) -> Duration {
        span(self.start_time, self.end_time)
    }

    /// The record borrowed, as [`MetricsPublisher::publish_event`](crate::MetricsPublisher::publish_event)
    /// receives it.
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use pipeline_telemetry::{EventMetrics, Status};
    /// # let record = EventMetrics { event_name: "load".into(), task_id: "t".into(),
    /// #     start_time: SystemTime::now(), end_time: None, status: Status::Pending,
    /// #     error: None, retry_count: 0, process_id: 1 };
    /// assert_eq!(record.borrowed().event_name, "load");
    /// assert_eq!(record.borrowed().to_metrics(), record);
    /// ```
    pub fn borrowed(&self) -> EventRef<'_> {
        EventRef {
            event_name: &self.event_name,
            task_id: &self.task_id,
            start_time: self.start_time,
            end_time: self.end_time,
            status: self.status,
            error: self.error.as_deref(),
            retry_count: self.retry_count,
            process_id: self.process_id,
        }
    }
}

/// A finished event borrowed from the delivery thread: the fields of an [`EventMetrics`]
/// without its allocations. Publishers that only aggregate receive it through
/// [`MetricsPublisher::publish_event`](crate::MetricsPublisher::publish_event).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pipeline_telemetry::{EventMetrics, Status};
///
/// let start = SystemTime::now();
/// let record = EventMetrics {
///     event_name: "load".into(),
///     task_id: "t-1".into(),
///     start_time: start,
///     end_time: Some(start + Duration::from_millis(20)),
///     status: Status::Completed,
///     error: None,
///     retry_count: 1,
///     process_id: 7,
/// };
/// let event = record.borrowed();
/// assert_eq!(event.duration(), Duration::from_millis(20));
/// assert_eq!(event.to_metrics(), record);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventRef<'a> {
    /// Name of the event.
    pub event_name: &'a str,
    /// Unique identifier of this execution.
    pub task_id: &'a str,
    /// When the event started (wall clock).
    pub start_time: SystemTime,
    /// When the event ended (wall clock); `None` while pending.
    pub end_time: Option<SystemTime>,
    /// Pending, completed or failed.
    pub status: Status,
    /// The error message if the event failed.
    pub error: Option<&'a str>,
    /// How many times the event was retried.
    pub retry_count: u32,
    /// The operating-system process that ran the event.
    pub process_id: u32,
}

impl EventRef<'_> {
    /// How long the event ran; see [`EventMetrics::duration`].
    pub fn duration(&self) -> Duration {
        span(self.start_time, self.end_time)
    }

    /// The record with its own copies of the strings.
    pub fn to_metrics(&self) -> EventMetrics {
        EventMetrics {
            event_name: self.event_name.to_owned(),
            task_id: self.task_id.to_owned(),
            start_time: self.start_time,
            end_time: self.end_time,
            status: self.status,
            error: self.error.map(str::to_owned),
            retry_count: self.retry_count,
            process_id: self.process_id,
        }
    }
}

impl Serialize for EventMetrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("EventMetrics", 9)?;
        s.serialize_field("event_name", &self.event_name)?;
        s.serialize_field("task_id", &self.task_id)?;
        s.serialize_field("start_time", &rfc3339(self.start_time))?;
        s.serialize_field("end_time", &self.end_time.map(rfc3339))?;
        s.serialize_field("duration", &self.duration().as_secs_f64())?;
        s.serialize_field("status", &self.status)?;
        s.serialize_field("error", &self.error)?;
        s.serialize_field("retry_count", &self.retry_count)?;
        s.serialize_field("process_id", &self.process_id)?;
        s.end()
    }
}

/// The operation name used when none is given.
pub const DEFAULT_OPERATION: &str = "remote_call";

/// Metrics for one network operation.
///
/// As with [`EventMetrics`], `end_time = start_time + latency` where the latency was measured on
/// a monotonic clock. An operation failed when `error` is set.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pipeline_telemetry::NetworkMetrics;
///
/// let start = SystemTime::now();
/// let op = NetworkMetrics {
///     end_time: Some(start + Duration::from_millis(250)),
///     bytes_sent: 1000,
///     bytes_received: 500,
///     ..NetworkMetrics::new("net-1", "localhost", 8080, start)
/// };
/// assert_eq!(op.operation, "remote_call");
/// assert_eq!(op.latency(), Duration::from_millis(250));
/// assert!(!op.is_failed());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkMetrics {
    /// Unique identifier of this operation.
    pub task_id: String,
    /// Remote host name or address.
    pub host: String,
    /// Remote port.
    pub port: u16,
    /// When the operation started (wall clock).
    pub start_time: SystemTime,
    /// When it ended (wall clock); `None` while in flight.
    pub end_time: Option<SystemTime>,
    /// Bytes written to the remote side.
    pub bytes_sent: u64,
    /// Bytes read from the remote side.
    pub bytes_received: u64,
    /// The error message if the operation failed.
    pub error: Option<String>,
    /// What kind of operation this was; [`DEFAULT_OPERATION`] unless given.
    pub operation: String,
}

impl NetworkMetrics {
    /// An in-flight operation with operation [`DEFAULT_OPERATION`], no bytes and no error.
    pub fn new(
        task_id: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        start_time: SystemTime,
    ) -> Self {
        NetworkMetrics {
            task_id: task_id.into(),
            host: host.into(),
            port,
            start_time,
            end_time: None,
            bytes_sent: 0,
            bytes_received: 0,
            error: None,
            operation: DEFAULT_OPERATION.to_owned(),
        }
    }

    /// How long the operation took: zero while in flight.
    pub fn latency(&self) -> Duration {
        span(self.start_time, self.end_time)
    }

    /// Whether the operation ended with an error.
    pub fn is_failed(&self) -> bool {
        self.error.is_some()
    }

    /// The record borrowed, as
    /// [`MetricsPublisher::publish_network`](crate::MetricsPublisher::publish_network) receives
    /// it.
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use pipeline_telemetry::NetworkMetrics;
    /// let op = NetworkMetrics::new("n-1", "db", 5432, SystemTime::now());
    /// assert_eq!(op.borrowed().host, "db");
    /// assert_eq!(op.borrowed().to_metrics(), op);
    /// ```
    pub fn borrowed(&self) -> NetworkRef<'_> {
        NetworkRef {
            task_id: &self.task_id,
            host: &self.host,
            port: self.port,
            start_time: self.start_time,
            end_time: self.end_time,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            error: self.error.as_deref(),
            operation: &self.operation,
        }
    }
}

/// A finished network operation borrowed from the delivery thread: the fields of a
/// [`NetworkMetrics`] without its allocations. Publishers that only aggregate receive it
/// through [`MetricsPublisher::publish_network`](crate::MetricsPublisher::publish_network).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pipeline_telemetry::NetworkMetrics;
///
/// let start = SystemTime::now();
/// let op = NetworkMetrics {
///     end_time: Some(start + Duration::from_millis(5)),
///     error: Some("reset".into()),
///     ..NetworkMetrics::new("n-1", "db", 5432, start)
/// };
/// let borrowed = op.borrowed();
/// assert_eq!(borrowed.latency(), Duration::from_millis(5));
/// assert!(borrowed.is_failed());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkRef<'a> {
    /// Unique identifier of this operation.
    pub task_id: &'a str,
    /// Remote host name or address.
    pub host: &'a str,
    /// Remote port.
    pub port: u16,
    /// When the operation started (wall clock).
    pub start_time: SystemTime,
    /// When it ended (wall clock); `None` while in flight.
    pub end_time: Option<SystemTime>,
    /// Bytes written to the remote side.
    pub bytes_sent: u64,
    /// Bytes read from the remote side.
    pub bytes_received: u64,
    /// The error message if the operation failed.
    pub error: Option<&'a str>,
    /// What kind of operation this was.
    pub operation: &'a str,
}

impl NetworkRef<'_> {
    /// How long the operation took; see [`NetworkMetrics::latency`].
    pub fn latency(&self) -> Duration {
        span(self.start_time, self.end_time)
    }

    /// Whether the operation ended with an error.
    pub fn is_failed(&self) -> bool {
        self.error.is_some()
    }

    /// The record with its own copies of the strings.
    pub fn to_metrics(&self) -> NetworkMetrics {
        NetworkMetrics {
            task_id: self.task_id.to_owned(),
            host: self.host.to_owned(),
            port: self.port,
            start_time: self.start_time,
            end_time: self.end_time,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            error: self.error.map(str::to_owned),
            operation: self.operation.to_owned(),
        }
    }
}

impl Serialize for NetworkMetrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("NetworkMetrics", 10)?;
        s.serialize_field("task_id", &self.task_id)?;
        s.serialize_field("host", &self.host)?;
        s.serialize_field("port", &self.port)?;
        s.serialize_field("operation", &self.operation)?;
        s.serialize_field("start_time", &rfc3339(self.start_time))?;
        s.serialize_field("end_time", &self.end_time.map(rfc3339))?;
        s.serialize_field("latency", &self.latency().as_secs_f64())?;
        s.serialize_field("bytes_sent", &self.bytes_sent)?;
        s.serialize_field("bytes_received", &self.bytes_received)?;
        s.serialize_field("error", &self.error)?;
        s.end()
    }
}

/// Formats a wall-clock time as RFC 3339 in UTC with microseconds, e.g.
/// `2026-11-25T06:20:16.123456Z`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_micros(1_500_000);
/// assert_eq!(pipeline_telemetry::record::rfc3339(t), "1970-01-01T00:00:01.500000Z");
/// ```
///
/// RFC 3339 years have four digits, so times are clamped to 1970-01-01T00:00:00Z ..
/// 9999-12-31T23:59:59.999999Z (a record built by hand may hold any `SystemTime`).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use pipeline_telemetry::record::rfc3339;
/// assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000000Z");
/// ```
pub fn rfc3339(time: SystemTime) -> String {
    // The first instant of year 10000, less one microsecond.
    const LAST: Duration = Duration::from_micros(253_402_300_800_000_000 - 1);
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .min(LAST);
    humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + since_epoch).to_string()
}

fn span(start: SystemTime, end: Option<SystemTime>) -> Duration {
    end.and_then(|end| end.duration_since(start).ok())
        .unwrap_or(Duration::ZERO)
}

/// An error message as a record keeps it: one pointer wide, since a record's size is what
/// moving it costs, and shared by the copies handed to publishers and by the records of the
/// same thread with the same message (see [`cut_error`]). Errors are rare; the second
/// allocation a new message takes is cheaper than eight more bytes in every record.
pub(crate) type ErrorText = Arc<String>;

/// How many error texts each recording thread keeps for reuse.
const RECENT_ERRORS: usize = 8;

thread_local! {
    /// The error texts this thread made last, by a hash of their message.
    static RECENT_ERRORS_OF_THREAD: RefCell<[Option<ErrorText>; RECENT_ERRORS]> =
        const { RefCell::new([const { None }; RECENT_ERRORS]) };
}

/// The text of an error message, cut to [`MAX_ERROR_BYTES`] at a character boundary.
///
/// A message this thread gave recently shares that text: failures repeat their messages, and
/// sharing saves the two allocations of a new text and, when the records are evicted, their
/// two frees (about 4 ns per event in the peers bench, where 5% of events fail with one
/// message). Each thread keeps at most [`RECENT_ERRORS`] texts alive for this.
pub(crate) fn cut_error(message: &str) -> ErrorText {
    if message.len() > MAX_ERROR_BYTES {
        return cut_long_error(message);
    }
    let slot = foldhash::fast::FixedState::default().hash_one(message) as usize % RECENT_ERRORS;
    RECENT_ERRORS_OF_THREAD
        .try_with(|recent| {
            let mut recent = recent.borrow_mut();
            match &recent[slot] {
                Some(text) if text.as_str() == message => Arc::clone(text),
                _ => {
                    let text = Arc::new(message.to_owned());
                    recent[slot] = Some(Arc::clone(&text));
                    text
                }
            }
        })
        // The thread is ending: no reuse.
        .unwrap_or_else(|_| Arc::new(message.to_owned()))
}

/// [`cut_error`] for a message over [`MAX_ERROR_BYTES`]: cut, and not kept for reuse.
#[cold]
fn cut_long_error(message: &str) -> ErrorText {
    let mut end = MAX_ERROR_BYTES - TRUNCATION_MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = String::with_capacity(end + TRUNCATION_MARK.len());
    cut.push_str(&message[..end]);
    cut.push_str(TRUNCATION_MARK);
    Arc::new(cut)
}

/// Nanoseconds as a `u64`, saturating (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A wall-clock time from nanoseconds since the Unix epoch.
fn wall(ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The compact form of an event the store keeps. Strings are shared or inline, so a copy for
/// a publisher is a few reference-count increments.
#[derive(Debug, Clone)]
pub(crate) struct EventRecord {
    pub(crate) task_id: TaskId,
    pub(crate) event_name: Name,
    pub(crate) error: Option<ErrorText>,
    /// Wall-clock start in nanoseconds since the Unix epoch.
    pub(crate) start_wall_ns: u64,
    /// Monotonic start, in nanoseconds since the store's base instant; orders records by start.
    pub(crate) start_mono: u64,
    /// Monotonic duration in nanoseconds; meaningful once ended.
    pub(crate) duration_ns: u64,
    pub(crate) retry_count: u32,
    pub(crate) process_id: u32,
    pub(crate) key_hash: u32,
    pub(crate) status: Status,
}

impl OwnsHeap for EventRecord {
    #[inline]
    fn owns_heap(&self) -> bool {
        self.task_id.owns_heap() || self.event_name.owns_heap() || self.error.is_some()
    }
}

/// A blank record, owning nothing: what a dropped retained record leaves in its place.
impl Default for EventRecord {
    fn default() -> Self {
        EventRecord {
            task_id: TaskId::default(),
            event_name: Name::default(),
            error: None,
            start_wall_ns: 0,
            start_mono: 0,
            duration_ns: 0,
            retry_count: 0,
            process_id: 0,
            key_hash: 0,
            status: Status::Pending,
        }
    }
}

impl EventRecord {
    /// The public record; `names` is the interner of the shard the record lives in.
    pub(crate) fn to_public(&self, names: &Interner) -> EventMetrics {
        self.borrowed(names).to_metrics()
    }

    /// The record borrowed, its names resolved by `names`.
    pub(crate) fn borrowed<'a>(&'a self, names: &'a Interner) -> EventRef<'a> {
        let start_time = wall(self.start_wall_ns);
        EventRef {
            event_name: self.event_name.as_str(names),
            task_id: &self.task_id,
            start_time,
            end_time: (self.status != Status::Pending)
                .then(|| start_time + Duration::from_nanos(self.duration_ns)),
            status: self.status,
            error: self.error.as_deref().map(String::as_str),
            retry_count: self.retry_count,
            process_id: self.process_id,
        }
    }
}

/// The compact form of a network operation the store keeps.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetworkRecord {
    pub(crate) task_id: TaskId,
    pub(crate) host: Name,
    pub(crate) operation: Name,
    pub(crate) error: Option<ErrorText>,
    pub(crate) start_wall_ns: u64,
    pub(crate) start_mono: u64,
    pub(crate) duration_ns: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) key_hash: u32,
    pub(crate) port: u16,
    pub(crate) ended: bool,
}

impl OwnsHeap for NetworkRecord {
    #[inline]
    fn owns_heap(&self) -> bool {
        self.task_id.owns_heap()
            || self.host.owns_heap()
            || self.operation.owns_heap()
            || self.error.is_some()
    }
}

impl NetworkRecord {
    /// The public record; `names` is the interner of the shard the record lives in.
    pub(crate) fn to_public(&self, names: &Interner) -> NetworkMetrics {
        self.borrowed(names).to_metrics()
    }

    /// The record borrowed, its names resolved by `names`.
    pub(crate) fn borrowed<'a>(&'a self, names: &'a Interner) -> NetworkRef<'a> {
        let start_time = wall(self.start_wall_ns);
        NetworkRef {
            task_id: &self.task_id,
            host: self.host.as_str(names),
            port: self.port,
            start_time,
            end_time: self
                .ended
                .then(|| start_time + Duration::from_nanos(self.duration_ns)),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            error: self.error.as_deref().map(String::as_str),
            operation: self.operation.as_str(names),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn records_keep_their_size() {
        // A record is moved into the in-flight table, out of it and into the ring: its size is
        // on the recording path. Growing it should be a decision, not an accident.
        assert_eq!(std::mem::size_of::<EventRecord>(), 88);
        assert_eq!(std::mem::size_of::<NetworkRecord>(), 112);
    }

    #[test]
    fn a_record_owns_heap_memory_exactly_when_one_of_its_parts_does() {
        // A retained record said to own nothing is never dropped (see `store::ring::Records`):
        // each part that can allocate must make the record say so.
        fn long_id() -> TaskId {
            TaskId::from("an id longer than twenty-two bytes")
        }
        fn own_name() -> Name {
            Name::Own(Arc::from("name"))
        }
        assert!(!EventRecord::default().owns_heap());
        assert!(!NetworkRecord::default().owns_heap());
        fn changed<R: Default>(change: fn(&mut R)) -> R {
            let mut record = R::default();
            change(&mut record);
            record
        }
        let owning_events = [
            (
                "long task id",
                changed::<EventRecord>(|r| r.task_id = long_id()),
            ),
            ("own name", changed(|r| r.event_name = own_name())),
            ("error", changed(|r| r.error = Some(cut_error("boom")))),
        ];
        for (part, record) in owning_events {
            assert!(record.owns_heap(), "an event with a {part}");
        }
        let owning_ops = [
            (
                "long task id",
                changed::<NetworkRecord>(|r| r.task_id = long_id()),
            ),
            ("own host", changed(|r| r.host = own_name())),
            ("own operation", changed(|r| r.operation = own_name())),
            ("error", changed(|r| r.error = Some(cut_error("boom")))),
        ];
        for (part, record) in owning_ops {
            assert!(record.owns_heap(), "an operation with a {part}");
        }
    }

    #[test]
    fn pending_duration_is_zero_and_backwards_end_is_zero() {
        let now = SystemTime::now();
        let mut m = EventMetrics {
            event_name: "e".into(),
            task_id: "t".into(),
            start_time: now,
            end_time: None,
            status: Status::Pending,
            error: None,
            retry_count: 0,
            process_id: 1,
        };
        assert_eq!(m.duration(), Duration::ZERO);
        m.end_time = Some(now - Duration::from_secs(1));
        assert_eq!(m.duration(), Duration::ZERO);
    }

    #[test]
    fn times_outside_rfc3339_years_are_clamped_not_a_panic() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999999Z");
        let m = EventMetrics {
            event_name: "e".into(),
            task_id: "t".into(),
            start_time: SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            end_time: Some(far),
            status: Status::Completed,
            error: None,
            retry_count: 0,
            process_id: 1,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["start_time"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = cut_error(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.ends_with(TRUNCATION_MARK));
        assert!(cut
            .trim_end_matches(TRUNCATION_MARK)
            .chars()
            .all(|c| c == 'é'));
        assert_eq!(&*cut_error("short"), "short");
    }

    #[test]
    fn a_repeated_error_message_shares_its_text_and_another_does_not() {
        let first = cut_error("connection refused");
        let again = cut_error("connection refused");
        assert!(Arc::ptr_eq(&first, &again));
        let other = cut_error("connection reset");
        assert_eq!(other.as_str(), "connection reset");
        assert!(!Arc::ptr_eq(&first, &other));
        // Another thread makes its own texts.
        let elsewhere = std::thread::spawn(|| cut_error("connection refused"))
            .join()
            .unwrap();
        assert_eq!(elsewhere.as_str(), "connection refused");
        assert!(!Arc::ptr_eq(&first, &elsewhere));
    }

    #[test]
    fn json_has_rfc3339_times_and_numeric_duration() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        let m = EventMetrics {
            event_name: "e".into(),
            task_id: "t".into(),
            start_time: start,
            end_time: Some(start + Duration::from_millis(12)),
            status: Status::Failed,
            error: Some("boom".into()),
            retry_count: 2,
            process_id: 7,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["start_time"], "1970-01-02T00:00:00.000000Z");
        assert_eq!(v["end_time"], "1970-01-02T00:00:00.012000Z");
        assert_eq!(v["duration"], 0.012);
        assert_eq!(v["status"], "failed");
        assert_eq!(v["error"], "boom");
        assert_eq!(v["retry_count"], 2);
    }
}
