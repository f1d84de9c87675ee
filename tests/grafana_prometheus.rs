//! The Grafana Cloud publisher pushing to a real Prometheus server started with
//! `--web.enable-remote-write-receiver` on 127.0.0.1, behind a small proxy that demands
//! basic auth as Grafana Cloud does. What Prometheus stored is read back through its HTTP
//! API.
//!
//! Without the `prometheus` binary these tests print a loud SKIP, and fail under CI
//! (`CI=true`); `scripts/test.sh` installs the Debian package.
#![cfg(feature = "grafana")]

#[path = "support/prometheus_server.rs"]
mod prometheus_server;
#[path = "support/remote_write_receiver.rs"]
mod receiver;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pipeline_telemetry::grafana::{GrafanaCloudBuilder, GrafanaCloudPublisher};
use pipeline_telemetry::{EventMetrics, MetricsPublisher, PublishError, Status, Telemetry};
use prometheus_server::{http_get, url_encode, PrometheusServer};
use receiver::{auth_proxy, basic, Receiver};

/// No scraping: everything Prometheus holds came by remote write.
const CONFIG: &str = "global:\n  evaluation_interval: 1m\n";
const RECEIVER_FLAG: &str = "--web.enable-remote-write-receiver";

fn start(test: &str) -> Option<(PrometheusServer, Receiver)> {
    let server = PrometheusServer::start(test, CONFIG, &[RECEIVER_FLAG])?;
    let proxy = Receiver::start(auth_proxy(server.addr(), basic("test-org", "test-key")));
    Some((server, proxy))
}

fn builder(proxy: &Receiver, key: &str, instance: &str) -> GrafanaCloudBuilder {
    GrafanaCloudPublisher::builder(key, "test-org", proxy.url("/api/prom/push"))
        .job("it")
        .and_then(|b| b.instance(instance))
        .and_then(|b| b.backoff(Duration::from_millis(20), Duration::from_millis(200)))
        .unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The instant vector of `expr` as `labels -> value`, keyed by the values of `keys`.
fn vector(server: &PrometheusServer, expr: &str, keys: &[&str]) -> BTreeMap<Vec<String>, f64> {
    server
        .query(expr)
        .unwrap()
        .into_iter()
        .map(|s| {
            let key = keys.iter().map(|k| s.label(k).to_owned()).collect();
            (key, s.value)
        })
        .collect()
}

/// Every stored sample `(timestamp in ms, value)` of the one series `selector` matches,
/// over the last hour (a range-vector query returns raw samples).
fn raw_samples(server: &PrometheusServer, selector: &str) -> Vec<(i64, f64)> {
    let target = format!(
        "/api/v1/query?query={}",
        url_encode(&format!("{selector}[1h]"))
    );
    let response = http_get(server.addr(), &target, &[]).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["status"], "success", "{body}");
    let result = body["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "one series for {selector}: {body}");
    result[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let t = pair[0].as_f64().unwrap();
            let v: f64 = pair[1].as_str().unwrap().parse().unwrap();
            ((t * 1000.0).round() as i64, v)
        })
        .collect()
}

fn event(name: &str, status: Status, millis: u64) -> EventMetrics {
    let start = SystemTime::now();
    EventMetrics {
        event_name: name.into(),
        task_id: format!("{name}-{millis}"),
        start_time: start,
        end_time: Some(start + Duration::from_millis(millis)),
        status,
        error: None,
        retry_count: 0,
        process_id: 1,
    }
}

