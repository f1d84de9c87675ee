//! [`CliError`]: why a command failed, worded for the person who ran it.

use std::fmt;
use std::io;

#[cfg(feature = "prometheus")]
use pipeline_telemetry::prometheus::PrometheusError;
use pipeline_telemetry::{PublishError, TelemetryError};

/// A failure that ends a command with a non-zero exit code.
#[derive(Debug)]
pub enum CliError {
    /// An I/O step failed; `action` says which, as in "could not {action}".
    Io {
        /// What was being done, such as "start the echo server".
        action: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The telemetry library refused a recording call (a bug in the demo, such as a reused
    /// task id).
    Telemetry(TelemetryError),
    /// The JSON report could not be written.
    Json(serde_json::Error),
    /// A worker thread panicked, so the report would be incomplete.
    WorkerPanicked {
        /// Which worker, counting from 0.
        worker: usize,
    },
    /// The Prometheus scrape endpoint could not be started.
    #[cfg(feature = "prometheus")]
    Prometheus(PrometheusError),
    /// The publishers did not take every record before the deadline, or failed.
    Publish(PublishError),
    /// The Elasticsearch publisher could not be set up from the options.
    #[cfg(feature = "elasticsearch")]
    Elasticsearch(pipeline_telemetry::elasticsearch::ElasticsearchError),
    /// The Grafana Cloud publisher could not be set up from the options.
    #[cfg(feature = "grafana")]
    Grafana(pipeline_telemetry::grafana::GrafanaError),
}

impl CliError {
    /// An I/O failure while doing `action`.
    pub fn io(action: impl Into<String>, source: io::Error) -> Self {
        CliError::Io {
            action: action.into(),
            source,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Io { action, source } => write!(f, "could not {action}: {source}"),
            CliError::Telemetry(error) => write!(f, "recording telemetry failed: {error}"),
            CliError::Json(error) => write!(f, "could not write the JSON report: {error}"),
            CliError::WorkerPanicked { worker } => write!(
                f,
                "worker thread {worker} panicked, so the report would be incomplete"
            ),
            #[cfg(feature = "prometheus")]
            CliError::Prometheus(error) => write!(f, "{error}"),
            CliError::Publish(error) => write!(f, "publishing the metrics failed: {error}"),
            #[cfg(feature = "elasticsearch")]
            CliError::Elasticsearch(error) => write!(f, "Elasticsearch publisher: {error}"),
            #[cfg(feature = "grafana")]
            CliError::Grafana(error) => write!(
                f,
                "Grafana Cloud publisher: {error} (the API key is read from \
                 GRAFANA_CLOUD_API_KEY)"
            ),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Io { source, .. } => Some(source),
            CliError::Telemetry(error) => Some(error),
            CliError::Json(error) => Some(error),
            CliError::WorkerPanicked { .. } => None,
            #[cfg(feature = "prometheus")]
            CliError::Prometheus(error) => Some(error),
            CliError::Publish(error) => Some(error),
            #[cfg(feature = "elasticsearch")]
            CliError::Elasticsearch(error) => Some(error),
            #[cfg(feature = "grafana")]
            CliError::Grafana(error) => Some(error),
        }
    }
}

impl From<TelemetryError> for CliError {
    fn from(error: TelemetryError) -> Self {
        CliError::Telemetry(error)
    }
}
