//! The delivery worker: one publisher behind a bounded queue drained by its own thread.
//!
//! The shape is tracing-appender's non-blocking writer: the producer only ever `try_send`s, so
//! it never waits; a full queue drops the record and counts it; flush and shutdown travel
//! through the same queue, so they deliver everything enqueued before them, and the caller waits
//! for their acknowledgement only until a deadline.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError,
};

use super::{MetricsPublisher, PipelineHealth, PublishError, PublisherStats};
use crate::error::TelemetryError;
use crate::record::{EventMetrics, EventRecord, NetworkMetrics, NetworkRecord};
use crate::store::Interner;

/// A record on its way to a publisher: the store's compact form (converted on the worker
/// thread, off the caller's path) or a public record already built.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    EventRecord(EventRecord),
    Event(Arc<EventMetrics>),
    NetworkRecord(NetworkRecord),
    Network(Arc<NetworkMetrics>),
}

type Ack = Sender<Result<(), PublishError>>;

enum Message {
    Record(Payload),
    Attach(PipelineHealth),
    Flush(Instant, Ack),
    Shutdown(Instant, Ack),
}

#[derive(Default)]
struct Counters {
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
    closed: AtomicBool,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("queued", &self.tx.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts a thread that owns `publisher`. `capacity` bounds the queue; `shutdown_timeout`
    /// bounds how long dropping the worker waits for the publisher to finish.
    pub(crate) fn spawn(
        publisher: Box<dyn MetricsPublisher>,
        capacity: usize,
        shutdown_timeout: Duration,
    ) -> Result<Worker, TelemetryError> {
        let name = publisher.name().to_owned();
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(format!("telemetry-{name}"))
            .spawn(move || run(publisher, rx, &thread_counters))
            .map_err(|e| TelemetryError::WorkerSpawn {
                reason: e.to_string(),
            })?;
        Ok(Worker {
            name,
            tx,
            counters,
            thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
            shutdown_timeout,
        })
    }

    /// Enqueues a record without waiting; a full or closed queue drops it and counts the drop.
    #[inline]
    pub(crate) fn offer(&self, payload: Payload) {
        match self.tx.try_send(Message::Record(payload)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Passes the pipeline's health handle to the publisher, on its own thread, in order with
    /// the records.
    pub(crate) fn attach(&self, health: PipelineHealth) {
        // Sent before any record can be, except into a full queue; then it waits its turn.
        let _ = self
            .tx
            .send_timeout(Message::Attach(health), self.shutdown_timeout);
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
            queued: self.tx.len(),
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
        self.request(deadline, Message::Flush)
    }

    /// Delivers what is queued, shuts the publisher down and ends the thread, all by `deadline`.
    /// A thread that misses the deadline is left to finish on its own.
    pub(crate) fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.request(deadline, Message::Shutdown);
        // The thread acknowledged and is returning; joining cannot outlast the deadline.
        if result.is_ok() {
            if let Some(handle) = self.thread.lock().ok().and_then(|mut h| h.take()) {
                let _ = handle.join();
            }
        }
        result
    }

    fn request(
        &self,
        deadline: Instant,
        message: impl FnOnce(Instant, Ack) -> Message,
    ) -> Result<(), PublishError> {
        let (ack, done) = crossbeam_channel::bounded(1);
        let timed_out = || PublishError::DeadlineExceeded {
            publisher: self.name.clone(),
            queued: self.tx.len(),
        };
        match self.tx.send_deadline(message(deadline, ack), deadline) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => return Err(timed_out()),
            Err(SendTimeoutError::Disconnected(_)) => {
                return Err(PublishError::Closed {
                    publisher: self.name.clone(),
                })
            }
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

/// The next message: at once if one is queued, else after short naps while the pipeline is
/// busy, else by blocking. `None` once every sender is gone.
fn next(rx: &Receiver<Message>) -> Option<Message> {
    for _ in 0..IDLE_NAPS {
        match rx.try_recv() {
            Ok(message) => return Some(message),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => std::thread::sleep(IDLE_NAP),
        }
    }
    rx.recv().ok()
}

fn run(publisher: Box<dyn MetricsPublisher>, rx: Receiver<Message>, counters: &Counters) {
    let name = publisher.name().to_owned();
    while let Some(message) = next(&rx) {
        match message {
            Message::Record(payload) => {
                match contained(&name, || deliver(&*publisher, payload)) {
                    Ok(()) => counters.delivered.fetch_add(1, Ordering::Relaxed),
                    Err(PublishError::Panicked { .. }) => {
                        counters.panics.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        tracing::warn!(publisher = %name, error = %e, "publish failed");
                        counters.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
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
                let _ = ack.send(contained(&name, || publisher.shutdown(deadline)));
                return;
            }
        }
    }
    // Every sender is gone without a shutdown request: still give the publisher its last call.
    let _ = contained(&name, || {
        publisher.shutdown(Instant::now() + Duration::from_secs(1))
    });
}

fn deliver(publisher: &dyn MetricsPublisher, payload: Payload) -> Result<(), PublishError> {
    match payload {
        // Payload records carry their own names, so they need no shard's interner.
        Payload::EventRecord(record) => {
            publisher.publish_event_metrics(&record.to_public(&Interner::default()))
        }
        Payload::Event(metrics) => publisher.publish_event_metrics(&metrics),
        Payload::NetworkRecord(record) => {
            publisher.publish_network_metrics(&record.to_public(&Interner::default()))
        }
        Payload::Network(metrics) => publisher.publish_network_metrics(&metrics),
    }
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

    struct Panicky;
    impl MetricsPublisher for Panicky {
        fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
            panic!("boom")
        }
    }

    #[test]
    fn panics_are_contained_and_counted() {
        let worker = Worker::spawn(Box::new(Panicky), 16, Duration::from_secs(1)).unwrap();
        worker.offer(event());
        worker.offer(event());
        worker
            .flush(Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(worker.stats().panics, 2);
    }
}
