//! [`ElasticsearchPublisher`]: every finished event and network operation as a document in
//! Elasticsearch, batched through the bulk API by a background thread that survives outages.
//!
//! ```no_run
//! use std::time::Duration;
//! use pipeline_telemetry::Telemetry;
//! use pipeline_telemetry::elasticsearch::{ElasticsearchPublisher, DEFAULT_INDEX_PREFIX};
//!
//! let publisher = ElasticsearchPublisher::new(["localhost:9200"], DEFAULT_INDEX_PREFIX)?;
//! let stats = publisher.stats_handle();
//! let telemetry = Telemetry::new();
//! telemetry.add_publisher(Box::new(publisher))?;
//!
//! telemetry.events.start_event("transcode", "job-1", None)?;
//! telemetry.events.end_event("job-1", None)?;
//! telemetry.flush(Duration::from_secs(10))?;
//! assert_eq!(stats.stats().sent, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is sent
//! - One document per record, through `POST /_bulk` (NDJSON, `Content-Type:
//!   application/x-ndjson`, optionally gzip), to the index `{prefix}-event-YYYY.MM.DD` or
//!   `{prefix}-network-YYYY.MM.DD` of the record's UTC day. Fields: `@timestamp`,
//!   `metric_type` (`"event"` or `"network"`) and the record's fields; times RFC 3339 UTC,
//!   durations and latency in seconds as numbers, bytes and counts as integers.
//! - Each with the `create` action and a deterministic `_id`, so a document sent twice (a
//!   batch retried after a timeout, a replay after a restart) is stored once: the second
//!   `create` is answered 409 and counted as stored.
//! - Before the first document, an index template for `{prefix}-*` with explicit mappings,
//!   installed once (only when missing or older).
//!
//! # When it is sent
//! Records are encoded on the publisher's delivery thread and buffered; a sender thread ships
//! a batch when it holds [`batch_max_docs`](ElasticsearchBuilder::batch_max_docs) documents
//! or [`batch_max_bytes`](ElasticsearchBuilder::batch_max_bytes), when its first document has
//! waited the [`flush_interval`](ElasticsearchBuilder::flush_interval), on
//! [`flush`](MetricsPublisher::flush) and on [`shutdown`](MetricsPublisher::shutdown).
//!
//! # Failures
//! A whole request answered 429, 502, 503 or 504, or not answered (connection error,
//! timeout), is sent again after an exponential backoff with full jitter; documents answered
//! 429 inside a bulk response are sent again alone; documents refused for other reasons (a
//! 400 mapping error) are not retried but counted as `refused` and reported with
//! Elasticsearch's reason in the log and in [`ElasticsearchStats::last_refusal`]. With several
//! hosts requests go round-robin and a failing host is skipped for a while. The buffer is
//! bounded in documents and bytes; past it the oldest are dropped and counted. See
//! [`ElasticsearchStats`] for every figure.
//!
//! Secrets (passwords, API keys, tokens) live in [`Secret`], which never prints them, and the
//! `Authorization` header is marked sensitive.

mod config;
mod encoder;
mod error;
mod health;
mod request;
mod retry;
mod service;
mod stats;
mod template;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::{
    validate_index_prefix, Credentials, ElasticsearchBuilder, Secret, DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_DOCS, DEFAULT_BUFFER_MAX_BYTES,
    DEFAULT_BUFFER_MAX_DOCS, DEFAULT_FLUSH_INTERVAL, DEFAULT_HOST_COOLDOWN, DEFAULT_INDEX_PREFIX,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_LIMIT, MAX_DURATION, MAX_INDEX_PREFIX_BYTES,
};
pub use error::ElasticsearchError;
pub use stats::{ElasticsearchStats, StatsHandle, TemplateStatus};

use crate::publish::{MetricsPublisher, PublishError};
use crate::record::{EventMetrics, NetworkMetrics};
use config::Settings;
use encoder::{Encoder, MetricType};
use service::{Sender, Shared};

/// The name the publisher reports in logs and [`PublisherStats`](crate::PublisherStats).
pub const PUBLISHER_NAME: &str = "elasticsearch";

/// Ships finished records to Elasticsearch as documents, in bulk, from a background thread.
///
/// Attach it to a [`TelemetryLogger`](crate::TelemetryLogger) or
/// [`Telemetry`](crate::Telemetry) like any [`MetricsPublisher`]; keep a
/// [`stats_handle`](Self::stats_handle) to read its figures afterwards. See the
/// [module docs](self) for what is sent, when, and what happens on failure.
///
/// ```no_run
/// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
///
/// let publisher = ElasticsearchPublisher::builder(["http://localhost:9200"])?
///     .basic_auth("elastic", std::env::var("ELASTIC_PASSWORD").unwrap_or_default())?
///     .build()?;
/// assert_eq!(publisher.index_prefix(), "event-pipeline-metrics");
/// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
/// ```
pub struct ElasticsearchPublisher {
    shared: Arc<Shared>,
    encoder: Encoder,
    prefix: String,
    hosts: Vec<String>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shutdown_timeout: Duration,
}

