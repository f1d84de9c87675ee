//! Telemetry for event pipelines.
//!
//! Every event execution becomes an [`EventMetrics`] record (name, task id, start and end,
//! status, error, retries, process) and every network operation a [`NetworkMetrics`] record
//! (host, port, latency, bytes, error). The library answers questions over them (failed, slow,
//! retry statistics) and hands finished records to [publishers](MetricsPublisher) that ship
//! them to monitoring backends.
//!
//! Recording is built to sit inside a busy pipeline: a start/end pair costs a few hundred
//! nanoseconds and no global lock, publishers run on their own threads behind bounded queues
//! (a slow or failing backend costs dropped, counted records, never a blocked caller), and
//! memory is bounded by a retention limit while totals stay exact.
//!
//! # Quick start
//! ```
//! use std::time::Duration;
//! use pipeline_telemetry::{Telemetry, Status};
//!
//! let telemetry = Telemetry::new();
//! let event = telemetry.events.track("transcode", "job-1")?;
//! {
//!     let mut call = telemetry.network.track("job-1/fetch", "storage.local", 9000, Some("get"))?;
//!     call.received(4096);
//! }
//! event.complete()?;
//!
//! assert_eq!(telemetry.events.get_metrics("job-1").unwrap().status, Status::Completed);
//! assert!(telemetry.events.slow_events(Duration::from_secs(1)).is_empty());
//! println!("{}", telemetry.events.to_json());
//! # Ok::<(), pipeline_telemetry::TelemetryError>(())
//! ```
//!
//! The functions of the original Python API (`monitor_events`, `get_metrics`, ...) work over a
//! process-wide instance in [`global`].
//!
//! # Backends
//! Each lives in its own module behind a cargo feature of the same name (all on by default):
//! `prometheus` (a scrape endpoint), `grafana` (Grafana Cloud through Prometheus remote write)
//! and `elasticsearch` (bulk indexing). The Prometheus and Grafana Cloud publishers read one
//! series model, so a dashboard serves both.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod config;
#[cfg(feature = "elasticsearch")]
pub mod elasticsearch;
pub mod error;
pub mod global;
#[cfg(feature = "grafana")]
pub mod grafana;
pub mod logger;
pub mod network;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod publish;
pub mod record;
pub mod report;
#[cfg(any(feature = "elasticsearch", feature = "grafana"))]
mod secret;
#[cfg(feature = "series")]
pub(crate) mod series;
mod store;
pub mod telemetry;

use std::time::Duration;

pub use config::TelemetryConfig;
pub use error::TelemetryError;
pub use global::{
    get_failed_events, get_failed_network_ops, get_metrics, get_retry_stats, get_slow_events,
    get_slow_network_ops, monitor_events,
};
pub use logger::{EventGuard, TelemetryLogger};
pub use network::{NetworkGuard, NetworkTelemetry};
pub use publish::{CompositePublisher, MetricsPublisher, PublishError, PublisherStats};
pub use record::{EventMetrics, EventRef, NetworkMetrics, NetworkRef, Status};
pub use report::{EventCounts, NetworkCounts, RetryStats};
pub use telemetry::Telemetry;

/// The threshold the original uses for slow events and operations: one second.
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_secs(1);

/// The README's examples, compiled and run as doctests (they use every backend).
#[cfg(all(
    doctest,
    feature = "prometheus",
    feature = "grafana",
    feature = "elasticsearch"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
