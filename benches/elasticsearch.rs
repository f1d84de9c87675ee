//! The Elasticsearch publisher's benchmark: documents per second from `end_event` to an
//! acknowledged bulk response, and what `end_event` costs the caller with the publisher
//! attached.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-es cargo bench --bench elasticsearch
//! ES_BENCH_QUICK=1 cargo bench --bench elasticsearch     # a smaller run, as a smoke test
//! ```
//!
//! The server is the in-suite fake Elasticsearch (`tests/support/fake_elasticsearch.rs`) on
//! loopback, in the same process, keeping `_index` and `_id` of every document (no source
//! parsing): it parses every action line, checks `create` against the ids it holds, and
//! answers every item, filtered by `filter_path` as Elasticsearch does. It shares the
//! machine's two cores with the caller, the delivery thread and the sender thread, so the
//! figures are a floor for the client side.
//!
//! 1. `throughput/pipeline`: a `TelemetryLogger` with the publisher attached (default batch of
//!    2,000 documents / 5 MiB); the clock runs from the first `start_event` until
//!    `flush` returns, i.e. until Elasticsearch acknowledged every document. The logger's
//!    queue and the publisher's buffer (documents and bytes) are made large enough that nothing
//!    is dropped (checked).
//! 2. `throughput/publisher`: `publish_event_metrics` called directly (encoding included),
//!    then `flush`: the publisher alone.
//! 3. `end_event`: the caller-side cost of `end_event` in a logger at steady state (retention
//!    100,000), timed over batches of 4,096 whose events were started outside the clock, with
//!    no publisher, with a no-op publisher, and with the Elasticsearch publisher;
//!    `saturated` runs batches back to back (the delivery queue fills and drops, as under
//!    overload), `paced` waits outside the clock for the pipeline to drain between batches (so
//!    every record is handed over and delivered). Each mode runs twice: as is, where the
//!    caller shares both cores with the pipeline's threads and the in-process server, and
//!    `pinned/`, where the caller runs alone on CPU 0 and every other thread (server, delivery,
//!    sender) on CPU 1, as when Elasticsearch runs on its own machine (2 CPUs or more only).
//!
//! Every figure is the median of its runs or batches; the spread (min..max over runs, or the
//! 10th..90th percentile over batches) is printed beside it. For `end_event` the caller
//! thread's CPU time per call is printed too (`CLOCK_THREAD_CPUTIME_ID` around each batch,
//! median over batches): on a 2-core machine the caller shares the cores with the delivery
//! thread, the sender and the in-process server, and the wall time includes the time it was
//! preempted.

#[path = "../tests/support/fake_elasticsearch.rs"]
mod fake_elasticsearch;
mod support;

use std::time::{Duration, Instant, SystemTime};

use fake_elasticsearch::FakeElasticsearch;
use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
use pipeline_telemetry::{
    EventMetrics, MetricsPublisher, Status, TelemetryConfig, TelemetryLogger,
};
use support::{fill_to_steady_state, pair, Ids, Noop, BATCH, EVENT_NAME};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn publisher(server: &FakeElasticsearch, buffer: usize) -> ElasticsearchPublisher {
    ElasticsearchPublisher::builder([server.url()])
        .and_then(|b| {
            b.buffer_max_docs(buffer)
                .buffer_max_bytes(buffer.saturating_mul(1024))
                .build()
        })
        .expect("publisher")
}

