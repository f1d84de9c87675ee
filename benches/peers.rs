//! This library against the crates a pipeline would otherwise pick, on one workload, in one
//! run: `metrics` + `metrics-exporter-prometheus`, `prometheus-client`, the tikv `prometheus`
//! crate and the OpenTelemetry SDK (with `opentelemetry-prometheus` for its exposition).
//!
//! **The workload.** One *event* (the unit every figure is per) is one pipeline event plus
//! the network operation it makes: 100 event names, 2 statuses (5% failed), 10% retried, 10
//! operation names, byte counts and durations drawn from a fixed-seed distribution
//! (log-uniform, 1 ms–10 s and 0.1 ms–1 s). Every contender records the same series: the
//! duration histogram by `{event_name, status}`, a retry counter by `{event_name}` when
//! retried, bytes sent and received by `{operation, direction}`, and the latency histogram by
//! `{operation}`, all with this library's 14 buckets.
//!
//! * **This library** (`ours`): the full path it offers, `start_event`, `start_operation`,
//!   `end_operation`, `record_retry` when retried, `end_event`, on a `Telemetry` with the
//!   default retention (100,000 records kept for queries, filled before timing so every event
//!   evicts one) and the Prometheus publisher attached. The clock runs until the publisher's
//!   delivery thread has aggregated every record (a flush every 8,192 events): the sustained
//!   cost. `ours-records` is the same without a publisher (records only). Task ids are
//!   formatted outside the clock (a pipeline has them).
//! * **The peers** read the clock as a pipeline timing its work would (`now` at start and
//!   `elapsed` at end, for the event and for the operation: four reads, as ours; on the same
//!   TSC clock ours uses, `quanta`, since `std::time::Instant` costs several times more on
//!   this VM and the comparison is about recording, not about the clock) and
//!   record the drawn duration and latency (the bench does not sleep through the simulated
//!   work; ours records the real, tiny durations). Each uses its idiomatic per-event path:
//!   `metrics::histogram!(name, "label" => value)` into the global recorder
//!   (`run_upkeep` after every 8,192 events, as our flush: that recorder keeps raw histogram
//!   samples until then), `Family::get_or_create` with a derived label struct,
//!   `HistogramVec::with_label_values`, and OpenTelemetry instruments built once with
//!   `KeyValue` attributes per call.
//! * **Labels.** `string`: the pipeline hands each contender the event and operation name as
//!   an owned `String` (cloned per event from a `Vec<String>`, the same cost for everyone);
//!   contenders that need more copies make them. `static`: `&'static str` names, the best case.
//! * **Floors.** `floor`: four clock reads on the TSC (`quanta`) and four relaxed atomic adds
//!   into arrays indexed by name (no label lookup at all); the parts alone in `floor_parts`.
//!
//! Groups: `peers_1t/<labels>-<contender>` (ns per event, one thread), `peers_2t/<contender>`
//! (two threads sharing one instance of each contender, `string` labels; one iteration = 1,024
//! events on each thread), `peers_retain/ours-{1k,1m}` (records retained), `peers_scrape/<n>-<contender>`
//! (one classic-text exposition with the standard workload, 100 and 10,000 duration label
//! sets; sizes in `<criterion dir>/peers-sizes.json`), `floor_parts/*`.
//!
//! Run everything and get the table: `scripts/bench.sh` (see BENCHMARKS.md). By hand:
//! `CARGO_TARGET_DIR=/work/target-peers cargo bench --bench peers`.
//!
//! `PEERS_BENCH_DRIVE=<contender>,<string|static>,<prefill>,<events>[,<retention>]` instead
//! runs a plain driver without criterion (`<retention>`: records this library keeps, default
//! 100,000): `<prefill>` events, then `<events>` events inside
//! `measured_events` on one thread, then prints wall time per event and the peak RSS (`VmHWM`).
//! `scripts/bench.sh` runs it under callgrind (instructions per event: the calling thread's
//! inside `measured_events`, and all threads' by difference of two event counts; both less
//! those of the `harness` contender, which records nothing) and for peak memory after
//! 1,000,000 events.

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use opentelemetry::metrics::{Counter as OtelCounter, Histogram as OtelHistogram, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{Instrument, SdkMeterProvider, Stream};
use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher, DEFAULT_BUCKETS};
use pipeline_telemetry::{
    EventMetrics, MetricsPublisher, NetworkMetrics, Status, Telemetry, TelemetryConfig,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, TextEncoder};
use support::Ids;

