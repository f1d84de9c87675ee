//! The process-wide default [`Telemetry`] and the functions of the original API over it.
//!
//! ```
//! use std::time::Duration;
//! use pipeline_telemetry::global;
//!
//! global::monitor_events(Vec::new())?;
//! global::logger().start_event("JsonTest", "doc-task-4", None)?;
//! global::logger().end_event("doc-task-4", None)?;
//! assert!(global::get_metrics().contains("doc-task-4"));
//! assert_eq!(global::get_retry_stats().events_by_retry_count[&0] >= 1, true);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use crate::logger::TelemetryLogger;
use crate::network::NetworkTelemetry;
use crate::publish::{MetricsPublisher, PublishError};
use crate::record::{EventMetrics, NetworkMetrics};
use crate::report::RetryStats;
use crate::telemetry::Telemetry;
use crate::TelemetryError;

static DEFAULT: OnceLock<Telemetry> = OnceLock::new();

/// The process-wide instance, made with the default configuration on first use.
pub fn telemetry() -> &'static Telemetry {
    DEFAULT.get_or_init(Telemetry::new)
}

/// The process-wide event logger.
pub fn logger() -> &'static TelemetryLogger {
    &telemetry().events
}

/// The process-wide network telemetry.
pub fn network() -> &'static NetworkTelemetry {
    &telemetry().network
}

/// Starts publishing the process-wide records to `publishers`.
///
/// Each call replaces the publishers of the previous one (which deliver what they have queued
/// and shut down), so calling it twice never publishes twice; an empty list stops publishing.
/// Recording works without calling it at all.
///
/// # Errors
/// [`TelemetryError::WorkerSpawn`] if a delivery thread cannot be started.
pub fn monitor_events(publishers: Vec<Box<dyn MetricsPublisher>>) -> Result<(), TelemetryError> {
    telemetry().set_publishers(publishers)
}

/// Every retained event as a pretty-printed JSON array, in the order they started.
pub fn get_metrics() -> String {
    logger().to_json()
}

/// The retained failed events.
pub fn get_failed_events() -> Vec<EventMetrics> {
    logger().failed_events()
}

/// The retained events that ran strictly longer than `threshold` (the original's default is
/// one second).
pub fn get_slow_events(threshold: Duration) -> Vec<EventMetrics> {
    logger().slow_events(threshold)
}

/// Retry statistics over every event.
pub fn get_retry_stats() -> RetryStats {
    logger().retry_stats()
}

/// The retained failed network operations, by task id.
pub fn get_failed_network_ops() -> BTreeMap<String, NetworkMetrics> {
    network().get_failed_operations()
}

/// The retained network operations slower than `threshold`, by task id.
pub fn get_slow_network_ops(threshold: Duration) -> BTreeMap<String, NetworkMetrics> {
    network().get_slow_operations(threshold)
}

/// Forgets every process-wide record and total; publishers stay attached. Meant for tests.
pub fn reset() {
    telemetry().clear();
}

/// Delivers what is queued and shuts the process-wide publishers down. Call it before the
/// process exits: a static is never dropped, so nothing else flushes it.
///
/// # Errors
/// What the publishers returned, or [`PublishError::DeadlineExceeded`].
pub fn shutdown(timeout: Duration) -> Result<(), PublishError> {
    telemetry().shutdown(timeout)
}
