//! The series model shared by the Prometheus and Grafana Cloud publishers.
//!
//! Finished records are aggregated at record time into counters and fixed-bucket histograms —
//! never kept as raw samples — so memory does not depend on how often a scraper or a push
//! comes by. Both exposition encoders (and the remote-write encoder) read the same
//! [`PipelineSeries::snapshot`], so the backends cannot drift apart.
//!
//! Every series of a record hangs off one slot per value of its free-form label (event name or
//! operation). The store's shards aggregate the records they finish themselves, on the
//! recording thread, each keeping the slots it has used by its interned name id
//! ([`SlotCache`]): a known name costs an index, then the slot's atomics — two or three
//! additions for an event, five for a network operation. Records published otherwise find the
//! slot with one hash and a shared read lock on one of 16 shards. Nothing takes a global lock;
//! a write lock is taken only the first time a label value is seen.
//!
//! Each store shard writes its own part of each slot it uses (a [`SlotCache`]), with plain
//! stores rather than atomic additions, so threads recording the same names never write the
//! same cache lines; a reading adds the parts up, and a part goes back into the slot's shared
//! series when its shard lets it go. The price is memory: with the default 14 buckets, about
//! 0.5 KB per event name and 0.2 KB per operation for each thread that records them.
//!
//! The label-value cap bounds memory and exposition size: once a label has
//! `max_label_values` distinct values, further values are folded into [`OTHER`] and counted in
//! `telemetry_label_values_folded_total{label}`.
//!
//! # Families (names before the prefix)
//! | family | kind | labels |
//! | --- | --- | --- |
//! | `event_duration_seconds` | histogram | `event_name`, `status` |
//! | `event_retries_total` | counter | `event_name` |
//! | `network_bytes_total` | counter | `operation`, `direction` (`sent`/`received`) |
//! | `network_latency_seconds` | histogram | `operation` |
//! | `network_operations_total` | counter | `operation`, `status` (`completed`/`failed`) |
//! | `events_in_flight` | gauge | |
//! | `network_operations_in_flight` | gauge | |
//! | `telemetry_records_delivered_total` | counter | `publisher` |
//! | `telemetry_records_dropped_total` | counter | `publisher` |
//! | `telemetry_publish_errors_total` | counter | `publisher` |
//! | `telemetry_publisher_queued_records` | gauge | `publisher` |
//! | `telemetry_label_values_folded_total` | counter | `label` |

// Until a publisher that reads the model is compiled in, nothing uses it.
#![cfg_attr(not(feature = "prometheus"), allow(dead_code, unused_imports))]

mod histogram;
mod labels;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use histogram::Bounds;
pub(crate) use histogram::{check_buckets, HistogramSnapshot, DEFAULT_BUCKETS};
pub(crate) use labels::OTHER;

use crate::publish::PipelineHealth;
use crate::record::{EventRef, NetworkRef, Status};
use histogram::{add_alone, zeroed_cells, Histogram};
use labels::{LabelSlots, Part, Slot};

/// Distinct values per free-form label (event name, operation) unless configured otherwise.
pub(crate) const DEFAULT_MAX_LABEL_VALUES: usize = 1_000;

/// The largest label-value cap accepted.
pub(crate) const MAX_LABEL_VALUES_LIMIT: usize = 1 << 24;

/// What a family measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A monotonic count. The family name has no `_total`; its samples are `<name>_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Bucketed observations: `<name>_bucket{le}`, `<name>_sum`, `<name>_count`.
    Histogram,
}

/// The value of one series at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

/// One series: labels sorted by name, and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesSnapshot {
    pub(crate) labels: Vec<(&'static str, Arc<str>)>,
    pub(crate) value: Value,
}

/// One family: its name (prefixed, without a counter's `_total`), help, kind and series,
/// sorted by label values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FamilySnapshot {
    pub(crate) name: String,
    pub(crate) help: &'static str,
    pub(crate) kind: Kind,
    pub(crate) series: Vec<SeriesSnapshot>,
}

impl FamilySnapshot {
    /// The name of the family's samples other than histogram parts: `<name>_total` for a
    /// counter, the name itself otherwise.
    pub(crate) fn sample_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge | Kind::Histogram => self.name.clone(),
        }
    }

    fn sort(&mut self) {
        self.series.sort_unstable_by(|a, b| {
            a.labels
                .iter()
                .map(|(_, v)| v)
                .cmp(b.labels.iter().map(|(_, v)| v))
        });
    }
}

