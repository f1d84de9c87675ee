//! [`TelemetryConfig`]: how much a logger keeps and how it hands records to publishers.

use std::sync::Arc;
use std::time::Duration;

use crate::publish::dispatch::{Dispatcher, InFlight, StoreKind};
use crate::store::{self, Record, Store};

/// Settings shared by [`TelemetryLogger`](crate::TelemetryLogger),
/// [`NetworkTelemetry`](crate::NetworkTelemetry) and [`Telemetry`](crate::Telemetry).
///
/// ```
/// use std::time::Duration;
/// use pipeline_telemetry::{TelemetryConfig, TelemetryLogger};
///
/// let logger = TelemetryLogger::with_config(
///     &TelemetryConfig::default()
///         .retention(10_000)
///         .queue_capacity(4096)
///         .shutdown_timeout(Duration::from_secs(2)),
/// );
/// assert_eq!(logger.retained_len(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub(crate) retention: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) shards: Option<usize>,
    pub(crate) shutdown_timeout: Duration,
}

/// Finished records kept for queries unless configured otherwise.
pub const DEFAULT_RETENTION: usize = 100_000;
/// Records each publisher's queue holds unless configured otherwise.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;
/// How long dropping a logger waits for its publishers unless configured otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            retention: DEFAULT_RETENTION,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            shards: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

impl TelemetryConfig {
    /// How many finished records to keep for queries (default [`DEFAULT_RETENTION`]). Past it
    /// the oldest are evicted; totals (counts, retries, bytes) stay exact. `0` keeps only the
    /// totals.
    ///
    /// The store keeps exactly that many (threads finishing at the same instant may briefly
    /// keep one more each). With a retention of 8,192 or more the store is split into shards
    /// (see [`shards`](Self::shards)): each recording thread keeps its records in a shard of
    /// its own, and a full store evicts the oldest record of the thread's shard, or of another
    /// shard whose oldest is much older (a thread that stopped recording, say), so eviction is
    /// close to oldest-first overall. Below that eviction is strictly oldest-first.
    pub fn retention(mut self, records: usize) -> Self {
        self.retention = records;
        self
    }

    /// How many finished records each publisher's queue holds (default
    /// [`DEFAULT_QUEUE_CAPACITY`], at least 1). When a publisher falls this far behind, further
    /// records are dropped for it and counted rather than making the caller wait. Records reach
    /// the queue in batches of up to 256 (never more than this capacity): each shard keeps its
    /// finished records in segments and hands a full segment over without copying it, and the
    /// records of a segment not yet full follow within about a millisecond (and at every flush).
    /// A queued batch shares its segment with the store, so a publisher that falls behind by
    /// more than the retention keeps those segments alive: at most four times this capacity's
    /// worth of records, as a batch shares a segment only for a quarter of it or more.
    pub fn queue_capacity(mut self, records: usize) -> Self {
        self.queue_capacity = records.max(1);
        self
    }

    /// How many independently locked shards the store uses, rounded down to a power of two
    /// between 1 and 16. By default it is 16 when retention is 0 and otherwise one per 4,096
    /// retained records, up to 16. Threads take the shards in turn, so with as many shards as
    /// recording threads no two threads write the same memory; with one shard they share it.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards.clamp(1, store::MAX_SHARDS));
        self
    }

    /// How long dropping a logger (or replacing its publishers) waits for each publisher to
    /// deliver what it has queued (default [`DEFAULT_SHUTDOWN_TIMEOUT`]).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    pub(crate) fn dispatcher(&self) -> Arc<Dispatcher> {
        Arc::new(Dispatcher::new(self.queue_capacity, self.shutdown_timeout))
    }

    /// A store publishing through `dispatcher`, registered with it so publishers can count
    /// its in-flight records.
    pub(crate) fn store<R: Record>(
        &self,
        kind: StoreKind,
        dispatcher: Arc<Dispatcher>,
    ) -> Arc<Store<R>> {
        let shards = self
            .shards
            .unwrap_or_else(|| store::default_shards(self.retention));
        let store = Arc::new(Store::new(self.retention, shards, Arc::clone(&dispatcher)));
        let weak: std::sync::Weak<dyn InFlight> = Arc::downgrade(&store) as _;
        dispatcher.register_store(kind, weak);
        store
    }
}
