//! The acceptance cases of the original library (`/work/shared/seed/cases.md`): part A over the
//! process-wide API and the composite publisher, the output shapes of part B, and the deliberate
//! differences of part C.
//!
//! The process-wide state is shared by every test of this binary, so each test that touches it
//! holds [`GLOBAL`] for its whole run and starts from an empty state, as the original's set-up
//! did.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pipeline_telemetry::{
    get_failed_events, get_failed_network_ops, get_metrics, get_retry_stats, get_slow_events,
    get_slow_network_ops, global, monitor_events, CompositePublisher, EventMetrics,
    MetricsPublisher, NetworkMetrics, PublishError, Status, Telemetry, TelemetryError,
    DEFAULT_SLOW_THRESHOLD,
};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(10);

static GLOBAL: Mutex<()> = Mutex::new(());

/// Takes the process-wide state for one test: no publishers, no records, no totals.
fn setup() -> MutexGuard<'static, ()> {
    let guard = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
    monitor_events(Vec::new()).expect("detach publishers");
    global::reset();
    guard
}

/// A publisher that keeps everything it receives and counts its shutdowns.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<EventMetrics>>,
    network: Mutex<Vec<NetworkMetrics>>,
    shutdowns: AtomicU64,
}

impl Recorder {
    fn events(&self) -> Vec<EventMetrics> {
        self.events.lock().unwrap().clone()
    }
    fn network(&self) -> Vec<NetworkMetrics> {
        self.network.lock().unwrap().clone()
    }
    fn event_ids(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.task_id).collect()
    }
    fn network_ids(&self) -> Vec<String> {
        self.network().into_iter().map(|n| n.task_id).collect()
    }
}

impl MetricsPublisher for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn publish_event_metrics(&self, metrics: &EventMetrics) -> Result<(), PublishError> {
        self.events.lock().unwrap().push(metrics.clone());
        Ok(())
    }
    fn publish_network_metrics(&self, metrics: &NetworkMetrics) -> Result<(), PublishError> {
        self.network.lock().unwrap().push(metrics.clone());
        Ok(())
    }
    fn shutdown(&self, _deadline: Instant) -> Result<(), PublishError> {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Fails every record.
struct Failing;

impl MetricsPublisher for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
        Err(PublishError::backend("failing", "backend down"))
    }
    fn publish_network_metrics(&self, _: &NetworkMetrics) -> Result<(), PublishError> {
        Err(PublishError::backend("failing", "backend down"))
    }
}

/// Panics on every record.
struct Panicking;

impl MetricsPublisher for Panicking {
    fn name(&self) -> &str {
        "panicking"
    }
    fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
        panic!("publisher bug (expected by the test)")
    }
    fn publish_network_metrics(&self, _: &NetworkMetrics) -> Result<(), PublishError> {
        panic!("publisher bug (expected by the test)")
    }
}

/// The event record the original's publisher tests build by hand.
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

/// The network record of the original's publisher tests.
fn hand_built_network() -> NetworkMetrics {
    let start = SystemTime::now();
    NetworkMetrics {
        end_time: Some(start + Duration::from_millis(250)),
        bytes_sent: 1000,
        bytes_received: 500,
        ..NetworkMetrics::new("test-net-1", "localhost", 8080, start)
    }
}

fn parse_metrics() -> Vec<Value> {
    let json = get_metrics();
    let value: Value = serde_json::from_str(&json).expect("get_metrics is valid JSON");
    value
        .as_array()
        .expect("get_metrics is a JSON array")
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Part A
// ---------------------------------------------------------------------------------------------

#[test]
fn a1_completed_event() {
    let _g = setup();
    let logger = global::logger();
    logger
        .start_event("TestEvent", "test-task-1", None)
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    logger.end_event("test-task-1", None).unwrap();

    let record = logger.get_metrics("test-task-1").expect("a record");
    assert_eq!(record.event_name, "TestEvent");
    assert_eq!(record.status, Status::Completed);
    assert!(record.duration() > Duration::ZERO);
    // The monotonic clock cannot measure less than the sleep.
    assert!(record.duration() >= Duration::from_millis(10));
    assert_eq!(record.error, None);
    assert_eq!(record.process_id, std::process::id());
}

#[test]
fn a2_failed_event() {
    let _g = setup();
    let logger = global::logger();
    logger
        .start_event("FailedEvent", "test-task-2", None)
        .unwrap();
    logger.end_event("test-task-2", Some("Test error")).unwrap();

    let record = logger.get_metrics("test-task-2").unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.error.as_deref(), Some("Test error"));
    let failed = get_failed_events();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event_name, "FailedEvent");
    // The original returns dicts: the serialized entry has the key too.
    assert_eq!(
        serde_json::to_value(&failed[0]).unwrap()["event_name"],
        "FailedEvent"
    );
}

