//! [`ElasticsearchError`]: what can be wrong with an Elasticsearch publisher's configuration.
//!
//! Errors while delivering documents are not returned from the recording path: they are
//! retried, counted and reported through [`ElasticsearchStats`](super::ElasticsearchStats) and
//! the log. No message here ever contains a password, API key or token.

use std::fmt;

/// Why an [`ElasticsearchPublisher`](super::ElasticsearchPublisher) could not be built.
///
/// Every message names the offending value (secrets excepted) and how to fix it.
///
/// ```
/// use pipeline_telemetry::elasticsearch::{ElasticsearchError, ElasticsearchPublisher};
///
/// let err = ElasticsearchPublisher::new(["localhost:9200"], "Metrics").unwrap_err();
/// assert!(matches!(err, ElasticsearchError::InvalidIndexPrefix { .. }));
/// assert!(err.to_string().contains("lower case"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElasticsearchError {
    /// The list of hosts was empty.
    NoHosts,
    /// A host address could not be used.
    InvalidHost {
        /// The address as given, with any credentials in it replaced by `***`.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Elasticsearch would refuse index names made from this prefix.
    InvalidIndexPrefix {
        /// The prefix as given.
        prefix: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The CA certificate could not be read, or is not one: the data holds no PEM block, a
    /// block other than a `CERTIFICATE`, or a certificate that is not valid X.509.
    InvalidCaCertificate {
        /// Where it came from: `"file <path>"` or `"ca_certificate_pem"`.
        source: String,
        /// What is wrong, naming the PEM block (counted from 1) where there is one; never
        /// the block's contents.
        reason: String,
    },
    /// A numeric or duration setting is out of range.
    InvalidSetting {
        /// The builder method, such as `"batch_max_docs"`.
        setting: &'static str,
        /// The value given.
        value: String,
        /// The allowed range or the rule broken.
        reason: String,
    },
    /// A credential cannot be sent in an HTTP header. The credential itself is never shown.
    InvalidCredential {
        /// Which credential: `"username"`, `"password"`, `"API key"` or `"bearer token"`.
        kind: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HTTP client could not be set up (for example TLS initialisation failed).
    Client {
        /// The client library's reason.
        reason: String,
    },
    /// The background sender thread could not be started.
    WorkerSpawn {
        /// The operating system's reason.
        reason: String,
    },
}

impl fmt::Display for ElasticsearchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElasticsearchError::NoHosts => f.write_str(
                "no Elasticsearch hosts given; pass at least one address such as \
                 \"http://localhost:9200\"",
            ),
            ElasticsearchError::InvalidHost { host, reason } => write!(
                f,
                "Elasticsearch host {host:?} is not usable: {reason}; give an address such as \
                 \"localhost:9200\", \"http://10.0.0.5:9200\" or \"https://es.example.com\""
            ),
            ElasticsearchError::InvalidIndexPrefix { prefix, reason } => write!(
                f,
                "index prefix {prefix:?} would be refused by Elasticsearch: {reason}; use lower \
                 case letters, digits, '-', '_' and '.', such as \"event-pipeline-metrics\""
            ),
            ElasticsearchError::InvalidCaCertificate { source, reason } => write!(
                f,
                "the CA certificate in {source} is not usable: {reason}; give the PEM file of \
                 the CA that signed the cluster's certificate (Elasticsearch writes it to \
                 config/certs/http_ca.crt)"
            ),
            ElasticsearchError::InvalidSetting {
                setting,
                value,
                reason,
            } => write!(f, "{setting} = {value} is out of range: {reason}"),
            ElasticsearchError::InvalidCredential { kind, reason } => write!(
                f,
                "the Elasticsearch {kind} cannot be sent: {reason} (the value is not shown); \
                 check for stray quotes, spaces or line breaks, for example from an environment \
                 variable"
            ),
            ElasticsearchError::Client { reason } => {
                write!(
                    f,
                    "could not set up the HTTP client for Elasticsearch: {reason}"
                )
            }
            ElasticsearchError::WorkerSpawn { reason } => write!(
                f,
                "could not start the Elasticsearch sender thread: {reason}; check the process's \
                 thread limit"
            ),
        }
    }
}

impl std::error::Error for ElasticsearchError {}
