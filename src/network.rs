//! [`NetworkTelemetry`]: records network operations, and [`NetworkGuard`], its scoped handle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TelemetryConfig;
use crate::error::TelemetryError;
use crate::publish::dispatch::{Dispatcher, StoreKind};
use crate::publish::worker::{Batch, Run};
use crate::publish::{MetricsPublisher, PublishError, PublisherStats};
use crate::record::{cut_error, ErrorText, NetworkMetrics, NetworkRecord, DEFAULT_OPERATION};
use crate::report::NetworkCounts;
use crate::store::{Names, Record, Store, TaskId};

/// The error recorded when a [`NetworkGuard`] is dropped during a panic.
pub const PANICKED_ERROR: &str = "the operation's thread panicked before the operation ended";

/// Thread-safe recorder of network operations: which host and port, how long, how many bytes
/// each way, and whether it failed.
///
/// ```
/// use std::time::Duration;
/// use pipeline_telemetry::NetworkTelemetry;
///
/// let net = NetworkTelemetry::new();
/// net.start_operation("fetch-1", "api.example.com", 443, Some("http_get"))?;
/// net.end_operation("fetch-1", 120, 5_000, None)?;
/// net.start_operation("fetch-2", "api.example.com", 443, None)?;
/// net.end_operation("fetch-2", 0, 0, Some("connection refused"))?;
///
/// assert_eq!(net.get_metrics("fetch-1").unwrap().bytes_received, 5_000);
/// assert_eq!(net.get_failed_operations()["fetch-2"].operation, "remote_call");
/// assert!(net.get_slow_operations(Duration::from_secs(1)).is_empty());
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug)]
pub struct NetworkTelemetry {
    store: Arc<Store<NetworkRecord>>,
}

impl Default for NetworkTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`NetworkTelemetry::end_operation`] writes into its record once the store finds it.
///
/// `finish`'s closure borrows the whole value, one pointer: a closure holding the fields
/// themselves is copied into `finish` with 16-byte loads straight after the caller's 8-byte
/// stores, which the CPU cannot forward (together with the event's end, 5 ns an event;
/// BENCHMARKS.md, session 10).
struct OperationEnd {
    now: u64,
    bytes_sent: u64,
    bytes_received: u64,
    error: Option<ErrorText>,
}

impl OperationEnd {
    #[inline(always)]
    fn fill(&mut self, record: &mut NetworkRecord) {
        record.duration_ns = self.now.saturating_sub(record.start_mono);
        record.bytes_sent = self.bytes_sent;
        record.bytes_received = self.bytes_received;
        record.error = self.error.take();
        record.ended = true;
    }
}

impl NetworkTelemetry {
    /// Network telemetry with the [default configuration](TelemetryConfig::default).
    pub fn new() -> Self {
        Self::with_config(&TelemetryConfig::default())
    }

    /// Network telemetry with the given configuration and no publishers.
    pub fn with_config(config: &TelemetryConfig) -> Self {
        Self::with_dispatcher(config, config.dispatcher())
    }

    pub(crate) fn with_dispatcher(config: &TelemetryConfig, dispatcher: Arc<Dispatcher>) -> Self {
        NetworkTelemetry {
            store: config.store(StoreKind::Network, dispatcher),
        }
    }

    /// Records the start of a network operation; `operation` defaults to
    /// [`DEFAULT_OPERATION`] (`"remote_call"`), also when empty.
    ///
    /// # Errors
    /// [`TelemetryError::EmptyTaskId`], or [`TelemetryError::AlreadyInFlight`] if the id is in
    /// flight (the first record is kept).
    pub fn start_operation(
        &self,
        task_id: &str,
        host: &str,
        port: u16,
        operation: Option<&str>,
    ) -> Result<(), TelemetryError> {
        if task_id.is_empty() {
            return Err(TelemetryError::EmptyTaskId);
        }
        let operation = operation
            .filter(|o| !o.is_empty())
            .unwrap_or(DEFAULT_OPERATION);
        self.store.start(task_id, |start| NetworkRecord {
            task_id: start.task_id,
            host: start.names.get(host),
            operation: start.names.get(operation),
            error: None,
            start_wall_ns: start.start_wall_ns,
            start_mono: start.start_mono,
            duration_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
            key_hash: start.key_hash,
            port,
            ended: false,
        })
    }

    /// Records the end of a network operation: failed when `error` is given (even if empty).
    ///
    /// # Errors
    /// [`TelemetryError::UnknownTask`] if no operation with this id is in flight.
    pub fn end_operation(
        &self,
        task_id: &str,
        bytes_sent: u64,
        bytes_received: u64,
        error: Option<&str>,
    ) -> Result<(), TelemetryError> {
        let mut end = OperationEnd {
            now: self.store.mono_now(),
            bytes_sent,
            bytes_received,
            error: error.map(cut_error),
        };
        self.store.finish(task_id, |record| end.fill(record))
    }

