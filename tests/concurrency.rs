//! Many threads recording at once: totals stay exact, publishers see each record exactly once,
//! retention bounds memory without touching totals, and a stalled publisher never blocks the
//! caller (its losses are counted).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use pipeline_telemetry::{
    EventCounts, EventMetrics, MetricsPublisher, NetworkCounts, NetworkMetrics, PublishError,
    Status, Telemetry, TelemetryConfig, TelemetryError,
};

const DEADLINE: Duration = Duration::from_secs(60);
const THREADS: usize = 4;

/// Keeps the task ids, statuses and retry counts it receives.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(String, Status, u32)>>,
    network: Mutex<Vec<(String, u64, u64, bool)>>,
}

impl MetricsPublisher for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn publish_event_metrics(&self, m: &EventMetrics) -> Result<(), PublishError> {
        self.events
            .lock()
            .unwrap()
            .push((m.task_id.clone(), m.status, m.retry_count));
        Ok(())
    }
    fn publish_network_metrics(&self, m: &NetworkMetrics) -> Result<(), PublishError> {
        self.network.lock().unwrap().push((
            m.task_id.clone(),
            m.bytes_sent,
            m.bytes_received,
            m.is_failed(),
        ));
        Ok(())
    }
}

// What each record is, by construction from its global index.
fn event_fails(g: usize) -> bool {
    g % 7 == 0
}
fn event_retries(g: usize) -> u32 {
    match g % 10 {
        0 => 3,
        1 | 2 => 1,
        3 => 2,
        _ => 0,
    }
}
fn op_fails(g: usize) -> bool {
    g % 11 == 0
}
fn op_bytes(g: usize) -> (u64, u64) {
    (g as u64 % 1000, 3 * g as u64)
}

struct Expected {
    events: EventCounts,
    total_retries: u64,
    by_retry_count: BTreeMap<u32, u64>,
    network: NetworkCounts,
}

fn expected(events: usize, ops: usize) -> Expected {
    let failed = (0..events).filter(|&g| event_fails(g)).count() as u64;
    let mut by_retry_count = BTreeMap::new();
    let mut total_retries = 0;
    for g in 0..events {
        *by_retry_count.entry(event_retries(g)).or_insert(0) += 1;
        total_retries += u64::from(event_retries(g));
    }
    let ops_failed = (0..ops).filter(|&g| op_fails(g)).count() as u64;
    Expected {
        events: EventCounts {
            total: events as u64,
            completed: events as u64 - failed,
            failed,
            in_flight: 0,
        },
        total_retries,
        by_retry_count,
        network: NetworkCounts {
            total: ops as u64,
            succeeded: ops as u64 - ops_failed,
            failed: ops_failed,
            in_flight: 0,
            bytes_sent: (0..ops).map(|g| op_bytes(g).0).sum(),
            bytes_received: (0..ops).map(|g| op_bytes(g).1).sum(),
        },
    }
}

/// Records events `g` in `range` (half through guards, half through start/end) and network
/// operations `g` in `ops`, each as its index says.
fn record(telemetry: &Telemetry, range: std::ops::Range<usize>, ops: std::ops::Range<usize>) {
    let events = &telemetry.events;
    for g in range {
        let id = format!("e-{g}");
        if g % 2 == 0 {
            let guard = events.track("work", &id).unwrap();
            for _ in 0..event_retries(g) {
                guard.retry().unwrap();
            }
            if event_fails(g) {
                guard.fail("failed by construction").unwrap();
            } else {
                guard.complete().unwrap();
            }
        } else {
            events.start_event("work", &id, None).unwrap();
            for n in 1..=event_retries(g) {
                assert_eq!(events.record_retry(&id), Ok(n));
            }
            let error = event_fails(g).then_some("failed by construction");
            events.end_event(&id, error).unwrap();
        }
    }
    let net = &telemetry.network;
    for g in ops {
        let id = format!("n-{g}");
        let (sent, received) = op_bytes(g);
        if g % 2 == 0 {
            let mut call = net.track(&id, "peer", 443, Some("rpc")).unwrap();
            call.sent(sent);
            call.received(received);
            if op_fails(g) {
                call.fail("refused").unwrap();
            }
            // Otherwise dropped: succeeded.
        } else {
            net.start_operation(&id, "peer", 443, None).unwrap();
            let error = op_fails(g).then_some("refused");
            net.end_operation(&id, sent, received, error).unwrap();
        }
    }
}