/// Event names in the recording workload.
const NAMES: usize = 100;
/// Operation names.
const OPS: usize = 10;
/// Prepared events the workload cycles through.
const UNITS: usize = 1 << 14;
/// Events between two settles (our flush, metrics-exporter-prometheus's upkeep).
const CHUNK: usize = 8192;
/// Queue of our publisher: two records per event, a chunk of events and then some.
const QUEUE: usize = 1 << 16;
const HOST: &str = "storage.local";
const PORT: u16 = 9000;
/// Duration label sets (names x 2 statuses) of the scrape scaling cases.
const SCRAPE_SETS: [usize; 2] = [100, 10_000];

// ---- the workload ----------------------------------------------------------------------

/// One event and its network operation, drawn once.
#[derive(Debug, Clone, Copy)]
struct Unit {
    name: u16,
    op: u8,
    failed: bool,
    retried: bool,
    /// Seconds.
    duration: f64,
    /// Seconds.
    latency: f64,
    sent: u64,
    received: u64,
}

impl Unit {
    fn status(&self) -> &'static str {
        if self.failed {
            "failed"
        } else {
            "completed"
        }
    }
}

fn log_uniform(rng: &mut fastrand::Rng, low: f64, high: f64) -> f64 {
    low * (high / low).powf(rng.f64())
}

fn draw(rng: &mut fastrand::Rng, names: usize) -> Unit {
    Unit {
        name: rng.usize(..names) as u16,
        op: rng.u8(..OPS as u8),
        failed: rng.f64() < 0.05,
        retried: rng.f64() < 0.10,
        duration: log_uniform(rng, 0.001, 10.0),
        latency: log_uniform(rng, 0.0001, 1.0),
        sent: rng.u64(100..10_000),
        received: rng.u64(1_000..100_000),
    }
}

/// The recording workload: [`UNITS`] events over [`NAMES`] names, seed 42.
fn units() -> &'static [Unit] {
    static UNITS_: OnceLock<Vec<Unit>> = OnceLock::new();
    UNITS_.get_or_init(|| {
        let mut rng = fastrand::Rng::with_seed(42);
        (0..UNITS).map(|_| draw(&mut rng, NAMES)).collect()
    })
}

/// What a scrape sees: every name with both statuses and every operation, then as many
/// random events again (seed 43).
fn scrape_units(names: usize) -> Vec<Unit> {
    let mut rng = fastrand::Rng::with_seed(43);
    let mut units: Vec<Unit> = (0..names * 2)
        .map(|i| Unit {
            name: (i / 2) as u16,
            op: (i % OPS) as u8,
            failed: i % 2 == 1,
            retried: i % 10 == 0,
            ..draw(&mut rng, names)
        })
        .collect();
    units.extend((0..names * 2).map(|_| draw(&mut rng, names)));
    units
}

/// Names as the pipeline holds them.
struct Labels {
    names: Vec<String>,
    ops: Vec<String>,
    static_names: Vec<&'static str>,
    static_ops: Vec<&'static str>,
}

impl Labels {
    fn new(names: usize) -> Self {
        let names: Vec<String> = (0..names).map(|i| format!("event-{i:03}")).collect();
        let ops: Vec<String> = (0..OPS).map(|i| format!("operation-{i}")).collect();
        let leak = |v: &[String]| -> Vec<&'static str> {
            v.iter()
                .map(|s| &*Box::leak(s.clone().into_boxed_str()))
                .collect()
        };
        Labels {
            static_names: leak(&names),
            static_ops: leak(&ops),
            names,
            ops,
        }
    }

    fn standard() -> &'static Labels {
        static LABELS: OnceLock<Labels> = OnceLock::new();
        LABELS.get_or_init(|| Labels::new(NAMES))
    }
}

/// A label value as the pipeline hands it over: an owned `String` or a `&'static str`.
trait Label:
    AsRef<str>
    + Clone
    + Into<metrics::SharedString>
    + Into<opentelemetry::Value>
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const MODE: &'static str;
    fn name(labels: &Labels, i: u16) -> Self;
    fn op(labels: &Labels, i: u8) -> Self;
}

impl Label for String {
    const MODE: &'static str = "string";
    #[inline(always)]
    fn name(labels: &Labels, i: u16) -> Self {
        labels.names[usize::from(i)].clone()
    }
    #[inline(always)]
    fn op(labels: &Labels, i: u8) -> Self {
        labels.ops[usize::from(i)].clone()
    }
}

impl Label for &'static str {
    const MODE: &'static str = "static";
    #[inline(always)]
    fn name(labels: &Labels, i: u16) -> Self {
        labels.static_names[usize::from(i)]
    }
    #[inline(always)]
    fn op(labels: &Labels, i: u8) -> Self {
        labels.static_ops[usize::from(i)]
    }
}

