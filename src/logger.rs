//! [`TelemetryLogger`]: records event executions, and [`EventGuard`], its scoped handle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TelemetryConfig;
use crate::error::TelemetryError;
use crate::publish::dispatch::{Dispatcher, StoreKind};
use crate::publish::worker::{Batch, Run};
use crate::publish::{MetricsPublisher, PublishError, PublisherStats};
use crate::record::{cut_error, ErrorText, EventMetrics, EventRecord, Status};
use crate::report::{EventCounts, RetryStats};
use crate::store::{Names, Record, Store, TaskId};

/// The error recorded when an [`EventGuard`] is dropped during a panic.
pub const PANICKED_ERROR: &str = "the event's thread panicked before the event ended";

/// Thread-safe recorder of event executions.
///
/// Each execution is started with an event name and a task id unique among the executions in
/// flight, and ended with or without an error. Ended records go to the attached publishers
/// through bounded queues (recording never waits on a publisher) and are kept for queries up to
/// the configured retention; totals stay exact past it.
///
/// ```
/// use std::time::Duration;
/// use pipeline_telemetry::{Status, TelemetryLogger};
///
/// let logger = TelemetryLogger::new();
/// logger.start_event("resize-images", "job-17", None)?;
/// logger.record_retry("job-17")?;
/// logger.end_event("job-17", Some("disk full"))?;
///
/// let record = logger.get_metrics("job-17").unwrap();
/// assert_eq!(record.status, Status::Failed);
/// assert_eq!(record.retry_count, 1);
/// assert_eq!(logger.failed_events().len(), 1);
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug)]
pub struct TelemetryLogger {
    store: Arc<Store<EventRecord>>,
    pid: u32,
}

impl Default for TelemetryLogger {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`TelemetryLogger::end_event`] writes into its record once the store finds it,
/// borrowed whole by `finish`'s closure (why: [`crate::network`]'s `OperationEnd`).
struct EventEnd {
    now: u64,
    error: Option<ErrorText>,
}

impl EventEnd {
    #[inline(always)]
    fn fill(&mut self, record: &mut EventRecord) {
        record.duration_ns = self.now.saturating_sub(record.start_mono);
        record.status = if self.error.is_some() {
            Status::Failed
        } else {
            Status::Completed
        };
        record.error = self.error.take();
    }
}

impl TelemetryLogger {
    /// A logger with the [default configuration](TelemetryConfig::default) and no publishers.
    pub fn new() -> Self {
        Self::with_config(&TelemetryConfig::default())
    }

    /// A logger with the given configuration and no publishers.
    pub fn with_config(config: &TelemetryConfig) -> Self {
        Self::with_dispatcher(config, config.dispatcher())
    }

    pub(crate) fn with_dispatcher(config: &TelemetryConfig, dispatcher: Arc<Dispatcher>) -> Self {
        TelemetryLogger {
            store: config.store(StoreKind::Events, dispatcher),
            pid: std::process::id(),
        }
    }

    /// Records the start of an event execution. `process_id` defaults to this process's id.
    ///
    /// # Errors
    /// [`TelemetryError::EmptyEventName`] or [`TelemetryError::EmptyTaskId`] for empty input;
    /// [`TelemetryError::AlreadyInFlight`] if `task_id` is started and not yet ended (the first
    /// record is kept).
    pub fn start_event(
        &self,
        event_name: &str,
        task_id: &str,
        process_id: Option<u32>,
    ) -> Result<(), TelemetryError> {
        if event_name.is_empty() {
            return Err(TelemetryError::EmptyEventName);
        }
        if task_id.is_empty() {
            return Err(TelemetryError::EmptyTaskId);
        }
        let process_id = process_id.unwrap_or(self.pid);
        self.store.start(task_id, |start| EventRecord {
            task_id: start.task_id,
            event_name: start.names.get(event_name),
            error: None,
            start_wall_ns: start.start_wall_ns,
            start_mono: start.start_mono,
            duration_ns: 0,
            retry_count: 0,
            process_id,
            key_hash: start.key_hash,
            status: Status::Pending,
        })
    }

