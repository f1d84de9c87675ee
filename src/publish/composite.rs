//! [`CompositePublisher`]: several publishers behind one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::worker::{Payload, Worker};
use super::{MetricsPublisher, PipelineHealth, PublishError, PublisherStats};
use crate::error::TelemetryError;
use crate::record::{EventMetrics, NetworkMetrics};

/// Publishes every record to several publishers at once.
///
/// Each inner publisher runs behind its own delivery worker (bounded queue, own thread), so one
/// that errors, panics or stalls never delays or fails the others, and publishing through the
/// composite never fails: problems show in [`stats`](Self::stats) and in what
/// [`flush`](MetricsPublisher::flush) returns.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pipeline_telemetry::{CompositePublisher, MetricsPublisher, PublishError, EventMetrics};
///
/// struct Failing;
/// impl MetricsPublisher for Failing {
///     fn publish_event_metrics(&self, _: &EventMetrics) -> Result<(), PublishError> {
///         Err(PublishError::backend("failing", "always"))
///     }
/// }
///
/// let composite = CompositePublisher::new(vec![Box::new(Failing)]).unwrap();
/// # let record = EventMetrics { event_name: "e".into(), task_id: "t".into(),
/// #   start_time: std::time::SystemTime::now(), end_time: None,
/// #   status: pipeline_telemetry::Status::Pending, error: None, retry_count: 0, process_id: 1 };
/// assert!(composite.publish_event_metrics(&record).is_ok());
/// composite.flush(Instant::now() + Duration::from_secs(5)).unwrap();
/// assert_eq!(composite.stats()[0].errors, 1);
/// ```
#[derive(Debug)]
pub struct CompositePublisher {
    workers: Vec<Worker>,
}

/// Queue capacity of each inner publisher.
const INNER_QUEUE_CAPACITY: usize = 65_536;
/// How long dropping the composite waits for each inner publisher.
const INNER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl CompositePublisher {
    /// Starts a delivery worker for each publisher.
    ///
    /// # Errors
    /// [`TelemetryError::WorkerSpawn`] if the operating system refuses a thread.
    pub fn new(publishers: Vec<Box<dyn MetricsPublisher>>) -> Result<Self, TelemetryError> {
        let workers = publishers
            .into_iter()
            .map(|p| {
                Worker::spawn(
                    p,
                    INNER_QUEUE_CAPACITY,
                    INNER_SHUTDOWN_TIMEOUT,
                    Box::new(|| {}),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(CompositePublisher { workers })
    }

    /// Health figures of each inner publisher, in the order given to [`new`](Self::new).
    pub fn stats(&self) -> Vec<PublisherStats> {
        self.workers.iter().map(Worker::stats).collect()
    }

    fn offer(&self, payload: Payload) {
        for worker in &self.workers {
            worker.offer(payload.clone());
        }
    }

    fn each(&self, call: impl Fn(&Worker) -> Result<(), PublishError>) -> Result<(), PublishError> {
        PublishError::collect(self.workers.iter().filter_map(|w| call(w).err()).collect())
    }
}

impl MetricsPublisher for CompositePublisher {
    fn name(&self) -> &str {
        "composite"
    }

    fn on_attach(&self, health: PipelineHealth) {
        for worker in &self.workers {
            worker.attach(health.clone());
        }
    }

    fn publish_event_metrics(&self, metrics: &EventMetrics) -> Result<(), PublishError> {
        self.offer(Payload::Event(Arc::new(metrics.clone())));
        Ok(())
    }

    fn publish_network_metrics(&self, metrics: &NetworkMetrics) -> Result<(), PublishError> {
        self.offer(Payload::Network(Arc::new(metrics.clone())));
        Ok(())
    }

    fn flush(&self, deadline: Instant) -> Result<(), PublishError> {
        self.each(|w| w.flush(deadline))
    }

    fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        self.each(|w| w.shutdown(deadline))
    }
}