    /// The operation with this id: the one in flight, or else the newest retained one.
    pub fn get_metrics(&self, task_id: &str) -> Option<NetworkMetrics> {
        self.store.get(task_id, NetworkRecord::to_public)
    }

    /// Every retained operation, in flight and ended, in the order they started.
    pub fn all_metrics(&self) -> Vec<NetworkMetrics> {
        self.store.select(|r, names| Some(r.to_public(names)))
    }

    /// The retained failed operations, by task id (the newest, if an id was reused).
    pub fn get_failed_operations(&self) -> BTreeMap<String, NetworkMetrics> {
        self.by_task_id(|r| r.error.is_some())
    }

    /// The retained ended operations that took strictly longer than `threshold`, by task id.
    pub fn get_slow_operations(&self, threshold: Duration) -> BTreeMap<String, NetworkMetrics> {
        let threshold = crate::record::nanos(threshold);
        self.by_task_id(|r| r.ended && r.duration_ns > threshold)
    }

    fn by_task_id(
        &self,
        keep: impl Fn(&NetworkRecord) -> bool,
    ) -> BTreeMap<String, NetworkMetrics> {
        // `select` lists in start order, so a reused id ends up mapped to its newest run.
        self.store
            .select(|r, names| keep(r).then(|| r.to_public(names)))
            .into_iter()
            .map(|m| (m.task_id.clone(), m))
            .collect()
    }

    /// Exact counts and byte totals, evicted operations included.
    pub fn counts(&self) -> NetworkCounts {
        let (totals, in_flight) = self.store.totals_and_in_flight(|_| {});
        let in_flight = in_flight as u64;
        NetworkCounts {
            total: totals.succeeded + totals.failed + in_flight,
            in_flight,
            ..totals
        }
    }

    /// Every retained operation as a pretty-printed JSON array, in the order they started.
    pub fn to_json(&self) -> String {
        crate::report::to_json(&self.all_metrics())
    }

    /// Starts an operation and returns a guard that counts bytes and ends it: explicitly, or
    /// when dropped (succeeded, or failed with [`PANICKED_ERROR`] if the thread is panicking).
    ///
    /// ```
    /// use pipeline_telemetry::NetworkTelemetry;
    /// let net = NetworkTelemetry::new();
    /// {
    ///     let mut call = net.track("q-1", "db.internal", 5432, Some("query"))?;
    ///     call.sent(64);
    ///     call.received(1024);
    /// }
    /// let op = net.get_metrics("q-1").unwrap();
    /// assert_eq!((op.bytes_sent, op.bytes_received, op.error), (64, 1024, None));
    /// # Ok::<(), pipeline_telemetry::TelemetryError>(())
    /// ```
    ///
    /// # Errors
    /// As [`start_operation`](Self::start_operation).
    pub fn track(
        &self,
        task_id: &str,
        host: &str,
        port: u16,
        operation: Option<&str>,
    ) -> Result<NetworkGuard<'_>, TelemetryError> {
        self.start_operation(task_id, host, port, operation)?;
        Ok(NetworkGuard {
            telemetry: self,
            task_id: TaskId::from(task_id),
            bytes_sent: 0,
            bytes_received: 0,
            ended: false,
        })
    }

    /// Attaches a publisher; it receives every operation that ends from now on.
    ///
    /// # Errors
    /// [`TelemetryError::WorkerSpawn`] if its delivery thread cannot be started.
    pub fn add_publisher(
        &self,
        publisher: Box<dyn MetricsPublisher>,
    ) -> Result<(), TelemetryError> {
        self.store.dispatcher().add(publisher)
    }

    /// Waits until every operation ended before this call has reached the publishers and they
    /// have flushed, or until `timeout` passes.
    ///
    /// # Errors
    /// What the publishers returned, or [`PublishError::DeadlineExceeded`].
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.store.dispatcher().flush(Instant::now() + timeout)
    }

    /// Health figures of each attached publisher.
    pub fn publisher_stats(&self) -> Vec<PublisherStats> {
        self.store.dispatcher().stats()
    }

    /// How many ended operations are retained for queries.
    pub fn retained_len(&self) -> usize {
        self.store.retained_len()
    }

    /// Forgets every operation and total; publishers stay attached.
    pub fn clear(&self) {
        self.store.clear();
    }
}

/// Counts bytes and ends its operation when dropped unless ended already. Made by
/// [`NetworkTelemetry::track`].
#[derive(Debug)]
#[must_use = "dropping the guard ends the operation at once"]
pub struct NetworkGuard<'a> {
    telemetry: &'a NetworkTelemetry,
    /// Inline up to 22 bytes: a guard for a short id allocates nothing.
    task_id: TaskId,
    bytes_sent: u64,
    bytes_received: u64,
    ended: bool,
}