    /// Records the end of an event execution: failed when `error` is given (even if empty),
    /// completed otherwise. Error messages longer than
    /// [`MAX_ERROR_BYTES`](crate::record::MAX_ERROR_BYTES) are cut.
    ///
    /// # Errors
    /// [`TelemetryError::UnknownTask`] if no event with this id is in flight, including one
    /// already ended: an event is counted and published once.
    pub fn end_event(&self, task_id: &str, error: Option<&str>) -> Result<(), TelemetryError> {
        let mut end = EventEnd {
            now: self.store.mono_now(),
            error: error.map(cut_error),
        };
        self.store.finish(task_id, |record| end.fill(record))
    }

    /// Records a retry of an in-flight event and returns its retry count so far.
    ///
    /// # Errors
    /// [`TelemetryError::UnknownTask`] if no event with this id is in flight.
    pub fn record_retry(&self, task_id: &str) -> Result<u32, TelemetryError> {
        self.store.update(task_id, |record| {
            record.retry_count = record.retry_count.saturating_add(1);
            record.retry_count
        })
    }

    /// The record of this task: the one in flight, or else the newest retained finished one.
    pub fn get_metrics(&self, task_id: &str) -> Option<EventMetrics> {
        self.store.get(task_id, EventRecord::to_public)
    }

    /// Every retained record, in flight and finished, in the order the events started.
    pub fn all_metrics(&self) -> Vec<EventMetrics> {
        self.store.select(|r, names| Some(r.to_public(names)))
    }

    /// The retained failed events, in the order they started.
    pub fn failed_events(&self) -> Vec<EventMetrics> {
        self.store
            .select(|r, names| (r.status == Status::Failed).then(|| r.to_public(names)))
    }

    /// The retained finished events that ran strictly longer than `threshold`, in the order
    /// they started.
    pub fn slow_events(&self, threshold: Duration) -> Vec<EventMetrics> {
        let threshold = crate::record::nanos(threshold);
        self.store.select(|r, names| {
            (r.status != Status::Pending && r.duration_ns > threshold).then(|| r.to_public(names))
        })
    }

    /// Retry statistics over every event: finished ones (exact, evicted included) and those in
    /// flight.
    pub fn retry_stats(&self) -> RetryStats {
        let mut pending = Vec::new();
        let (mut totals, _) = self
            .store
            .totals_and_in_flight(|r| pending.push(r.retry_count));
        for retry_count in pending {
            totals.count_retries(retry_count);
        }
        RetryStats::from_histogram(totals.total_retries, &totals.by_retry_count())
    }

    /// Exact counts of events: finished (evicted included) and in flight.
    pub fn counts(&self) -> EventCounts {
        let (totals, in_flight) = self.store.totals_and_in_flight(|_| {});
        let in_flight = in_flight as u64;
        EventCounts {
            total: totals.completed + totals.failed + in_flight,
            completed: totals.completed,
            failed: totals.failed,
            in_flight,
        }
    }

    /// Every retained record as a pretty-printed JSON array, in the order the events started.
    pub fn to_json(&self) -> String {
        crate::report::to_json(&self.all_metrics())
    }

    /// Starts an event and returns a guard that ends it: explicitly with
    /// [`complete`](EventGuard::complete) or [`fail`](EventGuard::fail), or when dropped
    /// (completed, or failed with [`PANICKED_ERROR`] if the thread is panicking).
    ///
    /// ```
    /// use pipeline_telemetry::{Status, TelemetryLogger};
    /// let logger = TelemetryLogger::new();
    /// {
    ///     let event = logger.track("upload", "u-1")?;
    ///     event.retry()?;
    /// } // dropped: completed
    /// let record = logger.get_metrics("u-1").unwrap();
    /// assert_eq!((record.status, record.retry_count), (Status::Completed, 1));
    /// # Ok::<(), pipeline_telemetry::TelemetryError>(())
    /// ```
    ///
    /// # Errors
    /// As [`start_event`](Self::start_event).
    pub fn track(&self, event_name: &str, task_id: &str) -> Result<EventGuard<'_>, TelemetryError> {
        self.start_event(event_name, task_id, None)?;
        Ok(EventGuard {
            logger: self,
            task_id: TaskId::from(task_id),
            ended: false,
        })
    }

    /// Attaches a publisher; it receives every event (and, within a
    /// [`Telemetry`](crate::Telemetry), every network operation) that ends from now on.
    ///
    /// # Errors
    /// [`TelemetryError::WorkerSpawn`] if its delivery thread cannot be started.
    pub fn add_publisher(
        &self,
        publisher: Box<dyn MetricsPublisher>,
    ) -> Result<(), TelemetryError> {
        self.store.dispatcher().add(publisher)
    }

    /// Waits until every record ended before this call has been handed to the publishers and
    /// they have flushed, or until `timeout` passes.
    ///
    /// # Errors
    /// What the publishers returned, or [`PublishError::DeadlineExceeded`].
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.store.dispatcher().flush(Instant::now() + timeout)
    }

    /// Delivers what is queued, shuts the publishers down and detaches them, within `timeout`.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn shutdown(&self, timeout: Duration) -> Result<(), PublishError> {
        self.store.dispatcher().shutdown(Instant::now() + timeout)
    }

    /// Health figures of each attached publisher.
    pub fn publisher_stats(&self) -> Vec<PublisherStats> {
        self.store.dispatcher().stats()
    }

    /// Records dropped because a publisher's queue was full, over all publishers.
    pub fn dropped(&self) -> u64 {
        self.store.dispatcher().dropped()
    }

    /// How many finished records are retained for queries.
    pub fn retained_len(&self) -> usize {
        self.store.retained_len()
    }

    /// Forgets every record and total; publishers stay attached.
    pub fn clear(&self) {
        self.store.clear();
    }
}