/// Whether `name` is a valid Prometheus metric name.
pub(crate) fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// An `le` value as the Python client writes it (`0.005`, `1.0`, `10.0`), so queries that name
/// a bucket keep matching, and the scrape and the push store the same series.
pub(crate) fn le_string(bound: f64) -> String {
    format!("{bound:?}")
}

/// The sum of some counters.
fn total<'a>(counters: impl Iterator<Item = &'a AtomicU64>) -> u64 {
    counters.fold(0, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
}

/// Adds `n` to a counter cell that other threads may add to as well.
#[inline]
fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// How a [`PipelineSeries`] names and buckets its families.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesConfig {
    /// Put before every family name; empty, or ending in `_`.
    pub(crate) prefix: String,
    /// Histogram bucket bounds in seconds, checked with [`check_buckets`].
    pub(crate) buckets: Arc<[f64]>,
    /// Distinct values per free-form label before folding into [`OTHER`].
    pub(crate) max_label_values: usize,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        SeriesConfig {
            prefix: String::new(),
            buckets: Arc::from(&DEFAULT_BUCKETS[..]),
            max_label_values: DEFAULT_MAX_LABEL_VALUES,
        }
    }
}

/// The `status` label values in label order, and the index of a status among them.
const STATUSES: [&str; 3] = ["completed", "failed", "pending"];

const fn status_index(status: Status) -> usize {
    match status {
        Status::Completed => 0,
        Status::Failed => 1,
        Status::Pending => 2,
    }
}

/// Every series of one event name, in one allocation of cells: the retry counter, then a
/// duration histogram per status (in [`STATUSES`] order). A handle: clones share the cells.
///
/// One allocation so that recording reaches a bucket count in one step from the handle its
/// store shard keeps (a histogram with its own allocation cost one more dependent load per
/// record: 1-2% of the recording thread's time with the Prometheus publisher attached).
#[derive(Debug, Clone)]
pub(crate) struct EventSlot {
    cells: Arc<[AtomicU64]>,
}

impl EventSlot {
    const RETRIES: usize = 0;
    const FIRST_HISTOGRAM: usize = 1;

    fn new(bounds: &Bounds) -> Self {
        EventSlot {
            cells: zeroed_cells(Self::FIRST_HISTOGRAM + STATUSES.len() * Histogram::cells(bounds)),
        }
    }

    /// The duration histogram of the status at `index` among [`STATUSES`].
    #[inline]
    fn duration(&self, bounds: &Bounds, index: usize) -> Histogram<'_> {
        let width = Histogram::cells(bounds);
        let from = Self::FIRST_HISTOGRAM + index * width;
        Histogram::over(self.cells.get(from..from + width).unwrap_or_default())
    }

    fn retries(&self) -> Option<&AtomicU64> {
        self.cells.get(Self::RETRIES)
    }

    #[inline]
    fn add(&self, bounds: &Bounds, figures: EventFigures) {
        self.duration(bounds, status_index(figures.status))
            .observe(bounds, figures.duration_ns);
        if let Some(retries) = self.retries().filter(|_| figures.retries > 0) {
            add(retries, u64::from(figures.retries));
        }
    }

    /// [`EventSlot::add`] for a part only one thread at a time writes.
    #[inline]
    fn add_alone(&self, bounds: &Bounds, figures: EventFigures) {
        self.duration(bounds, status_index(figures.status))
            .observe_alone(bounds, figures.duration_ns);
        if let Some(retries) = self.retries().filter(|_| figures.retries > 0) {
            add_alone(retries, u64::from(figures.retries));
        }
    }
}

impl Absorb for EventSlot {
    fn absorb(&self, other: &Self) {
        absorb_cells(&self.cells, &other.cells);
    }
}

impl Part for EventSlot {
    fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.cells, &other.cells)
    }
}

/// Adds every cell of `from` into the same cell of `into`: every cell of a slot (count, sum,
/// bucket count) adds up.
fn absorb_cells(into: &[AtomicU64], from: &[AtomicU64]) {
    for (into, from) in into.iter().zip(from) {
        add(into, from.load(Ordering::Relaxed));
    }
}

