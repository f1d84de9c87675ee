//! The Prometheus publisher, scraped over real HTTP, by a real Prometheus server, and checked
//! by `promtool`.
#![cfg(feature = "prometheus")]

#[path = "support/prometheus_server.rs"]
mod prometheus_server;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pipeline_telemetry::prometheus::{
    ExpositionFormat, PrometheusError, PrometheusPublisher, OTHER_LABEL_VALUE,
};
use pipeline_telemetry::{
    EventMetrics, MetricsPublisher, NetworkMetrics, PublishError, Status, Telemetry,
    TelemetryConfig,
};
use prometheus_server::{
    http_get, http_request, promtool_check_metrics, require, scrape_config, PrometheusServer,
};

/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn scrape(addr: SocketAddr) -> String {
    let response = http_get(addr, "/metrics", &[]).expect("scrape");
    assert_eq!(response.status, 200);
    response.text()
}

fn hand_built_event() -> EventMetrics {
    let start = SystemTime::now();
    EventMetrics {
        event_name: "TestEvent".into(),
        task_id: "test-123".into(),
        start_time: start,
        end_time: Some(start + Duration::from_millis(1500)),
        status: Status::Completed,
        error: None,
        retry_count: 0,
        process_id: 1234,
    }
}

fn event(name: &str, status: Status, millis: u64) -> EventMetrics {
    EventMetrics {
        event_name: name.into(),
        status,
        end_time: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis)),
        start_time: SystemTime::UNIX_EPOCH,
        ..hand_built_event()
    }
}

/// Cases A8: publishing the hand-built event observes its duration once, under
/// `{event_name="TestEvent", status="completed"}`.
#[test]
fn a8_the_published_event_is_observed_exactly_once() {
    let publisher = PrometheusPublisher::new(0).unwrap();
    let addr = publisher.local_addr().unwrap();
    assert_ne!(addr.port(), 9090);
    assert!(addr.ip().is_loopback());
    publisher
        .publish_event_metrics(&hand_built_event())
        .unwrap();

    let text = scrape(addr);
    let count = "event_duration_seconds_count{event_name=\"TestEvent\",status=\"completed\"} 1";
    let sum = "event_duration_seconds_sum{event_name=\"TestEvent\",status=\"completed\"} 1.5";
    assert_eq!(text.lines().filter(|l| *l == count).count(), 1, "{text}");
    assert_eq!(text.lines().filter(|l| *l == sum).count(), 1, "{text}");
    // One observation in all: no other duration series, bucket 2.5 holds it, 1.0 does not.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("event_duration_seconds_count"))
            .count(),
        1
    );
    assert!(text.contains(
        "event_duration_seconds_bucket{event_name=\"TestEvent\",status=\"completed\",le=\"1.0\"} 0\n"
    ));
    assert!(text.contains(
        "event_duration_seconds_bucket{event_name=\"TestEvent\",status=\"completed\",le=\"2.5\"} 1\n"
    ));
    assert!(text.contains("event_retries_total{event_name=\"TestEvent\"} 0\n"));
}

#[test]
fn http_paths_methods_formats_and_gzip() {
    let publisher = PrometheusPublisher::new(0).unwrap();
    publisher
        .publish_event_metrics(&hand_built_event())
        .unwrap();
    let addr = publisher.local_addr().unwrap();

    let classic = http_get(addr, "/metrics", &[]).unwrap();
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(classic.header("connection"), Some("close"));
    assert!(!classic.text().contains("# EOF"));

    let om = http_get(addr, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]).unwrap();
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(om.text().contains("# TYPE event_retries counter\n"));
    assert!(om.text().ends_with("# EOF\n"));

    let zipped = http_get(
        addr,
        "/metrics",
        &[("Accept", PROMETHEUS_ACCEPT), ("Accept-Encoding", "gzip")],
    )
    .unwrap();
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&zipped.body[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, om.text());

    let query = http_get(addr, "/metrics?name[]=x", &[]).unwrap();
    assert_eq!(query.status, 200);
    for path in ["/", "/metrics/", "/favicon.ico", "/../metrics"] {
        assert_eq!(http_get(addr, path, &[]).unwrap().status, 404, "{path}");
    }
    assert_eq!(
        http_request(addr, "POST", "/metrics", &[]).unwrap().status,
        405
    );
    let head = http_request(addr, "HEAD", "/metrics", &[]).unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[test]
fn a_port_in_use_is_an_error_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = PrometheusPublisher::new(port).unwrap_err();
    assert!(matches!(error, PrometheusError::Bind { addr, .. } if addr.port() == port));
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("choose a free port"), "{message}");
}

