//! Publishing: the [`MetricsPublisher`] trait backends implement, the [`CompositePublisher`]
//! that fans out to several, and the delivery worker that keeps publishers off the caller's
//! thread.
//!
//! Every publisher attached to a logger runs behind its own delivery worker: a bounded queue drained
//! by a background thread. Recording a finished event only tries to enqueue it; when a queue is
//! full the record is dropped for that publisher and counted in its [`PublisherStats`]. A
//! publisher that errors, panics or stalls therefore affects neither the caller nor the other
//! publishers.

mod composite;
pub(crate) mod dispatch;
pub(crate) mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use composite::CompositePublisher;
pub use dispatch::PipelineHealth;

use crate::record::{EventMetrics, EventRef, NetworkMetrics, NetworkRef};

/// When a background thread asked to finish by `deadline` stops trying and settles its
/// figures: a tenth of the time left, at most 100 ms, before `deadline`. The caller waits until
/// `deadline` itself, so it hears the outcome (and reads final figures) instead of racing the
/// thread's last bookkeeping.
pub(crate) fn settle_by(deadline: Instant) -> Instant {
    let left = deadline.saturating_duration_since(Instant::now());
    deadline - (left / 10).min(Duration::from_millis(100))
}

/// A backend that receives finished records.
///
/// Every method has a default that does nothing, so a publisher implements only what it uses.
/// Methods are called from a delivery thread, never from the thread that recorded the event, so
/// they may block (within reason: a publisher that blocks longer than its queue can absorb loses
/// records, counted). `flush` and `shutdown` get a deadline and should return by then.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use pipeline_telemetry::{EventMetrics, MetricsPublisher, PublishError, TelemetryLogger};
///
/// #[derive(Default)]
/// struct Names(Mutex<Vec<String>>);
///
/// impl MetricsPublisher for Names {
///     fn name(&self) -> &str { "names" }
///     fn publish_event_metrics(&self, m: &EventMetrics) -> Result<(), PublishError> {
///         self.0.lock().unwrap().push(m.event_name.clone());
///         Ok(())
///     }
/// }
///
/// let names = Arc::new(Names::default());
/// let logger = TelemetryLogger::new();
/// logger.add_publisher(Box::new(names.clone())).unwrap();
/// logger.start_event("load", "t1", None).unwrap();
/// logger.end_event("t1", None).unwrap();
/// logger.flush(Duration::from_secs(5)).unwrap();
/// assert_eq!(*names.0.lock().unwrap(), ["load"]);
/// ```
pub trait MetricsPublisher: Send {
    /// A short name for logs and health figures, such as `"prometheus"`.
    fn name(&self) -> &str {
        "publisher"
    }

    /// Called once when the publisher is attached to a logger or [`Telemetry`](crate::Telemetry),
    /// before any record arrives, with a handle for reading the pipeline's own health (such as
    /// records in flight and dropped) at any later time.
    fn on_attach(&self, _health: PipelineHealth) {}

    /// Receives a finished event.
    fn publish_event_metrics(&self, _metrics: &EventMetrics) -> Result<(), PublishError> {
        Ok(())
    }

    /// Receives a finished network operation.
    fn publish_network_metrics(&self, _metrics: &NetworkMetrics) -> Result<(), PublishError> {
        Ok(())
    }

