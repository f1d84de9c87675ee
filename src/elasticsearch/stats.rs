//! Health figures: [`ElasticsearchStats`], read at any time through a [`StatsHandle`], and
//! (with the `prometheus` feature) exported to a `prometheus-client` registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::service::Shared;

/// Where the index template stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TemplateStatus {
    /// Not yet attempted: it is installed before the first bulk request.
    #[default]
    Pending,
    /// This publisher installed it.
    Installed,
    /// A template of this version or newer was already there.
    AlreadyPresent,
    /// Installation is turned off ([`install_template(false)`](super::ElasticsearchBuilder::install_template)).
    Disabled,
    /// Elasticsearch refused it (for example for lack of the `manage_index_templates`
    /// privilege); documents are sent all the same, with whatever mappings the cluster gives.
    Failed(String),
}

/// The publisher's figures at one moment. Every document handed to the publisher ends in
/// exactly one of `sent`, `refused` or `dropped`, or is still `buffered` or `in_flight`:
/// `accepted = sent + refused + dropped + buffered + in_flight`.
///
/// ```no_run
/// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
///
/// let publisher = ElasticsearchPublisher::new(["localhost:9200"], "event-pipeline-metrics")?;
/// let stats = publisher.stats();
/// println!("sent {} refused {} dropped {}", stats.sent, stats.refused, stats.dropped);
/// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ElasticsearchStats {
    /// Documents handed to the publisher.
    pub accepted: u64,
    /// Documents Elasticsearch acknowledged as stored, `conflicts` included.
    pub sent: u64,
    /// Of `sent`, documents answered 409 because a document with their `_id` was already
    /// there: stored by an earlier attempt whose answer was lost, or by an earlier run.
    pub conflicts: u64,
    /// Times a document was sent again after a retryable failure.
    pub retried: u64,
    /// Documents Elasticsearch refused for good (mapping errors and the like, or a whole
    /// request refused with a status that is not retried).
    pub refused: u64,
    /// Documents given up: the sum of the three `dropped_*` figures.
    pub dropped: u64,
    /// Dropped because the buffer was full (oldest first).
    pub dropped_buffer_full: u64,
    /// Dropped after the retry limit.
    pub dropped_retry_limit: u64,
    /// Dropped because shutdown's deadline passed before they could be sent.
    pub dropped_shutdown: u64,
    /// Bulk requests sent, retries included.
    pub requests: u64,
    /// Bulk requests that got no usable answer or a retryable status.
    pub failed_requests: u64,
    /// Request body bytes sent (after compression).
    pub bytes_sent: u64,
    /// Documents waiting in the buffer.
    pub buffered: u64,
    /// Documents in the batch being sent.
    pub in_flight: u64,
    /// The index template's state.
    pub template: TemplateStatus,
    /// The last refusal: index, `_id` and Elasticsearch's status, error type and reason.
    pub last_refusal: Option<String>,
    /// The last retryable failure (connection error, TLS handshake, timeout, 429, 5xx). When
    /// the server's certificate is not signed by a trusted CA, a hint on the
    /// [`ca_certificate_pem`](super::ElasticsearchBuilder::ca_certificate_pem) setting
    /// follows the TLS library's reason.
    pub last_error: Option<String>,
}

/// The counters the sender thread and the publisher update. The document outcomes
/// (`accepted`, `sent`, `conflicts`, `refused`, `dropped_*`) change only under the sender's
/// state lock, in the same critical section as the documents leave the buffer or the batch
/// being sent, and [`StatsHandle::stats`] reads them under it.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) dropped_buffer_full: AtomicU64,
    pub(crate) dropped_retry_limit: AtomicU64,
    pub(crate) dropped_shutdown: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failed_requests: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) template: Mutex<TemplateStatus>,
    pub(crate) last_refusal: Mutex<Option<String>>,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set<T>(slot: &Mutex<T>, value: T) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    fn get<T: Clone>(slot: &Mutex<T>) -> T {
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A cheap, cloneable view of one publisher's figures that stays valid after the publisher
/// is attached (moved into a logger) or shut down.
///
/// ```no_run
/// use pipeline_telemetry::{Telemetry, elasticsearch::ElasticsearchPublisher};
///
/// let publisher = ElasticsearchPublisher::new(["localhost:9200"], "event-pipeline-metrics")?;
/// let stats = publisher.stats_handle();
/// let telemetry = Telemetry::new();
/// telemetry.add_publisher(Box::new(publisher)).unwrap();
/// // ... later, from any thread:
/// assert_eq!(stats.stats().refused, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct StatsHandle {
    pub(crate) shared: Arc<Shared>,
}

