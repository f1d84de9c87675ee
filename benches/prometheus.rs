//! The Prometheus publisher against its peers, in the same run: `metrics` +
//! `metrics-exporter-prometheus`, and `prometheus-client` used directly, for the same workload.
//!
//! * `prom_record/*`: recording one finished event (duration histogram under
//!   `{event_name, status}` and retry counter under `{event_name}`) or one network operation
//!   (bytes sent and received, latency histogram, operation counter) from the record the
//!   publisher is handed, cycling over 100 event names x 2 statuses and 10 operations. For the
//!   peers that is the code a publisher built on them would run: labels made from the record,
//!   looked up, updated.
//! * `prom_pipeline/*`: a start/end pair through `Telemetry` with the publisher attached,
//!   end to end: the Prometheus publisher's series are aggregated on the recording thread, and
//!   the timed region includes a flush every few thousand pairs, so it is the sustained cost;
//!   with a queued publisher that does nothing, for reference (its delivery thread converts
//!   every record).
//! * `prom_scrape/*`: one rendering of the exposition holding 100 event names x 2 statuses and
//!   10 operations (14 buckets), in each format, and ours gzip-compressed as the endpoint sends
//!   it when asked. Sizes print in the summary.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-prom cargo bench --bench prometheus` (a summary with
//! ratios to the fastest peer prints at the end).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{black_box, Criterion};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher, DEFAULT_BUCKETS};
use pipeline_telemetry::{
    EventMetrics, MetricsPublisher, NetworkMetrics, Status, Telemetry, TelemetryConfig,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

const EVENT_NAMES: usize = 100;
const OPERATIONS: usize = 10;

fn events() -> Vec<EventMetrics> {
    let start = SystemTime::now();
    let mut rng = fastrand::Rng::with_seed(7);
    (0..EVENT_NAMES * 2 * 8)
        .map(|i| EventMetrics {
            event_name: format!("event-{:03}", i % EVENT_NAMES),
            task_id: format!("task-{i}"),
            start_time: start,
            end_time: Some(start + Duration::from_micros(rng.u64(100..3_000_000))),
            status: if (i / EVENT_NAMES) % 2 == 0 {
                Status::Completed
            } else {
                Status::Failed
            },
            error: None,
            retry_count: rng.u32(0..3),
            process_id: 1,
        })
        .collect()
}

fn network_ops() -> Vec<NetworkMetrics> {
    let start = SystemTime::now();
    let mut rng = fastrand::Rng::with_seed(9);
    (0..OPERATIONS * 16)
        .map(|i| NetworkMetrics {
            end_time: Some(start + Duration::from_micros(rng.u64(50..500_000))),
            bytes_sent: rng.u64(0..10_000),
            bytes_received: rng.u64(0..100_000),
            error: (i % 7 == 0).then(|| "refused".to_owned()),
            operation: format!("operation-{}", i % OPERATIONS),
            ..NetworkMetrics::new(format!("op-{i}"), "storage.local", 9000, start)
        })
        .collect()
}

// ---- the peers -------------------------------------------------------------------------

/// `metrics` macros into `metrics-exporter-prometheus`'s recorder.
struct MetricsRs {
    handle: PrometheusHandle,
}

impl MetricsRs {
    fn install() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&DEFAULT_BUCKETS)
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("one recorder per process");
        MetricsRs { handle }
    }

    fn event(&self, e: &EventMetrics) {
        let status = e.status.as_str();
        metrics::histogram!("event_duration_seconds",
            "event_name" => e.event_name.clone(), "status" => status)
        .record(e.duration().as_secs_f64());
        metrics::counter!("event_retries_total", "event_name" => e.event_name.clone())
            .increment(u64::from(e.retry_count));
    }

    fn network(&self, n: &NetworkMetrics) {
        let op = &n.operation;
        metrics::counter!("network_bytes_total", "operation" => op.clone(), "direction" => "sent")
            .increment(n.bytes_sent);
        metrics::counter!("network_bytes_total",
            "operation" => op.clone(), "direction" => "received")
        .increment(n.bytes_received);
        metrics::histogram!("network_latency_seconds", "operation" => op.clone())
            .record(n.latency().as_secs_f64());
        let status = if n.is_failed() { "failed" } else { "completed" };
        metrics::counter!("network_operations_total",
            "operation" => op.clone(), "status" => status)
        .increment(1);
    }

    fn render(&self) -> String {
        self.handle.render()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event_name: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    event_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpDirection {
    operation: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpStatus {
    operation: String,
    status: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// `prometheus-client` families in a registry.
struct ClientRust {
    registry: Registry,
    duration: Histograms<EventLabels>,
    retries: Family<NameLabel, Counter>,
    bytes: Family<OpDirection, Counter>,
    latency: Histograms<OpLabel>,
    operations: Family<OpStatus, Counter>,
}

impl ClientRust {
    fn new() -> Self {
        let mut registry = Registry::default();
        let duration: Histograms<EventLabels> = Family::new_with_constructor(histogram);
        let retries = Family::<NameLabel, Counter>::default();
        let bytes = Family::<OpDirection, Counter>::default();
        let latency: Histograms<OpLabel> = Family::new_with_constructor(histogram);
        let operations = Family::<OpStatus, Counter>::default();
        registry.register("event_duration_seconds", "Duration", duration.clone());
        registry.register("event_retries", "Retries", retries.clone());
        registry.register("network_bytes", "Bytes", bytes.clone());
        registry.register("network_latency_seconds", "Latency", latency.clone());
        registry.register("network_operations", "Operations", operations.clone());
        ClientRust {
            registry,
            duration,
            retries,
            bytes,
            latency,
            operations,
        }
    }

    fn event(&self, e: &EventMetrics) {
        self.duration
            .get_or_create(&EventLabels {
                event_name: e.event_name.clone(),
                status: e.status.as_str(),
            })
            .observe(e.duration().as_secs_f64());
        self.retries
            .get_or_create(&NameLabel {
                event_name: e.event_name.clone(),
            })
            .inc_by(u64::from(e.retry_count));
    }

    fn network(&self, n: &NetworkMetrics) {
        let op = &n.operation;
        self.bytes
            .get_or_create(&OpDirection {
                operation: op.clone(),
                direction: "sent",
            })
            .inc_by(n.bytes_sent);
        self.bytes
            .get_or_create(&OpDirection {
                operation: op.clone(),
                direction: "received",
            })
            .inc_by(n.bytes_received);
        self.latency
            .get_or_create(&OpLabel {
                operation: op.clone(),
            })
            .observe(n.latency().as_secs_f64());
        self.operations
            .get_or_create(&OpStatus {
                operation: op.clone(),
                status: if n.is_failed() { "failed" } else { "completed" },
            })
            .inc();
    }

    fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }

    fn render_classic(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("encode");
        out
    }
}

// ---- measurements ----------------------------------------------------------------------

fn record(c: &mut Criterion, ours: &PrometheusPublisher, peer: &MetricsRs, client: &ClientRust) {
    let events = events();
    let ops = network_ops();
    let mut group = c.benchmark_group("prom_record");
    macro_rules! cycle {
        ($name:expr, $items:expr, $record:expr) => {{
            let items = &$items;
            let mut i = 0usize;
            group.bench_function($name, |b| {
                b.iter(|| {
                    i = (i + 1) % items.len();
                    $record(black_box(&items[i]))
                })
            });
        }};
    }
    cycle!("event/ours", events, |e| ours
        .publish_event_metrics(e)
        .expect("infallible"));
    cycle!("event/metrics-exporter-prometheus", events, |e| peer
        .event(e));
    cycle!("event/prometheus-client", events, |e| client.event(e));
    cycle!("network/ours", ops, |n| ours
        .publish_network_metrics(n)
        .expect("infallible"));
    cycle!("network/metrics-exporter-prometheus", ops, |n| peer
        .network(n));
    cycle!("network/prometheus-client", ops, |n| client.network(n));
    group.finish();
}

/// Start/end pairs through a `Telemetry` with `publisher` attached, until it has aggregated
/// them all.
fn pipeline_pairs(telemetry: &Telemetry, iters: u64, next: &mut u64) -> Duration {
    let ids: Vec<String> = (0..iters).map(|i| format!("task-{}", *next + i)).collect();
    *next += iters;
    let names: Vec<String> = (0..EVENT_NAMES).map(|i| format!("event-{i:03}")).collect();
    let start = Instant::now();
    // Flushing every chunk keeps the queue from overflowing (drops would flatter the figure):
    // the time measured is that of the slower of the recording thread and the publisher's.
    for (c, chunk) in ids.chunks(PIPELINE_CHUNK).enumerate() {
        for (i, id) in chunk.iter().enumerate() {
            let name = &names[(c * PIPELINE_CHUNK + i) % EVENT_NAMES];
            telemetry
                .events
                .start_event(name, id, None)
                .expect("unique id");
            telemetry.events.end_event(id, None).expect("in flight");
        }
        telemetry
            .flush(Duration::from_secs(60))
            .expect("the publisher keeps up");
    }
    start.elapsed()
}

/// Pairs recorded between two flushes in `prom_pipeline`.
const PIPELINE_CHUNK: usize = 8192;

struct Noop;
impl MetricsPublisher for Noop {}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("prom_pipeline");
    // Retention 0: only the publishing path differs between the cases.
    let config = TelemetryConfig::default().retention(0);
    for (id, publisher) in [
        (
            "pair/prometheus",
            Box::new(
                PrometheusPublisher::builder(0)
                    .build_without_server()
                    .unwrap(),
            ) as Box<dyn MetricsPublisher>,
        ),
        ("pair/noop-publisher", Box::new(Noop)),
    ] {
        let telemetry = Telemetry::with_config(&config);
        telemetry.add_publisher(publisher).unwrap();
        let mut next = 0u64;
        group.bench_function(id, |b| {
            b.iter_custom(|iters| pipeline_pairs(&telemetry, iters, &mut next));
        });
        let dropped = telemetry.dropped();
        assert_eq!(
            dropped, 0,
            "{id}: records were dropped; the figure would flatter"
        );
    }
    group.finish();
}

fn scrape(
    c: &mut Criterion,
    ours: &PrometheusPublisher,
    peer: &MetricsRs,
    client: &ClientRust,
) -> BTreeMap<&'static str, usize> {
    // Every series exists in all three (each event name with both statuses, every operation).
    for e in events() {
        ours.publish_event_metrics(&e).unwrap();
        peer.event(&e);
        client.event(&e);
    }
    for n in network_ops() {
        ours.publish_network_metrics(&n).unwrap();
        peer.network(&n);
        client.network(&n);
    }
    // metrics-exporter-prometheus keeps raw samples until a render drains them: drain now, so
    // every case below renders the same steady state.
    let _ = peer.render();

    let mut sizes = BTreeMap::new();
    sizes.insert(
        "ours classic",
        ours.render(ExpositionFormat::Prometheus).len(),
    );
    sizes.insert(
        "ours OpenMetrics",
        ours.render(ExpositionFormat::OpenMetrics).len(),
    );
    sizes.insert(
        "ours classic gzip",
        gzip(&ours.render(ExpositionFormat::Prometheus)).len(),
    );
    sizes.insert("metrics-exporter-prometheus", peer.render().len());
    sizes.insert(
        "prometheus-client OpenMetrics",
        client.render_openmetrics().len(),
    );
    sizes.insert("prometheus-client classic", client.render_classic().len());

    let mut group = c.benchmark_group("prom_scrape");
    group.bench_function("classic/ours", |b| {
        b.iter(|| ours.render(ExpositionFormat::Prometheus))
    });
    group.bench_function("openmetrics/ours", |b| {
        b.iter(|| ours.render(ExpositionFormat::OpenMetrics))
    });
    group.bench_function("classic-gzip/ours", |b| {
        b.iter(|| gzip(&ours.render(ExpositionFormat::Prometheus)))
    });
    // A whole scrape over loopback HTTP, as Prometheus does it: connect, request, render,
    // (compress,) send, read to the end.
    let served = PrometheusPublisher::builder(0)
        .build()
        .expect("a free port");
    for e in events() {
        served.publish_event_metrics(&e).unwrap();
    }
    for n in network_ops() {
        served.publish_network_metrics(&n).unwrap();
    }
    let addr = served.local_addr().expect("served");
    group.bench_function("http-openmetrics/ours", |b| {
        b.iter(|| http_scrape(addr, false))
    });
    group.bench_function("http-openmetrics-gzip/ours", |b| {
        b.iter(|| http_scrape(addr, true))
    });
    sizes.insert("ours OpenMetrics gzip (HTTP body)", http_scrape(addr, true));
    group.bench_function("classic/metrics-exporter-prometheus", |b| {
        b.iter(|| peer.render())
    });
    group.bench_function("classic/prometheus-client", |b| {
        b.iter(|| client.render_classic())
    });
    group.bench_function("openmetrics/prometheus-client", |b| {
        b.iter(|| client.render_openmetrics())
    });
    group.finish();
    sizes
}

