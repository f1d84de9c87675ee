//! The delivery worker: one publisher behind a bounded queue drained by its own thread.
//!
//! The shape is tracing-appender's non-blocking writer: the producer never waits; a full queue
//! drops the records and counts them; flush and shutdown travel through the same queue, so they
//! deliver everything enqueued before them, and the caller waits for their acknowledgement only
//! until a deadline. Records mostly arrive in batches (see [`PublisherCache`]); the queue's bound
//! counts records, not batches.
//!
//! [`PublisherCache`]: super::dispatch::PublisherCache

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

#[cfg(feature = "series")]
use super::InPlace;
use super::{settle_by, MetricsPublisher, PipelineHealth, PublishError, PublisherStats};
use crate::error::TelemetryError;
use crate::record::{EventMetrics, EventRecord, NetworkMetrics, NetworkRecord};
use crate::store::{Interner, Names, OwnsHeap, Segment};

/// A public record on its way to a publisher on its own (from a [`CompositePublisher`]).
///
/// [`CompositePublisher`]: super::CompositePublisher
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Event(Arc<EventMetrics>),
    Network(Arc<NetworkMetrics>),
}

/// Finished records of one shard in the store's compact form (lent to the publisher on the
/// delivery thread, off the caller's path), with the shard's names that resolve theirs. One
/// kind per batch, so each record takes only its own size.
#[derive(Debug, Clone)]
pub(crate) enum Batch {
    Events(Names, Run<EventRecord>),
    Network(Names, Run<NetworkRecord>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Events(_, run) => run.records().len(),
            Batch::Network(_, run) => run.records().len(),
        }
    }
}

/// Consecutive records of a store segment, shared with the store (or copies, for records
/// handed over before their segment was full).
#[derive(Debug)]
pub(crate) struct Run<R: OwnsHeap> {
    segment: Segment<R>,
    range: Range<usize>,
}

impl<R: OwnsHeap> Run<R> {
    /// The records of `segment` in `range`, which must lie within it.
    pub(crate) fn new(segment: Segment<R>, range: Range<usize>) -> Self {
        debug_assert!(range.end <= segment.len());
        Run { segment, range }
    }

    pub(crate) fn records(&self) -> impl ExactSizeIterator<Item = &R> + Clone {
        self.segment.range(self.range.clone())
    }
}

impl<R: OwnsHeap> Clone for Run<R> {
    fn clone(&self) -> Self {
        Run {
            segment: Arc::clone(&self.segment),
            range: self.range.clone(),
        }
    }
}

type Ack = Sender<Result<(), PublishError>>;

enum Message {
    Record(Payload),
    Batch(Batch),
    Attach(PipelineHealth),
    Flush(Instant, Ack),
    Shutdown(Instant, Ack),
}

#[derive(Default)]
struct Counters {
    /// Records in the queue or being delivered: what the capacity bounds.
    queued: AtomicUsize,
    delivered: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
}