/// What a finished event adds to its series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventFigures {
    pub(crate) status: Status,
    pub(crate) duration_ns: u64,
    pub(crate) retries: u32,
}

/// What a finished network operation adds to its series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OperationFigures {
    pub(crate) latency_ns: u64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) failed: bool,
}

/// Every series of one network operation, in one allocation of cells (see [`EventSlot`]):
/// bytes sent, bytes received, operations completed, operations failed, then the latency
/// histogram. A handle: clones share the cells.
#[derive(Debug, Clone)]
pub(crate) struct OperationSlot {
    cells: Arc<[AtomicU64]>,
}

impl OperationSlot {
    const SENT: usize = 0;
    const RECEIVED: usize = 1;
    /// Operations completed; the cell after it counts those that failed.
    const COMPLETED: usize = 2;
    const LATENCY: usize = 4;

    fn new(bounds: &Bounds) -> Self {
        OperationSlot {
            cells: zeroed_cells(Self::LATENCY + Histogram::cells(bounds)),
        }
    }

    fn counter(&self, at: usize) -> Option<&AtomicU64> {
        self.cells.get(at)
    }

    /// The count of operations that ended `failed` or not.
    fn operations(&self, failed: bool) -> Option<&AtomicU64> {
        self.counter(Self::COMPLETED + usize::from(failed))
    }

    #[inline]
    fn latency(&self) -> Histogram<'_> {
        Histogram::over(self.cells.get(Self::LATENCY..).unwrap_or_default())
    }

    /// Adds `figures` with `add` for the counters and `observe` for the latency.
    #[inline]
    fn add_with(
        &self,
        figures: OperationFigures,
        add: impl Fn(&AtomicU64, u64),
        observe: impl FnOnce(Histogram<'_>, u64),
    ) {
        let counts = [
            (Self::SENT, figures.sent),
            (Self::RECEIVED, figures.received),
            (Self::COMPLETED + usize::from(figures.failed), 1),
        ];
        for (at, n) in counts {
            if let Some(counter) = self.counter(at) {
                add(counter, n);
            }
        }
        observe(self.latency(), figures.latency_ns);
    }

    #[inline]
    fn add(&self, bounds: &Bounds, figures: OperationFigures) {
        self.add_with(figures, add, |h, ns| h.observe(bounds, ns));
    }

    /// [`OperationSlot::add`] for a part only one thread at a time writes.
    #[inline]
    fn add_alone(&self, bounds: &Bounds, figures: OperationFigures) {
        self.add_with(figures, add_alone, |h, ns| h.observe_alone(bounds, ns));
    }
}

impl Absorb for OperationSlot {
    fn absorb(&self, other: &Self) {
        absorb_cells(&self.cells, &other.cells);
    }
}

impl Part for OperationSlot {
    fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.cells, &other.cells)
    }
}

/// Series values that can take in another's: how a store shard's part of a slot goes back
/// into the slot's shared series when the shard lets it go.
pub(crate) trait Absorb: Part {
    fn absorb(&self, other: &Self);
}

/// One store shard's parts of a [`PipelineSeries`], by the id the shard interned the label
/// value under: found by hash once, then by index. Only this shard writes its parts, so they
/// are updated without atomic additions, and threads recording the same names do not take
/// turns on the same cache lines. Dropped, the cache adds its parts into the shared series.
#[derive(Debug)]
pub(crate) struct SlotCache<S: Absorb> {
    by_id: Vec<Option<CachedPart<S>>>,
}

#[derive(Debug)]
struct CachedPart<S> {
    slot: Arc<Slot<S>>,
    part: S,
    /// The slot is [`OTHER`]'s: each use is counted as a folded value.
    folded: bool,
}

impl<S: Absorb> Default for SlotCache<S> {
    fn default() -> Self {
        SlotCache { by_id: Vec::new() }
    }
}

impl<S: Absorb> Drop for SlotCache<S> {
    fn drop(&mut self) {
        for cached in self.by_id.iter().flatten() {
            cached.slot.retire_part(&cached.part, S::absorb);
        }
    }
}

