//! The core recording benchmark: what a `start_event` + `end_event` pair costs the caller.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench core
//! ```
//!
//! Every timed region holds only pairs (`support::pair`): task ids are formatted beforehand in
//! batches of 4,096 into a reused buffer, outside the clock. A pair includes input checks, two
//! `Arc<str>` allocations (task id and event name), two clock reads at start and one at end,
//! two hashes and two shard locks, the in-flight insert and remove, the totals, the publisher
//! check, and retention: pushing the record and, in steady state, evicting (and freeing) the
//! oldest record of the shard.
//!
//! Groups:
//! - `pair/*`: one thread. `default_100k` is the headline (default configuration: retention
//!   100,000, no publisher, steady state where every pair evicts one record); `held_1k` and
//!   `held_1m` are the same at retention 1,000 and 1,000,000 (steady state too);
//!   `publisher_100k` adds a no-op publisher; `fill_to_1m` is the amortized cost per pair while
//!   an empty logger with retention 1,000,000 fills up (growth, no eviction).
//! - `pair_2t/*`: the default configuration driven by 1 and by 2 threads sharing one logger;
//!   one iteration is one pair on each thread, timed from the first thread's start to the last
//!   one's end.
//!   `2_threads_2_loggers` is the control: 2 threads on 2 independent loggers.
//!
//! The machine is shared, so by default each timed region is reported as its wall time less
//! the time the thread spent runnable but waiting for a CPU (other processes' load, read from
//! /proc/thread-self/schedstat before and after the region); time blocked on a lock still
//! counts. `CORE_BENCH_WALL=1` reports plain wall time instead.
//!
//! After criterion's report a summary prints, per benchmark, ns per pair and pairs/s (criterion's
//! typical estimate and the median sample), the share of the timed wall time the threads spent
//! waiting for a CPU (and for `pair_2t`, blocked: neither running nor runnable, i.e. waiting
//! for a shard lock another thread holds, often one preempted while holding it), the 2-thread
//! scaling ratios and the publisher's drops.
//!
//! `CORE_BENCH_DRIVE=<retention>,<pairs>[,publisher|2threads]` instead runs a plain driver for
//! callgrind and perf: it brings a logger with that retention to steady state and then runs
//! `<pairs>` pairs (on each of 2 threads with `2threads`) inside `driven_pairs` (see
//! BENCHMARKS.md for the commands).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use pipeline_telemetry::config::DEFAULT_RETENTION;
use pipeline_telemetry::{TelemetryConfig, TelemetryLogger};
use support::{fill_to_steady_state, run_pairs, steady_logger, Ids, Noop, BATCH};

/// Queue of the publisher in `publisher_100k`: large enough to absorb a whole sample should
/// the delivery thread fall behind (it is drained between samples, outside the clock).
const PUBLISHER_QUEUE: usize = 1 << 18;

/// Ids per thread formatted ahead of one timed round of the 2-thread bench.
const ROUND: usize = 1 << 17;

/// Figures gathered while benches run, printed in the summary.
struct Notes {
    /// Benchmarks that ran in this process, in order.
    ran: Vec<Tally>,
    lines: Vec<String>,
}

/// What one benchmark ran: the pairs one iteration stands for, and how long its threads were
/// inside timed regions versus waiting for a CPU meanwhile (other processes' load).
struct Tally {
    group: &'static str,
    id: &'static str,
    pairs_per_iter: u64,
    timed_ns: u128,
    waited_ns: u128,
    /// Time on a CPU (schedstat's first field; brought up to date at each tick, so only good
    /// to a few ms: used for the blocked share of long rounds).
    on_cpu_ns: u128,
}

static NOTES: Mutex<Notes> = Mutex::new(Notes {
    ran: Vec::new(),
    lines: Vec::new(),
});