#[test]
fn shutting_the_pipeline_down_frees_the_port() {
    let publisher = Arc::new(PrometheusPublisher::new(0).unwrap());
    let addr = publisher.local_addr().unwrap();
    let telemetry = Telemetry::new();
    telemetry
        .add_publisher(Box::new(publisher.clone()))
        .unwrap();
    assert_eq!(http_get(addr, "/metrics", &[]).unwrap().status, 200);
    telemetry.shutdown(Duration::from_secs(5)).unwrap();
    // Free at once: no waiting for a thread to notice.
    let rebound = TcpListener::bind(addr).expect("port still held after shutdown");
    drop(rebound);
    // What was recorded can still be rendered.
    assert!(publisher
        .render(ExpositionFormat::Prometheus)
        .contains("events_in_flight 0"));

    // Dropping the last handle frees it too.
    let dropped = PrometheusPublisher::new(0).unwrap();
    let addr = dropped.local_addr().unwrap();
    drop(dropped);
    TcpListener::bind(addr).expect("port still held after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_tokio_runtime() {
    let publisher = Arc::new(PrometheusPublisher::new(0).unwrap());
    let telemetry = Telemetry::new();
    telemetry
        .add_publisher(Box::new(publisher.clone()))
        .unwrap();
    telemetry
        .events
        .start_event("async-step", "a-1", None)
        .unwrap();
    telemetry.events.end_event("a-1", None).unwrap();
    telemetry.flush(Duration::from_secs(5)).unwrap();
    let addr = publisher.local_addr().unwrap();
    let text = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert!(text.contains(
        "event_duration_seconds_count{event_name=\"async-step\",status=\"completed\"} 1\n"
    ));
    telemetry.shutdown(Duration::from_secs(5)).unwrap();
    drop(publisher);
}

#[tokio::test(flavor = "current_thread")]
async fn works_inside_a_current_thread_tokio_runtime() {
    let publisher = PrometheusPublisher::new(0).unwrap();
    publisher
        .publish_event_metrics(&hand_built_event())
        .unwrap();
    let addr = publisher.local_addr().unwrap();
    // The server has its own thread, so a blocking scrape from this one is answered.
    assert!(scrape(addr).contains("TestEvent"));
    drop(publisher);
}

/// A publisher that never returns until released, to fill its queue.
struct Stalled(Mutex<std::sync::mpsc::Receiver<()>>);

impl MetricsPublisher for Stalled {
    fn name(&self) -> &str {
        "stalled"
    }
    fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
        let _ = self.0.lock().unwrap().recv_timeout(Duration::from_secs(10));
        Ok(())
    }
}

struct Failing;

impl MetricsPublisher for Failing {
    fn name(&self) -> &str {
        "failing \"quoted\""
    }
    fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
        Err(PublishError::backend("failing", "always"))
    }
}

