//! [`Telemetry`]: an event logger and network telemetry sharing one set of publishers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TelemetryConfig;
use crate::error::TelemetryError;
use crate::logger::TelemetryLogger;
use crate::network::NetworkTelemetry;
use crate::publish::dispatch::Dispatcher;
use crate::publish::{MetricsPublisher, PublishError, PublisherStats};

/// Events and network operations of one pipeline, published to the same publishers.
///
/// ```
/// use std::time::Duration;
/// use pipeline_telemetry::Telemetry;
///
/// let telemetry = Telemetry::new();
/// telemetry.events.start_event("sync", "s-1", None)?;
/// telemetry.network.start_operation("s-1/get", "example.com", 443, Some("http_get"))?;
/// telemetry.network.end_operation("s-1/get", 100, 2_000, None)?;
/// telemetry.events.end_event("s-1", None)?;
/// assert_eq!(telemetry.events.counts().completed, 1);
/// assert_eq!(telemetry.network.counts().bytes_received, 2_000);
/// telemetry.flush(Duration::from_secs(5)).unwrap();
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug)]
pub struct Telemetry {
    /// The event executions.
    pub events: TelemetryLogger,
    /// The network operations.
    pub network: NetworkTelemetry,
    dispatcher: Arc<Dispatcher>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Telemetry with the [default configuration](TelemetryConfig::default).
    pub fn new() -> Self {
        Self::with_config(&TelemetryConfig::default())
    }

    /// Telemetry with the given configuration (applied to both stores) and no publishers.
    pub fn with_config(config: &TelemetryConfig) -> Self {
        let dispatcher = config.dispatcher();
        Telemetry {
            events: TelemetryLogger::with_dispatcher(config, Arc::clone(&dispatcher)),
            network: NetworkTelemetry::with_dispatcher(config, Arc::clone(&dispatcher)),
            dispatcher,
        }
    }

    /// Attaches a publisher for both events and network operations.
    ///
    /// # Errors
    /// [`TelemetryError::WorkerSpawn`] if its delivery thread cannot be started.
    pub fn add_publisher(
        &self,
        publisher: Box<dyn MetricsPublisher>,
    ) -> Result<(), TelemetryError> {
        self.dispatcher.add(publisher)
    }

    /// Replaces every publisher with these. The previous ones deliver what they have queued
    /// and shut down, each within the configured shutdown timeout. An empty list detaches all.
    ///
    /// # Errors
    /// [`TelemetryError::WorkerSpawn`]; the previous publishers then stay attached.
    pub fn set_publishers(
        &self,
        publishers: Vec<Box<dyn MetricsPublisher>>,
    ) -> Result<(), TelemetryError> {
        self.dispatcher.replace(publishers)
    }

    /// Waits until every record ended before this call has reached the publishers and they
    /// have flushed, or until `timeout` passes.
    ///
    /// # Errors
    /// What the publishers returned, or [`PublishError::DeadlineExceeded`].
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.dispatcher.flush(Instant::now() + timeout)
    }

    /// Delivers what is queued, shuts the publishers down and detaches them, within `timeout`.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn shutdown(&self, timeout: Duration) -> Result<(), PublishError> {
        self.dispatcher.shutdown(Instant::now() + timeout)
    }

    /// Health figures of each attached publisher.
    pub fn publisher_stats(&self) -> Vec<PublisherStats> {
        self.dispatcher.stats()
    }

    /// Records dropped because a publisher's queue was full, over all publishers.
    pub fn dropped(&self) -> u64 {
        self.dispatcher.dropped()
    }

    /// Forgets every record and total; publishers stay attached.
    pub fn clear(&self) {
        self.events.clear();
        self.network.clear();
    }
}