#[test]
fn a3_retries() {
    let _g = setup();
    let logger = global::logger();
    logger
        .start_event("RetryEvent", "test-task-3", None)
        .unwrap();
    assert_eq!(logger.record_retry("test-task-3"), Ok(1));
    assert_eq!(logger.record_retry("test-task-3"), Ok(2));
    logger.end_event("test-task-3", None).unwrap();

    assert_eq!(logger.get_metrics("test-task-3").unwrap().retry_count, 2);
    let stats = get_retry_stats();
    assert_eq!(stats.total_retries, 2);
    assert_eq!(stats.events_with_retries, 1);
}

#[test]
fn a4_network_operation() {
    let _g = setup();
    let net = global::network();
    net.start_operation("test-network-1", "localhost", 8080, None)
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    net.end_operation("test-network-1", 1000, 500, None)
        .unwrap();

    let op = net.get_metrics("test-network-1").expect("a record");
    assert_eq!(op.host, "localhost");
    assert_eq!(op.port, 8080);
    assert_eq!(op.bytes_sent, 1000);
    assert_eq!(op.bytes_received, 500);
    assert!(op.latency() > Duration::ZERO);
    assert!(op.latency() >= Duration::from_millis(10));
    assert_eq!(op.operation, "remote_call");
    assert!(!op.is_failed());
}

#[test]
fn a5_failed_network_operation() {
    let _g = setup();
    let net = global::network();
    net.start_operation("test-network-2", "localhost", 8080, None)
        .unwrap();
    net.end_operation("test-network-2", 0, 0, Some("Connection refused"))
        .unwrap();

    let failed = get_failed_network_ops();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed["test-network-2"].error.as_deref(),
        Some("Connection refused")
    );
    assert_eq!(failed["test-network-2"].task_id, "test-network-2");
}

#[test]
fn a6_json_export() {
    let _g = setup();
    let logger = global::logger();
    logger.start_event("JsonTest", "test-task-4", None).unwrap();
    logger.end_event("test-task-4", None).unwrap();

    let json = get_metrics();
    assert!(json.contains("JsonTest"), "{json}");
    assert!(json.contains("test-task-4"), "{json}");
}