    /// Receives a finished event borrowed from the delivery thread. The default copies it into
    /// an [`EventMetrics`] for [`publish_event_metrics`](Self::publish_event_metrics); a
    /// publisher that only reads a few fields (an aggregating one) overrides this to skip the
    /// copies, and implements `publish_event_metrics` as `self.publish_event(m.borrowed())`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::Duration;
    /// use pipeline_telemetry::{
    ///     EventMetrics, EventRef, MetricsPublisher, PublishError, TelemetryLogger,
    /// };
    ///
    /// #[derive(Default)]
    /// struct Failures(AtomicU64);
    ///
    /// impl MetricsPublisher for Failures {
    ///     fn publish_event(&self, event: EventRef<'_>) -> Result<(), PublishError> {
    ///         if event.error.is_some() {
    ///             self.0.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///         Ok(())
    ///     }
    ///     fn publish_event_metrics(&self, m: &EventMetrics) -> Result<(), PublishError> {
    ///         self.publish_event(m.borrowed())
    ///     }
    /// }
    ///
    /// let failures = std::sync::Arc::new(Failures::default());
    /// let logger = TelemetryLogger::new();
    /// logger.add_publisher(Box::new(failures.clone()))?;
    /// logger.start_event("load", "t1", None)?;
    /// logger.end_event("t1", Some("timeout"))?;
    /// logger.flush(Duration::from_secs(5)).unwrap();
    /// assert_eq!(failures.0.load(Ordering::Relaxed), 1);
    /// # Ok::<(), pipeline_telemetry::TelemetryError>(())
    /// ```
    fn publish_event(&self, event: EventRef<'_>) -> Result<(), PublishError> {
        self.publish_event_metrics(&event.to_metrics())
    }

    /// Receives a finished network operation borrowed from the delivery thread; see
    /// [`publish_event`](Self::publish_event).
    fn publish_network(&self, operation: NetworkRef<'_>) -> Result<(), PublishError> {
        self.publish_network_metrics(&operation.to_metrics())
    }

    /// Delivers whatever the publisher buffers, returning by `deadline`.
    fn flush(&self, _deadline: Instant) -> Result<(), PublishError> {
        Ok(())
    }

    /// Flushes and releases resources (threads, ports); called once, last.
    fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        self.flush(deadline)
    }

    /// The aggregates this publisher keeps in memory, if it wants them updated on the
    /// recording thread as each record ends rather than receive records on its delivery
    /// thread. Only this crate's aggregating publishers (Prometheus, Grafana Cloud) can make
    /// an [`InPlace`]; for every other publisher this stays `None`.
    #[doc(hidden)]
    fn in_place(&self) -> Option<InPlace> {
        None
    }
}

/// Aggregates a publisher keeps in memory, updated on the recording threads with no queue in
/// between: an atomic addition or two per series, after a lookup by index. Made only by this
/// crate's publishers (see [`MetricsPublisher::in_place`]).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct InPlace {
    #[cfg(feature = "series")]
    pub(crate) series: Arc<crate::series::PipelineSeries>,
    /// Whether the publisher's own `flush` does something (Grafana Cloud pushes). If not, a
    /// flush with nothing queued is answered without a round trip to the delivery thread.
    #[cfg(feature = "series")]
    pub(crate) flushes: bool,
    _sealed: (),
}

impl InPlace {
    /// Aggregates whose publisher has nothing to do on `flush`.
    #[cfg(feature = "series")]
    pub(crate) fn new(series: Arc<crate::series::PipelineSeries>) -> Self {
        InPlace {
            series,
            flushes: false,
            _sealed: (),
        }
    }

    /// The publisher's `flush` does work of its own, on its delivery thread.
    #[cfg(feature = "grafana")]
    pub(crate) fn flushing(self) -> Self {
        InPlace {
            flushes: true,
            ..self
        }
    }
}

impl<P: MetricsPublisher + Sync + ?Sized> MetricsPublisher for Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn on_attach(&self, health: PipelineHealth) {
        (**self).on_attach(health)
    }
    fn publish_event_metrics(&self, metrics: &EventMetrics) -> Result<(), PublishError> {
        (**self).publish_event_metrics(metrics)
    }
    fn publish_network_metrics(&self, metrics: &NetworkMetrics) -> Result<(), PublishError> {
        (**self).publish_network_metrics(metrics)
    }
    fn publish_event(&self, event: EventRef<'_>) -> Result<(), PublishError> {
        (**self).publish_event(event)
    }
    fn publish_network(&self, operation: NetworkRef<'_>) -> Result<(), PublishError> {
        (**self).publish_network(operation)
    }
    fn flush(&self, deadline: Instant) -> Result<(), PublishError> {
        (**self).flush(deadline)
    }
    fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        (**self).shutdown(deadline)
    }
    fn in_place(&self) -> Option<InPlace> {
        (**self).in_place()
    }
}