impl NetworkGuard<'_> {
    /// The task id of the operation.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Adds `bytes` to the bytes sent.
    pub fn sent(&mut self, bytes: u64) {
        self.bytes_sent = self.bytes_sent.saturating_add(bytes);
    }

    /// Adds `bytes` to the bytes received.
    pub fn received(&mut self, bytes: u64) {
        self.bytes_received = self.bytes_received.saturating_add(bytes);
    }

    /// Ends the operation as failed with `error`, with the bytes counted so far.
    ///
    /// # Errors
    /// [`TelemetryError::UnknownTask`] if the operation was ended by other means.
    pub fn fail(mut self, error: &str) -> Result<(), TelemetryError> {
        self.end(Some(error))
    }

    /// Ends the operation as succeeded, with the bytes counted so far.
    ///
    /// # Errors
    /// As [`fail`](Self::fail).
    pub fn complete(mut self) -> Result<(), TelemetryError> {
        self.end(None)
    }

    fn end(&mut self, error: Option<&str>) -> Result<(), TelemetryError> {
        self.ended = true;
        self.telemetry
            .end_operation(&self.task_id, self.bytes_sent, self.bytes_received, error)
    }
}

impl Drop for NetworkGuard<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let error = std::thread::panicking().then_some(PANICKED_ERROR);
            let _ = self.end(error);
        }
    }
}

impl Record for NetworkRecord {
    type Totals = NetworkCounts;

    #[inline]
    fn task_id(&self) -> &TaskId {
        &self.task_id
    }

    fn key_hash(&self) -> u32 {
        self.key_hash
    }

    fn start_mono(&self) -> u64 {
        self.start_mono
    }

    fn end_mono(&self) -> u64 {
        self.start_mono + self.duration_ns
    }

    #[cfg(feature = "series")]
    type Slot = crate::series::OperationSlot;

    #[cfg(feature = "series")]
    // Kept out of line, as `EventRecord`'s (see there).
    #[inline(never)]
    fn aggregate(
        &self,
        series: &crate::series::PipelineSeries,
        cache: &mut crate::series::SlotCache<Self::Slot>,
        names: &crate::store::Interner,
    ) {
        let figures = crate::series::OperationFigures {
            latency_ns: self.duration_ns,
            sent: self.bytes_sent,
            received: self.bytes_received,
            failed: self.error.is_some(),
        };
        let operation = &self.operation;
        series.record_network_at(cache, operation.id(), operation.as_str(names), figures);
    }

    fn batch(names: Names, records: Run<Self>) -> Batch {
        Batch::Network(names, records)
    }

    fn account(totals: &mut NetworkCounts, finished: &Self) {
        if finished.error.is_some() {
            totals.failed += 1;
        } else {
            totals.succeeded += 1;
        }
        totals.bytes_sent = totals.bytes_sent.saturating_add(finished.bytes_sent);
        totals.bytes_received = totals
            .bytes_received
            .saturating_add(finished.bytes_received);
    }

    fn merge(into: &mut NetworkCounts, from: &NetworkCounts) {
        into.succeeded += from.succeeded;
        into.failed += from.failed;
        into.bytes_sent = into.bytes_sent.saturating_add(from.bytes_sent);
        into.bytes_received = into.bytes_received.saturating_add(from.bytes_received);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_is_strictly_greater_and_failed_is_keyed_by_id() {
        let net = NetworkTelemetry::new();
        net.start_operation("fast", "h", 1, None).unwrap();
        net.end_operation("fast", 1, 2, None).unwrap();
        net.start_operation("bad", "h", 1, Some("connect")).unwrap();
        net.end_operation("bad", 0, 0, Some("refused")).unwrap();
        assert!(net.get_slow_operations(Duration::from_secs(1)).is_empty());
        assert_eq!(net.get_slow_operations(Duration::ZERO).len(), 2);
        let failed = net.get_failed_operations();
        assert_eq!(failed.keys().collect::<Vec<_>>(), ["bad"]);
        assert_eq!(failed["bad"].operation, "connect");
        let counts = net.counts();
        assert_eq!(
            (counts.total, counts.failed, counts.bytes_received),
            (2, 1, 2)
        );
    }

    #[test]
    fn a_guard_counts_bytes_and_fails_on_panic() {
        let net = NetworkTelemetry::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut call = net.track("c", "h", 80, None).unwrap();
            call.sent(5);
            panic!("lost connection");
        }));
        assert!(result.is_err());
        let op = net.get_metrics("c").unwrap();
        assert_eq!(op.bytes_sent, 5);
        assert_eq!(op.error.as_deref(), Some(PANICKED_ERROR));
        let mut ok = net.track("d", "h", 80, None).unwrap();
        ok.received(7);
        ok.complete().unwrap();
        assert_eq!(net.get_metrics("d").unwrap().bytes_received, 7);
    }

    #[test]
    fn unknown_and_duplicate_ids_are_errors() {
        let net = NetworkTelemetry::new();
        assert!(matches!(
            net.end_operation("x", 0, 0, None),
            Err(TelemetryError::UnknownTask { .. })
        ));
        net.start_operation("x", "h", 1, None).unwrap();
        assert!(matches!(
            net.start_operation("x", "other", 2, None),
            Err(TelemetryError::AlreadyInFlight { .. })
        ));
        assert_eq!(net.get_metrics("x").unwrap().host, "h");
    }
}
