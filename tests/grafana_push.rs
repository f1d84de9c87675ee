//! The Grafana Cloud publisher against capturing receivers on 127.0.0.1 that decode what was
//! sent: case A9, the wire format, and the delivery rules (retries, refusals, bounds).
#![cfg(feature = "grafana")]

#[path = "support/remote_write_receiver.rs"]
mod receiver;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pipeline_telemetry::grafana::{GrafanaCloudBuilder, GrafanaCloudPublisher};
use pipeline_telemetry::{EventMetrics, MetricsPublisher, NetworkMetrics, PublishError, Status};
use receiver::{always, basic, sequence, Receiver, Reply};

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

fn network_record() -> NetworkMetrics {
    let start = SystemTime::now();
    NetworkMetrics {
        end_time: Some(start + Duration::from_millis(250)),
        bytes_sent: 1000,
        bytes_received: 500,
        operation: "remote_call".into(),
        ..NetworkMetrics::new("test-network", "localhost", 8080, start)
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// A builder for `receiver`, with fast retries, no periodic push during the test.
fn builder(receiver: &Receiver) -> GrafanaCloudBuilder {
    GrafanaCloudPublisher::builder("test-key", "test-org", receiver.url("/api/prom/push"))
        .push_interval(Duration::from_secs(3600))
        .and_then(|b| b.backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .and_then(|b| b.instance("test-host:1"))
        .unwrap()
}

/// Case A9: with api key "test-key", org "test-org" and a local receiver, publishing the
/// hand-built event and flushing sends exactly one remote-write request, with basic auth
/// test-org:test-key, carrying the duration series of {TestEvent, completed}; publishing the
/// network record and flushing sends its latency and byte series.
#[test]
fn a9_one_request_with_basic_auth_and_the_event_then_the_network_series() {
    let receiver = Receiver::start(always(200));
    let publisher =
        GrafanaCloudPublisher::new("test-key", "test-org", receiver.url("/api/prom/push")).unwrap();
    publisher
        .publish_event_metrics(&hand_built_event())
        .unwrap();
    publisher.flush(soon()).unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "exactly one remote-write request");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/prom/push");
    assert_eq!(
        request.header("authorization"),
        Some(basic("test-org", "test-key").as_str())
    );
    assert_eq!(
        request.header("authorization"),
        Some("Basic dGVzdC1vcmc6dGVzdC1rZXk=")
    );
    let push = request.decode();
    let event = [
        ("event_name", "TestEvent"),
        ("status", "completed"),
        ("job", "pipeline-telemetry"),
    ];
    let with = |name: &str| {
        let mut want = event.to_vec();
        want.push(("__name__", name));
        push.value(&want)
    };
    assert_eq!(with("event_duration_seconds_count"), 1.0);
    assert_eq!(with("event_duration_seconds_sum"), 1.5);
    let buckets = push.find(&[
        ("__name__", "event_duration_seconds_bucket"),
        ("event_name", "TestEvent"),
    ]);
    assert_eq!(buckets.len(), 15);
    let bucket = |le: &str| {
        buckets
            .iter()
            .find(|ts| ts.label("le") == le)
            .unwrap_or_else(|| panic!("no bucket le={le}"))
            .samples[0]
            .value
    };
    assert_eq!(bucket("1.0"), 0.0);
    assert_eq!(bucket("2.5"), 1.0);
    assert_eq!(bucket("+Inf"), 1.0);
    assert!(push
        .find(&[("__name__", "network_latency_seconds_count")])
        .is_empty());

    publisher
        .publish_network_metrics(&network_record())
        .unwrap();
    publisher.flush(soon()).unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    let push = requests[1].decode();
    let op = ("operation", "remote_call");
    assert_eq!(
        push.value(&[("__name__", "network_latency_seconds_count"), op]),
        1.0
    );
    assert_eq!(
        push.value(&[("__name__", "network_latency_seconds_sum"), op]),
        0.25
    );
    assert_eq!(
        push.value(&[
            ("__name__", "network_bytes_total"),
            op,
            ("direction", "sent")
        ]),
        1000.0
    );
    assert_eq!(
        push.value(&[
            ("__name__", "network_bytes_total"),
            op,
            ("direction", "received")
        ]),
        500.0
    );
    // The event is still there: the series are cumulative.
    assert_eq!(
        push.value(&[
            ("__name__", "event_duration_seconds_count"),
            ("event_name", "TestEvent")
        ]),
        1.0
    );
    let stats = publisher.stats();
    assert_eq!((stats.pushes, stats.sent, stats.requests), (2, 2, 2));
}

#[test]
fn requests_carry_the_remote_write_headers_sorted_labels_and_ordered_samples() {
    let receiver = Receiver::start(always(204));
    let publisher = builder(&receiver).job("etl").unwrap().build().unwrap();
    publisher
        .publish_event_metrics(&hand_built_event())
        .unwrap();
    publisher.flush(soon()).unwrap();
    publisher.flush(soon()).unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.header("content-encoding"), Some("snappy"));
        assert_eq!(
            request.header("content-type"),
            Some("application/x-protobuf")
        );
        assert_eq!(
            request.header("x-prometheus-remote-write-version"),
            Some("0.1.0")
        );
        let agent = request.header("user-agent").unwrap_or("");
        assert!(agent.starts_with("pipeline-telemetry/"), "{agent}");
        assert_eq!(
            request.header("content-length"),
            Some(request.body.len().to_string().as_str())
        );
    }
    let first = requests[0].decode();
    let second = requests[1].decode();
    // Metadata goes with the first push (and then once a minute).
    assert!(first
        .metadata
        .iter()
        .any(|m| m.metric_family_name == "event_duration_seconds" && m.r#type == 3));
    assert!(second.metadata.is_empty());
    for push in [&first, &second] {
        for ts in &push.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(names, sorted, "labels sorted by name, each once");
            assert_eq!(names[0], "__name__");
            assert_eq!(ts.label("job"), "etl");
            assert_eq!(ts.label("instance"), "test-host:1");
            assert!(ts.labels.iter().all(|l| !l.value.is_empty()));
            assert_eq!(ts.samples.len(), 1);
        }
    }
    // One timestamp per push, later in the later push, close to now.
    let stamp = |push: &receiver::WriteRequest| {
        let t = push.timeseries[0].samples[0].timestamp;
        assert!(push
            .timeseries
            .iter()
            .all(|ts| ts.samples[0].timestamp == t));
        t
    };
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(stamp(&first) < stamp(&second));
    assert!((now_ms - stamp(&second)).abs() < 600_000);
    assert_eq!(first.timeseries.len(), second.timeseries.len());
}

#[test]
fn pushes_come_every_interval_in_time_order() {
    let receiver = Receiver::start(always(200));
    let publisher = builder(&receiver)
        .push_interval(Duration::from_millis(30))
        .unwrap()
        .build()
        .unwrap();
    publisher
        .publish_event_metrics(&hand_built_event())
        .unwrap();
    let requests = receiver.wait_for(4, Duration::from_secs(30));
    let stamps: Vec<i64> = requests
        .iter()
        .map(|r| r.decode().timeseries[0].samples[0].timestamp)
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

#[test]
fn server_errors_are_retried_until_stored() {
    let receiver = Receiver::start(sequence(vec![
        Reply::status(503).with_body("ingester unavailable"),
        Reply::status(500),
        Reply::status(200),
    ]));
    let publisher = builder(&receiver).build().unwrap();
    publisher.flush(soon()).unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    let stats = publisher.stats();
    assert_eq!(stats.sent, 1);
    assert_eq!(stats.retried, 2);
    assert_eq!(stats.failed_requests, 2);
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.bytes_sent, 3 * requests[0].body.len() as u64);
    assert!(stats.last_error.unwrap().contains("500"));
}

#[test]
fn a_429_waits_at_least_its_retry_after() {
    let receiver = Receiver::start(sequence(vec![
        Reply::status(429)
            .with_header("Retry-After", "1")
            .with_body("rate limited"),
        Reply::status(204),
    ]));
    let publisher = builder(&receiver).build().unwrap();
    publisher.flush(soon()).unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    // A lower bound the publisher promises, not a measurement of speed.
    assert!(requests[1].at.duration_since(requests[0].at) >= Duration::from_millis(990));
    let stats = publisher.stats();
    assert_eq!((stats.throttled, stats.retried, stats.sent), (1, 1, 1));
}

#[test]
fn a_4xx_is_refused_at_once_reported_and_its_body_cut_to_1kb() {
    let body = format!("out of order sample {}", "x".repeat(5000));
    let receiver = Receiver::start(sequence(vec![Reply::status(400).with_body(body)]));
    let publisher = builder(&receiver).build().unwrap();
    let error = publisher.flush(soon()).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, PublishError::Backend { .. }));
    assert!(text.contains("HTTP 400: out of order sample"), "{text}");
    assert!(text.len() < 1400, "{} bytes", text.len());
    assert_eq!(receiver.requests().len(), 1, "not retried");
    let stats = publisher.stats();
    assert_eq!((stats.refused, stats.retried, stats.sent), (1, 0, 0));
    let refusal = stats.last_refusal.unwrap();
    assert!(refusal.contains("more bytes]"), "{refusal}");
    assert!(refusal.len() < 1200);
}