fn assert_totals(telemetry: &Telemetry, want: &Expected) {
    assert_eq!(telemetry.events.counts(), want.events);
    let stats = telemetry.events.retry_stats();
    assert_eq!(stats.total_retries, want.total_retries);
    assert_eq!(
        stats.events_with_retries,
        want.by_retry_count.range(1..).map(|(_, n)| n).sum::<u64>()
    );
    assert_eq!(stats.events_by_retry_count, want.by_retry_count);
    assert_eq!(telemetry.network.counts(), want.network);
}

#[test]
fn four_threads_record_100_000_events_with_exact_totals_and_publish_each_once() {
    const EVENTS: usize = 100_000;
    const OPS: usize = 20_000;
    let telemetry = Telemetry::with_config(&TelemetryConfig::default().queue_capacity(1 << 17));
    let recorder = Arc::new(Recorder::default());
    telemetry.add_publisher(Box::new(recorder.clone())).unwrap();
    let done = AtomicBool::new(false);

    std::thread::scope(|s| {
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let events = t * EVENTS / THREADS..(t + 1) * EVENTS / THREADS;
                let ops = t * OPS / THREADS..(t + 1) * OPS / THREADS;
                let telemetry = &telemetry;
                s.spawn(move || record(telemetry, events, ops))
            })
            .collect();
        // A reader querying while the writers run: finished totals only ever grow.
        let reader = s.spawn(|| {
            let mut last = 0;
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) {
                let c = telemetry.events.counts();
                assert!(c.completed + c.failed >= last);
                assert!(c.completed + c.failed <= EVENTS as u64);
                last = c.completed + c.failed;
                let _ = telemetry.network.counts();
                reads += 1;
                if reads % 64 == 0 {
                    let stats = telemetry.events.retry_stats();
                    assert!(stats.events_by_retry_count.values().sum::<u64>() <= EVENTS as u64);
                }
                std::thread::yield_now();
            }
            reads
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        assert!(reader.join().unwrap() > 0);
    });

    telemetry.flush(DEADLINE).unwrap();
    let want = expected(EVENTS, OPS);
    assert_totals(&telemetry, &want);
    assert_eq!(telemetry.dropped(), 0);
    let stats = telemetry.publisher_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (
            stats[0].delivered,
            stats[0].dropped,
            stats[0].errors,
            stats[0].panics,
            stats[0].queued
        ),
        ((EVENTS + OPS) as u64, 0, 0, 0, 0)
    );

    let events = recorder.events.lock().unwrap();
    assert_eq!(events.len(), EVENTS);
    let mut seen = HashSet::with_capacity(EVENTS);
    for (id, status, retries) in events.iter() {
        assert!(seen.insert(id.as_str()), "{id} published twice");
        let g: usize = id.strip_prefix("e-").unwrap().parse().unwrap();
        assert!(g < EVENTS);
        let want = if event_fails(g) {
            Status::Failed
        } else {
            Status::Completed
        };
        assert_eq!((*status, *retries), (want, event_retries(g)), "{id}");
    }
    let network = recorder.network.lock().unwrap();
    assert_eq!(network.len(), OPS);
    let mut seen = HashSet::with_capacity(OPS);
    for (id, sent, received, failed) in network.iter() {
        assert!(seen.insert(id.as_str()), "{id} published twice");
        let g: usize = id.strip_prefix("n-").unwrap().parse().unwrap();
        assert_eq!((*sent, *received), op_bytes(g));
        assert_eq!(*failed, op_fails(g));
    }
}

