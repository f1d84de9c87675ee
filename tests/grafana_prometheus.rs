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

use pipeline_telemetry::grafana::{GrafanaCloudBuilder, GrafanaCloudPublisher, StatsHandle};
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

/// One unit of work through `Telemetry`: event `name` (retried `i % 4` times, failed when
/// `i % 5 == 0`) around one network call (failed when `i % 9 == 0`).
fn work(telemetry: &Telemetry, name: &str, i: usize) {
    let event = telemetry.events.track(name, &format!("task-{i}")).unwrap();
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

/// What a workload recorded, computed from the records themselves, keyed as [`vector`] keys
/// the stored series.
#[derive(Debug, Default)]
struct Recorded {
    /// By `event_name`, `status`.
    count: BTreeMap<Vec<String>, f64>,
    /// By `event_name`, `status`, in seconds.
    sums: BTreeMap<Vec<String>, f64>,
    /// By `event_name`.
    retries: BTreeMap<Vec<String>, f64>,
    /// By `operation`, `direction`.
    bytes: BTreeMap<Vec<String>, f64>,
    /// By `operation`, `status`.
    ops: BTreeMap<Vec<String>, f64>,
    /// By `operation`.
    latency_count: BTreeMap<Vec<String>, f64>,
}

fn recorded(telemetry: &Telemetry) -> Recorded {
    let mut r = Recorded::default();
    let mut sum_nanos: BTreeMap<Vec<String>, u128> = BTreeMap::new();
    for e in telemetry.events.all_metrics() {
        let key = vec![e.event_name.clone(), e.status.to_string()];
        *r.count.entry(key.clone()).or_default() += 1.0;
        *sum_nanos.entry(key).or_default() += e.duration().as_nanos();
        *r.retries.entry(vec![e.event_name.clone()]).or_default() += f64::from(e.retry_count);
    }
    r.sums = sum_nanos
        .into_iter()
        .map(|(k, n)| (k, n as f64 / 1e9))
        .collect();
    for n in telemetry.network.all_metrics() {
        *r.bytes
            .entry(vec![n.operation.clone(), "sent".into()])
            .or_default() += n.bytes_sent as f64;
        *r.bytes
            .entry(vec![n.operation.clone(), "received".into()])
            .or_default() += n.bytes_received as f64;
        let status = if n.is_failed() { "failed" } else { "completed" };
        *r.ops
            .entry(vec![n.operation.clone(), status.into()])
            .or_default() += 1.0;
        *r.latency_count
            .entry(vec![n.operation.clone()])
            .or_default() += 1.0;
    }
    r
}

/// Asserts that the latest values Prometheus holds for `instance` (job `it`) are exactly
/// the totals of `recorded`, and that the pipeline dropped no record.
fn assert_stored(server: &PrometheusServer, instance: &str, recorded: &Recorded) {
    let sel = format!("{{job=\"it\",instance=\"{instance}\"}}");
    let es = ["event_name", "status"];
    let stored = |metric: &str, keys: &[&str]| vector(server, &format!("{metric}{sel}"), keys);
    assert_eq!(stored("event_duration_seconds_count", &es), recorded.count);
    assert_eq!(stored("event_duration_seconds_sum", &es), recorded.sums);
    let inf =
        format!("event_duration_seconds_bucket{{job=\"it\",instance=\"{instance}\",le=\"+Inf\"}}");
    assert_eq!(vector(server, &inf, &es), recorded.count);
    assert_eq!(
        stored("event_retries_total", &["event_name"]),
        recorded.retries
    );
    assert_eq!(
        stored("network_bytes_total", &["operation", "direction"]),
        recorded.bytes
    );
    assert_eq!(
        stored("network_operations_total", &["operation", "status"]),
        recorded.ops
    );
    assert_eq!(
        stored("network_latency_seconds_count", &["operation"]),
        recorded.latency_count
    );
    let dropped = format!(
        "telemetry_records_dropped_total{{job=\"it\",instance=\"{instance}\",publisher=\"grafana-cloud\"}}"
    );
    assert_eq!(server.query_one(&dropped).unwrap(), 0.0);
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
        work(&telemetry, names[i % 3], i);
    }
    telemetry.flush(Duration::from_secs(30)).unwrap();

    let recorded = recorded(&telemetry);
    assert_eq!(recorded.count.values().sum::<f64>(), 90.0);
    assert_stored(&server, "workload", &recorded);
    // The dashboard's quantile query works on what was pushed.
    let p95 = server
        .query("histogram_quantile(0.95, sum by (le, event_name) (event_duration_seconds_bucket{job=\"it\"}))")
        .unwrap();
    assert_eq!(p95.len(), 3);
    assert!(p95.iter().all(|s| s.value.is_finite() && s.value >= 0.0));

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

/// Records `during` work through `telemetry` every 50 ms until at least `length` has passed
/// since `since` and a request has failed with an error containing `failure` (polling the
/// publisher's figures, at most a minute).
fn keep_working_through_outage(
    telemetry: &Telemetry,
    stats: &StatsHandle,
    i: &mut usize,
    since: Instant,
    length: Duration,
    failure: &str,
) {
    let failed_before = stats.stats().failed_requests;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        work(telemetry, "during", *i);
        *i += 1;
        let s = stats.stats();
        let seen = s.failed_requests > failed_before
            && s.last_error.as_deref().is_some_and(|e| e.contains(failure));
        if seen && since.elapsed() >= length {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no failed request saying {failure:?} within a minute: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "A receiver stopped for a few seconds and restarted misses nothing that was still in the
/// backlog", with the receiver's Prometheus process itself stopped (SIGTERM) and started
/// again on the same port and storage directory.
///
/// A workload records through `Telemetry` before, during and after an outage of about three
/// seconds while the publisher pushes every 100 ms. Prometheus answers 503 while it shuts
/// down; then, for the first half of the outage, the auth proxy is up and answers 502
/// (Prometheus is gone behind it); for the second half the
/// proxy is down too, so pushes fail at the transport level (connection refused). The proxy
/// comes back first (502 again, then whatever Prometheus answers while it replays its WAL),
/// then Prometheus. This proves:
/// - what Prometheus stored before the outage survives its restart, sample for sample;
/// - every push taken during the outage waited in the backlog and is stored afterwards at its
///   own time, with the value it had then (the stored count grows through the outage), and
///   each push is stored exactly once, in time order (no out-of-order or duplicate refusal:
///   pushes leave the backlog oldest first, with strictly increasing timestamps);
/// - the latest counts, sums and totals Prometheus holds equal exactly what the workload
///   recorded;
/// - the publisher retried (both 502 answers and refused connections) and dropped and was
///   refused nothing.
#[test]
fn a_prometheus_restart_loses_nothing_that_was_in_the_backlog() {
    let Some((mut server, mut proxy)) =
        start("a_prometheus_restart_loses_nothing_that_was_in_the_backlog")
    else {
        return;
    };
    let publisher = builder(&proxy, "test-key", "restart")
        .push_interval(Duration::from_millis(100))
        .unwrap()
        .max_attempts(100_000)
        .unwrap()
        .max_push_age(Duration::from_secs(300))
        .unwrap()
        .build()
        .unwrap();
    let stats = publisher.stats_handle();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    let in_flight = "events_in_flight{instance=\"restart\"}";
    let during_count =
        "event_duration_seconds_count{instance=\"restart\",event_name=\"during\",status=\"completed\"}";

    // About a second of work, stored push by push.
    let mut i = 0;
    for _ in 0..20 {
        work(&telemetry, "before", i);
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    telemetry.flush(Duration::from_secs(30)).unwrap();
    // Every push stored so far (each push carries the in-flight gauge).
    let stored_before = raw_samples(&server, in_flight);
    assert!(stored_before.len() >= 2, "{stored_before:?}");

    // The outage, first half: Prometheus is gone, the proxy answers 502.
    let old_pid = server.pid().unwrap();
    server.stop().unwrap_or_else(|e| panic!("{e}"));
    let stopped_at = now_ms();
    let at_stop = stats.stats();
    let outage = Instant::now();
    keep_working_through_outage(
        &telemetry,
        &stats,
        &mut i,
        outage,
        Duration::from_millis(1500),
        "HTTP 502",
    );
    // Second half: the proxy is gone too, connections are refused.
    proxy.stop();
    keep_working_through_outage(
        &telemetry,
        &stats,
        &mut i,
        outage,
        Duration::from_secs(3),
        "no answer",
    );
    let waiting = stats.stats();
    // Nothing was stored while Prometheus was down (but perhaps the push whose answer was
    // on its way when it exited).
    assert!(waiting.sent <= at_stop.sent + 1, "{at_stop:?}\n{waiting:?}");
    assert!(waiting.backlog_pushes >= 10, "{waiting:?}");
    assert!(
        waiting.failed_requests > at_stop.failed_requests && waiting.retried > at_stop.retried,
        "{waiting:?}"
    );
    assert_eq!(waiting.dropped, 0, "{waiting:?}");

    // Back: the proxy, then Prometheus on the same port and storage.
    proxy.restart();
    server.restart().unwrap_or_else(|e| panic!("{e}"));
    let back_at = now_ms();
    assert_ne!(server.pid(), Some(old_pid), "a new Prometheus process");
    for _ in 0..10 {
        work(&telemetry, "after", i);
        i += 1;
    }
    telemetry.flush(Duration::from_secs(60)).unwrap();
    telemetry.shutdown(Duration::from_secs(30)).unwrap();

    let s = stats.stats();
    assert_eq!(
        (
            s.dropped,
            s.refused,
            s.backlog_pushes,
            s.last_refusal.as_deref()
        ),
        (0, 0, 0, None),
        "{s:?}"
    );
    assert_eq!(s.sent, s.pushes, "{s:?}");
    assert!(s.retried >= waiting.retried && s.failed_requests >= waiting.failed_requests);

    // What was stored before the outage is still there after the restart, sample for sample,
    // and every push is stored once, in time order.
    let every = raw_samples(&server, in_flight);
    assert_eq!(
        &every[..stored_before.len()],
        stored_before.as_slice(),
        "samples stored before the restart"
    );
    assert_eq!(every.len() as u64, s.sent, "{every:?}");
    assert!(every.windows(2).all(|w| w[0].0 < w[1].0), "{every:?}");
    // The pushes taken during the outage are stored at their own times...
    let in_outage = |samples: &[(i64, f64)]| -> Vec<(i64, f64)> {
        samples
            .iter()
            .filter(|(t, _)| (stopped_at..=back_at).contains(t))
            .copied()
            .collect()
    };
    let taken_in_outage = waiting.pushes - at_stop.pushes;
    assert!(
        in_outage(&every).len() as u64 >= taken_in_outage,
        "{} samples stored from the outage, {taken_in_outage} pushes were taken in it",
        in_outage(&every).len()
    );
    // ...with the values they had then: the count grew through the outage.
    let during = in_outage(&raw_samples(&server, during_count));
    assert!(
        during.windows(2).all(|w| w[0].1 <= w[1].1)
            && during.first().map(|f| f.1) < during.last().map(|l| l.1),
        "{during:?}"
    );

    // The latest values are exactly what the workload recorded.
    let recorded = recorded(&telemetry);
    assert_eq!(recorded.count.values().sum::<f64>(), i as f64);
    assert!(recorded
        .count
        .contains_key(&vec!["during".to_owned(), "completed".to_owned()]));
    assert_stored(&server, "restart", &recorded);
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