/// Why publishing, flushing or shutting down did not fully succeed.
///
/// ```
/// use pipeline_telemetry::PublishError;
/// let e = PublishError::backend("elasticsearch", "503 Service Unavailable");
/// assert!(e.to_string().contains("elasticsearch"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The backend failed or refused the records.
    Backend {
        /// The publisher's [`name`](MetricsPublisher::name).
        publisher: String,
        /// What the backend or the transport said.
        message: String,
    },
    /// A flush or shutdown did not finish before its deadline; records may still be queued.
    DeadlineExceeded {
        /// The publisher's name.
        publisher: String,
        /// Records still queued for it when the deadline passed.
        queued: usize,
    },
    /// The publisher panicked; the panic was caught and the publisher kept.
    Panicked {
        /// The publisher's name.
        publisher: String,
        /// The panic message, when it was a string.
        message: String,
    },
    /// The publisher was already shut down.
    Closed {
        /// The publisher's name.
        publisher: String,
    },
    /// Several publishers failed (from a composite or a logger with several publishers).
    Many(Vec<PublishError>),
}

impl PublishError {
    /// A [`PublishError::Backend`] error.
    pub fn backend(publisher: impl Into<String>, message: impl Into<String>) -> Self {
        PublishError::Backend {
            publisher: publisher.into(),
            message: message.into(),
        }
    }

    /// Combines the errors of several publishers: `Ok` when there are none, the error itself
    /// when there is one.
    pub fn collect(mut errors: Vec<PublishError>) -> Result<(), PublishError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(PublishError::Many(errors)),
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Backend { publisher, message } => {
                write!(f, "publisher {publisher:?} failed: {message}")
            }
            PublishError::DeadlineExceeded { publisher, queued } => write!(
                f,
                "publisher {publisher:?} did not finish before the deadline with {queued} \
                 records queued; give it a longer deadline or check that its backend is reachable"
            ),
            PublishError::Panicked { publisher, message } => write!(
                f,
                "publisher {publisher:?} panicked ({message}); the panic was contained and \
                 other publishers were not affected"
            ),
            PublishError::Closed { publisher } => {
                write!(f, "publisher {publisher:?} has been shut down")
            }
            PublishError::Many(errors) => {
                write!(f, "{} publishers failed: ", errors.len())?;
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PublishError {}

/// Health figures of one attached publisher, the same for every backend.
///
/// ```
/// use pipeline_telemetry::TelemetryLogger;
/// let logger = TelemetryLogger::new();
/// assert!(logger.publisher_stats().is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PublisherStats {
    /// The publisher's name.
    pub name: String,
    /// Records handed to the publisher that it accepted.
    pub delivered: u64,
    /// Records dropped because the publisher's queue was full.
    pub dropped: u64,
    /// Records the publisher returned an error for.
    pub errors: u64,
    /// Calls into the publisher that panicked.
    pub panics: u64,
    /// Records waiting in its queue now.
    pub queued: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_thread_settles_a_tenth_early_and_at_most_100_ms_early() {
        let now = Instant::now();
        // A tenth of the 900 ms left: 90 ms early, a little less by the time it is computed.
        let short = now + Duration::from_millis(900);
        let early = short - settle_by(short);
        assert!(
            early > Duration::from_millis(60) && early <= Duration::from_millis(90),
            "{early:?}"
        );
        let long = now + Duration::from_secs(60);
        assert_eq!(long - settle_by(long), Duration::from_millis(100));
        // A deadline already passed is kept as it is.
        assert_eq!(settle_by(now), now);
    }
}