/// Ends its event when dropped unless ended already. Made by [`TelemetryLogger::track`].
#[derive(Debug)]
#[must_use = "dropping the guard ends the event at once"]
pub struct EventGuard<'a> {
    logger: &'a TelemetryLogger,
    /// Inline up to 22 bytes: a guard for a short id allocates nothing.
    task_id: TaskId,
    ended: bool,
}

impl EventGuard<'_> {
    /// The task id of the event.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Records a retry; returns the retry count so far.
    ///
    /// # Errors
    /// [`TelemetryError::UnknownTask`] if the event was ended by other means (such as
    /// [`TelemetryLogger::end_event`] with the same id).
    pub fn retry(&self) -> Result<u32, TelemetryError> {
        self.logger.record_retry(&self.task_id)
    }

    /// Ends the event as failed with `error`.
    ///
    /// # Errors
    /// As [`retry`](Self::retry).
    pub fn fail(mut self, error: &str) -> Result<(), TelemetryError> {
        self.ended = true;
        self.logger.end_event(&self.task_id, Some(error))
    }

    /// Ends the event as completed.
    ///
    /// # Errors
    /// As [`retry`](Self::retry).
    pub fn complete(mut self) -> Result<(), TelemetryError> {
        self.ended = true;
        self.logger.end_event(&self.task_id, None)
    }
}

impl Drop for EventGuard<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let error = std::thread::panicking().then_some(PANICKED_ERROR);
            // Ended by other means already: nothing left to do.
            let _ = self.logger.end_event(&self.task_id, error);
        }
    }
}

/// Exact totals over finished events.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventTotals {
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) total_retries: u64,
    /// Events per retry count, for the common small counts without a map update.
    few_retries: [u64; FEW_RETRIES],
    /// Events per retry count, for counts of `FEW_RETRIES` and more.
    many_retries: BTreeMap<u32, u64>,
}

const FEW_RETRIES: usize = 8;

impl EventTotals {
    fn count_retries(&mut self, retry_count: u32) {
        self.total_retries += u64::from(retry_count);
        match self.few_retries.get_mut(retry_count as usize) {
            Some(events) => *events += 1,
            None => *self.many_retries.entry(retry_count).or_default() += 1,
        }
    }

    /// Events per retry count, for the counts some event had.
    pub(crate) fn by_retry_count(&self) -> BTreeMap<u32, u64> {
        let few = (0u32..)
            .zip(self.few_retries)
            .filter(|(_, events)| *events > 0);
        few.chain(self.many_retries.iter().map(|(k, v)| (*k, *v)))
            .collect()
    }
}

impl Record for EventRecord {
    type Totals = EventTotals;

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
    type Slot = crate::series::EventSlot;

    #[cfg(feature = "series")]
    // Kept out of line: inlined into the store's finishing code it cost about 10 ns per event
    // (the peers bench's pinned driver, session 9), where `Shard::keep` inlined gained.
    #[inline(never)]
    fn aggregate(
        &self,
        series: &crate::series::PipelineSeries,
        cache: &mut crate::series::SlotCache<Self::Slot>,
        names: &crate::store::Interner,
    ) {
        let figures = crate::series::EventFigures {
            status: self.status,
            duration_ns: self.duration_ns,
            retries: self.retry_count,
        };
        let name = &self.event_name;
        series.record_event_at(cache, name.id(), name.as_str(names), figures);
    }

