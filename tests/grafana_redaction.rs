//! The API key never appears in what the Grafana Cloud publisher logs, returns or shows,
//! even when the receiver echoes the credentials back in its error body.
//!
//! This file has one test: it installs a process-wide `tracing` subscriber that keeps every
//! log line, so that the publisher's own thread is captured too.
#![cfg(feature = "grafana")]

#[path = "support/remote_write_receiver.rs"]
mod receiver;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pipeline_telemetry::grafana::GrafanaCloudPublisher;
use pipeline_telemetry::{EventMetrics, MetricsPublisher, Status};
use receiver::{basic, Receiver, Reply};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Keeps every event's fields as text.
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = format!("{}", event.metadata().level());
        event.record(&mut Fields(&mut line));
        let mut all = self.0.lock().unwrap();
        all.push_str(&line);
        all.push('\n');
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn the_api_key_appears_in_no_log_error_stat_or_debug_output() {
    let logs = Arc::new(Mutex::new(String::new()));
    tracing::subscriber::set_global_default(Capture(Arc::clone(&logs))).unwrap();

    const KEY: &str = "glc_eyJrIjoiVERTVExTRUNSRVQifQ==";
    let header = basic("123456", KEY);
    // A careless receiver: it echoes the credentials it got, first in a 503 (retried), then
    // in a 401 (refused).
    let echo = move |status: u16| {
        let header = header.clone();
        move |request: &receiver::Request| {
            Reply::status(status).with_body(format!(
                "bad credentials {} (key {KEY}, header {})",
                request.header("authorization").unwrap_or(""),
                header
            ))
        }
    };
    let (retry, refuse) = (echo(503), echo(401));
    let server = Receiver::start(Arc::new(move |request, n| {
        if n == 0 {
            retry(request)
        } else {
            refuse(request)
        }
    }));
    let publisher = GrafanaCloudPublisher::builder(KEY, "123456", server.url("/api/prom/push"))
        .backoff(Duration::from_millis(5), Duration::from_millis(10))
        .unwrap()
        .build()
        .unwrap();
    let start = SystemTime::now();
    publisher
        .publish_event_metrics(&EventMetrics {
            event_name: "TestEvent".into(),
            task_id: "t".into(),
            start_time: start,
            end_time: Some(start + Duration::from_millis(3)),
            status: Status::Completed,
            error: None,
            retry_count: 0,
            process_id: 1,
        })
        .unwrap();
    let error = publisher
        .flush(Instant::now() + Duration::from_secs(20))
        .unwrap_err();
    let stats = publisher.stats();
    let debug = format!("{publisher:?}");
    // The shutdown push is refused at once (401); the deadline only has to leave it time to
    // be sent on a busy machine.
    publisher
        .shutdown(Instant::now() + Duration::from_secs(5))
        .ok();
    assert_eq!(
        server.requests().len(),
        3,
        "503 retried, 401 refused, shutdown push refused"
    );

    let encoded = basic("123456", KEY);
    let encoded = encoded.trim_start_matches("Basic ");
    let logs = logs.lock().unwrap().clone();
    let shown = [
        ("error", error.to_string()),
        ("error debug", format!("{error:?}")),
        ("stats", format!("{stats:?}")),
        ("publisher debug", debug),
        ("logs", logs.clone()),
    ];
    for (what, text) in &shown {
        assert!(!text.contains(KEY), "{what} shows the key: {text}");
        assert!(
            !text.contains("VERTVExTRUNSRVQ"),
            "{what} shows part of the key: {text}"
        );
        assert!(
            !text.contains(encoded),
            "{what} shows the auth header: {text}"
        );
    }
    // What was logged and reported is still useful.
    assert!(logs.contains("401") && logs.contains("503"), "{logs}");
    assert!(logs.contains("bad credentials"), "{logs}");
    assert!(
        error.to_string().contains("bad credentials Basic ***"),
        "{error}"
    );
    assert!(stats.last_error.unwrap().contains("key ***"));
}