impl fmt::Debug for ElasticsearchPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (buffered, in_flight) = self.shared.occupancy();
        f.debug_struct("ElasticsearchPublisher")
            .field("hosts", &self.hosts)
            .field("index_prefix", &self.prefix)
            .field("buffered", &buffered)
            .field("in_flight", &in_flight)
            .finish_non_exhaustive()
    }
}

impl ElasticsearchPublisher {
    /// A publisher for these hosts and index prefix with default client options (the
    /// original's `ElasticsearchPublisher(hosts, index_prefix)`). Hosts are written
    /// `host:port`, `http://host:port` or `https://host[:port][/path]`; without a scheme
    /// `http` and port 9200 are assumed. The sender thread starts at once; nothing is sent
    /// until the first record.
    ///
    /// ```no_run
    /// use pipeline_telemetry::elasticsearch::{ElasticsearchPublisher, DEFAULT_INDEX_PREFIX};
    /// let publisher = ElasticsearchPublisher::new(["localhost:9200"], DEFAULT_INDEX_PREFIX)?;
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    ///
    /// # Errors
    /// [`ElasticsearchError::NoHosts`], [`ElasticsearchError::InvalidHost`],
    /// [`ElasticsearchError::InvalidIndexPrefix`] (see [`validate_index_prefix`]) or
    /// [`ElasticsearchError::WorkerSpawn`].
    pub fn new<I, S>(hosts: I, index_prefix: &str) -> Result<Self, ElasticsearchError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::builder(hosts)?.index_prefix(index_prefix)?.build()
    }

    /// A builder for the client options: credentials, CA certificate, timeouts, batch and
    /// buffer sizes, retries, gzip.
    ///
    /// ```
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    /// let builder = ElasticsearchPublisher::builder(["es-1:9200", "es-2:9200"])?.gzip(true);
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    ///
    /// # Errors
    /// [`ElasticsearchError::NoHosts`] or [`ElasticsearchError::InvalidHost`].
    pub fn builder<I, S>(hosts: I) -> Result<ElasticsearchBuilder, ElasticsearchError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ElasticsearchBuilder::new(hosts)
    }

    pub(crate) fn start(settings: Settings) -> Result<Self, ElasticsearchError> {
        let client = request::Client::new(&settings)?;
        let shared = Arc::new(Shared::new(&settings));
        let sender = Sender::new(Arc::clone(&shared), client, &settings);
        let thread = std::thread::Builder::new()
            .name("es-bulk-sender".into())
            .spawn(move || sender.run())
            .map_err(|e| ElasticsearchError::WorkerSpawn {
                reason: e.to_string(),
            })?;
        Ok(ElasticsearchPublisher {
            encoder: Encoder::new(&settings.index_prefix),
            prefix: settings.index_prefix,
            hosts: settings.hosts.into_iter().map(|h| h.base).collect(),
            shared,
            thread: Mutex::new(Some(thread)),
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    /// The index prefix.
    ///
    /// ```
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    /// let p = ElasticsearchPublisher::new(["localhost:9200"], "pipeline")?;
    /// assert_eq!(p.index_prefix(), "pipeline");
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    pub fn index_prefix(&self) -> &str {
        &self.prefix
    }

    /// The index a record finished at `at` goes to: `{prefix}-event-YYYY.MM.DD` or
    /// `{prefix}-network-YYYY.MM.DD` (`network = true`), of the UTC day.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    ///
    /// let p = ElasticsearchPublisher::new(["localhost:9200"], "event-pipeline-metrics")?;
    /// let at = UNIX_EPOCH + Duration::from_secs(1_764_051_616);
    /// assert_eq!(p.index_name(false, at), "event-pipeline-metrics-event-2025.11.25");
    /// assert_eq!(p.index_name(true, at), "event-pipeline-metrics-network-2025.11.25");
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    pub fn index_name(&self, network: bool, at: std::time::SystemTime) -> String {
        let kind = if network {
            MetricType::Network
        } else {
            MetricType::Event
        };
        self.encoder.index_name(kind, at)
    }

    /// The index template the publisher installs for `{prefix}-*`, for installing it by
    /// other means when [`install_template`](ElasticsearchBuilder::install_template) is off:
    /// `PUT /_index_template/{prefix}` with this body.
    ///
    /// ```
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    /// let p = ElasticsearchPublisher::new(["localhost:9200"], "pipeline")?;
    /// let t = p.index_template();
    /// assert_eq!(t["index_patterns"][0], "pipeline-*");
    /// assert_eq!(t["template"]["mappings"]["properties"]["duration"]["type"], "double");
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    pub fn index_template(&self) -> serde_json::Value {
        template::template_body(&self.prefix)
    }

    /// The publisher's figures now.
    ///
    /// ```
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    /// let p = ElasticsearchPublisher::new(["localhost:9200"], "pipeline")?;
    /// assert_eq!(p.stats().accepted, 0);
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    pub fn stats(&self) -> ElasticsearchStats {
        self.stats_handle().stats()
    }

    /// A cloneable handle for reading the figures after the publisher is attached to a
    /// logger (which takes ownership of it).
    ///
    /// ```
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    /// let p = ElasticsearchPublisher::new(["localhost:9200"], "pipeline")?;
    /// let handle = p.stats_handle();
    /// drop(p);
    /// assert_eq!(handle.stats().sent, 0);
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Registers the publisher's figures in a `prometheus-client` registry, read at each
    /// scrape: counters `elasticsearch_documents_{accepted,sent,conflicts,retried,refused}`,
    /// `elasticsearch_documents_dropped{reason="buffer_full|retry_limit|shutdown"}`,
    /// `elasticsearch_bulk_requests`, `elasticsearch_bulk_requests_failed`,
    /// `elasticsearch_request_bytes` (each with the `_total` suffix in the exposition) and the
    /// gauge `elasticsearch_documents_buffered`.
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    ///
    /// let p = ElasticsearchPublisher::new(["localhost:9200"], "pipeline")?;
    /// let mut registry = Registry::default();
    /// p.register_metrics(&mut registry);
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains("elasticsearch_documents_sent_total 0"));
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    #[cfg(feature = "prometheus")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.stats_handle().register_metrics(registry);
    }

    fn closed(&self) -> PublishError {
        PublishError::Closed {
            publisher: PUBLISHER_NAME.to_owned(),
        }
    }

    fn join(&self) {
        if let Some(handle) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
    }
}

