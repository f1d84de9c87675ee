//! The Prometheus publisher's series are updated on the recording threads (no queue): records
//! show at once, folded names are counted per record, names past the store's interner are
//! aggregated by value, threads recording the same names lose nothing, and a publisher added
//! midway counts exactly the records that end after it.
#![cfg(feature = "prometheus")]

use std::sync::Arc;
use std::time::Duration;

use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher, OTHER_LABEL_VALUE};
use pipeline_telemetry::{Telemetry, TelemetryConfig};

const FLUSH: Duration = Duration::from_secs(10);

fn publisher(max_label_values: usize) -> Arc<PrometheusPublisher> {
    Arc::new(
        PrometheusPublisher::builder(0)
            .max_label_values(max_label_values)
            .expect("a valid cap")
            .build_without_server()
            .expect("defaults are valid"),
    )
}

fn telemetry_with(publisher: &Arc<PrometheusPublisher>) -> Telemetry {
    let telemetry = Telemetry::with_config(&TelemetryConfig::default());
    telemetry
        .add_publisher(Box::new(Arc::clone(publisher)))
        .expect("a delivery thread");
    telemetry
}

/// The value of the sample `name{labels}` in a classic exposition, if present. `labels` is
/// the exact label text between the braces.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let head = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&head))
        .map(|value| value.trim().parse().expect("a number"))
}

fn count(text: &str, event_name: &str, status: &str) -> Option<f64> {
    sample(
        text,
        "event_duration_seconds_count",
        &format!("event_name=\"{event_name}\",status=\"{status}\""),
    )
}

/// One event with its network operation; every fourth one is retried once.
fn run(telemetry: &Telemetry, name: &str, id: &str, failed: bool) {
    telemetry.events.start_event(name, id, None).expect("start");
    telemetry
        .network
        .start_operation(id, "storage.local", 9000, Some("fetch"))
        .expect("start operation");
    telemetry
        .network
        .end_operation(id, 10, 100, None)
        .expect("end operation");
    if id.ends_with('3') {
        telemetry.events.record_retry(id).expect("in flight");
    }
    telemetry
        .events
        .end_event(id, failed.then_some("boom"))
        .expect("end");
}

#[test]
fn records_are_in_the_series_as_soon_as_they_end_and_counted_as_delivered_on_flush() {
    let publisher = publisher(100);
    let telemetry = telemetry_with(&publisher);
    for i in 0..10 {
        run(&telemetry, "load", &format!("t{i}"), i % 5 == 4);
    }
    // No flush: the recording thread updated the series itself.
    let text = publisher.render(ExpositionFormat::Prometheus);
    assert_eq!(count(&text, "load", "completed"), Some(8.0));
    assert_eq!(count(&text, "load", "failed"), Some(2.0));
    assert_eq!(
        sample(&text, "event_retries_total", "event_name=\"load\""),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "network_bytes_total",
            "direction=\"received\",operation=\"fetch\""
        ),
        Some(1000.0)
    );

    telemetry.flush(FLUSH).expect("flushed");
    let stats = telemetry.publisher_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].delivered, 20, "10 events and 10 operations");
    assert_eq!((stats[0].dropped, stats[0].queued), (0, 0));
    let text = publisher.render(ExpositionFormat::Prometheus);
    assert_eq!(
        sample(
            &text,
            "telemetry_records_delivered_total",
            "publisher=\"prometheus\""
        ),
        Some(20.0)
    );
}

#[test]
fn names_past_the_cap_are_folded_and_counted_once_per_record() {
    let publisher = publisher(2);
    let telemetry = telemetry_with(&publisher);
    let mut id = 0;
    for (name, times) in [("a", 3), ("b", 3), ("c", 5), ("d", 5), ("a", 1)] {
        for _ in 0..times {
            id += 1;
            run(&telemetry, name, &format!("id-{id}"), false);
        }
    }
    let text = publisher.render(ExpositionFormat::Prometheus);
    assert_eq!(count(&text, "a", "completed"), Some(4.0));
    assert_eq!(count(&text, "b", "completed"), Some(3.0));
    assert_eq!(count(&text, "c", "completed"), None);
    assert_eq!(count(&text, OTHER_LABEL_VALUE, "completed"), Some(10.0));
    assert_eq!(
        sample(
            &text,
            "telemetry_label_values_folded_total",
            "label=\"event_name\""
        ),
        Some(10.0)
    );
}

