//! The set of publishers attached to a logger (and the network telemetry sharing it).
//!
//! Recording threads read the set on every finished record, and it changes almost never. So
//! that reading costs no shared write (which would bounce a cache line between cores), each
//! store shard keeps its own [`PublisherCache`] and refreshes it only when the set's epoch
//! moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::worker::{Payload, Worker};
use super::{MetricsPublisher, PublishError, PublisherStats};
use crate::error::TelemetryError;

type WorkerSet = Arc<[Arc<Worker>]>;

/// The publishers of one logger, each behind its own delivery worker.
pub(crate) struct Dispatcher {
    epoch: AtomicU64,
    workers: Mutex<WorkerSet>,
    /// Drops counted by publishers that have since been removed.
    retired_dropped: AtomicU64,
    queue_capacity: usize,
    shutdown_timeout: Duration,
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
            retired_dropped: AtomicU64::new(0),
            queue_capacity,
            shutdown_timeout,
        }
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

    fn spawn(&self, publisher: Box<dyn MetricsPublisher>) -> Result<Arc<Worker>, TelemetryError> {
        Worker::spawn(publisher, self.queue_capacity, self.shutdown_timeout).map(Arc::new)
    }

    /// Attaches one more publisher.
    pub(crate) fn add(&self, publisher: Box<dyn MetricsPublisher>) -> Result<(), TelemetryError> {
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
        &self,
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
            self.retired_dropped
                .fetch_add(worker.dropped(), Ordering::Relaxed);
        }
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
        for worker in old.iter() {
            self.retired_dropped
                .fetch_add(worker.dropped(), Ordering::Relaxed);
        }
        PublishError::collect(errors)
    }

    pub(crate) fn stats(&self) -> Vec<PublisherStats> {
        self.current().iter().map(|w| w.stats()).collect()
    }

    /// Records dropped for any publisher, current or removed, because its queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.retired_dropped.load(Ordering::Relaxed)
            + self.current().iter().map(|w| w.dropped()).sum::<u64>()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let old = self.install(Arc::from(Vec::new()));
        self.retire(&old);
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