/// Documents per second from the first start_event to the flush that acknowledges them all.
fn pipeline_run(n: usize) -> f64 {
    let server = FakeElasticsearch::start_ids_only();
    let publisher = publisher(&server, n + 1);
    let stats = publisher.stats_handle();
    let logger = TelemetryLogger::with_config(
        &TelemetryConfig::default().queue_capacity(n.next_power_of_two()),
    );
    logger.add_publisher(Box::new(publisher)).expect("attach");
    // Warm up: template installed, connection open.
    pair(&logger, "warm-up");
    logger
        .flush(Duration::from_secs(30))
        .expect("warm-up flush");
    let ids: Vec<String> = (0..n).map(|i| format!("task-{i}")).collect();
    let start = Instant::now();
    for id in &ids {
        pair(&logger, id);
    }
    logger.flush(Duration::from_secs(300)).expect("flush");
    let elapsed = start.elapsed();
    let s = stats.stats();
    assert_eq!(s.sent, n as u64 + 1, "every document acknowledged: {s:?}");
    assert_eq!(logger.dropped(), 0);
    assert_eq!(server.doc_count(), n + 1);
    n as f64 / elapsed.as_secs_f64()
}

/// Documents per second through the publisher alone.
fn publisher_run(n: usize) -> f64 {
    let server = FakeElasticsearch::start_ids_only();
    let publisher = publisher(&server, n + 1);
    let now = SystemTime::now();
    let event = |i: usize| EventMetrics {
        event_name: EVENT_NAME.into(),
        task_id: format!("task-{i}"),
        start_time: now,
        end_time: Some(now + Duration::from_micros(i as u64)),
        status: Status::Completed,
        error: None,
        retry_count: 0,
        process_id: 1,
    };
    publisher.publish_event_metrics(&event(n)).expect("warm-up");
    publisher
        .flush(Instant::now() + Duration::from_secs(30))
        .expect("warm-up flush");
    let events: Vec<EventMetrics> = (0..n).map(event).collect();
    let start = Instant::now();
    for e in &events {
        publisher.publish_event_metrics(e).expect("publish");
    }
    publisher
        .flush(Instant::now() + Duration::from_secs(300))
        .expect("flush");
    let elapsed = start.elapsed();
    let s = publisher.stats();
    assert_eq!((s.sent, s.dropped), (n as u64 + 1, 0), "{s:?}");
    n as f64 / elapsed.as_secs_f64()
}

#[derive(Clone, Copy, PartialEq)]
enum Attached {
    None,
    Noop,
    Elasticsearch,
}