impl<S: Absorb> SlotCache<S> {
    /// This shard's part of the slot of `value` (interned as `id`) among `slots`; `None` for
    /// a value without an id, which the caller looks up itself.
    #[inline]
    fn get(
        &mut self,
        id: Option<u32>,
        slots: &LabelSlots<S>,
        value: &str,
        make: impl Fn() -> S,
    ) -> Option<&S> {
        let index = id? as usize;
        if self.by_id.get(index).is_none_or(Option::is_none) {
            self.fill(index, slots, value, make);
        }
        let cached = self.by_id.get(index)?.as_ref()?;
        if cached.folded {
            slots.count_folded(1);
        }
        Some(&cached.part)
    }

    #[cold]
    fn fill(&mut self, index: usize, slots: &LabelSlots<S>, value: &str, make: impl Fn() -> S) {
        if self.by_id.len() <= index {
            self.by_id.resize_with(index + 1, || None);
        }
        let (slot, folded) = match slots.slot(value, &make) {
            Some(slot) => (slot, false),
            None => (Arc::clone(slots.other()), true),
        };
        let part = slot.new_part(make);
        self.by_id[index] = Some(CachedPart { slot, part, folded });
    }
}

/// The aggregates of a pipeline's finished events and network operations.
#[derive(Debug)]
pub(crate) struct PipelineSeries {
    config: SeriesConfig,
    /// `config.buckets` in the form the histograms use.
    bounds: Bounds,
    events: LabelSlots<EventSlot>,
    operations: LabelSlots<OperationSlot>,
    /// The pipeline the series come from, once attached: read at each snapshot for the
    /// in-flight and `telemetry_*` families.
    health: RwLock<Option<PipelineHealth>>,
}

impl PipelineSeries {
    pub(crate) fn new(config: SeriesConfig) -> Self {
        let cap = config.max_label_values.clamp(1, MAX_LABEL_VALUES_LIMIT);
        let bounds = Bounds::new(Arc::clone(&config.buckets));
        PipelineSeries {
            events: LabelSlots::new("event_name", cap, EventSlot::new(&bounds)),
            operations: LabelSlots::new("operation", cap, OperationSlot::new(&bounds)),
            bounds,
            config,
            health: RwLock::new(None),
        }
    }

    /// Reads the pipeline's own figures from `health` from now on. Attached to several
    /// pipelines, the latest one is read.
    pub(crate) fn attach(&self, health: PipelineHealth) {
        *self.health.write().unwrap_or_else(|p| p.into_inner()) = Some(health);
    }

    /// Every family at this moment, with the attached pipeline's own figures.
    pub(crate) fn snapshot_attached(&self) -> Vec<FamilySnapshot> {
        let health = self
            .health
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.snapshot(health.as_ref())
    }

    /// Aggregates a finished event: its duration under `{event_name, status}` and its retries
    /// under `{event_name}`. One slot lookup and two or three atomic additions.
    #[inline]
    pub(crate) fn record_event(&self, event: EventRef<'_>) {
        let figures = EventFigures {
            status: event.status,
            duration_ns: crate::record::nanos(event.duration()),
            retries: event.retry_count,
        };
        let bounds = &self.bounds;
        self.events.with(
            event.event_name,
            || EventSlot::new(bounds),
            |slot| slot.add(bounds, figures),
        );
    }

    /// Aggregates a finished network operation: bytes each way, latency, and the operation
    /// itself by status. One slot lookup and five atomic additions.
    #[inline]
    pub(crate) fn record_network(&self, op: NetworkRef<'_>) {
        let figures = OperationFigures {
            latency_ns: crate::record::nanos(op.latency()),
            sent: op.bytes_sent,
            received: op.bytes_received,
            failed: op.is_failed(),
        };
        let bounds = &self.bounds;
        self.operations.with(
            op.operation,
            || OperationSlot::new(bounds),
            |slot| slot.add(bounds, figures),
        );
    }

    /// Aggregates a finished event on the thread that recorded it. `cache` is that thread's
    /// (its store shard's) slots by interned name id, so a known name costs an index rather
    /// than a hash and a lock; `id` is the name's id in the shard's interner, `None` if it has
    /// none.
    #[inline]
    pub(crate) fn record_event_at(
        &self,
        cache: &mut SlotCache<EventSlot>,
        id: Option<u32>,
        name: &str,
        figures: EventFigures,
    ) {
        let bounds = &self.bounds;
        let make = || EventSlot::new(bounds);
        match cache.get(id, &self.events, name, make) {
            Some(part) => part.add_alone(bounds, figures),
            None => self
                .events
                .with(name, make, |slot| slot.add(bounds, figures)),
        }
    }