/// Records one event and its operation.
trait Contender<L: Label>: Sync {
    fn unit(&self, u: &Unit, id: &str, name: L, op: L);
    /// End of a chunk of events: make everything recorded so far visible.
    fn settle(&self) {}
}

// ---- this library ----------------------------------------------------------------------

struct Ours {
    telemetry: Telemetry,
}

impl Ours {
    fn new(retention: usize, publisher: bool) -> Self {
        let config = TelemetryConfig::default()
            .retention(retention)
            .queue_capacity(QUEUE);
        let telemetry = Telemetry::with_config(&config);
        if publisher {
            telemetry
                .add_publisher(Box::new(
                    PrometheusPublisher::builder(0)
                        .build_without_server()
                        .expect("defaults are valid"),
                ))
                .expect("a delivery thread");
        }
        Ours { telemetry }
    }

    /// Runs events until both stores retain `retention` records (every further event evicts).
    fn fill(&self, retention: usize, ids: &mut Ids, next: &mut usize) {
        while self.telemetry.events.retained_len() < retention
            || self.telemetry.network.retained_len() < retention
        {
            run::<String, _>(self, Labels::standard(), ids.next_batch(CHUNK), next);
        }
        self.telemetry
            .flush(Duration::from_secs(60))
            .expect("flushed");
    }

    fn check_drops(&self, what: &str) {
        let dropped = self.telemetry.dropped();
        if dropped > 0 {
            eprintln!(
                "WARNING {what}: our publisher dropped {dropped} records; the figure flatters"
            );
        }
    }
}

impl<L: Label> Contender<L> for Ours {
    #[inline]
    fn unit(&self, u: &Unit, id: &str, name: L, op: L) {
        let t = &self.telemetry;
        t.events
            .start_event(name.as_ref(), id, None)
            .expect("unique id");
        t.network
            .start_operation(id, HOST, PORT, Some(op.as_ref()))
            .expect("unique id");
        t.network
            .end_operation(id, u.sent, u.received, None)
            .expect("in flight");
        if u.retried {
            t.events.record_retry(id).expect("in flight");
        }
        t.events
            .end_event(id, u.failed.then_some("failed"))
            .expect("in flight");
    }

    fn settle(&self) {
        self.telemetry
            .flush(Duration::from_secs(60))
            .expect("the publisher keeps up");
    }
}

// ---- the floor ---------------------------------------------------------------------------

/// Four clock reads and four atomic adds per event, indexes known: nothing can do less.
struct Floor {
    duration: Vec<AtomicU64>,
    retries: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    latency: Vec<AtomicU64>,
}

impl Floor {
    fn new() -> Self {
        let v = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Floor {
            duration: v(NAMES * 2),
            retries: v(NAMES),
            sent: v(OPS),
            received: v(OPS),
            latency: v(OPS),
        }
    }
}

impl<L: Label> Contender<L> for Floor {
    #[inline]
    fn unit(&self, u: &Unit, _id: &str, name: L, op: L) {
        black_box((&name, &op));
        let t0 = quanta::Instant::now();
        let n0 = quanta::Instant::now();
        black_box(n0.elapsed());
        let o = usize::from(u.op);
        self.sent[o].fetch_add(u.sent, Ordering::Relaxed);
        self.received[o].fetch_add(u.received, Ordering::Relaxed);
        self.latency[o].fetch_add(1, Ordering::Relaxed);
        let n = usize::from(u.name);
        if u.retried {
            self.retries[n].fetch_add(1, Ordering::Relaxed);
        }
        black_box(t0.elapsed());
        self.duration[n * 2 + usize::from(u.failed)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Records nothing: what the driver itself costs per event (task ids formatted, labels handed
/// over and dropped), subtracted from the instruction counts.
struct Harness;

impl<L: Label> Contender<L> for Harness {
    #[inline]
    fn unit(&self, u: &Unit, id: &str, name: L, op: L) {
        black_box((u, id, &name, &op));
    }
}

// ---- metrics + metrics-exporter-prometheus ---------------------------------------------

struct MetricsRs {
    handle: PrometheusHandle,
}

fn metrics_recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets(&DEFAULT_BUCKETS)
        .expect("buckets")
        .build_recorder()
}

impl MetricsRs {
    /// The process-wide recorder, installed once.
    fn global() -> &'static MetricsRs {
        static GLOBAL: OnceLock<MetricsRs> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let recorder = metrics_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("one recorder per process");
            MetricsRs { handle }
        })
    }
}