#[test]
fn a10_composite_fans_out_each_record_once_and_unchanged() {
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    let composite =
        CompositePublisher::new(vec![Box::new(first.clone()), Box::new(second.clone())]).unwrap();
    let event = hand_built_event();
    let network = hand_built_network();
    assert_eq!(network.operation, "remote_call");
    assert_eq!(network.latency(), Duration::from_millis(250));

    composite.publish_event_metrics(&event).unwrap();
    composite.publish_network_metrics(&network).unwrap();
    composite.flush(Instant::now() + DEADLINE).unwrap();

    for recorder in [&first, &second] {
        assert_eq!(recorder.events(), std::slice::from_ref(&event));
        assert_eq!(recorder.network(), std::slice::from_ref(&network));
        let received = &recorder.events()[0];
        assert_eq!(received.duration(), Duration::from_millis(1500));
        assert_eq!(received.process_id, 1234);
    }
    let stats = composite.stats();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert_eq!((s.delivered, s.dropped, s.errors, s.panics), (2, 0, 0, 0));
    }
    composite.shutdown(Instant::now() + DEADLINE).unwrap();
    assert_eq!(first.shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(second.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn a10_composite_attached_to_a_telemetry_fans_out_recorded_records_once() {
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    let composite =
        CompositePublisher::new(vec![Box::new(first.clone()), Box::new(second.clone())]).unwrap();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(composite)).unwrap();

    telemetry
        .events
        .start_event("TestEvent", "test-123", Some(1234))
        .unwrap();
    telemetry
        .network
        .start_operation("net-1", "localhost", 8080, None)
        .unwrap();
    telemetry
        .network
        .end_operation("net-1", 1000, 500, None)
        .unwrap();
    telemetry.events.end_event("test-123", None).unwrap();
    telemetry.flush(DEADLINE).unwrap();

    let recorded_event = telemetry.events.get_metrics("test-123").unwrap();
    let recorded_op = telemetry.network.get_metrics("net-1").unwrap();
    for recorder in [&first, &second] {
        assert_eq!(recorder.events(), std::slice::from_ref(&recorded_event));
        assert_eq!(recorder.network(), std::slice::from_ref(&recorded_op));
    }
}

#[test]
fn a11_composite_isolates_an_erroring_and_a_panicking_publisher() {
    let healthy = Arc::new(Recorder::default());
    let composite = CompositePublisher::new(vec![
        Box::new(Failing),
        Box::new(Panicking),
        Box::new(healthy.clone()),
    ])
    .unwrap();
    let event = hand_built_event();
    let network = hand_built_network();

    assert!(composite.publish_event_metrics(&event).is_ok());
    assert!(composite.publish_network_metrics(&network).is_ok());
    // Publishing errors are counted, not returned by flush (see the composite's docs).
    composite.flush(Instant::now() + DEADLINE).unwrap();

    assert_eq!(healthy.events(), [event]);
    assert_eq!(healthy.network(), [network]);
    let stats = composite.stats();
    let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["failing", "panicking", "recorder"]);
    assert_eq!(
        (stats[0].errors, stats[0].panics, stats[0].delivered),
        (2, 0, 0)
    );
    assert_eq!(
        (stats[1].errors, stats[1].panics, stats[1].delivered),
        (0, 2, 0)
    );
    assert_eq!(
        (stats[2].errors, stats[2].panics, stats[2].delivered),
        (0, 0, 2)
    );
}

#[test]
fn a11_failing_publishers_never_fail_recording() {
    let healthy = Arc::new(Recorder::default());
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(Failing)).unwrap();
    telemetry.add_publisher(Box::new(Panicking)).unwrap();
    telemetry
        .add_publisher(Box::new(
            CompositePublisher::new(vec![Box::new(Panicking), Box::new(healthy.clone())]).unwrap(),
        ))
        .unwrap();

    for i in 0..3 {
        let id = format!("t{i}");
        telemetry.events.start_event("e", &id, None).unwrap();
        telemetry.events.end_event(&id, None).unwrap();
    }
    telemetry
        .network
        .start_operation("n", "h", 1, None)
        .unwrap();
    telemetry.network.end_operation("n", 1, 1, None).unwrap();
    telemetry.flush(DEADLINE).unwrap();

    assert_eq!(healthy.event_ids(), ["t0", "t1", "t2"]);
    assert_eq!(healthy.network_ids(), ["n"]);
    let stats = telemetry.publisher_stats();
    assert_eq!(stats.len(), 3);
    assert_eq!((stats[0].errors, stats[0].delivered), (4, 0));
    assert_eq!((stats[1].panics, stats[1].delivered), (4, 0));
    // The composite itself accepts every record.
    assert_eq!(
        (stats[2].delivered, stats[2].errors, stats[2].panics),
        (4, 0, 0)
    );
    assert_eq!(telemetry.events.counts().completed, 3);
}

// ---------------------------------------------------------------------------------------------
// Part B: output shapes
// ---------------------------------------------------------------------------------------------