#[test]
fn a_redirect_is_not_followed() {
    let receiver = Receiver::start(sequence(vec![
        Reply::status(308).with_header("Location", "http://127.0.0.1:1/elsewhere")
    ]));
    let publisher = builder(&receiver).build().unwrap();
    let text = publisher.flush(soon()).unwrap_err().to_string();
    assert!(
        text.contains("308") && text.contains("redirected to http://127.0.0.1:1/elsewhere"),
        "{text}"
    );
    assert_eq!(receiver.requests().len(), 1);
}

#[test]
fn retries_are_bounded_by_attempts_then_the_push_is_dropped_and_counted() {
    let receiver = Receiver::start(always(429));
    let publisher = builder(&receiver).max_attempts(3).unwrap().build().unwrap();
    let text = publisher.flush(soon()).unwrap_err().to_string();
    assert!(
        text.contains("dropped") && text.contains("max_attempts"),
        "{text}"
    );
    assert_eq!(receiver.requests().len(), 3);
    let stats = publisher.stats();
    assert_eq!(stats.dropped_retry_limit, 1);
    assert_eq!(stats.dropped, 1);
    assert_eq!(stats.throttled, 3);
    assert_eq!(stats.backlog_pushes, 0);
}

#[test]
fn retries_are_bounded_by_age() {
    let receiver = Receiver::start(always(503));
    let publisher = builder(&receiver)
        .max_attempts(1_000_000)
        .unwrap()
        .max_push_age(Duration::from_millis(300))
        .unwrap()
        .build()
        .unwrap();
    let text = publisher.flush(soon()).unwrap_err().to_string();
    assert!(text.contains("max_push_age"), "{text}");
    let stats = publisher.stats();
    assert_eq!(stats.dropped_too_old, 1);
    assert!(stats.requests >= 2);
}

