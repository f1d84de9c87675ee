//! Every call works from inside a tokio runtime, multi-threaded or current-thread, without the
//! "Cannot start a runtime from within a runtime" panic: the library runs its publishers on its
//! own std threads and never needs or starts a runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipeline_telemetry::{
    get_failed_events, get_failed_network_ops, get_metrics, get_retry_stats, get_slow_events,
    get_slow_network_ops, global, monitor_events, CompositePublisher, EventMetrics,
    MetricsPublisher, NetworkMetrics, PublishError, Status, Telemetry, DEFAULT_SLOW_THRESHOLD,
};

const DEADLINE: Duration = Duration::from_secs(10);
const TASKS: usize = 16;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<EventMetrics>>,
    network: Mutex<Vec<NetworkMetrics>>,
    shutdowns: AtomicU64,
}

impl Recorder {
    fn event_count(&self) -> usize {
        self.events.lock().unwrap().len()
    }
    fn network_count(&self) -> usize {
        self.network.lock().unwrap().len()
    }
}

impl MetricsPublisher for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn publish_event_metrics(&self, m: &EventMetrics) -> Result<(), PublishError> {
        self.events.lock().unwrap().push(m.clone());
        Ok(())
    }
    fn publish_network_metrics(&self, m: &NetworkMetrics) -> Result<(), PublishError> {
        self.network.lock().unwrap().push(m.clone());
        Ok(())
    }
    fn shutdown(&self, _deadline: Instant) -> Result<(), PublishError> {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Records through every recording call, from the runtime's thread and from spawned tasks
/// that hold guards across awaits.
async fn record_everything(telemetry: &Arc<Telemetry>) {
    telemetry
        .events
        .start_event("direct", "direct-1", None)
        .unwrap();
    telemetry.events.record_retry("direct-1").unwrap();
    telemetry
        .events
        .end_event("direct-1", Some("boom"))
        .unwrap();
    telemetry
        .network
        .start_operation("direct-net", "db", 5432, None)
        .unwrap();
    telemetry
        .network
        .end_operation("direct-net", 1, 2, Some("refused"))
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let telemetry = Arc::clone(telemetry);
        tasks.push(tokio::spawn(async move {
            let event = telemetry
                .events
                .track("task", &format!("task-{i}"))
                .unwrap();
            let mut call = telemetry
                .network
                .track(&format!("task-{i}/net"), "api", 443, Some("get"))
                .unwrap();
            tokio::task::yield_now().await;
            call.sent(10);
            call.received(100);
            drop(call);
            event.retry().unwrap();
            tokio::task::yield_now().await;
            if i % 2 == 0 {
                event.complete().unwrap();
            }
            // Odd ones: the guard is dropped at the end of the task, completing it.
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let blocking = Arc::clone(telemetry);
    tokio::task::spawn_blocking(move || {
        blocking
            .events
            .start_event("blocking", "blocking-1", None)
            .unwrap();
        blocking.events.end_event("blocking-1", None).unwrap();
    })
    .await
    .unwrap();
}

/// Events and operations [`record_everything`] makes.
const EVENTS: usize = TASKS + 2;
const OPS: usize = TASKS + 1;

fn check_queries(telemetry: &Telemetry) {
    let counts = telemetry.events.counts();
    assert_eq!(
        (
            counts.total,
            counts.completed,
            counts.failed,
            counts.in_flight
        ),
        (EVENTS as u64, EVENTS as u64 - 1, 1, 0)
    );
    let stats = telemetry.events.retry_stats();
    assert_eq!(stats.total_retries, TASKS as u64 + 1);
    assert_eq!(stats.events_by_retry_count[&1], TASKS as u64 + 1);
    assert_eq!(telemetry.events.failed_events().len(), 1);
    assert!(telemetry
        .events
        .slow_events(DEFAULT_SLOW_THRESHOLD)
        .is_empty());
    assert_eq!(telemetry.events.slow_events(Duration::ZERO).len(), EVENTS);
    assert_eq!(
        telemetry.events.get_metrics("task-3").unwrap().status,
        Status::Completed
    );
    let json: serde_json::Value = serde_json::from_str(&telemetry.events.to_json()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), EVENTS);
    let net = telemetry.network.counts();
    assert_eq!(
        (net.total, net.failed, net.bytes_sent, net.bytes_received),
        (OPS as u64, 1, 10 * TASKS as u64 + 1, 100 * TASKS as u64 + 2)
    );
    assert_eq!(
        telemetry
            .network
            .get_failed_operations()
            .keys()
            .collect::<Vec<_>>(),
        ["direct-net"]
    );
    assert!(telemetry
        .network
        .get_slow_operations(DEFAULT_SLOW_THRESHOLD)
        .is_empty());
    assert_eq!(telemetry.network.all_metrics().len(), OPS);
}

async fn exercise_instance_api() {
    let telemetry = Arc::new(Telemetry::new());
    let recorder = Arc::new(Recorder::default());
    let inner = Arc::new(Recorder::default());
    telemetry.add_publisher(Box::new(recorder.clone())).unwrap();
    telemetry
        .add_publisher(Box::new(
            CompositePublisher::new(vec![Box::new(inner.clone())]).unwrap(),
        ))
        .unwrap();

    record_everything(&telemetry).await;
    check_queries(&telemetry);

    telemetry.flush(DEADLINE).unwrap();
    telemetry.events.flush(DEADLINE).unwrap();
    telemetry.network.flush(DEADLINE).unwrap();
    for r in [&recorder, &inner] {
        assert_eq!((r.event_count(), r.network_count()), (EVENTS, OPS));
    }
    let stats = telemetry.publisher_stats();
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|s| s.delivered == (EVENTS + OPS) as u64));
    assert_eq!(telemetry.dropped(), 0);

    // Flush from a spawned task too.
    let from_task = Arc::clone(&telemetry);
    tokio::spawn(async move { from_task.flush(DEADLINE) })
        .await
        .unwrap()
        .unwrap();

    telemetry.shutdown(DEADLINE).unwrap();
    assert_eq!(recorder.shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(inner.shutdowns.load(Ordering::SeqCst), 1);
    assert!(telemetry.publisher_stats().is_empty());

    // Dropping a telemetry with publishers attached, inside the runtime, delivers what is
    // queued and shuts them down.
    let dropped_here = Arc::new(Recorder::default());
    let short_lived = Telemetry::new();
    short_lived
        .add_publisher(Box::new(dropped_here.clone()))
        .unwrap();
    short_lived.events.start_event("e", "last", None).unwrap();
    short_lived.events.end_event("last", None).unwrap();
    drop(short_lived);
    assert_eq!(dropped_here.event_count(), 1);
    assert_eq!(dropped_here.shutdowns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_api_in_a_multi_thread_runtime() {
    exercise_instance_api().await;
}

#[tokio::test(flavor = "current_thread")]
async fn instance_api_in_a_current_thread_runtime() {
    exercise_instance_api().await;
}

/// The tests of the process-wide API share its state, so they take turns.
static GLOBAL: Mutex<()> = Mutex::new(());

// Holding a std mutex across awaits is sound here: each test has its own runtime, and the
// only other holder is another test's runtime, never a task of this one.
#[allow(clippy::await_holding_lock)]
async fn exercise_global_api() {
    let _turn = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
    let recorder = Arc::new(Recorder::default());
    monitor_events(vec![Box::new(recorder.clone())]).unwrap();
    global::reset();

    let telemetry: &'static Telemetry = global::telemetry();
    global::logger()
        .start_event("direct", "direct-1", None)
        .unwrap();
    global::logger().record_retry("direct-1").unwrap();
    global::logger()
        .end_event("direct-1", Some("boom"))
        .unwrap();
    global::network()
        .start_operation("direct-net", "db", 5432, None)
        .unwrap();
    global::network()
        .end_operation("direct-net", 1, 2, Some("refused"))
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        tasks.push(tokio::spawn(async move {
            let event = global::logger()
                .track("task", &format!("task-{i}"))
                .unwrap();
            let mut call = global::network()
                .track(&format!("task-{i}/net"), "api", 443, Some("get"))
                .unwrap();
            tokio::task::yield_now().await;
            call.sent(10);
            call.received(100);
            call.complete().unwrap();
            event.retry().unwrap();
            tokio::task::yield_now().await;
            event.complete().unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tokio::task::spawn_blocking(|| {
        global::logger()
            .start_event("blocking", "blocking-1", None)
            .unwrap();
        global::logger().end_event("blocking-1", None).unwrap();
    })
    .await
    .unwrap();

    check_queries(telemetry);
    let json: serde_json::Value = serde_json::from_str(&get_metrics()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), EVENTS);
    assert_eq!(get_failed_events().len(), 1);
    assert!(get_slow_events(DEFAULT_SLOW_THRESHOLD).is_empty());
    assert_eq!(get_retry_stats().total_retries, TASKS as u64 + 1);
    assert_eq!(get_failed_network_ops().len(), 1);
    assert!(get_slow_network_ops(DEFAULT_SLOW_THRESHOLD).is_empty());

    telemetry.flush(DEADLINE).unwrap();
    assert_eq!(
        (recorder.event_count(), recorder.network_count()),
        (EVENTS, OPS)
    );

    // Replacing publishers and shutting down, from inside the runtime.
    let second = Arc::new(Recorder::default());
    monitor_events(vec![Box::new(second.clone())]).unwrap();
    assert_eq!(recorder.shutdowns.load(Ordering::SeqCst), 1);
    global::logger().start_event("e", "after", None).unwrap();
    global::logger().end_event("after", None).unwrap();
    tokio::spawn(async { global::shutdown(DEADLINE) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.event_count(), 1);
    assert_eq!(second.shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(recorder.event_count(), EVENTS);
    assert!(telemetry.publisher_stats().is_empty());
    global::reset();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_api_in_a_multi_thread_runtime() {
    exercise_global_api().await;
}

#[tokio::test(flavor = "current_thread")]
async fn global_api_in_a_current_thread_runtime() {
    exercise_global_api().await;
}
