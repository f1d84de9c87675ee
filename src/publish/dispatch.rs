//! The set of publishers attached to a logger (and the network telemetry sharing it).
//!
//! Recording threads read the set on every finished record, and it changes almost never. So
//! that reading costs no shared write (which would bounce a cache line between cores), each
//! store shard keeps its own [`PublisherCache`] and refreshes it only when the set's epoch
//! moves. The cache also hands the shard's finished records to the delivery threads a segment
//! at a time (see [`Ring`]): one queue operation per segment, and no copy of the records.
//!
//! [`Ring`]: crate::store::Ring

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::worker::{Run, Worker};
use super::{MetricsPublisher, PublishError, PublisherStats};
use crate::error::TelemetryError;
use crate::store::{Interner, Record, Records, Ring, Segment};

/// Records aggregated in place between two updates of the publisher's delivered count.
#[cfg(feature = "series")]
const COUNT_EVERY: u64 = 256;
/// How long (monotonic nanoseconds) a finished record may wait in a shard's open segment
/// before the recording thread hands a copy over itself (the delivery threads collect it
/// sooner when they are awake, see `COLLECT_AGE_NS` in the store).
const BATCH_AGE_NS: u64 = 1_000_000;

type WorkerSet = Arc<[Arc<Worker>]>;

/// The publishers of one logger, each behind its own delivery worker.
pub(crate) struct Dispatcher {
    epoch: AtomicU64,
    workers: Mutex<WorkerSet>,
    /// Publishers removed since: kept (their threads have ended) so that records a shard
    /// still offers them while its cached set is stale are counted as dropped.
    retired: Mutex<Vec<Arc<Worker>>>,
    queue_capacity: usize,
    shutdown_timeout: Duration,
    /// The stores whose in-flight counts publishers may read; weak, as the stores own us.
    events: Mutex<Option<Weak<dyn InFlight>>>,
    network: Mutex<Option<Weak<dyn InFlight>>>,
}

/// A store whose in-flight records can be counted and whose gathered batches can be handed
/// over.
pub(crate) trait InFlight: Send + Sync {
    fn in_flight_len(&self) -> usize;
    /// Hands every shard's gathered records to the publishers; without `wait`, skips shards
    /// that are busy (they hand theirs over themselves).
    fn hand_over(&self, wait: bool);
}