#[test]
fn pipeline_health_is_exposed_per_publisher() {
    let telemetry = Telemetry::with_config(&TelemetryConfig::default().queue_capacity(2));
    let publisher = Arc::new(PrometheusPublisher::new(0).unwrap());
    let (release, gate) = std::sync::mpsc::channel();
    telemetry
        .add_publisher(Box::new(publisher.clone()))
        .unwrap();
    telemetry
        .add_publisher(Box::new(Stalled(Mutex::new(gate))))
        .unwrap();
    telemetry.add_publisher(Box::new(Failing)).unwrap();
    for i in 0..20 {
        let id = format!("t{i}");
        telemetry.events.start_event("step", &id, None).unwrap();
        telemetry.events.end_event(&id, None).unwrap();
        // Let the fast publishers keep up with their small queues.
        std::thread::sleep(Duration::from_millis(2));
    }
    telemetry
        .events
        .start_event("step", "open-1", None)
        .unwrap();
    telemetry
        .events
        .start_event("step", "open-2", None)
        .unwrap();
    telemetry
        .network
        .start_operation("n-1", "localhost", 1, None)
        .unwrap();

    // Wait until the publishers that keep up have handled all 20 records, so the figures
    // cannot move between reading them here and the scrape.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stats: BTreeMap<String, _> = loop {
        let stats: BTreeMap<String, _> = telemetry
            .publisher_stats()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let settled = ["prometheus", "failing \"quoted\""].iter().all(|name| {
            let s = &stats[*name];
            s.delivered + s.dropped + s.errors == 20 && s.queued == 0
        });
        if settled {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = scrape(publisher.local_addr().unwrap());
    assert!(text.contains("\nevents_in_flight 2\n"), "{text}");
    assert!(
        text.contains("\nnetwork_operations_in_flight 1\n"),
        "{text}"
    );
    let stalled_dropped = stats["stalled"].dropped;
    assert!(stalled_dropped > 0);
    assert!(text.contains(&format!(
        "telemetry_records_dropped_total{{publisher=\"stalled\"}} {stalled_dropped}\n"
    )));
    let failing_errors = stats["failing \"quoted\""].errors;
    assert!(text.contains(&format!(
        "telemetry_publish_errors_total{{publisher=\"failing \\\"quoted\\\"\"}} {failing_errors}\n"
    )));
    assert!(text.contains("telemetry_records_delivered_total{publisher=\"prometheus\"}"));
    for _ in 0..40 {
        let _ = release.send(());
    }
}

/// Hostile label values: each must survive our escaping, Prometheus's parser and storage.
fn hostile_names() -> Vec<String> {
    [
        "quote\"d",
        "back\\slash",
        "trailing backslash\\",
        "new\nline",
        "ünïcödé 日本語 🚀",
        "tab\there",
        "carriage\rreturn",
        "braces{a=\"b\"},=",
        "# HELP not a comment",
        "\\n is not a newline",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn the_classic_exposition_passes_promtool() {
    let Some(promtool) = require("the_classic_exposition_passes_promtool", "promtool") else {
        return;
    };
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    let mut registry = prometheus_client::registry::Registry::default();
    let user = Family::<Vec<(String, String)>, Counter>::default();
    registry.register("uploads", "Files uploaded by the user's code", user.clone());
    user.get_or_create(&vec![("path".into(), "a\"b\\c\nd".into())])
        .inc();

    let publisher = PrometheusPublisher::builder(0)
        .registry(registry)
        .max_label_values(8)
        .unwrap()
        .build()
        .unwrap();
    for name in hostile_names() {
        publisher
            .publish_event_metrics(&event(&name, Status::Failed, 30))
            .unwrap();
    }
    let mut op = NetworkMetrics::new("n", "h", 1, SystemTime::UNIX_EPOCH);
    op.operation = "op \"x\"\n".into();
    op.end_time = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(3));
    publisher.publish_network_metrics(&op).unwrap();

    let text = scrape(publisher.local_addr().unwrap());
    assert!(text.contains(OTHER_LABEL_VALUE));
    assert!(text.contains("uploads_total{path=\"a\\\"b\\\\c\\nd\"} 1\n"));
    if let Err(complaint) = promtool_check_metrics(&promtool, &text) {
        panic!("promtool refused the exposition: {complaint}\n---\n{text}");
    }
}

#[test]
fn real_prometheus_stores_what_the_workload_recorded() {
    const TEST: &str = "real_prometheus_stores_what_the_workload_recorded";
    let publisher = Arc::new(PrometheusPublisher::new(0).unwrap());
    let addr = publisher.local_addr().unwrap();
    let Some(server) = PrometheusServer::start(TEST, &scrape_config(&[("pipeline", addr)]), &[])
    else {
        return;
    };

    let telemetry = Arc::new(Telemetry::new());
    telemetry
        .add_publisher(Box::new(publisher.clone()))
        .unwrap();
    let names = ["extract", "transform", "load", "notify", "archive"];
    let operations = ["get", "put", "remote_call"];
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let telemetry = Arc::clone(&telemetry);
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    let id = format!("w{w}-{i}");
                    let name = names[(i as usize + w) % names.len()];
                    telemetry.events.start_event(name, &id, None).unwrap();
                    for _ in 0..(i % 3) {
                        telemetry.events.record_retry(&id).unwrap();
                    }
                    let op_id = format!("{id}/net");
                    let operation = operations[i as usize % operations.len()];
                    telemetry
                        .network
                        .start_operation(&op_id, "localhost", 8080, Some(operation))
                        .unwrap();
                    let error = (i % 7 == 0).then_some("connection refused");
                    telemetry
                        .network
                        .end_operation(&op_id, 100 + i, 10 * i, error)
                        .unwrap();
                    let failed = (i % 5 == 0).then_some("boom");
                    telemetry.events.end_event(&id, failed).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    telemetry
        .events
        .start_event("load", "still-running", None)
        .unwrap();
    telemetry.flush(Duration::from_secs(10)).unwrap();

    // What the workload recorded, from the pipeline's own records.
    let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut retries: BTreeMap<String, f64> = BTreeMap::new();
    let mut duration_sum = 0.0;
    for e in telemetry.events.all_metrics() {
        if e.status == Status::Pending {
            continue;
        }
        *counts
            .entry((e.event_name.clone(), e.status.to_string()))
            .or_default() += 1.0;
        *retries.entry(e.event_name.clone()).or_default() += f64::from(e.retry_count);
        duration_sum += e.duration().as_secs_f64();
    }
    let mut bytes: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut ops: BTreeMap<(String, String), f64> = BTreeMap::new();
    for n in telemetry.network.all_metrics() {
        *bytes
            .entry((n.operation.clone(), "sent".into()))
            .or_default() += n.bytes_sent as f64;
        *bytes
            .entry((n.operation.clone(), "received".into()))
            .or_default() += n.bytes_received as f64;
        let status = if n.is_failed() { "failed" } else { "completed" };
        *ops.entry((n.operation.clone(), status.into())).or_default() += 1.0;
    }
    assert_eq!(counts.values().sum::<f64>(), 1000.0);

    server
        .wait_for_scrape("pipeline", SystemTime::now(), Duration::from_secs(30))
        .unwrap();

    let stored = |expr: &str, a: &str, b: &str| -> BTreeMap<(String, String), f64> {
        server
            .query(expr)
            .unwrap()
            .into_iter()
            .map(|s| ((s.label(a).to_owned(), s.label(b).to_owned()), s.value))
            .collect()
    };
    assert_eq!(
        stored("event_duration_seconds_count", "event_name", "status"),
        counts
    );
    let stored_retries: BTreeMap<String, f64> = server
        .query("event_retries_total")
        .unwrap()
        .into_iter()
        .map(|s| (s.label("event_name").to_owned(), s.value))
        .collect();
    assert_eq!(stored_retries, retries);
    assert_eq!(
        stored("network_bytes_total", "operation", "direction"),
        bytes
    );
    assert_eq!(
        stored("network_operations_total", "operation", "status"),
        ops
    );
    let stored_sum = server.query_one("sum(event_duration_seconds_sum)").unwrap();
    assert!(
        (stored_sum - duration_sum).abs() < 1e-6,
        "{stored_sum} vs {duration_sum}"
    );
    // Buckets are cumulative: +Inf holds every observation.
    assert_eq!(
        server
            .query_one("sum(event_duration_seconds_bucket{le=\"+Inf\"})")
            .unwrap(),
        1000.0
    );
    assert_eq!(
        server
            .query_one("sum(network_latency_seconds_count)")
            .unwrap(),
        1000.0
    );
    assert_eq!(server.query_one("events_in_flight").unwrap(), 1.0);
    assert_eq!(
        server
            .query_one("telemetry_records_delivered_total{publisher=\"prometheus\"}")
            .unwrap(),
        2000.0
    );
    assert_eq!(
        server
            .query_one("telemetry_records_dropped_total{publisher=\"prometheus\"}")
            .unwrap(),
        0.0
    );
    telemetry.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn real_prometheus_keeps_hostile_label_values_and_folds_past_the_cap() {
    const TEST: &str = "real_prometheus_keeps_hostile_label_values_and_folds_past_the_cap";
    let hostile = PrometheusPublisher::new(0).unwrap();
    let capped = PrometheusPublisher::builder(0)
        .max_label_values(3)
        .unwrap()
        .build()
        .unwrap();
    let config = scrape_config(&[
        ("hostile", hostile.local_addr().unwrap()),
        ("capped", capped.local_addr().unwrap()),
    ]);
    let Some(server) = PrometheusServer::start(TEST, &config, &[]) else {
        return;
    };

    for name in hostile_names() {
        hostile
            .publish_event_metrics(&event(&name, Status::Completed, 20))
            .unwrap();
    }
    for i in 0..10 {
        for _ in 0..2 {
            capped
                .publish_event_metrics(&event(&format!("name-{i}"), Status::Completed, 20))
                .unwrap();
        }
    }
    let recorded = SystemTime::now();
    server
        .wait_for_scrape("hostile", recorded, Duration::from_secs(30))
        .unwrap();
    server
        .wait_for_scrape("capped", recorded, Duration::from_secs(30))
        .unwrap();

    let mut stored: Vec<String> = server
        .query("event_duration_seconds_count{job=\"hostile\"}")
        .unwrap()
        .into_iter()
        .map(|s| {
            assert_eq!(s.value, 1.0);
            s.label("event_name").to_owned()
        })
        .collect();
    stored.sort();
    let mut expected = hostile_names();
    expected.sort();
    assert_eq!(stored, expected);

    let capped_counts: BTreeMap<String, f64> = server
        .query("event_duration_seconds_count{job=\"capped\"}")
        .unwrap()
        .into_iter()
        .map(|s| (s.label("event_name").to_owned(), s.value))
        .collect();
    let expected: BTreeMap<String, f64> = [
        ("name-0", 2.0),
        ("name-1", 2.0),
        ("name-2", 2.0),
        (OTHER_LABEL_VALUE, 14.0),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into();
    assert_eq!(capped_counts, expected);
    assert_eq!(
        server
            .query_one("telemetry_label_values_folded_total{job=\"capped\",label=\"event_name\"}")
            .unwrap(),
        14.0
    );
}