    /// Aggregates a finished network operation on the thread that recorded it; see
    /// [`PipelineSeries::record_event_at`].
    #[inline]
    pub(crate) fn record_network_at(
        &self,
        cache: &mut SlotCache<OperationSlot>,
        id: Option<u32>,
        operation: &str,
        figures: OperationFigures,
    ) {
        let bounds = &self.bounds;
        let make = || OperationSlot::new(bounds);
        match cache.get(id, &self.operations, operation, make) {
            Some(part) => part.add_alone(bounds, figures),
            None => self
                .operations
                .with(operation, make, |slot| slot.add(bounds, figures)),
        }
    }

    /// Every family at this moment. `health` supplies the pipeline's own figures (in-flight
    /// records, publisher health); without it those families are zero or empty.
    ///
    /// A series appears once something was recorded under its labels: a duration series once
    /// an event ended with that status, an operation count once one ended that way; the retry
    /// and byte counters of a name or operation appear with it, at zero if need be.
    pub(crate) fn snapshot(&self, health: Option<&PipelineHealth>) -> Vec<FamilySnapshot> {
        let mut duration = self.family(
            "event_duration_seconds",
            "Duration of finished events in seconds, by event name and status.",
            Kind::Histogram,
            Vec::new(),
        );
        let mut retries = self.family(
            "event_retries",
            "Retries of finished events, by event name.",
            Kind::Counter,
            Vec::new(),
        );
        self.events.for_each(|name, slot| {
            slot.read(|shared, parts| {
                let all = || std::iter::once(shared).chain(parts);
                for (i, status) in STATUSES.iter().enumerate() {
                    let durations = all().map(|s| s.duration(&self.bounds, i));
                    let h = Histogram::snapshot_of(&self.bounds, durations);
                    if h.count() > 0 {
                        duration.series.push(SeriesSnapshot {
                            labels: vec![
                                ("event_name", Arc::clone(name)),
                                ("status", Arc::from(*status)),
                            ],
                            value: Value::Histogram(h),
                        });
                    }
                }
                retries.series.push(SeriesSnapshot {
                    labels: vec![("event_name", Arc::clone(name))],
                    value: Value::Counter(total(all().filter_map(EventSlot::retries))),
                });
            });
        });

        let mut bytes = self.family(
            "network_bytes",
            "Bytes of finished network operations, by operation and direction.",
            Kind::Counter,
            Vec::new(),
        );
        let mut latency = self.family(
            "network_latency_seconds",
            "Latency of finished network operations in seconds, by operation.",
            Kind::Histogram,
            Vec::new(),
        );
        let mut operations = self.family(
            "network_operations",
            "Finished network operations, by operation and status.",
            Kind::Counter,
            Vec::new(),
        );
        self.operations.for_each(|op, slot| {
            slot.read(|shared, parts| {
                let all = || std::iter::once(shared).chain(parts);
                let counter = |at| total(all().filter_map(|s| s.counter(at)));
                let sent = counter(OperationSlot::SENT);
                let received = counter(OperationSlot::RECEIVED);
                for (direction, n) in [("sent", sent), ("received", received)] {
                    bytes.series.push(SeriesSnapshot {
                        labels: vec![
                            ("direction", Arc::from(direction)),
                            ("operation", Arc::clone(op)),
                        ],
                        value: Value::Counter(n),
                    });
                }
                latency.series.push(SeriesSnapshot {
                    labels: vec![("operation", Arc::clone(op))],
                    value: Value::Histogram(Histogram::snapshot_of(
                        &self.bounds,
                        all().map(OperationSlot::latency),
                    )),
                });
                for (failed, status) in [false, true].into_iter().zip(STATUSES) {
                    let n = total(all().filter_map(|s| s.operations(failed)));
                    if n > 0 {
                        operations.series.push(SeriesSnapshot {
                            labels: vec![
                                ("operation", Arc::clone(op)),
                                ("status", Arc::from(status)),
                            ],
                            value: Value::Counter(n),
                        });
                    }
                }
            });
        });
        let mut families = vec![duration, retries, bytes, latency, operations];
        for family in &mut families {
            family.sort();
        }
        self.health_families(health, &mut families);
        families
    }