/// Which kind of record a store holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreKind {
    Events,
    Network,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("publishers", &self.current())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub(crate) fn new(queue_capacity: usize, shutdown_timeout: Duration) -> Self {
        Dispatcher {
            epoch: AtomicU64::new(0),
            workers: Mutex::new(Arc::from(Vec::new())),
            retired: Mutex::new(Vec::new()),
            queue_capacity,
            shutdown_timeout,
            events: Mutex::new(None),
            network: Mutex::new(None),
        }
    }

    /// Lets publishers count the in-flight records of `store`.
    pub(crate) fn register_store(&self, kind: StoreKind, store: Weak<dyn InFlight>) {
        *self.source(kind).lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    fn source(&self, kind: StoreKind) -> &Mutex<Option<Weak<dyn InFlight>>> {
        match kind {
            StoreKind::Events => &self.events,
            StoreKind::Network => &self.network,
        }
    }

    /// The registered store of this kind, if it is still alive.
    fn store(&self, kind: StoreKind) -> Option<Arc<dyn InFlight>> {
        let source = self.source(kind).lock().unwrap_or_else(|p| p.into_inner());
        source.as_ref().and_then(Weak::upgrade)
    }

    /// Hands the records the stores' shards have gathered to the publishers.
    pub(crate) fn hand_over(&self, wait: bool) {
        for kind in [StoreKind::Events, StoreKind::Network] {
            if let Some(store) = self.store(kind) {
                store.hand_over(wait);
            }
        }
    }

    fn in_flight(&self, kind: StoreKind) -> u64 {
        self.store(kind)
            .map_or(0, |store| store.in_flight_len() as u64)
    }

    fn current(&self) -> WorkerSet {
        Arc::clone(&self.workers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn install(&self, set: WorkerSet) -> WorkerSet {
        let mut guard = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *guard, set);
        self.epoch.fetch_add(1, Ordering::Release);
        old
    }

    fn spawn(
        self: &Arc<Self>,
        publisher: Box<dyn MetricsPublisher>,
    ) -> Result<Arc<Worker>, TelemetryError> {
        publisher.on_attach(PipelineHealth {
            dispatcher: Arc::downgrade(self),
        });
        let dispatcher = Arc::downgrade(self);
        // Run by the delivery thread when it runs out of work: what idle shards gathered.
        let collect = move || {
            if let Some(dispatcher) = dispatcher.upgrade() {
                dispatcher.hand_over(false);
            }
        };
        Worker::spawn(
            publisher,
            self.queue_capacity,
            self.shutdown_timeout,
            Box::new(collect),
        )
        .map(Arc::new)
    }

    /// Attaches one more publisher.
    pub(crate) fn add(
        self: &Arc<Self>,
        publisher: Box<dyn MetricsPublisher>,
    ) -> Result<(), TelemetryError> {
        let worker = self.spawn(publisher)?;
        let mut guard = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut set = guard.to_vec();
        set.push(worker);
        *guard = Arc::from(set);
        self.epoch.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Replaces every publisher; the previous ones deliver what they have queued and shut down
    /// (each within the shutdown timeout).
    pub(crate) fn replace(
        self: &Arc<Self>,
        publishers: Vec<Box<dyn MetricsPublisher>>,
    ) -> Result<(), TelemetryError> {
        let workers = publishers
            .into_iter()
            .map(|p| self.spawn(p))
            .collect::<Result<Vec<_>, _>>()?;
        // What the shards gathered goes to the publishers it was gathered for.
        self.hand_over(true);
        let old = self.install(Arc::from(workers));
        self.retire(&old);
        Ok(())
    }

    fn retire(&self, old: &[Arc<Worker>]) {
        let deadline = Instant::now() + self.shutdown_timeout;
        for worker in old {
            if let Err(e) = worker.shutdown(deadline) {
                tracing::warn!(error = %e, "publisher did not shut down cleanly");
            }
        }
        self.remember(old);
    }

    fn remember(&self, old: &[Arc<Worker>]) {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(old.iter().cloned());
    }

    pub(crate) fn flush(&self, deadline: Instant) -> Result<(), PublishError> {
        self.hand_over(true);
        let errors = self
            .current()
            .iter()
            .filter_map(|w| w.flush(deadline).err())
            .collect();
        PublishError::collect(errors)
    }

    /// Shuts every publisher down and detaches them.
    pub(crate) fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        self.hand_over(true);
        let old = self.install(Arc::from(Vec::new()));
        let errors = old
            .iter()
            .filter_map(|w| w.shutdown(deadline).err())
            .collect();
        self.remember(&old);
        PublishError::collect(errors)
    }

    pub(crate) fn stats(&self) -> Vec<PublisherStats> {
        self.current().iter().map(|w| w.stats()).collect()
    }

    /// Records dropped for any publisher, current or removed, because its queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired
            .iter()
            .chain(self.current().iter())
            .map(|w| w.dropped())
            .sum()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let old = self.install(Arc::from(Vec::new()));
        self.retire(&old);
    }
}

/// What a publisher can read about the pipeline it is attached to: the health of every
/// publisher and the records in flight. Handed to [`MetricsPublisher::on_attach`]; reading it
/// after the pipeline is gone gives empty figures.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use pipeline_telemetry::{MetricsPublisher, Telemetry, publish::PipelineHealth};
///
/// #[derive(Default)]
/// struct Watcher(Mutex<Option<PipelineHealth>>);
/// impl MetricsPublisher for Watcher {
///     fn on_attach(&self, health: PipelineHealth) {
///         *self.0.lock().unwrap() = Some(health);
///     }
/// }
///
/// let telemetry = Telemetry::new();
/// let watcher = Arc::new(Watcher::default());
/// telemetry.add_publisher(Box::new(watcher.clone()))?;
/// telemetry.events.start_event("e", "t", None)?;
/// let health = watcher.0.lock().unwrap().clone().unwrap();
/// assert_eq!(health.events_in_flight(), 1);
/// assert_eq!(health.publisher_stats().len(), 1);
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PipelineHealth {
    dispatcher: Weak<Dispatcher>,
}

impl PipelineHealth {
    /// Health of no pipeline: every figure zero or empty.
    #[cfg(all(test, feature = "series"))]
    pub(crate) fn detached() -> Self {
        PipelineHealth {
            dispatcher: Weak::new(),
        }
    }

    fn read<T: Default>(&self, f: impl FnOnce(&Dispatcher) -> T) -> T {
        self.dispatcher.upgrade().map(|d| f(&d)).unwrap_or_default()
    }

