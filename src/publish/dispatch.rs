//! The set of publishers attached to a logger (and the network telemetry sharing it).
//!
//! Recording threads read the set on every finished record, and it changes almost never. So
//! that reading costs no shared write (which would bounce a cache line between cores), each
//! store shard keeps its own [`PublisherCache`] and refreshes it only when the set's epoch
//! moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::worker::{Payload, Worker};
use super::{MetricsPublisher, PublishError, PublisherStats};
use crate::error::TelemetryError;

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

/// A store whose in-flight records can be counted.
pub(crate) trait InFlight: Send + Sync {
    fn in_flight_len(&self) -> usize;
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

    fn in_flight(&self, kind: StoreKind) -> u64 {
        let source = self.source(kind).lock().unwrap_or_else(|p| p.into_inner());
        source
            .as_ref()
            .and_then(Weak::upgrade)
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
        Worker::spawn(publisher, self.queue_capacity, self.shutdown_timeout).map(Arc::new)
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
        let errors = self
            .current()
            .iter()
            .filter_map(|w| w.flush(deadline).err())
            .collect();
        PublishError::collect(errors)
    }

    /// Shuts every publisher down and detaches them.
    pub(crate) fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
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

/// A shard's copy of the publisher set, refreshed when the dispatcher's epoch moves.
#[derive(Debug)]
pub(crate) struct PublisherCache {
    epoch: u64,
    workers: WorkerSet,
}

impl Default for PublisherCache {
    fn default() -> Self {
        PublisherCache {
            epoch: 0,
            workers: Arc::from(Vec::new()),
        }
    }
}

impl PublisherCache {
    /// Hands a record to every publisher; `make` builds it only if there is one.
    #[inline]
    pub(crate) fn offer(&mut self, dispatcher: &Dispatcher, make: impl FnOnce() -> Payload) {
        let epoch = dispatcher.epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            self.workers = dispatcher.current();
            self.epoch = epoch;
        }
        match &*self.workers {
            [] => {}
            [only] => only.offer(make()),
            many => {
                let payload = make();
                for worker in many {
                    worker.offer(payload.clone());
                }
            }
        }
    }
}