const EVENT_FIELDS: [&str; 9] = [
    "duration",
    "end_time",
    "error",
    "event_name",
    "process_id",
    "retry_count",
    "start_time",
    "status",
    "task_id",
];

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, parsed back to the record's time to the microsecond.
fn assert_rfc3339_utc(value: &Value, time: SystemTime) {
    let text = value.as_str().expect("a time is a string");
    assert_eq!(text.len(), 27, "{text}");
    assert!(text.ends_with('Z'), "{text}");
    assert_eq!(&text[10..11], "T", "{text}");
    let parsed = humantime::parse_rfc3339(text).expect("RFC 3339");
    let micros = time.duration_since(UNIX_EPOCH).unwrap().as_micros();
    assert_eq!(
        parsed.duration_since(UNIX_EPOCH).unwrap().as_micros(),
        micros,
        "{text}"
    );
}

#[test]
fn b_get_metrics_is_an_array_in_start_order_with_the_listed_fields() {
    let _g = setup();
    let logger = global::logger();
    logger.start_event("first", "b-1", Some(7)).unwrap();
    logger.start_event("second", "b-2", None).unwrap();
    logger.start_event("third", "b-3", None).unwrap();
    logger.record_retry("b-1").unwrap();
    // End in another order than started; leave b-2 pending.
    logger.end_event("b-3", None).unwrap();
    logger.end_event("b-1", Some("x")).unwrap();

    let items = parse_metrics();
    let ids: Vec<&str> = items
        .iter()
        .map(|v| v["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b-1", "b-2", "b-3"]);
    for item in &items {
        let mut keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, EVENT_FIELDS);
        let record = logger
            .get_metrics(item["task_id"].as_str().unwrap())
            .unwrap();
        assert_rfc3339_utc(&item["start_time"], record.start_time);
        assert!(item["duration"].is_f64(), "{item}");
        assert_eq!(
            item["duration"].as_f64().unwrap(),
            record.duration().as_secs_f64()
        );
        match record.end_time {
            Some(end) => assert_rfc3339_utc(&item["end_time"], end),
            None => assert!(item["end_time"].is_null()),
        }
    }
    assert_eq!(items[0]["event_name"], "first");
    assert_eq!(items[0]["status"], "failed");
    assert_eq!(items[0]["error"], "x");
    assert_eq!(items[0]["retry_count"], 1);
    assert_eq!(items[0]["process_id"], 7);
    assert_eq!(items[1]["status"], "pending");
    assert_eq!(items[1]["duration"], 0.0);
    assert!(items[1]["error"].is_null());
    assert_eq!(items[1]["process_id"], std::process::id());
    assert_eq!(items[2]["status"], "completed");
    assert!(items[2]["duration"].as_f64().unwrap() > 0.0);
}

#[test]
fn b_retry_stats_have_every_bucket_from_zero_as_string_keys() {
    let _g = setup();
    let logger = global::logger();
    for (id, retries) in [("r-a", 0), ("r-b", 0), ("r-c", 2)] {
        logger.start_event("e", id, None).unwrap();
        for _ in 0..retries {
            logger.record_retry(id).unwrap();
        }
        logger.end_event(id, None).unwrap();
    }
    let stats = get_retry_stats();
    assert_eq!(
        serde_json::to_value(&stats).unwrap(),
        json!({
            "total_retries": 2,
            "events_with_retries": 1,
            "events_by_retry_count": {"0": 2, "1": 0, "2": 1}
        })
    );
    assert_eq!(
        serde_json::to_string(&stats.events_by_retry_count).unwrap(),
        r#"{"0":2,"1":0,"2":1}"#
    );
}

#[test]
fn b_retry_stats_of_an_empty_store() {
    let _g = setup();
    assert_eq!(
        serde_json::to_value(get_retry_stats()).unwrap(),
        json!({"total_retries": 0, "events_with_retries": 0, "events_by_retry_count": {"0": 0}})
    );
}

#[test]
fn b_retry_stats_count_events_in_flight() {
    let _g = setup();
    let logger = global::logger();
    logger.start_event("e", "running", None).unwrap();
    logger.record_retry("running").unwrap();
    let stats = get_retry_stats();
    assert_eq!(stats.total_retries, 1);
    assert_eq!(
        stats.events_by_retry_count,
        BTreeMap::from([(0, 0), (1, 1)])
    );
}