#[test]
fn the_backlog_is_bounded_and_its_drops_counted() {
    let mut receiver = Receiver::start(always(200));
    receiver.stop();
    let publisher = builder(&receiver)
        .push_interval(Duration::from_millis(15))
        .unwrap()
        .max_attempts(1_000_000)
        .unwrap()
        .max_backlog_pushes(3)
        .unwrap()
        .build()
        .unwrap();
    let stats = publisher.stats_handle();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.stats().dropped_backlog_full < 5 {
        assert!(Instant::now() < deadline, "{:?}", stats.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = stats.stats();
    assert!(s.backlog_pushes <= 3, "{s:?}");
    assert!(s.backlog_bytes > 0);
    assert!(s.failed_requests >= 1);
    // The push thread gives up a little before the deadline, so shutdown hears how it ended
    // (pushes dropped: a backend error) rather than timing out, and the figures are final.
    let ended = publisher.shutdown(Instant::now() + Duration::from_secs(1));
    assert!(
        matches!(ended, Err(PublishError::Backend { .. })),
        "{ended:?}"
    );
    let s = stats.stats();
    assert_eq!(s.backlog_pushes, 0);
    assert_eq!(s.pushes, s.sent + s.refused + s.dropped + s.backlog_pushes);
    assert!(s.dropped_shutdown >= 1);
}

#[test]
fn recording_never_waits_for_a_stalled_receiver() {
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let receiver = Receiver::start(Arc::new(move |_, _| {
        let _ = gate.lock().unwrap().recv();
        Reply::status(200)
    }));
    let publisher = builder(&receiver)
        .push_interval(Duration::from_millis(10))
        .unwrap()
        .build()
        .unwrap();
    // The push thread is now blocked in a request the receiver does not answer.
    receiver.wait_for(1, Duration::from_secs(30));
    for i in 0..10_000 {
        let mut event = hand_built_event();
        event.event_name = format!("e{}", i % 10);
        publisher.publish_event_metrics(&event).unwrap();
    }
    // A flush cannot finish while the receiver holds the push, and says so by its deadline.
    let error = publisher
        .flush(Instant::now() + Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(error, PublishError::DeadlineExceeded { .. }),
        "{error:?}"
    );
    for _ in 0..1000 {
        let _ = release.send(());
    }
    publisher.flush(soon()).unwrap();
    let last = receiver.requests().pop().unwrap().decode();
    let total: f64 = last
        .find(&[("__name__", "event_duration_seconds_count")])
        .iter()
        .map(|ts| ts.samples[0].value)
        .sum();
    assert_eq!(total, 10_000.0);
}

#[test]
fn shutdown_pushes_a_last_time_and_then_refuses_flushes() {
    let receiver = Receiver::start(always(200));
    let publisher = builder(&receiver).build().unwrap();
    publisher
        .publish_event_metrics(&hand_built_event())
        .unwrap();
    publisher.shutdown(soon()).unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].decode().value(&[
            ("__name__", "event_duration_seconds_count"),
            ("event_name", "TestEvent")
        ]),
        1.0
    );
    assert!(matches!(
        publisher.flush(soon()),
        Err(PublishError::Closed { .. })
    ));
    publisher.shutdown(soon()).unwrap();
    drop(publisher);
    assert_eq!(
        receiver.requests().len(),
        1,
        "drop after shutdown sends nothing"
    );
}