#[inline(always)]
fn metrics_unit<L: Label>(u: &Unit, name: L, op: L) {
    let t0 = quanta::Instant::now();
    let n0 = quanta::Instant::now();
    black_box(n0.elapsed());
    metrics::counter!("network_bytes_total", "operation" => op.clone(), "direction" => "sent")
        .increment(u.sent);
    metrics::counter!("network_bytes_total", "operation" => op.clone(), "direction" => "received")
        .increment(u.received);
    metrics::histogram!("network_latency_seconds", "operation" => op).record(u.latency);
    if u.retried {
        metrics::counter!("event_retries_total", "event_name" => name.clone()).increment(1);
    }
    black_box(t0.elapsed());
    metrics::histogram!("event_duration_seconds", "event_name" => name, "status" => u.status())
        .record(u.duration);
}

impl<L: Label> Contender<L> for MetricsRs {
    #[inline]
    fn unit(&self, u: &Unit, _id: &str, name: L, op: L) {
        metrics_unit(u, name, op);
    }

    fn settle(&self) {
        self.handle.run_upkeep();
    }
}

// ---- prometheus-client -------------------------------------------------------------------

/// `prometheus-client` families for label values of type `$l` (its derive takes no generics).
macro_rules! client_rust {
    ($module:ident, $l:ty) => {
        mod $module {
            use prometheus_client::encoding::EncodeLabelSet;
            use prometheus_client::metrics::counter::Counter;
            use prometheus_client::metrics::family::Family;
            use prometheus_client::metrics::histogram::Histogram;
            use prometheus_client::registry::Registry;

            use super::{black_box, Contender, Unit, DEFAULT_BUCKETS};

            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct EventLabels {
                event_name: $l,
                status: &'static str,
            }

            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct NameLabel {
                event_name: $l,
            }

            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct OpLabel {
                operation: $l,
            }

            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct OpDirection {
                operation: $l,
                direction: &'static str,
            }

            fn histogram() -> Histogram {
                Histogram::new(DEFAULT_BUCKETS)
            }

            type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

            pub(super) struct ClientRust {
                // Rendered only in the scrapes, which use the `String` instance.
                #[allow(dead_code)]
                registry: Registry,
                duration: Histograms<EventLabels>,
                retries: Family<NameLabel, Counter>,
                bytes: Family<OpDirection, Counter>,
                latency: Histograms<OpLabel>,
            }

            impl ClientRust {
                pub(super) fn new() -> Self {
                    let mut registry = Registry::default();
                    let duration: Histograms<EventLabels> = Family::new_with_constructor(histogram);
                    let retries = Family::<NameLabel, Counter>::default();
                    let bytes = Family::<OpDirection, Counter>::default();
                    let latency: Histograms<OpLabel> = Family::new_with_constructor(histogram);
                    registry.register("event_duration_seconds", "Duration", duration.clone());
                    registry.register("event_retries", "Retries", retries.clone());
                    registry.register("network_bytes", "Bytes", bytes.clone());
                    registry.register("network_latency_seconds", "Latency", latency.clone());
                    ClientRust {
                        registry,
                        duration,
                        retries,
                        bytes,
                        latency,
                    }
                }

                #[allow(dead_code)]
                pub(super) fn render(&self) -> String {
                    let mut out = String::new();
                    prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
                        .expect("encode");
                    out
                }
            }

            impl Contender<$l> for ClientRust {
                #[inline]
                fn unit(&self, u: &Unit, _id: &str, name: $l, op: $l) {
                    let t0 = quanta::Instant::now();
                    let n0 = quanta::Instant::now();
                    black_box(n0.elapsed());
                    self.bytes
                        .get_or_create(&OpDirection {
                            operation: op.clone(),
                            direction: "sent",
                        })
                        .inc_by(u.sent);
                    self.bytes
                        .get_or_create(&OpDirection {
                            operation: op.clone(),
                            direction: "received",
                        })
                        .inc_by(u.received);
                    self.latency
                        .get_or_create(&OpLabel { operation: op })
                        .observe(u.latency);
                    if u.retried {
                        self.retries
                            .get_or_create(&NameLabel {
                                event_name: name.clone(),
                            })
                            .inc();
                    }
                    black_box(t0.elapsed());
                    self.duration
                        .get_or_create(&EventLabels {
                            event_name: name,
                            status: u.status(),
                        })
                        .observe(u.duration);
                }
            }
        }
    };
}