    /// Health figures of every publisher attached to the pipeline.
    pub fn publisher_stats(&self) -> Vec<PublisherStats> {
        self.read(Dispatcher::stats)
    }

    /// Records dropped for any publisher because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.read(Dispatcher::dropped)
    }

    /// Events started and not yet ended.
    pub fn events_in_flight(&self) -> u64 {
        self.read(|d| d.in_flight(StoreKind::Events))
    }

    /// Network operations started and not yet ended.
    pub fn network_in_flight(&self) -> u64 {
        self.read(|d| d.in_flight(StoreKind::Network))
    }
}

/// A shard's copy of the publisher set, refreshed when the dispatcher's epoch moves, and how
/// far the shard's finished records have been handed to its queued publishers.
#[derive(Debug)]
pub(crate) struct PublisherCache<R: Record> {
    epoch: u64,
    /// The publishers records are queued to.
    queued: Vec<Arc<Worker>>,
    /// The publishers whose aggregates this shard updates itself.
    #[cfg(feature = "series")]
    in_place: Vec<InPlaceSlots<R>>,
    /// Number (in the shard's ring) of the first record not yet handed to `queued`.
    handed: u64,
    /// Monotonic end of that record, once it is in the ring.
    unhanded_since: u64,
    /// The dispatcher's queue capacity: no batch is larger.
    queue_capacity: usize,
    /// The kind of record handed over (used by `in_place` too, with the `series` feature).
    kind: PhantomData<fn(&R)>,
}

/// A publisher's in-memory aggregates as one shard updates them.
#[cfg(feature = "series")]
#[derive(Debug)]
struct InPlaceSlots<R: Record> {
    worker: Arc<Worker>,
    series: Arc<crate::series::PipelineSeries>,
    slots: crate::series::SlotCache<R::Slot>,
    /// Records aggregated and not yet counted as delivered: counted in batches, so recording
    /// threads do not take turns on the publisher's counter.
    uncounted: u64,
}

#[cfg(feature = "series")]
impl<R: Record> InPlaceSlots<R> {
    fn count(&mut self) {
        if self.uncounted > 0 {
            self.worker
                .count_delivered(std::mem::take(&mut self.uncounted));
        }
    }
}

impl<R: Record> Default for PublisherCache<R> {
    fn default() -> Self {
        PublisherCache {
            epoch: 0,
            queued: Vec::new(),
            #[cfg(feature = "series")]
            in_place: Vec::new(),
            handed: 0,
            unhanded_since: 0,
            queue_capacity: 1,
            kind: PhantomData,
        }
    }
}