    fn batch(names: Names, records: Run<Self>) -> Batch {
        Batch::Events(names, records)
    }

    fn account(totals: &mut EventTotals, finished: &Self) {
        match finished.status {
            Status::Failed => totals.failed += 1,
            _ => totals.completed += 1,
        }
        totals.count_retries(finished.retry_count);
    }

    fn merge(into: &mut EventTotals, from: &EventTotals) {
        into.completed += from.completed;
        into.failed += from.failed;
        into.total_retries += from.total_retries;
        for (into, from) in into.few_retries.iter_mut().zip(from.few_retries) {
            *into += from;
        }
        for (count, events) in &from.many_retries {
            *into.many_retries.entry(*count).or_default() += events;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused_and_loses_nothing() {
        let logger = TelemetryLogger::new();
        assert_eq!(
            logger.start_event("", "t", None),
            Err(TelemetryError::EmptyEventName)
        );
        assert_eq!(
            logger.start_event("e", "", None),
            Err(TelemetryError::EmptyTaskId)
        );
        logger.start_event("first", "t", Some(7)).unwrap();
        assert_eq!(
            logger.start_event("second", "t", None),
            Err(TelemetryError::AlreadyInFlight {
                task_id: "t".into()
            })
        );
        assert_eq!(logger.get_metrics("t").unwrap().event_name, "first");
        logger.end_event("t", None).unwrap();
        let again = logger.end_event("t", None).unwrap_err();
        assert!(again.to_string().contains("\"t\""), "{again}");
        assert!(matches!(
            logger.record_retry("nope"),
            Err(TelemetryError::UnknownTask { .. })
        ));
        assert_eq!(logger.counts().completed, 1);
    }

    #[test]
    fn an_empty_error_is_a_failure() {
        let logger = TelemetryLogger::new();
        logger.start_event("e", "t", None).unwrap();
        logger.end_event("t", Some("")).unwrap();
        assert_eq!(logger.get_metrics("t").unwrap().status, Status::Failed);
    }

    #[test]
    fn a_guard_dropped_while_panicking_fails_its_event() {
        let logger = TelemetryLogger::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _event = logger.track("work", "p-1").unwrap();
            panic!("worker crashed");
        }));
        assert!(result.is_err());
        let record = logger.get_metrics("p-1").unwrap();
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.error.as_deref(), Some(PANICKED_ERROR));
    }

    #[test]
    fn guard_fail_and_complete_end_once() {
        let logger = TelemetryLogger::new();
        logger.track("a", "1").unwrap().fail("bad").unwrap();
        logger.track("b", "2").unwrap().complete().unwrap();
        let counts = logger.counts();
        assert_eq!(
            (counts.failed, counts.completed, counts.in_flight),
            (1, 1, 0)
        );
    }

    #[test]
    fn totals_stay_exact_after_eviction() {
        let logger = TelemetryLogger::with_config(&TelemetryConfig::default().retention(2));
        for i in 0..10 {
            let id = i.to_string();
            logger.start_event("e", &id, None).unwrap();
            for _ in 0..(i % 3) {
                logger.record_retry(&id).unwrap();
            }
            logger.end_event(&id, (i % 2 == 0).then_some("x")).unwrap();
        }
        assert_eq!(logger.retained_len(), 2);
        let counts = logger.counts();
        assert_eq!((counts.completed, counts.failed), (5, 5));
        let stats = logger.retry_stats();
        assert_eq!(stats.total_retries, 9); // 0+1+2 three times, plus 0
        assert_eq!(stats.events_with_retries, 6);
        assert_eq!(stats.events_by_retry_count[&0], 4);
    }

    #[test]
    fn durations_are_monotonic_and_end_follows_start() {
        let logger = TelemetryLogger::new();
        logger.start_event("e", "t", None).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        logger.end_event("t", None).unwrap();
        let r = logger.get_metrics("t").unwrap();
        assert!(r.duration() >= Duration::from_millis(2));
        assert_eq!(r.end_time.unwrap(), r.start_time + r.duration());
    }
}