client_rust!(client_owned, String);
client_rust!(client_static, &'static str);

// ---- prometheus (tikv) -------------------------------------------------------------------

struct Tikv {
    registry: prometheus::Registry,
    duration: HistogramVec,
    retries: IntCounterVec,
    bytes: IntCounterVec,
    latency: HistogramVec,
}

impl Tikv {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DEFAULT_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let duration = histogram(
            "event_duration_seconds",
            "Duration",
            &["event_name", "status"],
        );
        let retries = counter("event_retries_total", "Retries", &["event_name"]);
        let bytes = counter("network_bytes_total", "Bytes", &["operation", "direction"]);
        let latency = histogram("network_latency_seconds", "Latency", &["operation"]);
        Tikv {
            registry,
            duration,
            retries,
            bytes,
            latency,
        }
    }

    fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("encode")
    }
}

impl<L: Label> Contender<L> for Tikv {
    #[inline]
    fn unit(&self, u: &Unit, _id: &str, name: L, op: L) {
        let t0 = quanta::Instant::now();
        let n0 = quanta::Instant::now();
        black_box(n0.elapsed());
        let op = op.as_ref();
        self.bytes.with_label_values(&[op, "sent"]).inc_by(u.sent);
        self.bytes
            .with_label_values(&[op, "received"])
            .inc_by(u.received);
        self.latency.with_label_values(&[op]).observe(u.latency);
        let name = name.as_ref();
        if u.retried {
            self.retries.with_label_values(&[name]).inc();
        }
        black_box(t0.elapsed());
        self.duration
            .with_label_values(&[name, u.status()])
            .observe(u.duration);
    }
}

// ---- OpenTelemetry SDK ---------------------------------------------------------------------

struct Otel {
    _provider: SdkMeterProvider,
    registry: prometheus::Registry,
    duration: OtelHistogram<f64>,
    retries: OtelCounter<u64>,
    bytes: OtelCounter<u64>,
    latency: OtelHistogram<f64>,
}

impl Otel {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .expect("exporter");
        // The default cardinality limit (2,000 attribute sets per instrument) would fold the
        // 10,000-label-set scrape case into an overflow series.
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_view(|_: &Instrument| {
                Stream::builder()
                    .with_cardinality_limit(1 << 20)
                    .build()
                    .ok()
            })
            .build();
        let meter = provider.meter("pipeline");
        let histogram = |name: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_boundaries(DEFAULT_BUCKETS.to_vec())
                .build()
        };
        let duration = histogram("event_duration");
        let latency = histogram("network_latency");
        let retries = meter.u64_counter("event_retries").build();
        let bytes = meter.u64_counter("network_bytes").build();
        Otel {
            _provider: provider,
            registry,
            duration,
            retries,
            bytes,
            latency,
        }
    }

    fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("encode")
    }
}

impl<L: Label> Contender<L> for Otel {
    #[inline]
    fn unit(&self, u: &Unit, _id: &str, name: L, op: L) {
        let t0 = quanta::Instant::now();
        let n0 = quanta::Instant::now();
        black_box(n0.elapsed());
        let op = KeyValue::new("operation", op);
        self.bytes
            .add(u.sent, &[op.clone(), KeyValue::new("direction", "sent")]);
        self.bytes.add(
            u.received,
            &[op.clone(), KeyValue::new("direction", "received")],
        );
        self.latency.record(u.latency, &[op]);
        let name = KeyValue::new("event_name", name);
        if u.retried {
            self.retries.add(1, std::slice::from_ref(&name));
        }
        black_box(t0.elapsed());
        self.duration
            .record(u.duration, &[name, KeyValue::new("status", u.status())]);
    }
}

// ---- running the workload ------------------------------------------------------------------

/// One event per id, the workload continuing at `*next`; settles after every [`CHUNK`].
#[inline(never)]
fn run<L: Label, C: Contender<L>>(c: &C, labels: &Labels, ids: &[String], next: &mut usize) {
    let units = units();
    for chunk in ids.chunks(CHUNK) {
        for id in chunk {
            let u = &units[*next % UNITS];
            *next += 1;
            c.unit(u, id, L::name(labels, u.name), L::op(labels, u.op));
        }
        c.settle();
    }
}

/// The driver's measured region (a separate symbol for profilers).
#[inline(never)]
fn driven_events<L: Label, C: Contender<L>>(c: &C, ids: &mut Ids, events: usize, next: &mut usize) {
    let mut left = events;
    while left > 0 {
        let n = left.min(CHUNK);
        run::<L, C>(c, Labels::standard(), ids.next_batch(n), next);
        left -= n;
    }
}