/// One publisher running on its own thread behind a bounded queue.
pub(crate) struct Worker {
    name: String,
    tx: Sender<Message>,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The delivery thread, unparked by flush and shutdown requests so that they do not wait
    /// out its nap.
    handle: Thread,
    capacity: usize,
    closed: AtomicBool,
    shutdown_timeout: Duration,
    /// The publisher's in-memory aggregates, updated by the recording threads: its records
    /// never go through the queue.
    #[cfg(feature = "series")]
    in_place: Option<InPlace>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("queued", &self.counters.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts a thread that owns `publisher`. `capacity` bounds the records queued;
    /// `shutdown_timeout` bounds how long dropping the worker waits for the publisher to
    /// finish; `collect` is run whenever the thread runs out of work, to collect records
    /// gathered elsewhere.
    pub(crate) fn spawn(
        publisher: Box<dyn MetricsPublisher>,
        capacity: usize,
        shutdown_timeout: Duration,
        collect: Box<dyn Fn() + Send>,
    ) -> Result<Worker, TelemetryError> {
        let name = publisher.name().to_owned();
        #[cfg(feature = "series")]
        let in_place = publisher.in_place();
        let (tx, rx) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(format!("telemetry-{name}"))
            .spawn(move || run(publisher, rx, &thread_counters, &*collect))
            .map_err(|e| TelemetryError::WorkerSpawn {
                reason: e.to_string(),
            })?;
        Ok(Worker {
            name,
            tx,
            counters,
            handle: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            shutdown_timeout,
            #[cfg(feature = "series")]
            in_place,
        })
    }

    /// The aggregates the recording threads update for this publisher, if it has them.
    #[cfg(feature = "series")]
    pub(crate) fn in_place(&self) -> Option<&InPlace> {
        self.in_place.as_ref()
    }

    /// Counts records the recording threads aggregated in place as delivered.
    #[cfg(feature = "series")]
    pub(crate) fn count_delivered(&self, records: u64) {
        self.counters
            .delivered
            .fetch_add(records, Ordering::Relaxed);
    }

    /// Enqueues a record without waiting; a full or closed queue drops it and counts the drop.
    pub(crate) fn offer(&self, payload: Payload) {
        self.enqueue(1, || Message::Record(payload));
    }

    /// Enqueues a batch without waiting; a full or closed queue drops it and counts its records.
    pub(crate) fn offer_batch(&self, batch: Batch) {
        self.enqueue(batch.len(), || Message::Batch(batch));
    }

    #[inline]
    fn enqueue(&self, records: usize, message: impl FnOnce() -> Message) {
        let queued = self.counters.queued.fetch_add(records, Ordering::Relaxed);
        if queued + records > self.capacity || self.tx.send(message()).is_err() {
            self.counters.queued.fetch_sub(records, Ordering::Relaxed);
            self.counters
                .dropped
                .fetch_add(records as u64, Ordering::Relaxed);
        }
    }

    /// Passes the pipeline's health handle to the publisher, on its own thread, in order with
    /// the records.
    pub(crate) fn attach(&self, health: PipelineHealth) {
        // Sent in order with the records; the queue is never too full for it.
        let _ = self.tx.send(Message::Attach(health));
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> PublisherStats {
        PublisherStats {
            name: self.name.clone(),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            dropped: self.dropped(),
            errors: self.counters.errors.load(Ordering::Relaxed),
            panics: self.counters.panics.load(Ordering::Relaxed),
            queued: self.counters.queued.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything queued before this call is delivered and the publisher has
    /// flushed, or until `deadline`.
    pub(crate) fn flush(&self, deadline: Instant) -> Result<(), PublishError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed {
                publisher: self.name.clone(),
            });
        }
        #[cfg(feature = "series")]
        if self.in_place.as_ref().is_some_and(|p| !p.flushes)
            && self.tx.is_empty()
            && self.counters.queued.load(Ordering::Acquire) == 0
        {
            // Every record reached the aggregates on its recording thread and the publisher's
            // own flush does nothing: waking its thread would only cost the caller tens of µs.
            return Ok(());
        }
        self.request(deadline, Message::Flush)
    }

    /// Delivers what is queued, shuts the publisher down and ends the thread, all by `deadline`.
    /// A thread that misses the deadline is left to finish on its own.
    pub(crate) fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.request(deadline, Message::Shutdown);
        // The thread acknowledged and is returning; joining cannot outlast the deadline. On the
        // worker's own thread (its pipeline dropped while it collected records) it returns by
        // itself once this call does.
        if result.is_ok() && !self.on_own_thread() {
            if let Some(handle) = self.thread.lock().ok().and_then(|mut h| h.take()) {
                let _ = handle.join();
            }
        }
        result
    }

    /// Whether the caller is the worker's delivery thread itself.
    fn on_own_thread(&self) -> bool {
        std::thread::current().id() == self.handle.id()
    }

    fn request(
        &self,
        deadline: Instant,
        message: impl FnOnce(Instant, Ack) -> Message,
    ) -> Result<(), PublishError> {
        let (ack, done) = crossbeam_channel::bounded(1);
        let timed_out = || PublishError::DeadlineExceeded {
            publisher: self.name.clone(),
            queued: self.counters.queued.load(Ordering::Relaxed),
        };
        if self.tx.send(message(deadline, ack)).is_err() {
            return Err(PublishError::Closed {
                publisher: self.name.clone(),
            });
        }
        self.handle.unpark();
        if self.on_own_thread() {
            // Asked from the worker's own thread (its pipeline was dropped while it collected
            // records): it handles the request when this call returns; waiting would deadlock.
            return Ok(());
        }
        match done.recv_deadline(deadline) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(timed_out()),
            Err(RecvTimeoutError::Disconnected) => Err(PublishError::Closed {
                publisher: self.name.clone(),
            }),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.shutdown(Instant::now() + self.shutdown_timeout);
    }
}

/// How long the worker naps when its queue is empty, and how many naps in a row it takes
/// before it blocks. While records keep coming the worker is never blocked, so a recording
/// thread's `try_send` never has to wake it (a system call, costlier than the rest of the
/// hand-off); after `IDLE_NAPS` empty naps (about 10 ms) it blocks and costs nothing idle.
const IDLE_NAP: Duration = Duration::from_micros(100);
const IDLE_NAPS: u32 = 100;

/// How long the worker waits, once blocked, before collecting idle shards' records again.
const IDLE_COLLECT: Duration = Duration::from_millis(20);
/// How often at most the worker collects from the shards while records keep coming: busy
/// shards hand their batches over themselves within a millisecond, and looking into every
/// shard takes its lock's cache line away from the recording thread.
const COLLECT_EVERY: Duration = Duration::from_millis(1);