#[test]
fn the_publisher_works_inside_a_pipeline() {
    let receiver = Receiver::start(always(200));
    let publisher = builder(&receiver).build().unwrap();
    let stats = publisher.stats_handle();
    let telemetry = pipeline_telemetry::Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    for i in 0..20 {
        let event = telemetry.events.track("step", &format!("t{i}")).unwrap();
        if i % 4 == 0 {
            event.fail("boom").unwrap();
        } else {
            event.complete().unwrap();
        }
    }
    telemetry
        .events
        .start_event("step", "still-running", None)
        .unwrap();
    telemetry.flush(Duration::from_secs(20)).unwrap();
    let push = receiver.requests().pop().unwrap().decode();
    let count = |status: &str| {
        push.value(&[
            ("__name__", "event_duration_seconds_count"),
            ("event_name", "step"),
            ("status", status),
        ])
    };
    assert_eq!(count("completed"), 15.0);
    assert_eq!(count("failed"), 5.0);
    assert_eq!(push.value(&[("__name__", "events_in_flight")]), 1.0);
    assert_eq!(
        push.value(&[
            ("__name__", "telemetry_records_delivered_total"),
            ("publisher", "grafana-cloud")
        ]),
        20.0
    );
    assert_eq!(stats.stats().sent, 1);
    telemetry.shutdown(Duration::from_secs(20)).unwrap();
    assert_eq!(stats.stats().sent, 2, "shutdown pushed a last time");
}

#[test]
fn the_api_key_is_never_shown() {
    let receiver = Receiver::start(always(200));
    let publisher =
        GrafanaCloudPublisher::new("glc_SeCrEt", "123456", receiver.url("/push")).unwrap();
    let shown = format!("{publisher:?}");
    assert!(!shown.contains("glc_SeCrEt"), "{shown}");
    assert!(shown.contains("123456"));
    let builder = GrafanaCloudPublisher::builder("glc_SeCrEt", "1", "http://127.0.0.1:1/x");
    assert!(!format!("{builder:?}").contains("glc_SeCrEt"));
    for (key, user, url) in [
        ("glc_SeCrEt", "1", "https://glc_SeCrEt@example.com/push"),
        ("glc_SeCrEt", "", "https://example.com/push"),
        ("glc_SeCrEt with space", "1", "https://example.com/push"),
        ("glc_SeCrEt", "1", "ftp://example.com/push"),
    ] {
        let error = GrafanaCloudPublisher::new(key, user, url).unwrap_err();
        assert!(!error.to_string().contains("glc_SeCrEt"), "{error}");
        assert!(!format!("{error:?}").contains("glc_SeCrEt"), "{error:?}");
    }
}