/// The driver's measured events, apart from the prefill: `scripts/bench.sh` counts the calling
/// thread's instructions inside this function (`valgrind --toggle-collect='*measured_events*'`).
#[inline(never)]
fn measured_events<L: Label, C: Contender<L>>(
    c: &C,
    ids: &mut Ids,
    events: usize,
    next: &mut usize,
) {
    driven_events::<L, C>(c, ids, events, next);
}

/// Criterion's timing of `iters` events on one thread.
fn time_1t<L: Label, C: Contender<L>>(
    c: &C,
    ids: &mut Ids,
    iters: u64,
    next: &mut usize,
) -> Duration {
    let mut left = iters as usize;
    let mut elapsed = Duration::ZERO;
    // Ids are formatted a batch at a time, outside the clock.
    while left > 0 {
        let n = left.min(1 << 16);
        let batch = ids.next_batch(n);
        let start = Instant::now();
        run::<L, C>(c, Labels::standard(), batch, next);
        elapsed += start.elapsed();
        left -= n;
    }
    elapsed
}

/// Events per thread in one iteration of `peers_2t`, so that the fixed cost of a sample
/// (starting the threads, the last flush) is amortized whatever the iteration count.
const BLOCK_2T: usize = 1024;

/// `iters` blocks of [`BLOCK_2T`] events on each of two threads sharing `c`; from the first
/// start to the last end.
fn time_2t<C: Contender<String>>(c: &C, lanes: &mut [Ids; 2], iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter_mut()
            .enumerate()
            .map(|(t, lane)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let ids = lane.next_batch(iters as usize * BLOCK_2T);
                    // The threads run different parts of the workload.
                    let mut next = t * 7919;
                    barrier.wait();
                    let start = Instant::now();
                    run::<String, C>(c, Labels::standard(), ids, &mut next);
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("two");
    let last = spans.iter().map(|s| s.1).max().expect("two");
    last - first
}

// ---- criterion groups ----------------------------------------------------------------------

struct Peers {
    ours: Ours,
    ours_records: Ours,
    floor: Floor,
    metrics: &'static MetricsRs,
    client_owned: client_owned::ClientRust,
    client_static: client_static::ClientRust,
    tikv: Tikv,
    otel: Otel,
    ids: Ids,
}

impl Peers {
    fn new() -> Self {
        let retention = pipeline_telemetry::config::DEFAULT_RETENTION;
        let ours = Ours::new(retention, true);
        let ours_records = Ours::new(retention, false);
        let mut ids = Ids::default();
        let mut next = 0;
        ours.fill(retention, &mut ids, &mut next);
        ours_records.fill(retention, &mut ids, &mut next);
        Peers {
            ours,
            ours_records,
            floor: Floor::new(),
            metrics: MetricsRs::global(),
            client_owned: client_owned::ClientRust::new(),
            client_static: client_static::ClientRust::new(),
            tikv: Tikv::new(),
            otel: Otel::new(),
            ids,
        }
    }
}

fn bench_1t<L: Label, C: Contender<L>>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    contender: &str,
    c: &C,
    ids: &mut Ids,
) {
    let mut next = 0usize;
    group.bench_function(format!("{}-{contender}", L::MODE), |b| {
        b.iter_custom(|iters| time_1t::<L, C>(c, ids, iters, &mut next))
    });
}

fn one_thread(criterion: &mut Criterion, p: &mut Peers) {
    let mut group = criterion.benchmark_group("peers_1t");
    let ids = &mut p.ids;
    bench_1t::<String, _>(&mut group, "floor", &p.floor, ids);
    bench_1t::<&'static str, _>(&mut group, "floor", &p.floor, ids);
    bench_1t::<String, _>(&mut group, "ours", &p.ours, ids);
    bench_1t::<&'static str, _>(&mut group, "ours", &p.ours, ids);
    p.ours.check_drops("peers_1t/ours");
    bench_1t::<String, _>(&mut group, "ours-records", &p.ours_records, ids);
    bench_1t::<&'static str, _>(&mut group, "ours-records", &p.ours_records, ids);
    bench_1t::<String, _>(&mut group, "metrics", p.metrics, ids);
    bench_1t::<&'static str, _>(&mut group, "metrics", p.metrics, ids);
    bench_1t::<String, _>(&mut group, "prometheus-client", &p.client_owned, ids);
    bench_1t::<&'static str, _>(&mut group, "prometheus-client", &p.client_static, ids);
    bench_1t::<String, _>(&mut group, "prometheus", &p.tikv, ids);
    bench_1t::<&'static str, _>(&mut group, "prometheus", &p.tikv, ids);
    bench_1t::<String, _>(&mut group, "otel", &p.otel, ids);
    bench_1t::<&'static str, _>(&mut group, "otel", &p.otel, ids);
    group.finish();
}

