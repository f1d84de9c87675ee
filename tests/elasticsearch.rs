//! The Elasticsearch publisher against the in-suite fake Elasticsearch
//! (`support/fake_elasticsearch.rs`, which says why no real cluster can run here and which
//! documented behaviours it follows): indexing, retries, outages, bounds and deadlines,
//! transport options (credentials, gzip, TLS with a CA certificate over a real handshake).
#![cfg(feature = "elasticsearch")]

#[path = "support/fake_elasticsearch.rs"]
mod fake_elasticsearch;
#[path = "support/live_round_trip.rs"]
mod live_round_trip;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fake_elasticsearch::{FakeElasticsearch, Fault};
use pipeline_telemetry::elasticsearch::{
    ElasticsearchBuilder, ElasticsearchError, ElasticsearchPublisher, ElasticsearchStats,
    StatsHandle, TemplateStatus, DEFAULT_INDEX_PREFIX,
};
use pipeline_telemetry::{
    EventMetrics, MetricsPublisher, NetworkMetrics, PublishError, Status, Telemetry,
    TelemetryConfig,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn deadline() -> Instant {
    Instant::now() + WAIT
}

/// Quick settings for tests: short interval, timeout and backoff.
fn quick(server: &FakeElasticsearch) -> ElasticsearchBuilder {
    quick_hosts([server.url()])
}

fn quick_hosts<I: IntoIterator<Item = String>>(hosts: I) -> ElasticsearchBuilder {
    ElasticsearchPublisher::builder(hosts)
        .unwrap()
        .flush_interval(Duration::from_millis(20))
        .request_timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(5), Duration::from_millis(60))
}

