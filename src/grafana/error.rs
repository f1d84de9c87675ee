//! [`GrafanaError`]: what can be wrong with a Grafana Cloud publisher's configuration.
//!
//! Failures while pushing are not returned from the recording path: they are retried, counted
//! and reported through [`GrafanaStats`](super::GrafanaStats), the log, and the result of
//! [`flush`](crate::MetricsPublisher::flush). No message here ever contains the API key.

use std::fmt;

/// Where Grafana Cloud shows the remote-write URL and the user name, quoted by every error
/// about them.
pub(crate) const WHERE_TO_FIND: &str = "Grafana Cloud shows both in the Grafana Cloud portal: \
     open your stack, then Prometheus > Details (the \"Send Metrics\" page); the URL is the \
     \"Remote Write Endpoint\", of the form \
     https://prometheus-prod-NN-prod-REGION.grafana.net/api/prom/push, and the user name is \
     the number shown as \"Username / Instance ID\"";

/// Why a [`GrafanaCloudPublisher`](super::GrafanaCloudPublisher) could not be built.
///
/// Every message names the value at fault (never the API key) and how to fix it.
///
/// ```
/// use pipeline_telemetry::grafana::{GrafanaCloudPublisher, GrafanaError};
///
/// let err = GrafanaCloudPublisher::new("key", "123456", "").unwrap_err();
/// assert!(matches!(err, GrafanaError::InvalidEndpoint { .. }));
/// assert!(err.to_string().contains("Remote Write Endpoint"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrafanaError {
    /// The remote-write URL is missing or cannot be used.
    InvalidEndpoint {
        /// The URL as given, with any credentials in it replaced by `***`.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The user name or the API key cannot be sent. The API key itself is never shown.
    InvalidCredential {
        /// Which one: `"user name (org_slug)"` or `"API key"`.
        kind: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `job` or `instance` label value, or the metric name prefix, cannot be used.
    InvalidLabel {
        /// The builder method, such as `"job"`.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric or duration setting is out of range.
    InvalidSetting {
        /// The builder method, such as `"push_interval"`.
        setting: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        reason: String,
    },
    /// The background push thread could not be started.
    WorkerSpawn {
        /// The operating system's reason.
        reason: String,
    },
}

impl fmt::Display for GrafanaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrafanaError::InvalidEndpoint { endpoint, reason } => write!(
                f,
                "Grafana Cloud remote-write URL {endpoint:?} is not usable: {reason}; \
                 {WHERE_TO_FIND}"
            ),
            GrafanaError::InvalidCredential { kind, reason } => write!(
                f,
                "the Grafana Cloud {kind} cannot be sent: {reason} (the API key is never \
                 shown); check for stray quotes, spaces or line breaks, for example from an \
                 environment variable. {WHERE_TO_FIND}; the API key is an access policy \
                 token with the metrics:write scope"
            ),
            GrafanaError::InvalidLabel {
                setting,
                value,
                reason,
            } => write!(f, "{setting} {value:?} is not usable: {reason}"),
            GrafanaError::InvalidSetting {
                setting,
                value,
                reason,
            } => write!(f, "{setting} = {value} is out of range: {reason}"),
            GrafanaError::WorkerSpawn { reason } => write!(
                f,
                "could not start the Grafana Cloud push thread: {reason}; check the process's \
                 thread limit"
            ),
        }
    }
}

impl std::error::Error for GrafanaError {}