fn two_threads(criterion: &mut Criterion, p: &mut Peers) {
    let mut group = criterion.benchmark_group("peers_2t");
    let mut lanes = [p.ids.lane(), p.ids.lane()];
    macro_rules! case {
        ($name:expr, $c:expr) => {
            group.bench_function($name, |b| {
                b.iter_custom(|iters| time_2t($c, &mut lanes, iters))
            });
        };
    }
    case!("floor", &p.floor);
    case!("ours", &p.ours);
    p.ours.check_drops("peers_2t/ours");
    case!("ours-records", &p.ours_records);
    case!("metrics", p.metrics);
    case!("prometheus-client", &p.client_owned);
    case!("prometheus", &p.tikv);
    case!("otel", &p.otel);
    group.finish();
}

fn retained(criterion: &mut Criterion, ids: &mut Ids) {
    let mut group = criterion.benchmark_group("peers_retain");
    for (id, retention) in [("ours-1k", 1_000), ("ours-1m", 1_000_000)] {
        let ours = Ours::new(retention, true);
        let mut next = 0;
        ours.fill(retention, ids, &mut next);
        group.bench_function(id, |b| {
            b.iter_custom(|iters| time_1t::<String, _>(&ours, ids, iters, &mut next))
        });
        ours.check_drops(id);
    }
    group.finish();
}

fn floor_parts(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("floor_parts");
    group.bench_function("clock-quanta", |b| b.iter(quanta::Instant::now));
    group.bench_function("clock-std", |b| b.iter(Instant::now));
    let counter = AtomicU64::new(0);
    group.bench_function("atomic-add", |b| {
        b.iter(|| counter.fetch_add(black_box(1), Ordering::Relaxed))
    });
    let name = String::from("event-042");
    group.bench_function("string-clone", |b| b.iter(|| black_box(&name).clone()));
    group.finish();
}

// ---- scrapes -------------------------------------------------------------------------------

/// One exposition, rendered on each call.
type Render<'a> = Box<dyn Fn() -> String + 'a>;

/// One instance of each contender holding the same data, rendered as classic text.
struct Scraped {
    ours: PrometheusPublisher,
    metrics: PrometheusHandle,
    client: client_owned::ClientRust,
    tikv: Tikv,
    otel: Otel,
}

impl Scraped {
    /// Every contender fed the same events over `names` event names.
    fn new(names: usize) -> Self {
        let labels = Labels::new(names);
        let ours = PrometheusPublisher::builder(0)
            .max_label_values(names.max(OPS))
            .expect("in range")
            .build_without_server()
            .expect("valid");
        let recorder = metrics_recorder();
        let metrics = recorder.handle();
        let client = client_owned::ClientRust::new();
        let tikv = Tikv::new();
        let otel = Otel::new();
        let start = SystemTime::now();
        for (i, u) in scrape_units(names).iter().enumerate() {
            let name = &labels.names[usize::from(u.name)];
            let op = &labels.ops[usize::from(u.op)];
            let id = format!("task-{i}");
            ours.publish_event_metrics(&EventMetrics {
                event_name: name.clone(),
                task_id: id.clone(),
                start_time: start,
                end_time: Some(start + Duration::from_secs_f64(u.duration)),
                status: if u.failed {
                    Status::Failed
                } else {
                    Status::Completed
                },
                error: u.failed.then(|| "failed".to_owned()),
                retry_count: u32::from(u.retried),
                process_id: 1,
            })
            .expect("infallible");
            ours.publish_network_metrics(&NetworkMetrics {
                end_time: Some(start + Duration::from_secs_f64(u.latency)),
                bytes_sent: u.sent,
                bytes_received: u.received,
                operation: op.clone(),
                ..NetworkMetrics::new(id.clone(), HOST, PORT, start)
            })
            .expect("infallible");
            metrics::with_local_recorder(&recorder, || {
                metrics_unit(u, name.clone(), op.clone());
            });
            Contender::<String>::unit(&client, u, &id, name.clone(), op.clone());
            Contender::<String>::unit(&tikv, u, &id, name.clone(), op.clone());
            Contender::<String>::unit(&otel, u, &id, name.clone(), op.clone());
        }
        // metrics-exporter-prometheus keeps raw samples until a render drains them: drain
        // them now, so its renders below are of the steady state (this flatters it).
        metrics.run_upkeep();
        Scraped {
            ours,
            metrics,
            client,
            tikv,
            otel,
        }
    }