#[test]
fn b_slow_events_are_strictly_longer_than_the_threshold() {
    let _g = setup();
    assert_eq!(DEFAULT_SLOW_THRESHOLD, Duration::from_secs(1));
    let logger = global::logger();
    logger.start_event("quick", "s-1", None).unwrap();
    logger.end_event("s-1", None).unwrap();
    logger.start_event("pending", "s-2", None).unwrap();

    let d = logger.get_metrics("s-1").unwrap().duration();
    assert!(d > Duration::ZERO);
    assert!(get_slow_events(DEFAULT_SLOW_THRESHOLD).is_empty());
    // Exactly the duration is not slow; a nanosecond less is.
    assert!(get_slow_events(d).is_empty());
    let slow = get_slow_events(d - Duration::from_nanos(1));
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0].task_id, "s-1");
    // A pending event is never slow.
    let all: Vec<String> = get_slow_events(Duration::ZERO)
        .into_iter()
        .map(|m| m.task_id)
        .collect();
    assert_eq!(all, ["s-1"]);
}

#[test]
fn b_slow_and_failed_network_ops_are_maps_keyed_by_task_id() {
    let _g = setup();
    let net = global::network();
    net.start_operation("n-ok", "db", 5432, Some("query"))
        .unwrap();
    net.end_operation("n-ok", 10, 20, None).unwrap();
    net.start_operation("n-bad", "db", 5432, None).unwrap();
    net.end_operation("n-bad", 0, 0, Some("reset")).unwrap();
    net.start_operation("n-running", "db", 5432, None).unwrap();

    let failed = get_failed_network_ops();
    assert_eq!(failed.keys().collect::<Vec<_>>(), ["n-bad"]);
    assert_eq!(failed["n-bad"].task_id, "n-bad");
    let failed_json = serde_json::to_value(&failed).unwrap();
    assert_eq!(failed_json["n-bad"]["error"], "reset");
    assert_eq!(failed_json["n-bad"]["operation"], "remote_call");

    assert!(get_slow_network_ops(DEFAULT_SLOW_THRESHOLD).is_empty());
    let slow = get_slow_network_ops(Duration::ZERO);
    assert_eq!(slow.keys().collect::<Vec<_>>(), ["n-bad", "n-ok"]);
    for (id, op) in &slow {
        assert_eq!(&op.task_id, id);
    }
    let latency = slow["n-ok"].latency();
    assert!(latency > Duration::ZERO);
    assert!(!get_slow_network_ops(latency).contains_key("n-ok"));
    assert!(get_slow_network_ops(latency - Duration::from_nanos(1)).contains_key("n-ok"));
    assert_eq!(slow["n-ok"].operation, "query");
}

// ---------------------------------------------------------------------------------------------
// Part C: deliberate differences
// ---------------------------------------------------------------------------------------------

#[test]
fn c_ending_twice_is_an_error_and_counts_and_publishes_once() {
    let _g = setup();
    let recorder = Arc::new(Recorder::default());
    monitor_events(vec![Box::new(recorder.clone())]).unwrap();
    let logger = global::logger();
    logger.start_event("e", "twice", None).unwrap();
    logger.end_event("twice", None).unwrap();
    assert_eq!(
        logger.end_event("twice", Some("late")),
        Err(TelemetryError::UnknownTask {
            task_id: "twice".into()
        })
    );
    assert_eq!(
        logger.record_retry("twice"),
        Err(TelemetryError::UnknownTask {
            task_id: "twice".into()
        })
    );
    let net = global::network();
    net.start_operation("net-twice", "h", 1, None).unwrap();
    net.end_operation("net-twice", 1, 2, None).unwrap();
    assert!(matches!(
        net.end_operation("net-twice", 3, 4, None),
        Err(TelemetryError::UnknownTask { .. })
    ));
    global::telemetry().flush(DEADLINE).unwrap();

    let counts = logger.counts();
    assert_eq!((counts.total, counts.completed, counts.failed), (1, 1, 0));
    // The first end stands.
    let record = logger.get_metrics("twice").unwrap();
    assert_eq!((record.status, record.error), (Status::Completed, None));
    assert_eq!(net.counts().bytes_sent, 1);
    assert_eq!(net.counts().total, 1);
    assert_eq!(recorder.event_ids(), ["twice"]);
    assert_eq!(recorder.network_ids(), ["net-twice"]);
    monitor_events(Vec::new()).unwrap();
}