    fn health_families(&self, health: Option<&PipelineHealth>, families: &mut Vec<FamilySnapshot>) {
        let (events_in_flight, network_in_flight, publishers) = match health {
            Some(h) => (
                h.events_in_flight(),
                h.network_in_flight(),
                h.publisher_stats(),
            ),
            None => (0, 0, Vec::new()),
        };
        families.push(self.gauge(
            "events_in_flight",
            "Events started and not yet ended.",
            events_in_flight as f64,
        ));
        families.push(self.gauge(
            "network_operations_in_flight",
            "Network operations started and not yet ended.",
            network_in_flight as f64,
        ));

        // Publishers may share a name (or be attached twice): sum their figures by name.
        let mut by_name: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
        for p in &publishers {
            let sums = by_name.entry(p.name.as_str()).or_default();
            sums[0] += p.delivered;
            sums[1] += p.dropped;
            sums[2] += p.errors + p.panics;
            sums[3] += p.queued as u64;
        }
        let per_publisher = |i: usize, gauge: bool| -> Vec<SeriesSnapshot> {
            by_name
                .iter()
                .map(|(name, sums)| SeriesSnapshot {
                    labels: vec![("publisher", Arc::from(*name))],
                    value: if gauge {
                        Value::Gauge(sums[i] as f64)
                    } else {
                        Value::Counter(sums[i])
                    },
                })
                .collect()
        };
        families.push(self.family(
            "telemetry_records_delivered",
            "Records each publisher accepted.",
            Kind::Counter,
            per_publisher(0, false),
        ));
        families.push(self.family(
            "telemetry_records_dropped",
            "Records dropped for a publisher because its queue was full.",
            Kind::Counter,
            per_publisher(1, false),
        ));
        families.push(self.family(
            "telemetry_publish_errors",
            "Records a publisher failed on (returned an error or panicked).",
            Kind::Counter,
            per_publisher(2, false),
        ));
        families.push(self.family(
            "telemetry_publisher_queued_records",
            "Records waiting in a publisher's queue.",
            Kind::Gauge,
            per_publisher(3, true),
        ));
        let folded = [self.events.name(), self.operations.name()]
            .into_iter()
            .zip([self.events.folded(), self.operations.folded()])
            .map(|(label, n)| SeriesSnapshot {
                labels: vec![("label", Arc::from(label))],
                value: Value::Counter(n),
            })
            .collect();
        families.push(self.family(
            "telemetry_label_values_folded",
            "Records whose label value was replaced by __other__ because the label reached its \
             cap of distinct values.",
            Kind::Counter,
            folded,
        ));
    }

    fn family(
        &self,
        base: &str,
        help: &'static str,
        kind: Kind,
        series: Vec<SeriesSnapshot>,
    ) -> FamilySnapshot {
        FamilySnapshot {
            name: format!("{}{base}", self.config.prefix),
            help,
            kind,
            series,
        }
    }

    fn gauge(&self, base: &str, help: &'static str, value: f64) -> FamilySnapshot {
        self.family(
            base,
            help,
            Kind::Gauge,
            vec![SeriesSnapshot {
                labels: Vec::new(),
                value: Value::Gauge(value),
            }],
        )
    }