    fn renders(&self) -> [(&'static str, Render<'_>); 5] {
        [
            (
                "ours",
                Box::new(|| self.ours.render(ExpositionFormat::Prometheus)),
            ),
            ("metrics", Box::new(|| self.metrics.render())),
            ("prometheus-client", Box::new(|| self.client.render())),
            ("prometheus", Box::new(|| self.tikv.render())),
            ("otel", Box::new(|| self.otel.render())),
        ]
    }
}

fn scrapes(criterion: &mut Criterion) -> BTreeMap<String, usize> {
    let mut sizes = BTreeMap::new();
    let cases = [("standard", NAMES)]
        .into_iter()
        .chain(SCRAPE_SETS.map(|sets| (if sets == 100 { "100" } else { "10000" }, sets / 2)));
    for (case, names) in cases {
        let scraped = Scraped::new(names);
        let mut group = criterion.benchmark_group("peers_scrape");
        if names > NAMES {
            group.sampling_mode(SamplingMode::Flat).sample_size(10);
        }
        for (contender, render) in scraped.renders() {
            sizes.insert(format!("{case}-{contender}"), render().len());
            group.bench_function(format!("{case}-{contender}"), |b| b.iter(&render));
        }
        group.finish();
    }
    sizes
}

// ---- driver ----------------------------------------------------------------------------------

/// Peak resident set size of this process so far, in KiB (`VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn drive_with<L: Label, C: Contender<L>>(c: &C, prefill: usize, events: usize) {
    let mut ids = Ids::default();
    let mut next = 0;
    driven_events::<L, C>(c, &mut ids, prefill, &mut next);
    let start = Instant::now();
    measured_events::<L, C>(c, &mut ids, events, &mut next);
    let elapsed = start.elapsed();
    println!(
        "drive events={events} prefill={prefill} wall_ns_per_event={:.1} peak_rss_kib={}",
        elapsed.as_nanos() as f64 / events.max(1) as f64,
        peak_rss_kib().unwrap_or(0)
    );
}

fn drive(spec: &str) {
    const USAGE: &str =
        "PEERS_BENCH_DRIVE=<harness|floor|ours|ours-records|metrics|prometheus-client|prometheus|otel>,\
         <string|static>,<prefill>,<events>[,<retention, ours only>]";
    let fields: Vec<&str> = spec.split(',').map(str::trim).collect();
    let number = |i: usize| -> usize {
        fields
            .get(i)
            .and_then(|n| n.replace('_', "").parse().ok())
            .expect(USAGE)
    };
    let (prefill, events) = (number(2), number(3));
    let retention = if fields.len() > 4 {
        number(4)
    } else {
        pipeline_telemetry::config::DEFAULT_RETENTION
    };
    macro_rules! both {
        ($c:expr) => {
            match fields[1] {
                "string" => drive_with::<String, _>($c, prefill, events),
                "static" => drive_with::<&'static str, _>($c, prefill, events),
                _ => panic!("{USAGE}"),
            }
        };
    }
    match (fields[0], fields.get(1).copied()) {
        ("harness", _) => both!(&Harness),
        ("floor", _) => both!(&Floor::new()),
        ("ours", _) => {
            let ours = Ours::new(retention, true);
            both!(&ours);
            ours.check_drops("drive");
        }
        ("ours-records", _) => both!(&Ours::new(retention, false)),
        ("metrics", _) => both!(MetricsRs::global()),
        ("prometheus-client", Some("string")) => {
            drive_with::<String, _>(&client_owned::ClientRust::new(), prefill, events)
        }
        ("prometheus-client", Some("static")) => {
            drive_with::<&'static str, _>(&client_static::ClientRust::new(), prefill, events)
        }
        ("prometheus", _) => both!(&Tikv::new()),
        ("otel", _) => both!(&Otel::new()),
        _ => panic!("{USAGE}"),
    }
}

// ---- main --------------------------------------------------------------------------------

/// Criterion's output directory, found the way criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

fn main() {
    if let Ok(spec) = std::env::var("PEERS_BENCH_DRIVE") {
        drive(&spec);
        return;
    }
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    let mut peers = Peers::new();
    floor_parts(&mut criterion);
    one_thread(&mut criterion, &mut peers);
    two_threads(&mut criterion, &mut peers);
    retained(&mut criterion, &mut peers.ids);
    drop(peers);
    let sizes = scrapes(&mut criterion);
    criterion.final_summary();
    let dir = criterion_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("peers-sizes.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&sizes).expect("serializable"),
    )
    .expect("write sizes");
    println!("exposition sizes (bytes) written to {}", path.display());
    for (case, bytes) in &sizes {
        println!("  {case:<32} {bytes:>10}");
    }
}