/// A real workload through `Telemetry`: the counts, sums and totals Prometheus stored are
/// exactly those of the records, and every request carried the basic-auth credentials.
#[test]
fn counts_and_sums_stored_by_prometheus_equal_the_workload() {
    let Some((server, proxy)) = start("counts_and_sums_stored_by_prometheus_equal_the_workload")
    else {
        return;
    };
    let publisher = builder(&proxy, "test-key", "workload")
        .push_interval(Duration::from_millis(200))
        .unwrap()
        .build()
        .unwrap();
    let stats = publisher.stats_handle();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();

    let names = ["load", "transform", "save"];
    for i in 0..90 {
        let event = telemetry
            .events
            .track(names[i % 3], &format!("task-{i}"))
            .unwrap();
        for _ in 0..(i % 4) {
            event.retry().unwrap();
        }
        {
            let operation = ["fetch", "store"][i % 2];
            let mut call = telemetry
                .network
                .track(&format!("net-{i}"), "storage.local", 9000, Some(operation))
                .unwrap();
            call.sent(100 + i as u64);
            call.received(1000 * i as u64);
            if i % 9 == 0 {
                call.fail("connection reset").unwrap();
            } else {
                call.complete().unwrap();
            }
        }
        if i % 5 == 0 {
            event.fail("boom").unwrap();
        } else {
            event.complete().unwrap();
        }
    }
    telemetry.flush(Duration::from_secs(30)).unwrap();

    // What the workload recorded, from the records themselves.
    let mut count: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut sum_nanos: BTreeMap<Vec<String>, u128> = BTreeMap::new();
    let mut retries: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    for e in telemetry.events.all_metrics() {
        let key = vec![e.event_name.clone(), e.status.to_string()];
        *count.entry(key.clone()).or_default() += 1.0;
        *sum_nanos.entry(key).or_default() += e.duration().as_nanos();
        *retries.entry(vec![e.event_name.clone()]).or_default() += f64::from(e.retry_count);
    }
    let sums: BTreeMap<_, f64> = sum_nanos
        .into_iter()
        .map(|(k, n)| (k, n as f64 / 1e9))
        .collect();
    let mut bytes: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut ops: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut latency_count: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    for n in telemetry.network.all_metrics() {
        *bytes
            .entry(vec![n.operation.clone(), "sent".into()])
            .or_default() += n.bytes_sent as f64;
        *bytes
            .entry(vec![n.operation.clone(), "received".into()])
            .or_default() += n.bytes_received as f64;
        let status = if n.is_failed() { "failed" } else { "completed" };
        *ops.entry(vec![n.operation.clone(), status.into()])
            .or_default() += 1.0;
        *latency_count.entry(vec![n.operation.clone()]).or_default() += 1.0;
    }
    assert_eq!(count.values().sum::<f64>(), 90.0);

    let sel = "{job=\"it\",instance=\"workload\"}";
    let es = ["event_name", "status"];
    assert_eq!(
        vector(&server, &format!("event_duration_seconds_count{sel}"), &es),
        count
    );
    assert_eq!(
        vector(&server, &format!("event_duration_seconds_sum{sel}"), &es),
        sums
    );
    let inf = "event_duration_seconds_bucket{job=\"it\",le=\"+Inf\"}";
    assert_eq!(vector(&server, inf, &es), count);
    assert_eq!(
        vector(
            &server,
            &format!("event_retries_total{sel}"),
            &["event_name"]
        ),
        retries
    );
    assert_eq!(
        vector(
            &server,
            &format!("network_bytes_total{sel}"),
            &["operation", "direction"]
        ),
        bytes
    );
    assert_eq!(
        vector(
            &server,
            &format!("network_operations_total{sel}"),
            &["operation", "status"]
        ),
        ops
    );
    assert_eq!(
        vector(
            &server,
            &format!("network_latency_seconds_count{sel}"),
            &["operation"]
        ),
        latency_count
    );
    // The dashboard's quantile query works on what was pushed.
    let p95 = server
        .query("histogram_quantile(0.95, sum by (le, event_name) (event_duration_seconds_bucket{job=\"it\"}))")
        .unwrap();
    assert_eq!(p95.len(), 3);
    assert!(p95.iter().all(|s| s.value.is_finite() && s.value >= 0.0));
    assert_eq!(
        server
            .query_one("telemetry_records_dropped_total{job=\"it\",publisher=\"grafana-cloud\"}")
            .unwrap(),
        0.0
    );

    // Basic auth went with every request; none was refused.
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    let expected = basic("test-org", "test-key");
    assert!(requests
        .iter()
        .all(|r| r.header("authorization") == Some(expected.as_str())));
    telemetry.shutdown(Duration::from_secs(30)).unwrap();
    let s = stats.stats();
    assert_eq!((s.refused, s.dropped), (0, 0), "{s:?}");
    assert_eq!(s.sent, s.pushes, "{s:?}");
    assert_eq!(proxy.requests().len() as u64, s.requests);
}