/// The A7 record: "TestEvent" / "test-123", 1.5 s, completed, process 1234.
fn test_event() -> EventMetrics {
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

fn event(i: usize) -> EventMetrics {
    EventMetrics {
        task_id: format!("task-{i}"),
        ..test_event()
    }
}

/// Every document handed over has exactly one outcome or is still on its way.
fn assert_accounted(s: &ElasticsearchStats) {
    assert_eq!(
        s.accepted,
        s.sent + s.refused + s.dropped + s.buffered + s.in_flight,
        "{s:?}"
    );
}

/// Task ids of stored documents, with how many documents each has.
fn stored_task_ids(server: &FakeElasticsearch) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for doc in server.documents() {
        let id = doc.source["task_id"].as_str().unwrap().to_owned();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

fn assert_exactly_once(server: &FakeElasticsearch, expected: impl IntoIterator<Item = String>) {
    let stored = stored_task_ids(server);
    let expected: BTreeSet<String> = expected.into_iter().collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "missing {} ids: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    assert_eq!(stored.len(), expected.len(), "unexpected extra documents");
    for request in server.requests().iter().filter(|r| r.path == "/_bulk") {
        assert!(
            request.actions.iter().all(|a| *a == "create"),
            "non-create action: {:?}",
            request.actions
        );
    }
}

// ---- A7 and shapes ---------------------------------------------------------------------------

/// cases.md A7 in Rust form: created with hosts ["localhost:PORT"], one event published →
/// exactly one index operation, into an index whose name contains "event", with event_name
/// "TestEvent" and status "completed".
#[test]
fn a7_one_event_is_indexed_once() {
    let server = FakeElasticsearch::start();
    let host = format!("localhost:{}", server.addr().port());
    let publisher = ElasticsearchPublisher::new([host], DEFAULT_INDEX_PREFIX).unwrap();
    publisher.publish_event_metrics(&test_event()).unwrap();
    publisher.flush(deadline()).unwrap();

    let bulk: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/_bulk")
        .collect();
    let operations: usize = bulk.iter().map(|r| r.actions.len()).sum();
    assert_eq!(operations, 1);
    let docs = server.documents();
    assert_eq!(docs.len(), 1);
    assert!(docs[0].index.contains("event"), "{}", docs[0].index);
    assert_eq!(docs[0].source["event_name"], "TestEvent");
    assert_eq!(docs[0].source["status"], "completed");
    let stats = publisher.stats();
    assert_eq!((stats.sent, stats.refused, stats.dropped), (1, 0, 0));
}

fn utc_day(rfc3339: &str) -> String {
    rfc3339[..10].replace('-', ".")
}

fn assert_rfc3339_utc(v: &Value, field: &str) {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {v}"));
    assert!(s.ends_with('Z'), "{field} = {s}");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{field} = {s}: {e}"));
}

#[test]
fn documents_and_indices_have_the_documented_shape() {
    let server = FakeElasticsearch::start();
    let publisher = quick(&server)
        .index_prefix("shape")
        .unwrap()
        .build()
        .unwrap();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    telemetry
        .events
        .start_event("resize", "job-1", Some(77))
        .unwrap();
    telemetry.events.record_retry("job-1").unwrap();
    telemetry
        .network
        .start_operation("job-1/get", "storage.local", 9000, Some("get"))
        .unwrap();
    telemetry
        .network
        .end_operation("job-1/get", 1000, 500, None)
        .unwrap();
    telemetry
        .events
        .end_event("job-1", Some("disk \"full\""))
        .unwrap();
    telemetry.flush(WAIT).unwrap();

    let docs = server.documents();
    assert_eq!(docs.len(), 2);
    let event = docs
        .iter()
        .find(|d| d.source["metric_type"] == "event")
        .unwrap();
    let net = docs
        .iter()
        .find(|d| d.source["metric_type"] == "network")
        .unwrap();

    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        keys(&event.source),
        set(&[
            "@timestamp",
            "metric_type",
            "event_name",
            "task_id",
            "status",
            "start_time",
            "end_time",
            "duration",
            "error",
            "retry_count",
            "process_id"
        ])
    );
    assert_eq!(
        keys(&net.source),
        set(&[
            "@timestamp",
            "metric_type",
            "task_id",
            "host",
            "port",
            "operation",
            "start_time",
            "end_time",
            "latency",
            "bytes_sent",
            "bytes_received",
            "error"
        ])
    );
    let e = &event.source;
    assert_eq!(e["event_name"], "resize");
    assert_eq!(e["task_id"], "job-1");
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"], "disk \"full\"");
    assert_eq!(e["retry_count"], 1);
    assert_eq!(e["process_id"], 77);
    assert!(e["duration"].is_f64() || e["duration"].is_u64(), "{e}");
    for f in ["@timestamp", "start_time", "end_time"] {
        assert_rfc3339_utc(e, f);
    }
    assert_eq!(e["@timestamp"], e["end_time"]);
    let n = &net.source;
    assert_eq!(n["host"], "storage.local");
    assert_eq!(n["port"], 9000);
    assert_eq!(n["operation"], "get");
    assert_eq!(n["bytes_sent"], 1000);
    assert_eq!(n["bytes_received"], 500);
    assert!(n["bytes_sent"].is_u64());
    assert!(n["latency"].is_number());
    assert_eq!(n["error"], Value::Null);
    for f in ["@timestamp", "start_time", "end_time"] {
        assert_rfc3339_utc(n, f);
    }
    // Index of the record's UTC day; a 32-hex-digit _id.
    assert_eq!(
        event.index,
        format!("shape-event-{}", utc_day(e["@timestamp"].as_str().unwrap()))
    );
    assert_eq!(
        net.index,
        format!(
            "shape-network-{}",
            utc_day(n["@timestamp"].as_str().unwrap())
        )
    );
    for d in &docs {
        assert_eq!(d.id.len(), 32);
        assert!(d.id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // Bulk requests are NDJSON with the filter the retry decision reads.
    let bulk = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/_bulk")
        .unwrap();
    assert_eq!(bulk.headers["content-type"], "application/x-ndjson");
    assert!(bulk.query.contains("filter_path="), "{}", bulk.query);
}

#[test]
fn the_template_is_installed_once_with_explicit_mappings() {
    let server = FakeElasticsearch::start();
    for _ in 0..2 {
        let publisher = quick(&server).index_prefix("tpl").unwrap().build().unwrap();
        publisher.publish_event_metrics(&test_event()).unwrap();
        publisher.flush(deadline()).unwrap();
        publisher.shutdown(deadline()).unwrap();
    }
    let template = server.template("tpl").expect("template installed");
    assert_eq!(template["index_patterns"][0], "tpl-*");
    let props = &template["template"]["mappings"]["properties"];
    assert_eq!(props["event_name"]["type"], "keyword");
    assert_eq!(props["@timestamp"]["type"], "date");
    assert_eq!(props["duration"]["type"], "double");
    assert_eq!(props["bytes_sent"]["type"], "long");
    assert_eq!(props["error"]["type"], "text");
    assert_eq!(props["error"]["fields"]["keyword"]["type"], "keyword");
    let requests = server.requests();
    let puts = requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path == "/_index_template/tpl")
        .count();
    let gets = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/_index_template/tpl")
        .count();
    assert_eq!(
        (gets, puts),
        (2, 1),
        "the second publisher found it and left it alone"
    );
    // The template precedes the first document.
    let first_bulk = requests.iter().position(|r| r.path == "/_bulk").unwrap();
    let put = requests.iter().position(|r| r.method == "PUT").unwrap();
    assert!(put < first_bulk);
}

#[test]
fn a_refused_template_does_not_block_indexing() {
    let server = FakeElasticsearch::start();
    server.template_status(Some(403));
    let publisher = quick(&server).build().unwrap();
    publisher.publish_event_metrics(&test_event()).unwrap();
    publisher.flush(deadline()).unwrap();
    assert_eq!(server.doc_count(), 1);
    match publisher.stats().template {
        TemplateStatus::Failed(reason) => {
            assert!(
                reason.contains("403") && reason.contains("manage_index_templates"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

// ---- failures: exactly once --------------------------------------------------------------------

/// A retry storm: whole requests answered 429, 502, 503 and 504, answers lost after the
/// documents were stored (503 after storing, a stall past the client's timeout, a closed
/// connection), and single items answered 429. Every record is stored exactly once, and the
/// publisher counts each as sent once.
#[test]
fn every_record_arrives_exactly_once_across_a_retry_storm() {
    let server = FakeElasticsearch::start();
    server.push_faults([
        Fault::Status(429),
        Fault::StoreThenStatus(503),
        Fault::Status(502),
        Fault::StoreThenStall(Duration::from_millis(900)),
        Fault::Status(504),
        Fault::StoreThenClose,
        Fault::Status(503),
        Fault::StoreThenStatus(502),
    ]);
    server.reject_items(150);
    // Batches close at 100 documents only (never on the interval, whatever the machine's
    // load): a first batch small enough for the 150 item rejections to cover it in every
    // store-then-fail request would never be stored twice, so no 409 could be seen.
    let publisher = quick(&server)
        .request_timeout(Duration::from_millis(400))
        .flush_interval(Duration::from_secs(3600))
        .batch_max_docs(100)
        .retry_limit(50)
        .build()
        .unwrap();
    let stats = publisher.stats_handle();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    let n = 1_000;
    for i in 0..n {
        let id = format!("storm-{i}");
        telemetry.events.start_event("storm", &id, None).unwrap();
        telemetry.events.end_event(&id, None).unwrap();
    }
    telemetry.flush(WAIT).unwrap();

    assert_exactly_once(&server, (0..n).map(|i| format!("storm-{i}")));
    let s = stats.stats();
    assert_eq!(s.sent, n as u64, "{s:?}");
    assert_eq!((s.refused, s.dropped), (0, 0), "{s:?}");
    assert!(s.retried > 0 && s.failed_requests >= 8, "{s:?}");
    assert!(
        s.conflicts > 0,
        "retries of stored batches were answered 409: {s:?}"
    );
    // The server also answered 409s that never reached the client (answers lost on purpose).
    assert!(server.counts().conflicts >= s.conflicts);
    assert_eq!(server.counts().faults_served, 8);
    assert_accounted(&s);
    assert_eq!(telemetry.dropped(), 0);
}

/// Elasticsearch away for two seconds while records keep coming: they wait in the buffer and
/// all arrive, once.
#[test]
fn every_record_arrives_exactly_once_across_a_two_second_outage() {
    let server = FakeElasticsearch::start();
    let publisher = quick(&server)
        .batch_max_docs(50)
        .retry_limit(u32::MAX)
        .build()
        .unwrap();
    let stats = publisher.stats_handle();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    let record = |i: usize| {
        let id = format!("outage-{i}");
        telemetry.events.start_event("outage", &id, None).unwrap();
        telemetry.events.end_event(&id, None).unwrap();
    };
    for i in 0..100 {
        record(i);
    }
    telemetry.flush(WAIT).unwrap();
    assert_eq!(server.doc_count(), 100);

    server.go_down();
    let outage = Instant::now();
    let mut i = 100;
    // Records arrive throughout the outage (2 s), in small bursts.
    while outage.elapsed() < Duration::from_secs(2) {
        for _ in 0..20 {
            record(i);
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The publisher really was failing meanwhile.
    assert!(stats.stats().failed_requests > 0);
    server.come_back();
    for _ in 0..100 {
        record(i);
        i += 1;
    }
    telemetry.flush(WAIT).unwrap();

    assert_exactly_once(&server, (0..i).map(|k| format!("outage-{k}")));
    let s = stats.stats();
    assert_eq!(s.sent, i as u64, "{s:?}");
    assert_eq!((s.refused, s.dropped), (0, 0), "{s:?}");
    assert_accounted(&s);
}

/// The fake's outage itself: while down it keeps its port, so no other server of this binary
/// can take it and receive what was meant for this one, and resets each connection without an
/// answer; back up, it serves on the same port.
#[test]
fn a_fake_that_is_down_keeps_its_port_and_resets_connections() {
    use std::io::{ErrorKind, Read};
    let server = FakeElasticsearch::start();
    server.go_down();
    let rebind = std::net::TcpListener::bind(server.addr());
    assert!(rebind.is_err(), "the port was free while down");
    // Only a read: a write racing the reset would take the error, leaving the read an EOF.
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    assert!(
        matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    server.come_back();
    let publisher = quick(&server).build().unwrap();
    publisher.publish_event_metrics(&test_event()).unwrap();
    publisher.flush(deadline()).unwrap();
    assert_eq!(server.doc_count(), 1);
}

/// A restart: the node goes down while a batch is stored but unanswered and comes straight
/// back; then the publisher itself restarts and replays everything it had sent. Nothing is
/// lost and nothing doubled; the replay is counted as sent (409 conflicts).
#[test]
fn every_record_arrives_exactly_once_across_a_restart() {
    let server = FakeElasticsearch::start();
    server.push_faults([Fault::StoreThenStall(Duration::from_secs(3))]);
    let events: Vec<EventMetrics> = (0..300).map(event).collect();
    let publisher = quick(&server)
        .request_timeout(Duration::from_secs(10))
        .batch_max_docs(100)
        .retry_limit(u32::MAX)
        .build()
        .unwrap();
    for e in &events[..100] {
        publisher.publish_event_metrics(e).unwrap();
    }
    // The first batch is stored and its answer stalls: restart the node under it.
    assert!(server.wait_until(WAIT, |s| s.doc_count() == 100));
    server.restart();
    for e in &events[100..] {
        publisher.publish_event_metrics(e).unwrap();
    }
    publisher.flush(deadline()).unwrap();
    let first = publisher.stats();
    assert_eq!(first.sent, 300, "{first:?}");
    assert!(
        first.conflicts >= 100,
        "the stalled batch was retried: {first:?}"
    );
    publisher.shutdown(deadline()).unwrap();

    // The process restarts and replays its records.
    let replay = quick(&server).build().unwrap();
    for e in &events {
        replay.publish_event_metrics(e).unwrap();
    }
    replay.flush(deadline()).unwrap();
    let s = replay.stats();
    assert_eq!(
        (s.sent, s.conflicts, s.refused, s.dropped),
        (300, 300, 0, 0)
    );
    assert_exactly_once(&server, events.iter().map(|e| e.task_id.clone()));
}

#[test]
fn items_answered_429_are_retried_alone() {
    let server = FakeElasticsearch::start();
    server.reject_items(3);
    let publisher = quick(&server)
        .flush_interval(Duration::from_secs(3600))
        .batch_max_docs(10)
        .build()
        .unwrap();
    for i in 0..10 {
        publisher.publish_event_metrics(&event(i)).unwrap();
    }
    publisher.flush(deadline()).unwrap();
    let sizes: Vec<usize> = server
        .requests()
        .iter()
        .filter(|r| r.path == "/_bulk")
        .map(|r| r.actions.len())
        .collect();
    assert_eq!(sizes, [10, 3]);
    let s = publisher.stats();
    assert_eq!((s.sent, s.retried, s.refused), (10, 3, 0));
    assert!(s
        .last_error
        .unwrap()
        .contains("es_rejected_execution_exception"));
    assert_exactly_once(&server, (0..10).map(|i| format!("task-{i}")));
}

/// An index created earlier maps `error` as a number: failed events are refused with
/// Elasticsearch's reason, the rest of the batch and later batches are stored.
#[test]
fn a_mapping_error_is_reported_and_does_not_block_the_rest() {
    let server = FakeElasticsearch::start();
    server.override_field("error", "long");
    let publisher = quick(&server).batch_max_docs(20).build().unwrap();
    let stats = publisher.stats_handle();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    for i in 0..30 {
        let id = format!("m-{i}");
        telemetry.events.start_event("map", &id, None).unwrap();
        let error = (i % 10 == 0).then_some("disk full");
        telemetry.events.end_event(&id, error).unwrap();
    }
    telemetry.flush(WAIT).unwrap();
    let s = stats.stats();
    assert_eq!((s.sent, s.refused, s.dropped), (27, 3, 0), "{s:?}");
    let reason = s.last_refusal.unwrap();
    assert!(
        reason.contains("document_parsing_exception")
            && reason.contains("failed to parse field [error] of type [long]"),
        "{reason}"
    );
    assert!(reason.contains("-event-"), "names the index: {reason}");
    // Later records still go through.
    telemetry.events.start_event("map", "after", None).unwrap();
    telemetry.events.end_event("after", None).unwrap();
    telemetry.flush(WAIT).unwrap();
    assert_eq!(stats.stats().sent, 28);
    assert_eq!(server.doc_count(), 28);
    assert_accounted(&stats.stats());
}

#[test]
fn a_refused_request_is_counted_with_the_reason() {
    let server = FakeElasticsearch::start();
    server.require_auth("ApiKey right-key");
    let publisher = quick(&server)
        .api_key("wrong-key")
        .unwrap()
        .build()
        .unwrap();
    publisher.publish_event_metrics(&test_event()).unwrap();
    publisher.flush(deadline()).unwrap();
    let s = publisher.stats();
    assert_eq!((s.sent, s.refused), (0, 1));
    let reason = s.last_refusal.unwrap();
    assert!(
        reason.contains("401") && reason.contains("security_exception"),
        "{reason}"
    );
    assert!(!reason.contains("wrong-key"));
    // The template request was refused as well; that is reported, not retried forever.
    assert!(
        matches!(s.template, TemplateStatus::Failed(_)),
        "{:?}",
        s.template
    );
}

// ---- hosts ---------------------------------------------------------------------------------

#[test]
fn requests_go_round_robin_and_a_failing_host_is_skipped() {
    let a = FakeElasticsearch::start();
    let b = FakeElasticsearch::start();
    let publisher = quick_hosts([a.url(), b.url()])
        .install_template(false)
        .batch_max_docs(1)
        .host_cooldown(Duration::from_secs(3600))
        .build()
        .unwrap();
    for i in 0..4 {
        publisher.publish_event_metrics(&event(i)).unwrap();
        publisher.flush(deadline()).unwrap();
    }
    assert_eq!((a.counts().bulk_requests, b.counts().bulk_requests), (2, 2));

    // A now fails every request: after its first failure it is left alone.
    a.push_faults(vec![Fault::Status(503); 100]);
    for i in 4..20 {
        publisher.publish_event_metrics(&event(i)).unwrap();
        publisher.flush(deadline()).unwrap();
    }
    assert_eq!(a.counts().bulk_requests, 3, "one failure, then skipped");
    assert_eq!(b.counts().bulk_requests, 2 + 16);
    let s = publisher.stats();
    assert_eq!((s.sent, s.dropped, s.refused), (20, 0, 0));
    assert_eq!(a.doc_count() + b.doc_count(), 20);
}

#[test]
fn a_host_that_is_down_is_skipped() {
    let a = FakeElasticsearch::start();
    let b = FakeElasticsearch::start();
    a.go_down();
    let publisher = quick_hosts([a.url(), b.url()])
        .install_template(false)
        .batch_max_docs(1)
        .host_cooldown(Duration::from_secs(3600))
        .build()
        .unwrap();
    for i in 0..10 {
        publisher.publish_event_metrics(&event(i)).unwrap();
        publisher.flush(deadline()).unwrap();
    }
    let s = publisher.stats();
    assert_eq!((s.sent, s.failed_requests), (10, 1), "{s:?}");
    assert_eq!(b.doc_count(), 10);
}

// ---- bounds, deadlines ---------------------------------------------------------------------

#[test]
fn the_buffer_is_bounded_and_drops_the_oldest() {
    let server = FakeElasticsearch::start();
    server.go_down();
    let publisher = quick(&server)
        .flush_interval(Duration::from_secs(3600))
        .batch_max_docs(10)
        .buffer_max_docs(50)
        .retry_limit(u32::MAX)
        .build()
        .unwrap();
    // A first batch of 10 goes in flight (and keeps failing)...
    for i in 0..10 {
        publisher.publish_event_metrics(&event(i)).unwrap();
    }
    assert!(
        wait_for(&publisher.stats_handle(), |s| s.in_flight == 10),
        "{:?}",
        publisher.stats()
    );
    // ... then 190 more: 50 wait, the rest are dropped oldest first.
    for i in 10..200 {
        publisher.publish_event_metrics(&event(i)).unwrap();
    }
    let s = publisher.stats();
    assert_eq!((s.buffered, s.dropped_buffer_full), (50, 140), "{s:?}");
    server.come_back();
    publisher.flush(deadline()).unwrap();
    let s = publisher.stats();
    assert_eq!((s.sent, s.dropped), (60, 140), "{s:?}");
    let stored = stored_task_ids(&server);
    for i in (0..10).chain(150..200) {
        assert!(
            stored.contains_key(&format!("task-{i}")),
            "newest kept: task-{i}"
        );
    }
    assert_accounted(&s);
}

#[test]
fn the_buffer_is_bounded_in_bytes() {
    let server = FakeElasticsearch::start();
    server.go_down();
    let publisher = quick(&server)
        .flush_interval(Duration::from_secs(3600))
        .batch_max_docs(1)
        .batch_max_bytes(4096)
        .buffer_max_bytes(8192)
        .retry_limit(u32::MAX)
        .build()
        .unwrap();
    let big = |i: usize| EventMetrics {
        error: Some("x".repeat(1000)),
        status: Status::Failed,
        ..event(i)
    };
    for i in 0..50 {
        publisher.publish_event_metrics(&big(i)).unwrap();
    }
    let s = publisher.stats();
    assert!(
        s.buffered >= 5 && s.buffered <= 7,
        "about 8 KiB of ~1.4 KiB documents: {s:?}"
    );
    assert_eq!(
        s.dropped_buffer_full + s.buffered + s.in_flight,
        50,
        "{s:?}"
    );
    drop(publisher);
}

fn wait_for(handle: &StatsHandle, done: impl Fn(&ElasticsearchStats) -> bool) -> bool {
    // A readiness poll on the publisher's own figures.
    let end = deadline();
    while Instant::now() < end {
        if done(&handle.stats()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn flush_and_shutdown_honour_their_deadlines_and_count_what_is_left() {
    let server = FakeElasticsearch::start();
    server.go_down();
    let publisher = quick(&server).retry_limit(u32::MAX).build().unwrap();
    let handle = publisher.stats_handle();
    for i in 0..25 {
        publisher.publish_event_metrics(&event(i)).unwrap();
    }
    let flush = publisher.flush(Instant::now() + Duration::from_millis(100));
    assert!(
        matches!(
            flush,
            Err(PublishError::DeadlineExceeded { queued: 25, .. })
        ),
        "{flush:?}"
    );
    let _ = publisher.shutdown(Instant::now() + Duration::from_millis(200));
    assert!(
        wait_for(&handle, |s| {
            // Every snapshot adds up, the moment the batch is given up included.
            assert_accounted(s);
            s.dropped_shutdown == 25
        }),
        "the 25 documents left at shutdown are never counted as dropped: {:?}",
        handle.stats()
    );
    let s = handle.stats();
    assert_eq!(
        (s.sent, s.dropped, s.buffered, s.in_flight),
        (0, 25, 0, 0),
        "{s:?}"
    );
    assert_accounted(&s);
    assert!(matches!(
        publisher.publish_event_metrics(&test_event()),
        Err(PublishError::Closed { .. })
    ));
}

#[test]
fn retries_stop_at_the_retry_limit() {
    let server = FakeElasticsearch::start();
    server.push_faults(vec![Fault::Status(503); 10]);
    let publisher = quick(&server).retry_limit(2).build().unwrap();
    publisher.publish_event_metrics(&test_event()).unwrap();
    publisher.flush(deadline()).unwrap();
    let s = publisher.stats();
    assert_eq!(
        (s.sent, s.retried, s.dropped_retry_limit),
        (0, 2, 1),
        "{s:?}"
    );
    assert_eq!(server.counts().bulk_requests, 3);
}

// ---- transport options ---------------------------------------------------------------------

#[test]
fn api_key_basic_and_bearer_headers_are_sent_and_never_shown() {
    let server = FakeElasticsearch::start();
    let cases: Vec<(ElasticsearchBuilder, &str, &str)> = vec![
        (
            quick(&server).api_key("a2V5OnNlY3JldA==").unwrap(),
            "ApiKey a2V5OnNlY3JldA==",
            "a2V5OnNlY3JldA==",
        ),
        (
            quick(&server).basic_auth("elastic", "changeme").unwrap(),
            "Basic ZWxhc3RpYzpjaGFuZ2VtZQ==",
            "changeme",
        ),
        (
            quick(&server).bearer_token("tok-123").unwrap(),
            "Bearer tok-123",
            "tok-123",
        ),
    ];
    for (i, (builder, header, secret)) in cases.into_iter().enumerate() {
        server.require_auth(header);
        assert!(!format!("{builder:?}").contains(secret));
        let publisher = builder.build().unwrap();
        assert!(!format!("{publisher:?}").contains(secret));
        publisher.publish_event_metrics(&event(i)).unwrap();
        publisher.flush(deadline()).unwrap();
        let s = publisher.stats();
        assert_eq!(s.sent, 1, "{header}: {s:?}");
        assert!(!format!("{s:?}").contains(secret));
    }
}

#[test]
fn gzip_bodies_are_sent_compressed() {
    let server = FakeElasticsearch::start();
    let publisher = quick(&server)
        .gzip(true)
        .batch_max_docs(200)
        .build()
        .unwrap();
    for i in 0..200 {
        publisher.publish_event_metrics(&event(i)).unwrap();
    }
    publisher.flush(deadline()).unwrap();
    assert_eq!(server.doc_count(), 200);
    let bulk: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/_bulk")
        .collect();
    assert!(bulk
        .iter()
        .all(|r| r.gzip && r.headers["content-encoding"] == "gzip"));
    let s = publisher.stats();
    let wire: usize = bulk.iter().map(|r| r.wire_bytes).sum();
    assert_eq!(s.bytes_sent, wire as u64);
    assert!(
        wire < 200 * 200,
        "compressed: {wire} bytes for 200 documents"
    );
}

#[test]
fn a_server_without_the_product_header_is_still_served() {
    let server = FakeElasticsearch::start();
    server.product_header(false);
    let publisher = quick(&server).build().unwrap();
    publisher.publish_event_metrics(&test_event()).unwrap();
    publisher.flush(deadline()).unwrap();
    assert_eq!(server.doc_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_tokio_runtime() {
    let server = FakeElasticsearch::start();
    let publisher = quick(&server).build().unwrap();
    let stats = publisher.stats_handle();
    let telemetry = Arc::new(Telemetry::new());
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    let t = Arc::clone(&telemetry);
    tokio::spawn(async move {
        t.events.start_event("async", "a-1", None).unwrap();
        t.events.end_event("a-1", None).unwrap();
    })
    .await
    .unwrap();
    let t = Arc::clone(&telemetry);
    tokio::task::spawn_blocking(move || t.flush(WAIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.stats().sent, 1);
    assert_eq!(server.doc_count(), 1);
}

// ---- construction errors -----------------------------------------------------------------------

#[test]
fn bad_prefixes_and_hosts_fail_at_construction() {
    for prefix in [
        "Upper",
        "with space",
        "-dash",
        "_under",
        "+plus",
        "a*b",
        "a,b",
        "a#b",
        "",
    ] {
        let err = ElasticsearchPublisher::new(["localhost:9200"], prefix).unwrap_err();
        assert!(
            matches!(err, ElasticsearchError::InvalidIndexPrefix { .. }),
            "{prefix:?}: {err}"
        );
    }
    let err = ElasticsearchPublisher::new(["http://user:pw@host:9200"], "p").unwrap_err();
    assert!(!err.to_string().contains("pw@"), "{err}");
    assert!(matches!(
        ElasticsearchPublisher::new(Vec::<&str>::new(), "p"),
        Err(ElasticsearchError::NoHosts)
    ));
}

/// Issue 6's "CA certificate for TLS", over a real handshake: the fake serves HTTPS only,
/// with a certificate signed by a CA made for it. Trusting that CA, documents are indexed
/// whether the host is named by IP address or by DNS name (both are in the certificate).
#[test]
fn documents_are_indexed_over_https_with_the_configured_ca() {
    let server = FakeElasticsearch::start_https();
    let ca = server.ca_pem().unwrap();
    let hosts = [
        server.url(),
        format!("https://localhost:{}", server.addr().port()),
    ];
    for (n, host) in hosts.into_iter().enumerate() {
        assert!(host.starts_with("https://"), "{host}");
        let publisher = quick_hosts([host.clone()])
            .ca_certificate_pem(ca.as_bytes())
            .unwrap()
            .build()
            .unwrap();
        for i in 0..10 {
            publisher.publish_event_metrics(&event(n * 10 + i)).unwrap();
        }
        publisher.flush(deadline()).unwrap();
        let s = publisher.stats();
        assert_eq!(
            (s.sent, s.failed_requests, s.dropped, s.last_error.clone()),
            (10, 0, 0, None),
            "{host}: {s:?}"
        );
    }
    assert_exactly_once(&server, (0..20).map(|i| format!("task-{i}")));
}

/// Without the CA (the built-in Mozilla roots) or with another CA, the handshake fails:
/// no request reaches the server, the last error names the host and the certificate
/// problem, then says what to do about the CA setting, and every document is accounted for
/// (retried, then given up at the retry limit), none lost silently.
#[test]
fn an_untrusted_server_certificate_fails_the_handshake_and_is_reported() {
    let server = FakeElasticsearch::start_https();
    let other_ca = include_str!("support/test_ca.pem");
    let set_a_ca = "; set ca_certificate_pem or ca_certificate_file to the CA that signed the \
                    cluster's certificate";
    let wrong_ca = "; the configured CA did not sign the cluster's certificate";
    let cases = [
        ("built-in roots", quick(&server), set_a_ca, wrong_ca),
        (
            "another CA",
            quick(&server)
                .ca_certificate_pem(other_ca.as_bytes())
                .unwrap(),
            wrong_ca,
            set_a_ca,
        ),
    ];
    for (trust, builder, hint, not_hint) in cases {
        let publisher = builder
            .flush_interval(Duration::from_secs(3600))
            .retry_limit(2)
            .build()
            .unwrap();
        for i in 0..5 {
            publisher.publish_event_metrics(&event(i)).unwrap();
        }
        publisher.flush(deadline()).unwrap();
        let s = publisher.stats();
        // One batch, tried three times: 2 retries of 5 documents, then all 5 given up.
        assert_eq!(
            (s.accepted, s.sent, s.failed_requests, s.retried),
            (5, 0, 3, 10),
            "{trust}: {s:?}"
        );
        assert_eq!(
            (s.dropped, s.dropped_retry_limit, s.refused),
            (5, 5, 0),
            "{trust}: {s:?}"
        );
        assert_accounted(&s);
        let error = s.last_error.unwrap_or_default();
        assert!(
            error.starts_with(&server.url())
                && error.ends_with(&format!("invalid peer certificate: UnknownIssuer{hint}"))
                && !error.contains(not_hint),
            "{trust}: {error}"
        );
    }
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_eq!(server.doc_count(), 0);
}

/// A CA that cannot work is refused when it is given, as PEM data or as a file, instead of
/// failing every handshake later: a CERTIFICATE block with no certificate inside, a key (here
/// the fake's kind of key, made by rcgen) and an empty file. The file's CA, once fixed,
/// builds.
#[test]
fn an_unusable_ca_certificate_is_refused_when_given() {
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let garbage =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    let cases = [
        (
            garbage,
            "block 1 is not a valid X.509 certificate (BadEncoding)",
        ),
        (
            &key,
            "block 1 is a \"PRIVATE KEY\" block, not a CERTIFICATE",
        ),
        ("", "it holds no \"-----BEGIN CERTIFICATE-----\" block"),
    ];
    let path = std::env::temp_dir().join(format!("es-ca-test-{}.pem", std::process::id()));
    let builder = ElasticsearchPublisher::builder(["https://localhost:9200"]).unwrap();
    for (pem, reason) in cases {
        std::fs::write(&path, pem).unwrap();
        for (source, result) in [
            (
                "ca_certificate_pem".to_owned(),
                builder.clone().ca_certificate_pem(pem.as_bytes()),
            ),
            (
                format!("file {}", path.display()),
                builder.clone().ca_certificate_file(&path),
            ),
        ] {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{source} accepted {pem:?}"));
            assert!(
                matches!(err, ElasticsearchError::InvalidCaCertificate { .. }),
                "{err:?}"
            );
            assert!(
                err.to_string().starts_with(&format!(
                    "the CA certificate in {source} is not usable: {reason}; give the PEM file \
                     of the CA that signed the cluster's certificate"
                )),
                "{err}"
            );
        }
    }
    std::fs::write(&path, include_str!("support/test_ca.pem")).unwrap();
    let built = builder.ca_certificate_file(&path).and_then(|b| b.build());
    let _ = std::fs::remove_file(&path);
    built.unwrap();
}

#[test]
fn a_ca_certificate_is_read_from_pem() {
    // A self-signed CA certificate (CN=pipeline-telemetry-test) as Elasticsearch's http_ca.crt,
    // without its key: a parse fixture, and the "another CA" no server here is signed by.
    let pem = include_str!("support/test_ca.pem");
    let builder = ElasticsearchPublisher::builder(["https://localhost:9200"]).unwrap();
    builder
        .ca_certificate_pem(pem.as_bytes())
        .unwrap()
        .build()
        .unwrap();
}

// ---- Prometheus -------------------------------------------------------------------------------

#[cfg(feature = "prometheus")]
#[test]
fn counters_appear_in_a_prometheus_registry() {
    let server = FakeElasticsearch::start();
    let publisher = quick(&server).build().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    publisher.register_metrics(&mut registry);
    for i in 0..3 {
        publisher.publish_event_metrics(&event(i)).unwrap();
    }
    publisher.flush(deadline()).unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "elasticsearch_documents_sent_total 3",
        "elasticsearch_documents_refused_total 0",
        "elasticsearch_documents_retried_total 0",
        "elasticsearch_documents_dropped_total{reason=\"buffer_full\"} 0",
        "elasticsearch_documents_buffered 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
}

// ---- Kibana saved objects ------------------------------------------------------------------

/// Every line of the saved-objects file is a JSON object with `type`, `id` and `attributes`;
/// every reference points to an object in the file; the data view is over
/// `event-pipeline-metrics-*` with `@timestamp`; every field a panel reads is mapped by the
/// index template.
#[test]
fn kibana_saved_objects_parse_and_references_resolve() {
    let text = include_str!("../dashboards/kibana-pipeline-telemetry.ndjson");
    let objects: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)))
        .collect();
    let mut by_id = HashMap::new();
    for o in &objects {
        let kind = o["type"].as_str().expect("type");
        let id = o["id"].as_str().expect("id");
        assert!(o["attributes"].is_object(), "{kind}/{id} has attributes");
        assert!(
            by_id.insert(id.to_owned(), kind.to_owned()).is_none(),
            "duplicate id {id}"
        );
    }
    for o in &objects {
        for r in o["references"].as_array().into_iter().flatten() {
            let id = r["id"].as_str().unwrap();
            let kind = r["type"].as_str().unwrap();
            assert_eq!(
                by_id.get(id).map(String::as_str),
                Some(kind),
                "{} references missing {kind}/{id}",
                o["id"]
            );
        }
    }
    let data_view = objects
        .iter()
        .find(|o| o["type"] == "index-pattern")
        .unwrap();
    assert_eq!(data_view["attributes"]["title"], "event-pipeline-metrics-*");
    assert_eq!(data_view["attributes"]["timeFieldName"], "@timestamp");
    let dashboard = objects.iter().find(|o| o["type"] == "dashboard").unwrap();
    let panels: Vec<Value> =
        serde_json::from_str(dashboard["attributes"]["panelsJSON"].as_str().unwrap()).unwrap();
    assert!(panels.len() >= 4);

    // Fields read by the Lens layers exist in the template's mappings.
    let template = ElasticsearchPublisher::new(["localhost:9200"], DEFAULT_INDEX_PREFIX)
        .unwrap()
        .index_template();
    let props = &template["template"]["mappings"]["properties"];
    let mut fields = BTreeSet::new();
    collect_source_fields(&objects, &mut fields);
    assert!(!fields.is_empty());
    for f in fields {
        let base = f.strip_suffix(".keyword").unwrap_or(&f);
        assert!(props.get(base).is_some(), "panel field {f} is not mapped");
    }
}

fn collect_source_fields(values: &[Value], out: &mut BTreeSet<String>) {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "sourceField" {
                        if let Some(s) = v.as_str().filter(|s| *s != "___records___") {
                            out.insert(s.to_owned());
                        }
                    }
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    for v in values {
        walk(v, out);
    }
}

#[test]
fn network_records_published_directly_keep_their_fields() {
    let server = FakeElasticsearch::start();
    let publisher = quick(&server).build().unwrap();
    let start = SystemTime::now();
    let op = NetworkMetrics {
        end_time: Some(start + Duration::from_millis(250)),
        bytes_sent: 1000,
        bytes_received: 500,
        ..NetworkMetrics::new("net-1", "localhost", 8080, start)
    };
    publisher.publish_network_metrics(&op).unwrap();
    publisher.flush(deadline()).unwrap();
    let doc = &server.documents()[0];
    assert!(doc.index.starts_with("event-pipeline-metrics-network-"));
    assert_eq!(doc.source["latency"], 0.25);
    assert_eq!(doc.source["operation"], "remote_call");
}

#[test]
fn the_pipeline_reports_the_publisher_under_its_name() {
    let server = FakeElasticsearch::start();
    let telemetry = Telemetry::with_config(&TelemetryConfig::default().queue_capacity(16));
    telemetry
        .add_publisher(Box::new(quick(&server).build().unwrap()))
        .unwrap();
    telemetry.events.start_event("e", "t", None).unwrap();
    telemetry.events.end_event("t", None).unwrap();
    telemetry.flush(WAIT).unwrap();
    let stats = telemetry.publisher_stats();
    assert_eq!(stats[0].name, "elasticsearch");
    assert_eq!(stats[0].delivered, 1);
    telemetry.shutdown(WAIT).unwrap();
}

/// The live test's round trip (`tests/elasticsearch_live.rs`), here against the fake server
/// with basic auth required, so that its code runs on every test run.
#[test]
fn the_live_round_trip_passes_against_the_fake_server() {
    let server = FakeElasticsearch::start();
    server.require_auth("Basic ZWxhc3RpYzpjaGFuZ2VtZQ==");
    live_round_trip::round_trip(&live_round_trip::Target {
        url: server.url(),
        api_key: None,
        basic: Some(("elastic".into(), "changeme".into())),
        ca_cert: None,
    });
    assert_eq!(server.doc_count(), 0, "the round trip deleted its indices");
    assert!(server
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/_count")));
}

/// With both publishers, the Elasticsearch figures are served on the Prometheus endpoint: the
/// registry they are registered in is handed to the Prometheus publisher.
#[cfg(feature = "prometheus")]
#[test]
fn with_both_publishers_the_figures_are_on_the_prometheus_endpoint() {
    use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher};

    let server = FakeElasticsearch::start();
    let es = quick(&server).build().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    es.register_metrics(&mut registry);
    let prometheus = Arc::new(
        PrometheusPublisher::builder(0)
            .registry(registry)
            .build_without_server()
            .unwrap(),
    );
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(es)).unwrap();
    telemetry
        .add_publisher(Box::new(Arc::clone(&prometheus)))
        .unwrap();
    telemetry.events.start_event("both", "b-1", None).unwrap();
    telemetry.events.end_event("b-1", None).unwrap();
    telemetry.flush(WAIT).unwrap();
    let text = prometheus.render(ExpositionFormat::Prometheus);
    assert!(
        text.lines()
            .any(|l| l == "elasticsearch_documents_sent_total 1"),
        "{text}"
    );
    assert!(text.contains("event_duration_seconds"), "{text}");
}