#[test]
fn c_starting_an_id_in_flight_is_an_error_and_keeps_the_first() {
    let _g = setup();
    let logger = global::logger();
    logger.start_event("first", "dup", Some(1)).unwrap();
    assert_eq!(
        logger.start_event("second", "dup", Some(2)),
        Err(TelemetryError::AlreadyInFlight {
            task_id: "dup".into()
        })
    );
    let record = logger.get_metrics("dup").unwrap();
    assert_eq!(
        (record.event_name.as_str(), record.process_id),
        ("first", 1)
    );
    assert_eq!(logger.counts().total, 1);
    // Once ended, the id may run again; lookups find the newest run.
    logger.end_event("dup", None).unwrap();
    logger.start_event("again", "dup", None).unwrap();
    logger.end_event("dup", Some("e")).unwrap();
    assert_eq!(logger.get_metrics("dup").unwrap().event_name, "again");
    assert_eq!(parse_metrics().len(), 2);
}

#[test]
fn c_an_empty_error_counts_as_failed() {
    let _g = setup();
    let logger = global::logger();
    logger.start_event("e", "empty-error", None).unwrap();
    logger.end_event("empty-error", Some("")).unwrap();
    global::network()
        .start_operation("net-empty-error", "h", 1, None)
        .unwrap();
    global::network()
        .end_operation("net-empty-error", 0, 0, Some(""))
        .unwrap();

    let record = logger.get_metrics("empty-error").unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.error.as_deref(), Some(""));
    assert_eq!(get_failed_events().len(), 1);
    assert_eq!(logger.counts().failed, 1);
    assert_eq!(parse_metrics()[0]["error"], "");
    assert_eq!(parse_metrics()[0]["status"], "failed");
    assert!(get_failed_network_ops().contains_key("net-empty-error"));
    assert_eq!(global::network().counts().failed, 1);
}

#[test]
fn c_get_metrics_is_valid_json_for_awkward_text() {
    let _g = setup();
    let logger = global::logger();
    let awkward = [
        (
            "quote\"name",
            "id\\with\\backslashes",
            Some("line\nbreak\ttab"),
        ),
        ("nul\0char", "bell\u{7}", Some("\u{1b}[31mred\u{1b}[0m")),
        ("ünïcødé 😀", "\u{202e}rtl", None),
        ("</script>", "{\"json\":1}", Some("")),
    ];
    for (name, id, error) in awkward {
        logger.start_event(name, id, None).unwrap();
        logger.end_event(id, error).unwrap();
    }
    logger
        .start_event("still \"running\"", "pending\u{0}", None)
        .unwrap();

    let items = parse_metrics();
    assert_eq!(items.len(), awkward.len() + 1);
    for ((name, id, error), item) in awkward.iter().zip(&items) {
        assert_eq!(item["event_name"], *name);
        assert_eq!(item["task_id"], *id);
        assert_eq!(item["error"].as_str(), *error);
    }
    assert_eq!(items[4]["event_name"], "still \"running\"");
}