/// The same records give the same series through the scrape endpoint and the push, so one
/// dashboard serves both.
#[cfg(feature = "prometheus")]
#[test]
fn the_push_carries_exactly_the_scrape_endpoints_series() {
    use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher};
    use std::collections::BTreeSet;

    let receiver = Receiver::start(always(200));
    let grafana = builder(&receiver).build().unwrap();
    let prometheus = PrometheusPublisher::builder(0)
        .build_without_server()
        .unwrap();
    let mut rng = 7u64;
    for i in 0..300u64 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut event = hand_built_event();
        event.event_name = format!("ev \"{}\"\n", i % 7);
        event.status = if i % 3 == 0 {
            Status::Failed
        } else {
            Status::Completed
        };
        event.end_time = Some(event.start_time + Duration::from_micros(rng % 12_000_000));
        event.retry_count = (i % 4) as u32;
        let mut op = network_record();
        op.operation = format!("op{}", i % 3);
        op.end_time = Some(op.start_time + Duration::from_micros(rng % 3_000_000));
        op.error = (i % 5 == 0).then(|| "refused".into());
        for p in [&grafana as &dyn MetricsPublisher, &prometheus] {
            p.publish_event_metrics(&event).unwrap();
            p.publish_network_metrics(&op).unwrap();
        }
    }
    grafana.flush(soon()).unwrap();
    let push = receiver.requests().pop().unwrap().decode();
    let pushed: BTreeSet<String> = push
        .timeseries
        .iter()
        .map(|ts| {
            let name = ts.label("__name__");
            let labels: Vec<String> = ts
                .labels
                .iter()
                .filter(|l| !["__name__", "job", "instance"].contains(&l.name.as_str()))
                .map(|l| format!("{}={:?}", l.name, l.value))
                .collect();
            format!("{name}{{{}}} {}", labels.join(","), ts.samples[0].value)
        })
        .collect();
    let text = prometheus.render(ExpositionFormat::Prometheus);
    let scraped: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
                None => (series, Vec::new()),
            };
            let mut labels = labels;
            labels.sort();
            let labels: Vec<String> = labels
                .into_iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            format!("{name}{{{}}} {value}", labels.join(","))
        })
        .collect();
    // The pipeline-health families are empty without a pipeline; everything else matches.
    assert_eq!(pushed, scraped);
    assert!(pushed.len() > 100);
}

/// `a="x",b="y\"z"` into pairs, unescaping `\\`, `\"` and `\n`.
#[cfg(feature = "prometheus")]
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

#[test]
fn extreme_settings_and_answers_do_not_panic() {
    let receiver = Receiver::start(sequence(vec![
        Reply::status(429).with_header("Retry-After", "99999999999999999999999")
    ]));
    let publisher = builder(&receiver)
        .push_interval(Duration::MAX)
        .and_then(|b| b.max_push_age(Duration::MAX))
        .and_then(|b| b.backoff(Duration::MAX, Duration::MAX))
        .and_then(|b| b.max_attempts(u32::MAX))
        .and_then(|b| b.max_backlog_pushes(usize::MAX))
        .and_then(|b| b.max_backlog_bytes(usize::MAX))
        .unwrap()
        .build()
        .unwrap();
    let text = publisher.flush(soon()).unwrap_err().to_string();
    assert!(text.contains("max_push_age"), "{text}");
    assert_eq!(publisher.stats().dropped_too_old, 1);
    assert!(builder(&receiver).request_timeout(Duration::MAX).is_err());
    assert!(builder(&receiver)
        .push_interval(Duration::from_millis(1))
        .is_err());
}