impl StatsHandle {
    /// The figures now.
    pub fn stats(&self) -> ElasticsearchStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // The document figures are read together, under the lock their changes are made
        // under, so they add up: `accepted = sent + refused + dropped + buffered + in_flight`.
        let mut stats = self.shared.with_occupancy(|buffered, in_flight| {
            let dropped_buffer_full = load(&c.dropped_buffer_full);
            let dropped_retry_limit = load(&c.dropped_retry_limit);
            let dropped_shutdown = load(&c.dropped_shutdown);
            ElasticsearchStats {
                accepted: load(&c.accepted),
                sent: load(&c.sent),
                conflicts: load(&c.conflicts),
                refused: load(&c.refused),
                dropped: dropped_buffer_full + dropped_retry_limit + dropped_shutdown,
                dropped_buffer_full,
                dropped_retry_limit,
                dropped_shutdown,
                buffered: buffered as u64,
                in_flight: in_flight as u64,
                ..ElasticsearchStats::default()
            }
        });
        stats.retried = load(&c.retried);
        stats.requests = load(&c.requests);
        stats.failed_requests = load(&c.failed_requests);
        stats.bytes_sent = load(&c.bytes_sent);
        stats.template = Counters::get(&c.template);
        stats.last_refusal = Counters::get(&c.last_refusal);
        stats.last_error = Counters::get(&c.last_error);
        stats
    }
}

#[cfg(feature = "prometheus")]
pub(crate) mod prometheus {
    //! The figures as Prometheus metrics, read at scrape time.

    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    use super::StatsHandle;

    /// Encodes a publisher's figures on each scrape.
    #[derive(Debug)]
    pub(crate) struct StatsCollector {
        pub(crate) handle: StatsHandle,
    }

    impl Collector for StatsCollector {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let s = self.handle.stats();
            let counters: [(&str, &str, u64); 8] = [
                (
                    "elasticsearch_documents_accepted",
                    "Documents handed to the Elasticsearch publisher.",
                    s.accepted,
                ),
                (
                    "elasticsearch_documents_sent",
                    "Documents Elasticsearch acknowledged as stored (409 conflicts included).",
                    s.sent,
                ),
                (
                    "elasticsearch_documents_conflicts",
                    "Documents answered 409: already stored by an earlier attempt.",
                    s.conflicts,
                ),
                (
                    "elasticsearch_documents_retried",
                    "Times a document was sent again after a retryable failure.",
                    s.retried,
                ),
                (
                    "elasticsearch_documents_refused",
                    "Documents Elasticsearch refused for good (mapping errors and the like).",
                    s.refused,
                ),
                (
                    "elasticsearch_bulk_requests",
                    "Bulk requests sent, retries included.",
                    s.requests,
                ),
                (
                    "elasticsearch_bulk_requests_failed",
                    "Bulk requests with no usable answer or a retryable status.",
                    s.failed_requests,
                ),
                (
                    "elasticsearch_request_bytes",
                    "Request body bytes sent to Elasticsearch, after compression.",
                    s.bytes_sent,
                ),
            ];
            for (name, help, value) in counters {
                let counter = ConstCounter::new(value);
                let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                counter.encode(metric)?;
            }
            let dropped = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "elasticsearch_documents_dropped",
                "Documents the Elasticsearch publisher gave up, by reason.",
                None,
                dropped.metric_type(),
            )?;
            for (reason, value) in [
                ("buffer_full", s.dropped_buffer_full),
                ("retry_limit", s.dropped_retry_limit),
                ("shutdown", s.dropped_shutdown),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
            let buffered =
                ConstGauge::new(i64::try_from(s.buffered + s.in_flight).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "elasticsearch_documents_buffered",
                "Documents waiting to be sent to Elasticsearch, the batch being sent included.",
                None,
                buffered.metric_type(),
            )?;
            buffered.encode(metric)?;
            Ok(())
        }
    }
}