impl<R: Record> PublisherCache<R> {
    /// Offers a record about to join `ring` to the publishers that keep their series in
    /// memory: aggregated here, from where it is now. Before [`PublisherCache::offer`] (after
    /// the record joins the ring) because the record's new place was written a moment ago in
    /// wide copies, and reading its fields back at once would wait for those stores.
    ///
    /// A change of the publisher set shows here first: what the ring holds and was not handed
    /// over goes to the publishers it finished for, this record and later ones to the new set.
    // Always inlined, as `Shard::keep` is and for the same reason: `Store::finish` has two
    // paths to it.
    #[inline(always)]
    pub(crate) fn aggregate(
        &mut self,
        dispatcher: &Dispatcher,
        names: &Interner,
        ring: &Ring<R>,
        record: &R,
    ) {
        let epoch = dispatcher.epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            self.refresh(dispatcher, names, ring, epoch);
        }
        #[cfg(feature = "series")]
        for publisher in &mut self.in_place {
            record.aggregate(&publisher.series, &mut publisher.slots, names);
            publisher.uncounted += 1;
            if publisher.uncounted >= COUNT_EVERY {
                publisher.count();
            }
        }
        #[cfg(not(feature = "series"))]
        let _ = record;
    }

    /// Offers the record just added to `ring`, which ended at `ended` (monotonic), to the
    /// queued publishers: they get the segment it `sealed`, if it sealed one, and otherwise
    /// records that waited a millisecond, as copies. `names` resolves the records' names.
    #[inline]
    pub(crate) fn offer(&mut self, names: &Interner, ring: &Ring<R>, sealed: bool, ended: u64) {
        if self.queued.is_empty() {
            return;
        }
        if sealed {
            self.hand_sealed(names, ring);
        }
        if self.handed + 1 == ring.end() {
            self.unhanded_since = ended;
        } else if ended.saturating_sub(self.unhanded_since) > BATCH_AGE_NS {
            self.collect(names, ring, None);
        }
    }

    /// Takes the dispatcher's current set; what `ring` holds and was not handed over goes to
    /// the publishers it finished for, the next record to join it and later ones to the new
    /// set.
    #[cold]
    fn refresh(&mut self, dispatcher: &Dispatcher, names: &Interner, ring: &Ring<R>, epoch: u64) {
        let next = ring.end();
        self.hand_copies(names, ring, next);
        self.handed = next;
        #[cfg(feature = "series")]
        for publisher in &mut self.in_place {
            publisher.count();
        }
        self.queued.clear();
        #[cfg(feature = "series")]
        self.in_place.clear();
        for worker in dispatcher.current().iter() {
            #[cfg(feature = "series")]
            if let Some(in_place) = worker.in_place() {
                self.in_place.push(InPlaceSlots {
                    worker: Arc::clone(worker),
                    series: Arc::clone(&in_place.series),
                    slots: Default::default(),
                    uncounted: 0,
                });
                continue;
            }
            self.queued.push(Arc::clone(worker));
        }
        self.queue_capacity = dispatcher.queue_capacity;
        self.epoch = epoch;
    }

    /// Hands the segment the ring just sealed to the queued publishers (the part of it not
    /// handed over yet).
    fn hand_sealed(&mut self, names: &Interner, ring: &Ring<R>) {
        if self.queued.is_empty() {
            return;
        }
        let Some((first, segment)) = ring.newest_sealed() else {
            return;
        };
        let end = first + segment.len() as u64;
        let from = self.handed.clamp(first, end);
        let part = (from - first) as usize..segment.len();
        self.handed = end;
        if part.is_empty() {
            return;
        }
        // A short part is copied rather than shared: a batch holding a whole segment for a few
        // records would keep the segment alive past its eviction for little.
        if part.len() >= segment.len() / 4 {
            self.hand(names, Arc::clone(segment), part);
        } else {
            self.hand_copy_of(names, segment.range(part));
        }
    }

    /// Hands copies of the records not handed over yet to the queued publishers, if the
    /// oldest of them ended before `ended_before` (`None`: whatever their age); and counts
    /// what was aggregated in place. Records that sealed segments were handed over already,
    /// so this copies at most a segment's worth.
    pub(crate) fn collect(&mut self, names: &Interner, ring: &Ring<R>, ended_before: Option<u64>) {
        #[cfg(feature = "series")]
        for publisher in &mut self.in_place {
            publisher.count();
        }
        let end = ring.end();
        if self.queued.is_empty() || self.handed >= end {
            return;
        }
        if ended_before.is_some_and(|before| self.unhanded_since >= before) {
            return;
        }
        self.hand_copies(names, ring, end);
        self.handed = end;
    }

    /// Hands copies of the records from `handed` up to (not including) `until`.
    fn hand_copies(&mut self, names: &Interner, ring: &Ring<R>, until: u64) {
        if self.queued.is_empty() || self.handed >= until {
            return;
        }
        let records = ring.open_from(self.handed);
        let count = records.len().min((until - self.handed) as usize);
        if count > 0 {
            self.hand_copy_of(names, records.take(count));
        }
    }

    /// Hands a copy of `records` to every queued publisher.
    fn hand_copy_of<'r>(&self, names: &Interner, records: impl Iterator<Item = &'r R>) {
        let copy: Records<R> = records.cloned().collect();
        let len = copy.len();
        self.hand(names, Arc::new(copy), 0..len);
    }

    /// Hands `part` of `records` to every queued publisher, in batches no larger than the
    /// queue.
    fn hand(&self, names: &Interner, records: Segment<R>, part: std::ops::Range<usize>) {
        let most = self.queue_capacity.max(1);
        let mut from = part.start;
        while from < part.end {
            let to = part.end.min(from + most);
            let batch = R::batch(
                Arc::clone(names.names()),
                Run::new(Arc::clone(&records), from..to),
            );
            if let Some((last, others)) = self.queued.split_last() {
                for worker in others {
                    worker.offer_batch(batch.clone());
                }
                last.offer_batch(batch);
            }
            from = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::{EventMetrics, MetricsPublisher, PublishError, TelemetryLogger};

    #[derive(Default)]
    struct Counting(Arc<AtomicU64>);

    impl MetricsPublisher for Counting {
        fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn logger_counting() -> (TelemetryLogger, Arc<AtomicU64>) {
        let logger = TelemetryLogger::new();
        let count = Arc::new(AtomicU64::new(0));
        logger
            .add_publisher(Box::new(Counting(Arc::clone(&count))))
            .unwrap();
        (logger, count)
    }

    fn record(logger: &TelemetryLogger, events: usize) {
        for i in 0..events {
            logger.start_event("e", &format!("t{i}"), None).unwrap();
            logger.end_event(&format!("t{i}"), None).unwrap();
        }
    }

    #[test]
    fn a_part_batch_of_an_idle_shard_reaches_the_publisher_without_a_flush() {
        let (logger, count) = logger_counting();
        record(&logger, 3);
        // Fewer records than a batch, and no more coming: the delivery thread collects them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn gathered_records_are_delivered_when_the_logger_is_cleared_or_dropped() {
        let (logger, count) = logger_counting();
        record(&logger, 5);
        logger.clear();
        record(&logger, 7);
        drop(logger);
        assert_eq!(count.load(Ordering::SeqCst), 12);
    }

    /// Collects the task ids it is given.
    struct Ids(Arc<std::sync::Mutex<Vec<String>>>);

    impl MetricsPublisher for Ids {
        fn publish_event(&self, event: crate::EventRef<'_>) -> Result<(), PublishError> {
            self.0.lock().unwrap().push(event.task_id.to_owned());
            Ok(())
        }
    }

    #[test]
    fn every_record_reaches_a_queued_publisher_exactly_once_whatever_the_retention() {
        // Retentions below, around and above a segment's size; a pause makes the waiting
        // records go over as copies (age rule and collection), the rest go in whole segments.
        for retention in [0, 3, 20, 1_000, 100_000] {
            let logger = TelemetryLogger::with_config(
                &crate::TelemetryConfig::default()
                    .retention(retention)
                    .queue_capacity(1 << 16),
            );
            let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
            logger
                .add_publisher(Box::new(Ids(Arc::clone(&ids))))
                .unwrap();
            for i in 0..3_000 {
                if i == 1_000 || i == 1_010 {
                    std::thread::sleep(Duration::from_millis(3));
                }
                logger.start_event("e", &format!("t{i}"), None).unwrap();
                logger.end_event(&format!("t{i}"), None).unwrap();
            }
            logger.flush(Duration::from_secs(10)).unwrap();
            let mut got = std::mem::take(&mut *ids.lock().unwrap());
            assert_eq!(got.len(), 3_000, "retention {retention}");
            got.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
            let expected: Vec<String> = (0..3_000).map(|i| format!("t{i}")).collect();
            assert_eq!(got, expected, "retention {retention}");
            assert_eq!(logger.publisher_stats()[0].dropped, 0);
        }
    }

    #[test]
    fn a_publisher_added_midway_gets_the_records_that_end_after_it_and_the_first_keeps_all() {
        // Retentions with the change inside an open segment and across sealed ones.
        for retention in [0, 20, 100_000] {
            let logger = TelemetryLogger::with_config(
                &crate::TelemetryConfig::default().retention(retention),
            );
            let (first, second) = (Arc::default(), Arc::default());
            logger
                .add_publisher(Box::new(Ids(Arc::clone(&first))))
                .unwrap();
            let ids = |range: std::ops::Range<u32>| range.map(|i| format!("t{i}"));
            for id in ids(0..700) {
                logger.start_event("e", &id, None).unwrap();
                logger.end_event(&id, None).unwrap();
            }
            // Started before the second publisher, ended after: it goes to both.
            logger.start_event("e", "t700", None).unwrap();
            logger
                .add_publisher(Box::new(Ids(Arc::clone(&second))))
                .unwrap();
            logger.end_event("t700", None).unwrap();
            for id in ids(701..1_000) {
                logger.start_event("e", &id, None).unwrap();
                logger.end_event(&id, None).unwrap();
            }
            logger.flush(Duration::from_secs(10)).unwrap();
            let sorted = |got: &Arc<std::sync::Mutex<Vec<String>>>| {
                let mut got = got.lock().unwrap().clone();
                got.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
                got
            };
            let all: Vec<String> = ids(0..1_000).collect();
            let later: Vec<String> = ids(700..1_000).collect();
            assert_eq!(sorted(&first), all, "retention {retention}");
            assert_eq!(sorted(&second), later, "retention {retention}");
        }
    }
}