#[test]
fn names_past_the_stores_interner_are_aggregated_by_value() {
    // The store interns 1,024 names per shard; the rest are kept per record, without an id.
    let names = 1_100;
    let publisher = publisher(2_000);
    let telemetry = telemetry_with(&publisher);
    for round in 0..2 {
        for n in 0..names {
            run(
                &telemetry,
                &format!("name-{n}"),
                &format!("r{round}-{n}"),
                false,
            );
        }
    }
    let text = publisher.render(ExpositionFormat::Prometheus);
    for n in [0, 1_023, 1_024, 1_099] {
        assert_eq!(
            count(&text, &format!("name-{n}"), "completed"),
            Some(2.0),
            "name-{n}"
        );
    }
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("event_duration_seconds_count{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .expect("a value")
                .parse::<f64>()
                .expect("a number")
        })
        .sum();
    assert_eq!(total, f64::from(2 * names));
}

#[test]
fn threads_recording_the_same_names_lose_nothing() {
    let publisher = publisher(100);
    let telemetry = Arc::new(telemetry_with(&publisher));
    let per_thread: u32 = 5_000;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let telemetry = Arc::clone(&telemetry);
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let name = format!("event-{}", i % 10);
                    run(&telemetry, &name, &format!("{t}-{i}"), i % 10 == 9);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no panic");
    }
    telemetry.flush(FLUSH).expect("flushed");
    let text = publisher.render(ExpositionFormat::Prometheus);
    let mut completed = 0.0;
    for n in 0..9 {
        completed += count(&text, &format!("event-{n}"), "completed").expect("present");
    }
    assert_eq!(completed, f64::from(4 * per_thread / 10 * 9));
    assert_eq!(
        count(&text, "event-9", "failed"),
        Some(f64::from(4 * per_thread / 10))
    );
    assert_eq!(
        sample(
            &text,
            "network_operations_total",
            "operation=\"fetch\",status=\"completed\""
        ),
        Some(f64::from(4 * per_thread))
    );
    assert_eq!(
        sample(
            &text,
            "network_bytes_total",
            "direction=\"sent\",operation=\"fetch\""
        ),
        Some(f64::from(4 * per_thread * 10))
    );
    let delivered: u64 = telemetry
        .publisher_stats()
        .iter()
        .map(|s| s.delivered)
        .sum();
    assert_eq!(delivered, u64::from(4 * per_thread * 2));
}

#[test]
fn a_dropped_pipeline_leaves_its_counts_and_the_next_one_adds_to_them() {
    let publisher = publisher(100);
    let telemetry = telemetry_with(&publisher);
    for i in 0..6 {
        run(&telemetry, "load", &format!("a{i}"), false);
    }
    drop(telemetry);
    let text = publisher.render(ExpositionFormat::Prometheus);
    assert_eq!(count(&text, "load", "completed"), Some(6.0));

    let telemetry = telemetry_with(&publisher);
    for i in 0..4 {
        run(&telemetry, "load", &format!("b{i}"), false);
    }
    let text = publisher.render(ExpositionFormat::Prometheus);
    assert_eq!(count(&text, "load", "completed"), Some(10.0));
    assert_eq!(
        sample(
            &text,
            "network_operations_total",
            "operation=\"fetch\",status=\"completed\""
        ),
        Some(10.0)
    );
}

#[test]
fn a_publisher_added_midway_counts_the_records_that_end_after_it() {
    let telemetry = Telemetry::with_config(&TelemetryConfig::default());
    for i in 0..300 {
        run(&telemetry, "early", &format!("e-{i}"), false);
    }
    telemetry
        .events
        .start_event("straddling", "s-1", None)
        .expect("start");
    let publisher = publisher(100);
    telemetry
        .add_publisher(Box::new(Arc::clone(&publisher)))
        .expect("a delivery thread");
    telemetry.events.end_event("s-1", None).expect("end");
    for i in 0..200 {
        run(&telemetry, "late", &format!("l-{i}"), i % 10 == 0);
    }
    let text = publisher.render(ExpositionFormat::Prometheus);
    assert_eq!(count(&text, "early", "completed"), None);
    assert_eq!(count(&text, "straddling", "completed"), Some(1.0));
    assert_eq!(count(&text, "late", "completed"), Some(180.0));
    assert_eq!(count(&text, "late", "failed"), Some(20.0));
    telemetry.flush(FLUSH).expect("flushed");
}