fn tally(
    (group, id): (&'static str, &'static str),
    pairs_per_iter: u64,
    timed: Duration,
    sched: Sched,
) {
    let mut notes = NOTES.lock().unwrap();
    let index = match notes
        .ran
        .iter()
        .position(|t| t.group == group && t.id == id)
    {
        Some(index) => index,
        None => {
            notes.ran.push(Tally {
                group,
                id,
                pairs_per_iter,
                timed_ns: 0,
                waited_ns: 0,
                on_cpu_ns: 0,
            });
            notes.ran.len() - 1
        }
    };
    let entry = &mut notes.ran[index];
    entry.timed_ns += timed.as_nanos();
    entry.waited_ns += u128::from(sched.waited);
    entry.on_cpu_ns += u128::from(sched.on_cpu);
}

/// A thread's scheduler statistics from Linux's /proc/thread-self/schedstat, in ns.
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    /// Time on a CPU. Brought up to date at ticks and switches only, so good to a few ms.
    on_cpu: u64,
    /// Run-queue wait: time runnable but waiting for a CPU. Brought up to date each time the
    /// thread gets a CPU, so exact when read by the thread itself.
    waited: u64,
}

impl std::ops::Sub for Sched {
    type Output = Sched;
    fn sub(self, earlier: Sched) -> Sched {
        Sched {
            on_cpu: self.on_cpu.saturating_sub(earlier.on_cpu),
            waited: self.waited.saturating_sub(earlier.waited),
        }
    }
}

impl std::ops::AddAssign for Sched {
    fn add_assign(&mut self, other: Sched) {
        self.on_cpu += other.on_cpu;
        self.waited += other.waited;
    }
}

/// Reads the calling thread's [`Sched`] (zeros where unavailable).
struct RunQueue {
    file: Option<std::fs::File>,
    buf: [u8; 96],
}

impl RunQueue {
    /// For the calling thread.
    fn open() -> RunQueue {
        RunQueue {
            file: std::fs::File::open("/proc/thread-self/schedstat").ok(),
            buf: [0; 96],
        }
    }

    fn read(&mut self) -> Sched {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else {
            return Sched::default();
        };
        let Ok(n) = file.read_at(&mut self.buf, 0) else {
            return Sched::default();
        };
        let mut fields = std::str::from_utf8(&self.buf[..n])
            .unwrap_or("")
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0));
        Sched {
            on_cpu: fields.next().unwrap_or(0),
            waited: fields.next().unwrap_or(0),
        }
    }
}

/// Whether timed regions are reported as wall time minus run-queue wait (the default), or as
/// plain wall time (`CORE_BENCH_WALL=1`).
fn load_corrected() -> bool {
    static CORRECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CORRECTED
        .get_or_init(|| !matches!(std::env::var("CORE_BENCH_WALL").as_deref(), Ok(v) if v != "0"))
}

/// `elapsed` less the `waited` part of it, unless plain wall time was asked for.
fn corrected(elapsed: Duration, waited: u64) -> Duration {
    if load_corrected() {
        elapsed.saturating_sub(Duration::from_nanos(waited))
    } else {
        elapsed
    }
}

/// Times `iters` pairs with fresh ids, formatting them outside the clock. Returns the time
/// (corrected, see [`corrected`]), the wall time and the scheduler figures within it.
fn timed_pairs(logger: &TelemetryLogger, ids: &mut Ids, iters: u64) -> (Duration, Duration, Sched) {
    let mut run_queue = RunQueue::open();
    let (mut wall, mut sched) = (Duration::ZERO, Sched::default());
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        let batch = ids.next_batch(n);
        let before = run_queue.read();
        let start = Instant::now();
        run_pairs(logger, batch);
        wall += start.elapsed();
        sched += run_queue.read() - before;
        left -= n as u64;
    }
    (corrected(wall, sched.waited), wall, sched)
}

/// `timed_pairs` for `group/id`, tallied.
fn tallied_pairs(
    (group, id): (&'static str, &'static str),
    logger: &TelemetryLogger,
    ids: &mut Ids,
    iters: u64,
) -> Duration {
    let (timed, wall, sched) = timed_pairs(logger, ids, iters);
    tally((group, id), 1, wall, sched);
    timed
}