/// The receiver goes away for a couple of seconds while pushes keep coming; once it is back,
/// every push that waited in the backlog is stored, in order, at its own time.
#[test]
fn a_receiver_outage_loses_nothing_that_was_in_the_backlog() {
    let Some((server, mut proxy)) =
        start("a_receiver_outage_loses_nothing_that_was_in_the_backlog")
    else {
        return;
    };
    let publisher = builder(&proxy, "test-key", "outage")
        .push_interval(Duration::from_millis(100))
        .unwrap()
        .max_attempts(100_000)
        .unwrap()
        .max_push_age(Duration::from_secs(300))
        .unwrap()
        .build()
        .unwrap();
    let stats = publisher.stats_handle();
    for i in 0..5 {
        publisher
            .publish_event_metrics(&event("before", Status::Completed, 10 + i))
            .unwrap();
    }
    publisher.flush(soon()).unwrap();

    proxy.stop();
    let stopped_at = now_ms();
    for i in 0..7 {
        publisher
            .publish_event_metrics(&event("during", Status::Completed, 20 + i))
            .unwrap();
    }
    // Wait (polling) until 15 pushes are waiting: about a second and a half of outage.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.stats().backlog_pushes < 15 {
        assert!(Instant::now() < deadline, "{:?}", stats.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiting = stats.stats();
    assert!(
        waiting.failed_requests >= 1 && waiting.sent == 1,
        "{waiting:?}"
    );
    let restarted_at = now_ms();
    proxy.restart();
    for i in 0..3 {
        publisher
            .publish_event_metrics(&event("after", Status::Failed, 30 + i))
            .unwrap();
    }
    publisher.flush(soon()).unwrap();
    publisher.shutdown(soon()).unwrap();

    let s = stats.stats();
    assert_eq!((s.dropped, s.refused, s.backlog_pushes), (0, 0, 0), "{s:?}");
    assert_eq!(s.sent, s.pushes, "{s:?}");
    // Every push is stored once, in time order: the in-flight gauge is in every push.
    let every = raw_samples(&server, "events_in_flight{instance=\"outage\"}");
    assert_eq!(every.len() as u64, s.sent, "{every:?}");
    assert!(every.windows(2).all(|w| w[0].0 < w[1].0));
    // The pushes made during the outage are there, at their own times, with their values.
    let during = raw_samples(
        &server,
        "event_duration_seconds_count{instance=\"outage\",event_name=\"during\"}",
    );
    let in_outage = during
        .iter()
        .filter(|(t, _)| (stopped_at..=restarted_at).contains(t))
        .count();
    assert!(
        in_outage as u64 >= waiting.backlog_pushes - 1,
        "{in_outage} samples stored from the outage, {} pushes were waiting",
        waiting.backlog_pushes
    );
    assert!(during.iter().all(|(_, v)| *v == 7.0), "{during:?}");
    let totals = vector(
        &server,
        "event_duration_seconds_count{instance=\"outage\"}",
        &["event_name", "status"],
    );
    let key = |n: &str, s: &str| vec![n.to_owned(), s.to_owned()];
    assert_eq!(
        totals,
        BTreeMap::from([
            (key("after", "failed"), 3.0),
            (key("before", "completed"), 5.0),
            (key("during", "completed"), 7.0),
        ])
    );
}

/// A receiver that demands other credentials answers 401: the flush reports it at once,
/// naming the status, and each push is sent exactly once, never retried.
#[test]
fn a_401_is_reported_and_not_retried() {
    let Some((server, proxy)) = start("a_401_is_reported_and_not_retried") else {
        return;
    };
    let publisher = builder(&proxy, "wrong-key", "unauthorized")
        .push_interval(Duration::from_secs(3600))
        .unwrap()
        .build()
        .unwrap();
    publisher
        .publish_event_metrics(&event("denied", Status::Completed, 5))
        .unwrap();
    let error = publisher.flush(soon()).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, PublishError::Backend { .. }), "{error:?}");
    assert!(
        text.contains("HTTP 401") && text.contains("authentication error"),
        "{text}"
    );
    assert!(text.contains("metrics:write"), "says what to check: {text}");
    assert!(!text.contains("wrong-key"));
    assert_eq!(proxy.requests().len(), 1, "refused once, not retried");
    let s = publisher.stats();
    assert_eq!(
        (s.refused, s.retried, s.failed_requests, s.requests),
        (1, 0, 0, 1)
    );
    assert!(s.last_refusal.unwrap().contains("401"));

    // The next push is tried once too.
    assert!(publisher.flush(soon()).is_err());
    assert_eq!(proxy.requests().len(), 2);
    assert_eq!(publisher.stats().refused, 2);
    assert!(server
        .query("event_duration_seconds_count{job=\"it\"}")
        .unwrap()
        .is_empty());
}
