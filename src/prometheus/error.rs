//! [`PrometheusError`]: what can go wrong setting up or stopping a [`PrometheusPublisher`].
//!
//! [`PrometheusPublisher`]: super::PrometheusPublisher

use std::fmt;
use std::net::SocketAddr;

/// Why a [`PrometheusPublisher`](super::PrometheusPublisher) could not be built or stopped.
/// Each message names the value at fault and what to do about it.
///
/// ```
/// use pipeline_telemetry::prometheus::{PrometheusError, PrometheusPublisher};
///
/// let first = PrometheusPublisher::new(0)?;
/// let port = first.local_addr().unwrap().port();
/// match PrometheusPublisher::new(port) {
///     Err(PrometheusError::Bind { addr, .. }) => assert_eq!(addr.port(), port),
///     other => panic!("expected a bind error, got {other:?}"),
/// }
/// # Ok::<(), PrometheusError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PrometheusError {
    /// The scrape endpoint could not listen on its address (in use, not permitted, not an
    /// address of this machine).
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The kind of the operating system's error.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        reason: String,
    },
    /// The metric name prefix is not a valid Prometheus name.
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
    },
    /// The histogram bucket bounds were refused.
    InvalidBuckets {
        /// The bounds given.
        buckets: Vec<f64>,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// The cap on distinct label values is out of range.
    InvalidLabelCap {
        /// The cap given.
        max: usize,
    },
    /// The user's registry has a metric whose name clashes with one of the publisher's.
    NameCollision {
        /// The clashing name.
        name: String,
    },
    /// The server thread could not be started.
    ServerSpawn {
        /// The operating system's reason.
        reason: String,
    },
}

impl fmt::Display for PrometheusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrometheusError::Bind { addr, reason, .. } => write!(
                f,
                "cannot serve Prometheus metrics on {addr}: {reason}; choose a free port (0 lets \
                 the system pick one, read it with local_addr()), stop the process using it, or \
                 bind an address of this machine"
            ),
            PrometheusError::InvalidPrefix { prefix } => write!(
                f,
                "metric name prefix {prefix:?} is not a valid Prometheus name; use letters, \
                 digits, '_' and ':' only, not starting with a digit (such as \"pipeline\")"
            ),
            PrometheusError::InvalidBuckets { buckets, reason } => write!(
                f,
                "histogram buckets {buckets:?} refused: {reason}; give finite, non-negative, \
                 strictly increasing bounds in seconds, such as [0.01, 0.1, 1.0, 10.0]"
            ),
            PrometheusError::InvalidLabelCap { max } => write!(
                f,
                "a cap of {max} distinct label values is out of range; give between 1 and {}",
                crate::series::MAX_LABEL_VALUES_LIMIT
            ),
            PrometheusError::NameCollision { name } => write!(
                f,
                "the registry given to the Prometheus publisher already has a metric named \
                 {name:?}, which the publisher exposes too; set a prefix with \
                 PrometheusBuilder::prefix or rename the registry's metric"
            ),
            PrometheusError::ServerSpawn { reason } => write!(
                f,
                "could not start the Prometheus scrape server thread: {reason}; check the \
                 process's thread limit"
            ),
        }
    }
}

impl std::error::Error for PrometheusError {}