    /// The family names this model exposes, with their kinds, for collision checks.
    pub(crate) fn family_names(&self) -> Vec<(String, Kind)> {
        self.snapshot(None)
            .into_iter()
            .map(|f| (f.name, f.kind))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::{EventMetrics, NetworkMetrics};
    use std::time::{Duration, SystemTime};

    /// An event that started 1000 s after the epoch and took `millis`; also used by the
    /// Grafana encoder's tests.
    pub(crate) fn event(name: &str, status: Status, millis: u64, retries: u32) -> EventMetrics {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        EventMetrics {
            event_name: name.into(),
            task_id: "t".into(),
            start_time: start,
            end_time: Some(start + Duration::from_millis(millis)),
            status,
            error: None,
            retry_count: retries,
            process_id: 1,
        }
    }

    fn op(operation: &str, sent: u64, received: u64, failed: bool) -> NetworkMetrics {
        let start = SystemTime::UNIX_EPOCH;
        NetworkMetrics {
            end_time: Some(start + Duration::from_millis(250)),
            bytes_sent: sent,
            bytes_received: received,
            error: failed.then(|| "refused".to_owned()),
            operation: operation.into(),
            ..NetworkMetrics::new("n", "localhost", 8080, start)
        }
    }

    fn family<'a>(families: &'a [FamilySnapshot], name: &str) -> &'a FamilySnapshot {
        families.iter().find(|f| f.name == name).unwrap()
    }

    fn labels(s: &SeriesSnapshot) -> Vec<(&str, &str)> {
        s.labels.iter().map(|(k, v)| (*k, &**v)).collect()
    }

    /// The `{event_name, status}` duration histogram and the retry counter of `name`.
    fn event_figures(series: &PipelineSeries, name: &str) -> (u64, f64, u64) {
        let families = series.snapshot(None);
        let (mut count, mut sum) = (0, 0.0);
        for s in &family(&families, "event_duration_seconds").series {
            if let (true, Value::Histogram(h)) = (&*s.labels[0].1 == name, &s.value) {
                count += h.count();
                sum += h.sum;
            }
        }
        let retries = family(&families, "event_retries")
            .series
            .iter()
            .find(|s| &*s.labels[0].1 == name)
            .map_or(0, |s| match s.value {
                Value::Counter(n) => n,
                _ => panic!("not a counter"),
            });
        (count, sum, retries)
    }

    #[test]
    fn shard_parts_add_up_with_the_shared_series_and_go_back_into_it_when_dropped() {
        let series = PipelineSeries::new(SeriesConfig::default());
        let figures = |millis: u64, retries| EventFigures {
            status: Status::Completed,
            duration_ns: millis * 1_000_000,
            retries,
        };
        let mut first = SlotCache::default();
        let mut second = SlotCache::default();
        // Two shards that interned "load" under different ids, and one record published
        // the ordinary way.
        series.record_event_at(&mut first, Some(0), "load", figures(1000, 1));
        series.record_event_at(&mut first, Some(0), "load", figures(500, 0));
        series.record_event_at(&mut second, Some(7), "load", figures(250, 2));
        series.record_event(event("load", Status::Completed, 125, 0).borrowed());
        // A name without an id goes to the shared series.
        series.record_event_at(&mut second, None, "load", figures(125, 0));
        assert_eq!(event_figures(&series, "load"), (5, 2.0, 3));

        let parts = |series: &PipelineSeries| {
            let mut n = 0;
            series
                .events
                .for_each(|_, slot| slot.read(|_, parts| n += parts.len()));
            n
        };
        assert_eq!(parts(&series), 2);
        drop(first);
        assert_eq!(parts(&series), 1);
        assert_eq!(event_figures(&series, "load"), (5, 2.0, 3));
        drop(second);
        assert_eq!(parts(&series), 0);
        assert_eq!(event_figures(&series, "load"), (5, 2.0, 3));
    }

    #[test]
    fn events_aggregate_by_name_and_status() {
        let series = PipelineSeries::new(SeriesConfig::default());
        series.record_event(event("load", Status::Completed, 1500, 2).borrowed());
        series.record_event(event("load", Status::Completed, 500, 0).borrowed());
        series.record_event(event("load", Status::Failed, 10, 1).borrowed());
        series.record_event(event("aaa", Status::Completed, 10, 0).borrowed());
        let families = series.snapshot(None);

        let duration = family(&families, "event_duration_seconds");
        assert_eq!(duration.kind, Kind::Histogram);
        let rows: Vec<_> = duration.series.iter().map(labels).collect();
        assert_eq!(
            rows,
            [
                vec![("event_name", "aaa"), ("status", "completed")],
                vec![("event_name", "load"), ("status", "completed")],
                vec![("event_name", "load"), ("status", "failed")],
            ]
        );
        let Value::Histogram(h) = &duration.series[1].value else {
            panic!("not a histogram")
        };
        assert_eq!(h.count(), 2);
        assert_eq!(h.sum, 2.0);

        let retries = family(&families, "event_retries");
        assert_eq!(retries.sample_name(), "event_retries_total");
        let load = retries
            .series
            .iter()
            .find(|s| &*s.labels[0].1 == "load")
            .unwrap();
        assert_eq!(load.value, Value::Counter(3));
    }

    #[test]
    fn network_operations_aggregate_bytes_latency_and_status() {
        let series = PipelineSeries::new(SeriesConfig::default());
        series.record_network(op("remote_call", 1000, 500, false).borrowed());
        series.record_network(op("remote_call", 1, 2, true).borrowed());
        let families = series.snapshot(None);
        let bytes = family(&families, "network_bytes");
        let rows: Vec<_> = bytes
            .series
            .iter()
            .map(|s| (labels(s), s.value.clone()))
            .collect();
        // Labels sorted by name: direction before operation; series sorted by those values.
        assert_eq!(
            rows,
            [
                (
                    vec![("direction", "received"), ("operation", "remote_call")],
                    Value::Counter(502)
                ),
                (
                    vec![("direction", "sent"), ("operation", "remote_call")],
                    Value::Counter(1001)
                ),
            ]
        );
        let ops = family(&families, "network_operations");
        let values: Vec<_> = ops.series.iter().map(|s| s.value.clone()).collect();
        assert_eq!(values, [Value::Counter(1), Value::Counter(1)]);
        let Value::Histogram(latency) =
            &family(&families, "network_latency_seconds").series[0].value
        else {
            panic!()
        };
        assert_eq!(latency.count(), 2);
        assert_eq!(latency.sum, 0.5);
    }

    #[test]
    fn runaway_event_names_fold_into_other_and_are_counted() {
        let series = PipelineSeries::new(SeriesConfig {
            max_label_values: 2,
            ..SeriesConfig::default()
        });
        for i in 0..10 {
            series.record_event(event(&format!("e{i}"), Status::Completed, 1, 1).borrowed());
        }
        let families = series.snapshot(None);
        let retries = family(&families, "event_retries");
        let rows: Vec<_> = retries
            .series
            .iter()
            .map(|s| (s.labels[0].1.to_string(), s.value.clone()))
            .collect();
        assert_eq!(
            rows,
            [
                (OTHER.to_owned(), Value::Counter(8)),
                ("e0".to_owned(), Value::Counter(1)),
                ("e1".to_owned(), Value::Counter(1)),
            ]
        );
        let folded = family(&families, "telemetry_label_values_folded");
        assert_eq!(labels(&folded.series[0]), [("label", "event_name")]);
        assert_eq!(folded.series[0].value, Value::Counter(8));
        assert_eq!(folded.series[1].value, Value::Counter(0));
    }

    #[test]
    fn prefix_and_buckets_apply_to_every_family() {
        let series = PipelineSeries::new(SeriesConfig {
            prefix: "etl_".into(),
            buckets: Arc::from(&[0.5, 1.0][..]),
            max_label_values: 10,
        });
        series.record_event(event("x", Status::Completed, 700, 0).borrowed());
        let families = series.snapshot(None);
        assert!(families.iter().all(|f| f.name.starts_with("etl_")));
        let Value::Histogram(h) = &family(&families, "etl_event_duration_seconds").series[0].value
        else {
            panic!()
        };
        assert_eq!(h.cumulative, [0, 1, 1]);
    }

    #[test]
    fn health_figures_are_read_at_snapshot_time() {
        use crate::publish::MetricsPublisher;
        use std::sync::Mutex;

        #[derive(Default)]
        struct Keep(Mutex<Option<PipelineHealth>>);
        impl MetricsPublisher for Keep {
            fn name(&self) -> &str {
                "keep"
            }
            fn on_attach(&self, health: PipelineHealth) {
                *self.0.lock().unwrap() = Some(health);
            }
        }
        let telemetry = crate::Telemetry::new();
        let keep = Arc::new(Keep::default());
        telemetry.add_publisher(Box::new(keep.clone())).unwrap();
        telemetry.events.start_event("e", "t1", None).unwrap();
        telemetry.events.start_event("e", "t2", None).unwrap();
        telemetry.events.end_event("t2", None).unwrap();
        telemetry.flush(Duration::from_secs(5)).unwrap();
        let health = keep.0.lock().unwrap().clone().unwrap();

        let families = PipelineSeries::new(SeriesConfig::default()).snapshot(Some(&health));
        assert_eq!(
            family(&families, "events_in_flight").series[0].value,
            Value::Gauge(1.0)
        );
        let delivered = family(&families, "telemetry_records_delivered");
        assert_eq!(labels(&delivered.series[0]), [("publisher", "keep")]);
        assert_eq!(delivered.series[0].value, Value::Counter(1));
    }
}