#[test]
fn small_retention_keeps_the_newest_records_and_exact_totals() {
    const PER_THREAD: usize = 5_000;
    const OPS_PER_THREAD: usize = 2_000;
    const RETENTION: usize = 1_000;
    let telemetry = Telemetry::with_config(&TelemetryConfig::default().retention(RETENTION));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let telemetry = &telemetry;
            s.spawn(move || {
                record(
                    telemetry,
                    t * PER_THREAD..(t + 1) * PER_THREAD,
                    t * OPS_PER_THREAD..(t + 1) * OPS_PER_THREAD,
                )
            });
        }
    });

    assert_totals(
        &telemetry,
        &expected(THREADS * PER_THREAD, THREADS * OPS_PER_THREAD),
    );
    assert_eq!(telemetry.events.retained_len(), RETENTION);
    assert_eq!(telemetry.network.retained_len(), RETENTION);
    let retained = telemetry.events.all_metrics();
    assert_eq!(retained.len(), RETENTION);
    assert_eq!(telemetry.network.all_metrics().len(), RETENTION);
    assert_eq!(
        retained
            .iter()
            .map(|m| &m.task_id)
            .collect::<HashSet<_>>()
            .len(),
        RETENTION
    );

    // Below 8,192 records one shard evicts strictly oldest-first, and each thread finishes its
    // records in index order: what is kept of each thread is the end of its sequence.
    for t in 0..THREADS {
        let mut kept: Vec<usize> = retained
            .iter()
            .map(|m| {
                m.task_id
                    .strip_prefix("e-")
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .filter(|g| g / PER_THREAD == t)
            .collect();
        kept.sort_unstable();
        let end = (t + 1) * PER_THREAD;
        assert_eq!(
            kept,
            (end - kept.len()..end).collect::<Vec<_>>(),
            "thread {t}"
        );
        // The first record of every thread had more than RETENTION finishes after it.
        assert!(telemetry
            .events
            .get_metrics(&format!("e-{}", t * PER_THREAD))
            .is_none());
    }
    let failed = telemetry.events.failed_events();
    assert_eq!(
        failed.len(),
        retained
            .iter()
            .filter(|m| m.status == Status::Failed)
            .count()
    );
}

#[test]
fn sharded_retention_is_exact_once_every_shard_overflows() {
    const EVENTS: usize = 40_000;
    const RETENTION: usize = 16_384; // four shards of 4,096 by default
    let telemetry = Telemetry::with_config(&TelemetryConfig::default().retention(RETENTION));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let telemetry = &telemetry;
            s.spawn(move || {
                record(
                    telemetry,
                    t * EVENTS / THREADS..(t + 1) * EVENTS / THREADS,
                    0..0,
                )
            });
        }
    });
    assert_totals(&telemetry, &expected(EVENTS, 0));
    assert_eq!(telemetry.events.retained_len(), RETENTION);
    assert_eq!(telemetry.events.all_metrics().len(), RETENTION);
}