impl StatsHandle {
    /// As [`ElasticsearchPublisher::register_metrics`], from a handle.
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    /// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
    ///
    /// let handle = ElasticsearchPublisher::new(["localhost:9200"], "pipeline")?.stats_handle();
    /// let mut registry = Registry::with_prefix("pipeline_telemetry");
    /// handle.register_metrics(&mut registry);
    /// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
    /// ```
    #[cfg(feature = "prometheus")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(stats::prometheus::StatsCollector {
            handle: self.clone(),
        }));
    }
}

impl MetricsPublisher for ElasticsearchPublisher {
    fn name(&self) -> &str {
        PUBLISHER_NAME
    }

    fn publish_event_metrics(&self, metrics: &EventMetrics) -> Result<(), PublishError> {
        self.shared
            .push(self.encoder.event(metrics))
            .map_err(|_| self.closed())
    }

    fn publish_network_metrics(&self, metrics: &NetworkMetrics) -> Result<(), PublishError> {
        self.shared
            .push(self.encoder.network(metrics))
            .map_err(|_| self.closed())
    }

    /// Sends everything buffered before this call and waits for Elasticsearch's answers,
    /// until `deadline`. Returns `Ok` once every such document is stored, refused or dropped
    /// (read [`stats`](ElasticsearchPublisher::stats) for which).
    fn flush(&self, deadline: Instant) -> Result<(), PublishError> {
        if self.shared.is_closing() {
            return Err(self.closed());
        }
        self.shared
            .flush(deadline)
            .map_err(|queued| PublishError::DeadlineExceeded {
                publisher: PUBLISHER_NAME.to_owned(),
                queued,
            })
    }

    /// Sends everything buffered, retrying until shortly before `deadline` (a tenth of the
    /// time left, at most 100 ms, is kept for the sender to settle its figures), then ends the
    /// sender thread. Documents still unsent then are dropped and counted (`dropped_shutdown`).
    /// Records arriving afterwards are refused with [`PublishError::Closed`].
    fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        self.shared.close(deadline);
        match self.shared.wait_finished(deadline) {
            Ok(()) => {
                self.join();
                Ok(())
            }
            Err(queued) => Err(PublishError::DeadlineExceeded {
                publisher: PUBLISHER_NAME.to_owned(),
                queued,
            }),
        }
    }
}

impl Drop for ElasticsearchPublisher {
    fn drop(&mut self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.shared.close(deadline);
        if self.shared.wait_finished(deadline).is_ok() {
            self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_hosts_and_prefix_but_no_secret() {
        let p = ElasticsearchPublisher::builder(["localhost:1"])
            .unwrap()
            .api_key("super-secret-key")
            .unwrap()
            .build()
            .unwrap();
        let text = format!("{p:?}");
        assert!(text.contains("http://localhost:1"), "{text}");
        assert!(!text.contains("super-secret-key"), "{text}");
    }

    #[test]
    fn after_shutdown_records_are_refused() {
        let p = ElasticsearchPublisher::new(["localhost:1"], "p").unwrap();
        p.shutdown(Instant::now() + Duration::from_secs(5)).unwrap();
        let m = NetworkMetrics::new("t", "h", 1, std::time::SystemTime::now());
        assert!(matches!(
            p.publish_network_metrics(&m),
            Err(PublishError::Closed { .. })
        ));
        assert!(matches!(
            p.flush(Instant::now() + Duration::from_secs(1)),
            Err(PublishError::Closed { .. })
        ));
        // A second shutdown is harmless.
        p.shutdown(Instant::now() + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn publisher_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ElasticsearchPublisher>();
        check::<StatsHandle>();
    }
}