/// One scrape as Prometheus sends it; returns the bytes received after the head.
fn http_scrape(addr: std::net::SocketAddr, gzip: bool) -> usize {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text;\
         version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n{}\r\n",
        if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        }
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::with_capacity(400_000);
    stream.read_to_end(&mut response).expect("read");
    let head = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full response");
    assert!(response.starts_with(b"HTTP/1.1 200"));
    response.len() - head - 4
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes()).expect("in memory");
    encoder.finish().expect("in memory")
}

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

/// Criterion's median for one benchmark, in ns per iteration.
fn median(group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn summary(sizes: &BTreeMap<&'static str, usize>) {
    let rows: [(&str, &[&str]); 5] = [
        (
            "prom_record/event",
            &["ours", "metrics-exporter-prometheus", "prometheus-client"],
        ),
        (
            "prom_record/network",
            &["ours", "metrics-exporter-prometheus", "prometheus-client"],
        ),
        ("prom_pipeline/pair", &["prometheus", "noop-publisher"]),
        (
            "prom_scrape/classic",
            &["ours", "metrics-exporter-prometheus", "prometheus-client"],
        ),
        ("prom_scrape/openmetrics", &["ours", "prometheus-client"]),
    ];
    println!("\n== summary: criterion median per iteration; ratio to the first row ==");
    for (prefix, cases) in rows {
        let (group, sub) = prefix.split_once('/').unwrap_or((prefix, ""));
        let figures: Vec<(&str, Option<f64>)> = cases
            .iter()
            .map(|case| (*case, median(group, &format!("{sub}_{case}"))))
            .collect();
        let base = figures[0].1;
        for (case, ns) in &figures {
            match (ns, base) {
                (Some(ns), Some(base)) => println!(
                    "{prefix:<28} {case:<28} {:>11}  x{:.2}",
                    human(*ns),
                    ns / base
                ),
                _ => println!("{prefix:<28} {case:<28} (not run)"),
            }
        }
    }
    for case in ["classic-gzip", "http-openmetrics", "http-openmetrics-gzip"] {
        if let Some(ns) = median("prom_scrape", &format!("{case}_ours")) {
            let row = format!("prom_scrape/{case}");
            println!("{row:<28} {:<28} {:>11}", "ours", human(ns));
        }
    }
    println!("\n== exposition sizes (100 event names x 2 statuses, 10 operations) ==");
    for (what, bytes) in sizes {
        println!("{what:<32} {bytes:>9} bytes");
    }
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let ours = PrometheusPublisher::builder(0)
        .build_without_server()
        .expect("defaults are valid");
    let peer = MetricsRs::install();
    let client = ClientRust::new();
    let ours = Arc::new(ours);
    record(&mut criterion, &ours, &peer, &client);
    pipeline(&mut criterion);
    let sizes = scrape(&mut criterion, &ours, &peer, &client);
    criterion.final_summary();
    summary(&sizes);
}