/// The next message: at once if one is queued, else after collecting what idle shards gathered
/// (at most every [`COLLECT_EVERY`]) and short naps while the pipeline is busy, else by waiting
/// (collecting again every [`IDLE_COLLECT`]). `None` once every sender is gone.
fn next(rx: &Receiver<Message>, collect: &dyn Fn(), last_collect: &mut Instant) -> Option<Message> {
    let mut naps = 0;
    loop {
        match rx.try_recv() {
            Ok(message) => return Some(message),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        if last_collect.elapsed() >= COLLECT_EVERY {
            collect();
            *last_collect = Instant::now();
            if !rx.is_empty() {
                continue;
            }
        }
        if naps < IDLE_NAPS {
            naps += 1;
            // Woken early by a flush or shutdown (`unpark`); records never wake it.
            std::thread::park_timeout(IDLE_NAP);
            continue;
        }
        match rx.recv_timeout(IDLE_COLLECT) {
            Ok(message) => return Some(message),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn run(
    publisher: Box<dyn MetricsPublisher>,
    rx: Receiver<Message>,
    counters: &Counters,
    collect: &dyn Fn(),
) {
    let name = publisher.name().to_owned();
    let delivered = |outcome: Result<(), PublishError>| {
        match outcome {
            Ok(()) => counters.delivered.fetch_add(1, Ordering::Relaxed),
            Err(PublishError::Panicked { .. }) => counters.panics.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(publisher = %name, error = %e, "publish failed");
                counters.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    };
    let mut last_collect = Instant::now();
    while let Some(message) = next(&rx, collect, &mut last_collect) {
        match message {
            Message::Record(payload) => {
                let outcome = contained(&name, || match &payload {
                    Payload::Event(metrics) => publisher.publish_event_metrics(metrics),
                    Payload::Network(metrics) => publisher.publish_network_metrics(metrics),
                });
                delivered(outcome);
                counters.queued.fetch_sub(1, Ordering::Relaxed);
            }
            Message::Batch(batch) => {
                let count = batch.len();
                match batch {
                    Batch::Events(names, run) => {
                        let names = Interner::resolving(names);
                        for record in run.records() {
                            let event = record.borrowed(&names);
                            delivered(contained(&name, || publisher.publish_event(event)));
                        }
                    }
                    Batch::Network(names, run) => {
                        let names = Interner::resolving(names);
                        for record in run.records() {
                            let op = record.borrowed(&names);
                            delivered(contained(&name, || publisher.publish_network(op)));
                        }
                    }
                }
                counters.queued.fetch_sub(count, Ordering::Relaxed);
            }
            Message::Attach(health) => {
                let _ = contained(&name, || {
                    publisher.on_attach(health);
                    Ok(())
                });
            }
            Message::Flush(deadline, ack) => {
                let _ = ack.send(contained(&name, || publisher.flush(deadline)));
            }
            Message::Shutdown(deadline, ack) => {
                let _ = ack.send(contained(&name, || publisher.shutdown(settle_by(deadline))));
                return;
            }
        }
    }
    // Every sender is gone without a shutdown request: still give the publisher its last call.
    let _ = contained(&name, || {
        publisher.shutdown(Instant::now() + Duration::from_secs(1))
    });
}

/// Runs a call into a publisher, turning a panic into [`PublishError::Panicked`].
fn contained(
    name: &str,
    call: impl FnOnce() -> Result<(), PublishError>,
) -> Result<(), PublishError> {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Err(PublishError::Panicked {
            publisher: name.to_owned(),
            message,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Gate {
        open: Mutex<mpsc::Receiver<()>>,
    }

    impl MetricsPublisher for Gate {
        fn name(&self) -> &str {
            "gate"
        }
        fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
            let _ = self.open.lock().unwrap().recv();
            Ok(())
        }
    }

    fn event() -> Payload {
        Payload::Event(Arc::new(EventMetrics {
            event_name: "e".into(),
            task_id: "t".into(),
            start_time: std::time::SystemTime::now(),
            end_time: None,
            status: crate::Status::Pending,
            error: None,
            retry_count: 0,
            process_id: 1,
        }))
    }

    #[test]
    fn a_stalled_publisher_fills_its_queue_and_drops_are_counted() {
        let (open, gate) = mpsc::channel();
        let worker = Worker::spawn(
            Box::new(Gate {
                open: Mutex::new(gate),
            }),
            4,
            Duration::from_secs(5),
            Box::new(|| {}),
        )
        .unwrap();
        // One record is taken by the stalled thread, four wait in the queue, the rest drop.
        for _ in 0..20 {
            worker.offer(event());
        }
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            worker.flush(deadline),
            Err(PublishError::DeadlineExceeded { .. })
        ));
        let dropped = worker.dropped();
        assert!((15..=16).contains(&dropped), "dropped {dropped}");
        for _ in 0..20 {
            let _ = open.send(());
        }
        worker
            .flush(Instant::now() + Duration::from_secs(5))
            .unwrap();
        let stats = worker.stats();
        assert_eq!(stats.delivered + stats.dropped, 20);
        assert_eq!(stats.queued, 0);
        worker
            .shutdown(Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert!(matches!(
            worker.flush(Instant::now() + Duration::from_secs(1)),
            Err(PublishError::Closed { .. })
        ));
    }

    /// An in-place publisher whose thread can be held inside `on_attach`, and which counts
    /// its own flushes.
    #[cfg(feature = "series")]
    struct HeldInPlace {
        held: Mutex<mpsc::Receiver<()>>,
        flushes: bool,
        flushed: Arc<AtomicU64>,
    }

    #[cfg(feature = "series")]
    impl MetricsPublisher for HeldInPlace {
        fn on_attach(&self, _: PipelineHealth) {
            let _ = self.held.lock().unwrap().recv();
        }
        fn in_place(&self) -> Option<InPlace> {
            let series = Arc::new(crate::series::PipelineSeries::new(Default::default()));
            let in_place = InPlace::new(series);
            Some(InPlace {
                flushes: self.flushes,
                ..in_place
            })
        }
        fn flush(&self, _: Instant) -> Result<(), PublishError> {
            self.flushed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[cfg(feature = "series")]
    #[test]
    fn a_flush_skips_the_thread_only_when_nothing_is_queued_and_the_publisher_has_no_flush() {
        for flushes in [false, true] {
            let (release, held) = mpsc::channel();
            let flushed = Arc::new(AtomicU64::new(0));
            let worker = Worker::spawn(
                Box::new(HeldInPlace {
                    held: Mutex::new(held),
                    flushes,
                    flushed: Arc::clone(&flushed),
                }),
                4,
                Duration::from_secs(5),
                Box::new(|| {}),
            )
            .unwrap();
            // Hold the thread inside `on_attach`, the message taken off the queue.
            worker.attach(PipelineHealth::detached());
            while !worker.tx.is_empty() {
                std::thread::yield_now();
            }
            let quick = worker.flush(Instant::now() + Duration::from_millis(50));
            if flushes {
                // Its flush must run on its thread, which is held: the deadline passes.
                assert!(
                    matches!(quick, Err(PublishError::DeadlineExceeded { .. })),
                    "{quick:?}"
                );
            } else {
                // Nothing to deliver and nothing to flush: answered without the thread.
                assert!(quick.is_ok(), "{quick:?}");
            }
            release.send(()).unwrap();
            worker
                .flush(Instant::now() + Duration::from_secs(5))
                .unwrap();
            // A flush that skipped the thread did not call the publisher's.
            assert_eq!(flushed.load(Ordering::Relaxed), u64::from(flushes) * 2);
            worker
                .shutdown(Instant::now() + Duration::from_secs(5))
                .unwrap();
        }
    }

    struct Panicky;
    impl MetricsPublisher for Panicky {
        fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
            panic!("boom")
        }
    }

    #[test]
    fn a_worker_shut_down_from_its_own_thread_ends_without_joining_itself() {
        // What happens when a pipeline is dropped while its delivery thread holds the last
        // reference, collecting records: the thread itself shuts the workers down.
        let own: Arc<Mutex<Option<Arc<Worker>>>> = Arc::default();
        let (done, finished) = mpsc::channel();
        let in_collect = Arc::clone(&own);
        let collect = move || {
            let me = in_collect.lock().unwrap().take();
            if let Some(me) = me {
                let result = me.shutdown(Instant::now() + Duration::from_secs(1));
                let _ = done.send(result.is_ok());
            }
        };
        let worker = Arc::new(
            Worker::spawn(
                Box::new(Panicky),
                4,
                Duration::from_secs(1),
                Box::new(collect),
            )
            .unwrap(),
        );
        *own.lock().unwrap() = Some(Arc::clone(&worker));
        let shut_down = finished.recv_timeout(Duration::from_secs(10));
        assert_eq!(shut_down, Ok(true));
        assert!(matches!(
            worker.flush(Instant::now() + Duration::from_secs(1)),
            Err(PublishError::Closed { .. })
        ));
    }

    #[test]
    fn panics_are_contained_and_counted() {
        let worker = Worker::spawn(
            Box::new(Panicky),
            16,
            Duration::from_secs(1),
            Box::new(|| {}),
        )
        .unwrap();
        worker.offer(event());
        worker.offer(event());
        worker
            .flush(Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(worker.stats().panics, 2);
    }
}