/// CPU time this thread has run, in ns (`CLOCK_THREAD_CPUTIME_ID`: exact at the call, unlike
/// `/proc/thread-self/schedstat`, which the scheduler updates only at ticks and switches).
fn thread_cpu_ns() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (status == 0).then(|| now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// Restricts the calling thread to `cpus`; threads it spawns afterwards inherit the set.
/// Returns false where that is not possible (fewer CPUs, no permission).
fn pin(cpus: impl IntoIterator<Item = usize>) -> bool {
    // SAFETY: `cpu_set_t` is plain data, zeroed is its empty set; `CPU_SET` writes inside it
    // for indexes below `CPU_SETSIZE` (checked); `sched_setaffinity` only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                return false;
            }
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Per end_event, one figure per batch of 4,096: wall ns and the caller thread's CPU ns
/// (empty where the CPU clock is unavailable); records dropped. `pinned`: the server, the
/// logger's delivery thread and the publisher's threads run on CPU 1 and the caller alone on
/// CPU 0, as when Elasticsearch runs on its own machine.
fn end_event_cost(
    attached: Attached,
    paced: bool,
    pinned: bool,
    batches: usize,
) -> (Vec<f64>, Vec<f64>, u64) {
    // Every thread made from here on inherits CPU 1.
    let pinned = pinned && pin([1]);
    let server = FakeElasticsearch::start_ids_only();
    let logger = TelemetryLogger::with_config(&TelemetryConfig::default());
    let mut ids = Ids::default();
    fill_to_steady_state(
        &logger,
        &mut ids,
        pipeline_telemetry::config::DEFAULT_RETENTION,
    );
    match attached {
        Attached::None => {}
        Attached::Noop => logger.add_publisher(Box::new(Noop)).expect("attach"),
        Attached::Elasticsearch => logger
            .add_publisher(Box::new(publisher(&server, 1 << 20)))
            .expect("attach"),
    }
    if pinned {
        assert!(pin([0]), "the caller moves to CPU 0");
    }
    let mut wall = Vec::with_capacity(batches);
    let mut cpu = Vec::with_capacity(batches);
    for round in 0..batches + 10 {
        let batch = ids.next_batch(BATCH);
        for id in batch {
            logger.start_event(EVENT_NAME, id, None).expect("start");
        }
        let cpu_start = thread_cpu_ns();
        let start = Instant::now();
        for id in batch {
            logger.end_event(id, None).expect("end");
        }
        let elapsed = start.elapsed();
        let cpu_end = thread_cpu_ns();
        if round >= 10 {
            wall.push(elapsed.as_nanos() as f64 / BATCH as f64);
            if let (Some(a), Some(b)) = (cpu_start, cpu_end) {
                cpu.push(b.saturating_sub(a) as f64 / BATCH as f64);
            }
        }
        if paced {
            let _ = logger.flush(Duration::from_secs(30));
        }
    }
    let _ = logger.flush(Duration::from_secs(30));
    let dropped = logger.dropped();
    if pinned {
        pin(0..cpus());
    }
    (wall, cpu, dropped)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let quick = std::env::var_os("ES_BENCH_QUICK").is_some();
    let (n, runs, batches) = if quick {
        (20_000, 2, 40)
    } else {
        (400_000, 3, 300)
    };

    println!("elasticsearch bench: {n} documents per throughput run, {runs} runs");
    for (name, run) in [
        ("throughput/pipeline", pipeline_run as fn(usize) -> f64),
        ("throughput/publisher", publisher_run),
    ] {
        let mut rates: Vec<f64> = (0..runs).map(|_| run(n)).collect();
        let (lo, hi) = (percentile(&mut rates, 0.0), percentile(&mut rates, 1.0));
        println!(
            "{name:<22} median {:>9.0} docs/s   (min {lo:.0}, max {hi:.0})",
            median(&mut rates)
        );
    }

    let mut baseline = None;
    let mut cpu_baseline = None;
    let placements: &[(&str, bool)] = if cpus() >= 2 {
        &[("", false), ("pinned/", true)]
    } else {
        &[("", false)]
    };
    for &(placement, pinned) in placements {
        for (mode, attached, paced) in [
            ("none", Attached::None, false),
            ("noop", Attached::Noop, false),
            ("es_saturated", Attached::Elasticsearch, false),
            ("none_paced", Attached::None, true),
            ("noop_paced", Attached::Noop, true),
            ("es_paced", Attached::Elasticsearch, true),
        ] {
            let name = format!("end_event/{placement}{mode}");
            let cost = end_event_cost(attached, paced, pinned, batches);
            report(&name, attached, cost, &mut baseline, &mut cpu_baseline);
        }
    }
}

/// Prints one end_event line: medians, spread, and the change against the last `none` line.
fn report(
    name: &str,
    attached: Attached,
    (mut ns, mut cpu_ns, dropped): (Vec<f64>, Vec<f64>, u64),
    baseline: &mut Option<f64>,
    cpu_baseline: &mut Option<f64>,
) {
    let m = median(&mut ns);
    let (p10, p90) = (percentile(&mut ns, 0.1), percentile(&mut ns, 0.9));
    let cpu = (!cpu_ns.is_empty()).then(|| median(&mut cpu_ns));
    if attached == Attached::None {
        *baseline = Some(m);
        *cpu_baseline = cpu;
    }
    let base = baseline.unwrap_or(m);
    let cpu_text = match (cpu, *cpu_baseline) {
        (Some(c), Some(b)) => {
            format!("cpu median {c:>6.1} ns ({:+.1}%)", (c / b - 1.0) * 100.0)
        }
        _ => "cpu n/a".to_owned(),
    };
    println!(
        "{name:<29} wall median {m:>6.1} ns (p10 {p10:.1}, p90 {p90:.1}, {:+.1}%)  \
         {cpu_text}  dropped {dropped}",
        (m / base - 1.0) * 100.0
    );
}