fn steady_bench(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &'static str,
    retention: usize,
) {
    let (logger, mut ids) =
        steady_logger(&TelemetryConfig::default().retention(retention), retention);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| tallied_pairs(("pair", id), &logger, &mut ids, iters));
    });
    assert_eq!(logger.retained_len(), retention);
}

fn one_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("pair");
    group.throughput(Throughput::Elements(1));

    steady_bench(&mut group, "default_100k", DEFAULT_RETENTION);
    steady_bench(&mut group, "held_1k", 1_000);
    steady_bench(&mut group, "held_1m", 1_000_000);

    {
        let config = TelemetryConfig::default().queue_capacity(PUBLISHER_QUEUE);
        let logger = TelemetryLogger::with_config(&config);
        logger.add_publisher(Box::new(Noop)).unwrap();
        let mut ids = Ids::default();
        fill_to_steady_state(&logger, &mut ids, DEFAULT_RETENTION);
        logger.flush(Duration::from_secs(60)).unwrap();
        let before = logger.publisher_stats()[0].clone();
        let mut timed = 0u64;
        group.bench_function("publisher_100k", |b| {
            b.iter_custom(|iters| {
                timed += iters;
                let elapsed = tallied_pairs(("pair", "publisher_100k"), &logger, &mut ids, iters);
                // Drain outside the clock so each sample starts with an empty queue.
                logger.flush(Duration::from_secs(60)).unwrap();
                elapsed
            });
        });
        let after = &logger.publisher_stats()[0];
        if timed > 0 {
            NOTES.lock().unwrap().lines.push(format!(
                "publisher_100k: {timed} timed pairs, {} delivered, {} dropped ({:.4}%), \
                 queue {PUBLISHER_QUEUE}",
                after.delivered - before.delivered,
                after.dropped - before.dropped,
                100.0 * (after.dropped - before.dropped) as f64 / timed.max(1) as f64,
            ));
        }
    }

    // Filling: every iteration fills a fresh logger from empty to 1,000,000 records.
    const FILL: u64 = 1_000_000;
    group.throughput(Throughput::Elements(FILL));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let mut ids = Ids::default();
    group.bench_function("fill_to_1m", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let logger = TelemetryLogger::with_config(
                    &TelemetryConfig::default().retention(FILL as usize),
                );
                let (elapsed, wall, sched) = timed_pairs(&logger, &mut ids, FILL);
                tally(("pair", "fill_to_1m"), FILL, wall, sched);
                timed += elapsed;
                // Shards fill unevenly: the fullest start evicting shortly before the end.
                assert!(logger.retained_len() > FILL as usize * 99 / 100);
            }
            timed
        });
    });
    group.finish();
}