#[test]
fn monitor_events_twice_publishes_only_to_the_second_and_only_once() {
    let _g = setup();
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    let logger = global::logger();
    let net = global::network();

    monitor_events(vec![Box::new(first.clone())]).unwrap();
    logger.start_event("e", "before", None).unwrap();
    logger.end_event("before", None).unwrap();
    monitor_events(vec![Box::new(second.clone())]).unwrap();
    // The replaced publisher delivered what it had queued, then was shut down.
    assert_eq!(first.event_ids(), ["before"]);
    assert_eq!(first.shutdowns.load(Ordering::SeqCst), 1);

    logger.start_event("e", "after", None).unwrap();
    logger.end_event("after", None).unwrap();
    net.start_operation("net-after", "h", 80, None).unwrap();
    net.end_operation("net-after", 5, 6, None).unwrap();
    global::telemetry().flush(DEADLINE).unwrap();

    assert_eq!(first.event_ids(), ["before"]);
    assert!(first.network().is_empty());
    assert_eq!(second.event_ids(), ["after"]);
    assert_eq!(second.network_ids(), ["net-after"]);
    let stats = global::telemetry().publisher_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].delivered, 2);

    // Shutdown delivers everything queued before it returns.
    for i in 0..100 {
        let id = format!("late-{i}");
        logger.start_event("e", &id, None).unwrap();
        logger.end_event(&id, None).unwrap();
    }
    global::shutdown(DEADLINE).unwrap();
    let ids = second.event_ids();
    assert_eq!(ids.len(), 101);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 101);
    assert_eq!(second.shutdowns.load(Ordering::SeqCst), 1);
    assert!(global::telemetry().publisher_stats().is_empty());
    assert_eq!(global::telemetry().dropped(), 0);

    // Detached: later records reach no one, and recording still works.
    logger.start_event("e", "detached", None).unwrap();
    logger.end_event("detached", None).unwrap();
    assert_eq!(second.event_ids().len(), 101);
    assert_eq!(first.event_ids(), ["before"]);
    assert_eq!(logger.counts().completed, 103);
    global::shutdown(DEADLINE).unwrap();
}

#[test]
fn monitor_events_with_an_empty_list_stops_publishing() {
    let _g = setup();
    let recorder = Arc::new(Recorder::default());
    monitor_events(vec![Box::new(recorder.clone())]).unwrap();
    global::logger().start_event("e", "one", None).unwrap();
    global::logger().end_event("one", None).unwrap();
    monitor_events(Vec::new()).unwrap();
    global::logger().start_event("e", "two", None).unwrap();
    global::logger().end_event("two", None).unwrap();
    assert_eq!(recorder.event_ids(), ["one"]);
    assert!(global::telemetry().publisher_stats().is_empty());
}

#[test]
fn publishers_receive_events_and_network_ops_through_add_publisher_and_monitor_events() {
    // Through a Telemetry's add_publisher.
    let telemetry = Telemetry::new();
    let recorder = Arc::new(Recorder::default());
    telemetry.add_publisher(Box::new(recorder.clone())).unwrap();
    {
        let event = telemetry.events.track("job", "j-1").unwrap();
        let mut call = telemetry
            .network
            .track("j-1/get", "store", 9000, Some("get"))
            .unwrap();
        call.sent(10);
        call.received(20);
        call.complete().unwrap();
        event.retry().unwrap();
        event.fail("broken").unwrap();
    }
    telemetry.flush(DEADLINE).unwrap();
    let events = recorder.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0], telemetry.events.get_metrics("j-1").unwrap());
    assert_eq!(
        (events[0].status, events[0].retry_count),
        (Status::Failed, 1)
    );
    let ops = recorder.network();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0], telemetry.network.get_metrics("j-1/get").unwrap());
    assert_eq!((ops[0].bytes_sent, ops[0].bytes_received), (10, 20));
    telemetry.shutdown(DEADLINE).unwrap();
    assert_eq!(recorder.shutdowns.load(Ordering::SeqCst), 1);

    // Through the process-wide monitor_events.
    let _g = setup();
    let recorder = Arc::new(Recorder::default());
    monitor_events(vec![Box::new(recorder.clone())]).unwrap();
    global::logger().start_event("g", "g-1", None).unwrap();
    global::network()
        .start_operation("g-1/op", "h", 1, None)
        .unwrap();
    global::network()
        .end_operation("g-1/op", 1, 2, Some("bad"))
        .unwrap();
    global::logger().end_event("g-1", None).unwrap();
    global::telemetry().flush(DEADLINE).unwrap();
    assert_eq!(
        recorder.events(),
        [global::logger().get_metrics("g-1").unwrap()]
    );
    assert_eq!(
        recorder.network(),
        [global::network().get_metrics("g-1/op").unwrap()]
    );
    monitor_events(Vec::new()).unwrap();
}