#[test]
fn racing_threads_start_and_end_each_id_exactly_once() {
    const IDS: usize = 2_000;
    let telemetry = Telemetry::new();
    let recorder = Arc::new(Recorder::default());
    telemetry.add_publisher(Box::new(recorder.clone())).unwrap();
    let barrier = Barrier::new(THREADS);
    let results: Vec<(Vec<usize>, Vec<usize>, Vec<usize>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let telemetry = &telemetry;
                let barrier = &barrier;
                s.spawn(move || {
                    let events = &telemetry.events;
                    let (mut started, mut retried, mut ended) = (vec![], vec![], vec![]);
                    barrier.wait();
                    for i in 0..IDS {
                        let id = format!("shared-{i}");
                        match events.start_event("race", &id, Some(t as u32)) {
                            Ok(()) => started.push(i),
                            Err(TelemetryError::AlreadyInFlight { task_id }) => {
                                assert_eq!(task_id, id)
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    barrier.wait();
                    for i in 0..IDS {
                        if events.record_retry(&format!("shared-{i}")).is_ok() {
                            retried.push(i);
                        }
                    }
                    barrier.wait();
                    for i in (0..IDS).rev() {
                        match events.end_event(&format!("shared-{i}"), None) {
                            Ok(()) => ended.push(i),
                            Err(TelemetryError::UnknownTask { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    (started, retried, ended)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut starts = vec![0; IDS];
    let mut ends = vec![0; IDS];
    let mut retries = 0;
    for (started, retried, ended) in &results {
        started.iter().for_each(|&i| starts[i] += 1);
        ended.iter().for_each(|&i| ends[i] += 1);
        retries += retried.len();
    }
    assert!(starts.iter().all(|&n| n == 1));
    assert!(ends.iter().all(|&n| n == 1));
    // Every thread retried every id while all were in flight.
    assert_eq!(retries, THREADS * IDS);
    telemetry.flush(DEADLINE).unwrap();
    let counts = telemetry.events.counts();
    assert_eq!(
        (counts.total, counts.completed, counts.in_flight),
        (IDS as u64, IDS as u64, 0)
    );
    let stats = telemetry.events.retry_stats();
    assert_eq!(stats.total_retries, (THREADS * IDS) as u64);
    assert_eq!(stats.events_by_retry_count[&(THREADS as u32)], IDS as u64);
    let events = recorder.events.lock().unwrap();
    assert_eq!(events.len(), IDS);
    assert_eq!(
        events.iter().map(|e| &e.0).collect::<HashSet<_>>().len(),
        IDS
    );
    // The first start of each id is the one kept.
    for (t, (started, _, _)) in results.iter().enumerate() {
        for &i in started.iter().take(20) {
            let m = telemetry
                .events
                .get_metrics(&format!("shared-{i}"))
                .unwrap();
            assert_eq!(m.process_id, t as u32);
        }
    }
}

/// Blocks on its first record until the gate's sender is dropped, then takes the rest.
struct Stalled {
    gate: Mutex<mpsc::Receiver<()>>,
    received: Arc<AtomicU64>,
}

impl MetricsPublisher for Stalled {
    fn name(&self) -> &str {
        "stalled"
    }
    fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
        // Err once the sender is gone: the gate is open for good.
        let _ = self.gate.lock().unwrap().recv();
        self.received.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_stalled_publisher_never_blocks_recording_and_its_losses_are_counted() {
    const EVENTS: u64 = 10_000;
    const CAPACITY: usize = 8;
    let telemetry = Arc::new(Telemetry::with_config(
        &TelemetryConfig::default().queue_capacity(CAPACITY),
    ));
    let (open, gate) = mpsc::channel::<()>();
    let received = Arc::new(AtomicU64::new(0));
    telemetry
        .add_publisher(Box::new(Stalled {
            gate: Mutex::new(gate),
            received: Arc::clone(&received),
        }))
        .unwrap();

    // Record from another thread so that a blocked recorder shows up as a test failure rather
    // than a hang: the gate stays shut until the recorder reports back.
    let (finished, recorded) = mpsc::channel();
    let recorder = {
        let telemetry = Arc::clone(&telemetry);
        std::thread::spawn(move || {
            for i in 0..EVENTS {
                let id = format!("s-{i}");
                telemetry.events.start_event("e", &id, None).unwrap();
                telemetry.events.end_event(&id, None).unwrap();
            }
            finished.send(()).unwrap();
        })
    };
    if recorded.recv_timeout(DEADLINE).is_err() {
        drop(open);
        panic!("recording blocked on a stalled publisher");
    }
    recorder.join().unwrap();
    assert_eq!(telemetry.events.counts().completed, EVENTS);

    // The queue holds CAPACITY records, the one being delivered included, and the recording
    // thread's shard holds back at most its open segment (512 records, the ring's largest
    // segment) until it is full, a millisecond old or flushed: the rest dropped.
    let dropped = telemetry.dropped();
    assert!(dropped > 0);
    assert!(
        dropped >= EVENTS - CAPACITY as u64 - 512,
        "dropped {dropped}"
    );
    assert!(matches!(
        telemetry.flush(Duration::from_millis(50)),
        Err(PublishError::DeadlineExceeded { .. })
    ));
    // The flush handed over the last part batch, into the full queue.
    let dropped = telemetry.dropped();

    drop(open);
    telemetry.flush(DEADLINE).unwrap();
    let stats = telemetry.publisher_stats();
    assert_eq!(stats[0].queued, 0);
    assert_eq!(stats[0].delivered, received.load(Ordering::SeqCst));
    assert_eq!(stats[0].dropped, telemetry.dropped());
    assert_eq!(
        received.load(Ordering::SeqCst) + telemetry.dropped(),
        EVENTS
    );
    assert!(received.load(Ordering::SeqCst) >= 1);

    // Once unblocked it keeps up again: nothing more is dropped.
    for i in 0..(CAPACITY as u64) {
        let id = format!("after-{i}");
        telemetry.events.start_event("e", &id, None).unwrap();
        telemetry.events.end_event(&id, None).unwrap();
        telemetry.flush(DEADLINE).unwrap();
    }
    assert_eq!(telemetry.dropped(), dropped);
    assert_eq!(
        received.load(Ordering::SeqCst) + telemetry.dropped(),
        EVENTS + CAPACITY as u64
    );
}

#[test]
fn counts_and_retry_stats_are_consistent_while_records_end() {
    // Every record is started before the reader looks and none is started after, so however
    // the ends interleave with a read, the records counted number exactly STARTED, and so do
    // the retries (each event has exactly one).
    const STARTED: usize = 40_000;
    let telemetry = Telemetry::with_config(&TelemetryConfig::default().retention(0));
    for i in 0..STARTED {
        let id = format!("c-{i}");
        telemetry.events.start_event("e", &id, None).unwrap();
        telemetry.events.record_retry(&id).unwrap();
        telemetry
            .network
            .start_operation(&id, "h", 1, None)
            .unwrap();
    }
    let done = AtomicBool::new(false);
    let (bad, reads) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let telemetry = &telemetry;
                s.spawn(move || {
                    for i in (t..STARTED).step_by(2) {
                        let id = format!("c-{i}");
                        telemetry.events.end_event(&id, None).unwrap();
                        telemetry.network.end_operation(&id, 1, 1, None).unwrap();
                    }
                })
            })
            .collect();
        let reader = s.spawn(|| {
            let (mut bad, mut reads) = (Vec::new(), 0);
            let started = STARTED as u64;
            while !done.load(Ordering::Acquire) {
                let c = telemetry.events.counts();
                if c.total != started || c.completed + c.in_flight != started {
                    bad.push(format!("events.counts() {c:?}"));
                }
                let n = telemetry.network.counts();
                if n.total != started || n.succeeded + n.in_flight != started {
                    bad.push(format!("network.counts() {n:?}"));
                }
                let stats = telemetry.events.retry_stats();
                if stats.total_retries != started {
                    bad.push(format!(
                        "retry_stats().total_retries {}",
                        stats.total_retries
                    ));
                }
                reads += 1;
            }
            (bad, reads)
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    assert!(reads > 0);
    assert_eq!(telemetry.events.counts().completed, STARTED as u64);
    assert_eq!(telemetry.network.counts().succeeded, STARTED as u64);
    assert!(
        bad.is_empty(),
        "{} wrong figures in {reads} reads of {STARTED} started records that were ending \
         (records ending between the pass over finished totals and the pass over in-flight \
         records are missed by both), e.g. {:#?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
}