/// One thread per lane, each running `iters` pairs on its lane's logger, in rounds of at most
/// [`ROUND`] pairs per thread (ids for a round are formatted before the threads meet at a
/// barrier). A round lasts from the first thread's start to the last one's end; corrected
/// (see [`corrected`]), each thread's end is moved back by its run-queue wait in the round.
/// Returns the rounds' total and tallies the threads' time and waits under `group/id`.
fn parallel_pairs(
    (group, id): (&'static str, &'static str),
    lanes: &mut [(&TelemetryLogger, Ids)],
    iters: u64,
) -> Duration {
    /// One thread's timed round: start, end, scheduler figures.
    type Round = (Instant, Instant, Sched);
    let barrier = Barrier::new(lanes.len());
    let rounds: Vec<Vec<Round>> = std::thread::scope(|s| {
        let workers: Vec<_> = lanes
            .iter_mut()
            .map(|(logger, ids)| {
                let barrier = &barrier;
                let logger = &**logger;
                s.spawn(move || {
                    let mut run_queue = RunQueue::open();
                    let mut rounds = Vec::new();
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(ROUND as u64) as usize;
                        let batch = ids.next_batch(n);
                        barrier.wait();
                        let before = run_queue.read();
                        let start = Instant::now();
                        run_pairs(logger, batch);
                        let end = Instant::now();
                        rounds.push((start, end, run_queue.read() - before));
                        left -= n as u64;
                    }
                    rounds
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut total = Duration::ZERO;
    for round in 0..rounds[0].len() {
        let start = rounds.iter().map(|t| t[round].0).min().unwrap();
        let end = rounds
            .iter()
            .map(|t| start + corrected(t[round].1 - start, t[round].2.waited))
            .max()
            .unwrap();
        total += end - start;
        for thread in &rounds {
            let (start, end, sched) = thread[round];
            tally((group, id), lanes.len() as u64, end - start, sched);
        }
    }
    total
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pair_2t");
    let config = TelemetryConfig::default();
    let (shared, ids) = steady_logger(&config, DEFAULT_RETENTION);
    // The control: two threads on two independent loggers share only the machine (allocator,
    // caches, memory), so their scaling is the most the shared logger can reach here.
    let (other, other_ids) = steady_logger(&config, DEFAULT_RETENTION);
    let cases: [(&'static str, Vec<(&TelemetryLogger, Ids)>); 3] = [
        ("1_thread", vec![(&shared, ids.lane())]),
        (
            "2_threads",
            vec![(&shared, ids.lane()), (&shared, ids.lane())],
        ),
        (
            "2_threads_2_loggers",
            vec![(&shared, ids.lane()), (&other, other_ids.lane())],
        ),
    ];
    for (id, mut lanes) in cases {
        let threads = lanes.len() as u64;
        group.throughput(Throughput::Elements(threads));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| parallel_pairs(("pair_2t", id), &mut lanes, iters));
        });
    }
    group.finish();
}

/// Criterion's output directory, found the way criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Criterion's estimates for this run, in ns per iteration: its typical figure (the slope
/// of the linear fit where it has one, else the mean; what it prints as `time`) and the median
/// of the samples.
fn estimates(group: &str, id: &str) -> Option<(f64, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let point = |name: &str| json[name]["point_estimate"].as_f64();
    Some((point("slope").or_else(|| point("mean"))?, point("median")?))
}

fn summary() {
    let notes = NOTES.lock().unwrap();
    let mut throughputs = BTreeMap::new();
    println!(
        "\n== summary: ns per pair (per thread for pair_2t), criterion typical / median, {} ==",
        if load_corrected() {
            "wall time less run-queue wait"
        } else {
            "wall time"
        }
    );
    for tally in &notes.ran {
        let Some((typical, median)) = estimates(tally.group, tally.id) else {
            continue;
        };
        // Per iteration: one pair (pair/*, except fill_to_1m: 1M pairs), or one pair on each
        // thread at once (pair_2t/*).
        let per_pair = if tally.group == "pair_2t" {
            1.0
        } else {
            1.0 / tally.pairs_per_iter as f64
        };
        let to_throughput = |ns: f64| tally.pairs_per_iter as f64 * 1e3 / ns;
        throughputs.insert(tally.id, (to_throughput(typical), to_throughput(median)));
        let share = |ns: u128| 100.0 * ns as f64 / tally.timed_ns.max(1) as f64;
        let blocked = tally
            .timed_ns
            .saturating_sub(tally.waited_ns + tally.on_cpu_ns);
        println!(
            "{:<28} {:>7.1} / {:>7.1} ns   {:>5.2} / {:>5.2} M pairs/s   waited for a CPU {:>4.1}%{}",
            format!("{}/{}", tally.group, tally.id),
            typical * per_pair,
            median * per_pair,
            to_throughput(typical),
            to_throughput(median),
            share(tally.waited_ns),
            if tally.group == "pair_2t" {
                format!(", blocked {:>4.1}%", share(blocked))
            } else {
                String::new()
            },
        );
    }
    if let Some((one_t, one_m)) = throughputs.get("1_thread") {
        for (id, what) in [
            ("2_threads", "one logger (target >= 1.7x)"),
            ("2_threads_2_loggers", "two loggers (control)"),
        ] {
            if let Some((two_t, two_m)) = throughputs.get(id) {
                println!(
                    "2-thread scaling, {what}: {:.2}x typical / {:.2}x median",
                    two_t / one_t,
                    two_m / one_m
                );
            }
        }
    }
    for line in &notes.lines {
        println!("{line}");
    }
}

/// Steady state at `retention`, then `pairs` pairs in [`driven_pairs`], for callgrind and
/// perf. With `publisher`, a no-op publisher is attached (queue [`PUBLISHER_QUEUE`]); with
/// `2threads`, two threads each run `pairs` pairs.
fn drive(spec: &str) {
    const USAGE: &str = "CORE_BENCH_DRIVE=<retention>,<pairs>[,publisher|2threads]";
    let fields: Vec<&str> = spec.split(',').map(str::trim).collect();
    let number = |i: usize| -> usize {
        fields
            .get(i)
            .and_then(|n| n.replace('_', "").parse().ok())
            .expect(USAGE)
    };
    let (retention, pairs) = (number(0), number(1));
    let (publisher, threads) = match fields.get(2) {
        None => (false, 1),
        Some(&"publisher") => (true, 1),
        Some(&"2threads") => (false, 2),
        Some(_) => panic!("{USAGE}"),
    };
    let config = TelemetryConfig::default()
        .retention(retention)
        .queue_capacity(PUBLISHER_QUEUE);
    let logger = TelemetryLogger::with_config(&config);
    if publisher {
        logger.add_publisher(Box::new(Noop)).unwrap();
    }
    let ids = Ids::default();
    let mut lanes: Vec<Ids> = (0..threads).map(|_| ids.lane()).collect();
    // The threads fill the store themselves, so the timed pairs find their own shards in
    // steady state (a thread's records live in its home shard).
    let filled = Barrier::new(threads + 1);
    let timed = Barrier::new(threads + 1);
    let (elapsed, waited) = std::thread::scope(|s| {
        let workers: Vec<_> = lanes
            .iter_mut()
            .map(|lane| {
                let (logger, filled, timed) = (&logger, &filled, &timed);
                s.spawn(move || {
                    fill_to_steady_state(logger, lane, retention);
                    let batch = lane.next_batch(pairs);
                    filled.wait();
                    timed.wait();
                    let mut run_queue = RunQueue::open();
                    let before = run_queue.read();
                    driven_pairs(logger, batch);
                    (run_queue.read() - before).waited
                })
            })
            .collect();
        filled.wait();
        logger.flush(Duration::from_secs(60)).unwrap();
        let start = Instant::now();
        timed.wait();
        let waited: u64 = workers.into_iter().map(|t| t.join().unwrap()).sum();
        (start.elapsed(), waited)
    });
    let with = if publisher {
        " with a no-op publisher"
    } else {
        ""
    };
    println!(
        "drove {pairs} pairs on each of {threads} thread(s) at retention {retention}{with}: \
         {:.1} ns per pair per thread ({:.1} less waits for a CPU, which took {:.1}% of it; \
         retained {}, dropped {})",
        elapsed.as_nanos() as f64 / pairs as f64,
        (elapsed.as_nanos() as f64 - waited as f64 / threads as f64) / pairs as f64,
        100.0 * waited as f64 / (threads as f64 * elapsed.as_nanos() as f64),
        logger.retained_len(),
        logger.dropped(),
    );
}

#[inline(never)]
fn driven_pairs(logger: &TelemetryLogger, ids: &[String]) {
    run_pairs(logger, std::hint::black_box(ids));
}

fn main() {
    if let Ok(spec) = std::env::var("CORE_BENCH_DRIVE") {
        drive(&spec);
        return;
    }
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
        .configure_from_args();
    one_thread(&mut criterion);
    two_threads(&mut criterion);
    criterion.final_summary();
    summary();
}
