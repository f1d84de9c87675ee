//! End-to-end tests of `pipeline-telemetry demo`: they run the built binary on small workloads
//! and check what its report says against what the demo is known to do.

use std::process::{Command, Output};

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_pipeline-telemetry");

/// Small enough to finish in well under a second, large enough that the seeds used below give
/// failures, retries, refused connections and slow replies.
const EVENTS: u64 = 60;

/// Runs `pipeline-telemetry demo` with these arguments.
fn demo(args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("demo")
        .args(args)
        .output()
        .expect("the pipeline-telemetry binary runs")
}

/// Runs the demo on [`EVENTS`] events and returns its JSON report.
fn demo_json(seed: u64, workers: u32) -> Value {
    let (events, seed, workers) = (EVENTS.to_string(), seed.to_string(), workers.to_string());
    let output = demo(&[
        "--events",
        &events,
        "--workers",
        &workers,
        "--seed",
        &seed,
        "--json",
    ]);
    assert!(
        output.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object")
}

/// The number at a dotted path such as `events.total`.
fn number(report: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(report, |value, key| &value[key])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {report:#}"))
}

fn array<'a>(report: &'a Value, key: &str) -> &'a Vec<Value> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array"))
}

fn object<'a>(report: &'a Value, key: &str) -> &'a serde_json::Map<String, Value> {
    report[key]
        .as_object()
        .unwrap_or_else(|| panic!("{key} is not an object"))
}

/// What a seed must reproduce exactly, whatever the thread scheduling.
fn outcome(report: &Value) -> Value {
    let failed_events: Vec<Value> = array(report, "failed_events")
        .iter()
        .map(|e| json!([e["task_id"], e["event_name"], e["error"], e["retry_count"]]))
        .collect();
    let failed_ops: Vec<&String> = object(report, "failed_network_ops").keys().collect();
    json!({
        "failed_events": failed_events,
        "retries": report["retries"],
        "network_total": report["network"]["total"],
        "network_failed": report["network"]["failed"],
        "bytes_sent": report["network"]["bytes_sent"],
        "failed_network_ops": failed_ops,
    })
}

#[test]
fn json_report_counts_every_event_and_the_real_network_calls() {
    let report = demo_json(7, 3);

    assert_eq!(number(&report, "seed"), 7);
    assert_eq!(number(&report, "events_requested"), EVENTS);
    assert_eq!(number(&report, "workers"), 3);
    assert_eq!(number(&report, "dropped"), 0);

    // Events: all ended, some failed with their error, some retried.
    assert_eq!(number(&report, "events.total"), EVENTS);
    assert_eq!(number(&report, "events.in_flight"), 0);
    let failed = number(&report, "events.failed");
    assert_eq!(number(&report, "events.completed") + failed, EVENTS);
    assert!(failed > 0, "seed 7 plans failures");
    let failed_events = array(&report, "failed_events");
    assert_eq!(failed_events.len() as u64, failed);
    for event in failed_events {
        assert_eq!(event["status"], "failed");
        assert!(event["error"].as_str().is_some_and(|e| !e.is_empty()));
        let task_id = event["task_id"].as_str().expect("task id");
        let index: u64 = task_id
            .strip_prefix("evt-")
            .filter(|n| n.len() == 5)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("task id {task_id} is not evt-NNNNN"));
        assert!(index < EVENTS);
    }

    // Retries: a histogram over all events whose weighted sum is the total.
    let by_count = object(&report["retries"], "events_by_retry_count");
    let events_counted: u64 = by_count.values().filter_map(Value::as_u64).sum();
    assert_eq!(events_counted, EVENTS);
    let retries: u64 = by_count
        .iter()
        .map(|(count, events)| count.parse::<u64>().unwrap() * events.as_u64().unwrap())
        .sum();
    assert!(retries > 0, "seed 7 plans retries");
    assert_eq!(number(&report, "retries.total_retries"), retries);
    assert!(by_count
        .keys()
        .all(|count| count.parse::<u32>().unwrap() <= 3));

    // Network: real echoes, so every byte sent came back.
    assert!(number(&report, "network.total") > 0);
    assert_eq!(number(&report, "network.in_flight"), 0);
    let sent = number(&report, "network.bytes_sent");
    assert!(sent > 0);
    assert_eq!(number(&report, "network.bytes_received"), sent);

    // Refused connections, each with the operating system's reason.
    let failed_ops = object(&report, "failed_network_ops");
    assert!(
        number(&report, "network.failed") > 0,
        "seed 7 plans refusals"
    );
    assert_eq!(failed_ops.len() as u64, number(&report, "network.failed"));
    for (id, op) in failed_ops {
        let error = op["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} has no error"));
        assert!(error.starts_with("connect to 127.0.0.1:"), "{id}: {error}");
        assert_eq!(op["host"], "127.0.0.1");
        assert!(op["port"].as_u64().is_some_and(|port| port > 0));
        assert_eq!(
            (op["bytes_sent"].as_u64(), op["bytes_received"].as_u64()),
            (Some(0), Some(0))
        );
    }

    // Slow replies, all past the default 100 ms threshold.
    let threshold = report["slow_threshold_seconds"]
        .as_f64()
        .expect("threshold");
    assert!((threshold - 0.1).abs() < 1e-9, "default --slow-ms is 100");
    let slow_ops = object(&report, "slow_network_ops");
    assert!(
        slow_ops.values().any(|op| op["operation"] == "echo_slow"),
        "{slow_ops:#?}"
    );
    assert!(slow_ops
        .values()
        .all(|op| op["latency"].as_f64().is_some_and(|l| l > threshold)));
}

#[test]
fn the_same_seed_gives_the_same_failures_and_retries() {
    let first = outcome(&demo_json(7, 3));
    // Other worker counts interleave the events differently; the plans must not care.
    assert_eq!(outcome(&demo_json(7, 5)), first);
    assert_eq!(outcome(&demo_json(7, 3)), first);

    let other_seed = outcome(&demo_json(8, 3));
    assert_ne!(other_seed["failed_events"], first["failed_events"]);
    assert_ne!(other_seed["retries"], first["retries"]);
}

#[test]
fn the_text_report_has_every_section() {
    let output = demo(&["--events", "60", "--workers", "3", "--seed", "7"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8 report");
    assert!(
        text.starts_with("Demo: 60 events on 3 workers, seed 7"),
        "{text}"
    );
    for header in [
        "\nEvents\n",
        "\nFailed events (",
        "\nSlowest events\n",
        "\nRetries\n",
        "\nNetwork operations\n",
        "\nFailed network operations (",
        "\nSlow network operations (> 0.100s) (",
    ] {
        assert!(text.contains(header), "no {header:?} in:\n{text}");
    }
    assert!(text.contains("Connection refused") || text.contains("connect to 127.0.0.1:"));
}

#[test]
fn invalid_options_fail_with_a_message_and_no_report() {
    for (args, option) in [
        (&["--workers", "0"][..], "--workers"),
        (&["--events", "0"][..], "--events"),
        (&["--events", "1000000000"][..], "--events"),
        (&["--slow-ms", "0"][..], "--slow-ms"),
        (&["--seed", "not-a-number"][..], "--seed"),
    ] {
        let output = demo(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(option), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} printed a report");
    }
}
