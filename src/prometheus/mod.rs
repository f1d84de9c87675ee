//! [`PrometheusPublisher`]: the pipeline's metrics on a Prometheus scrape endpoint.
//!
//! Finished events and network operations are aggregated as they end, on the thread that
//! ended them (a lookup by index and a few atomic additions; no queue, no copy of the record),
//! into the families below, and served on
//! `http://ADDR:PORT/metrics` by a small HTTP server on a thread of its own — no async runtime
//! is needed, and it works the same inside a tokio program.
//!
//! | series | kind | labels |
//! | --- | --- | --- |
//! | `event_duration_seconds` | histogram | `event_name`, `status` |
//! | `event_retries_total` | counter | `event_name` |
//! | `network_bytes_total` | counter | `operation`, `direction` (`sent`, `received`) |
//! | `network_latency_seconds` | histogram | `operation` |
//! | `network_operations_total` | counter | `operation`, `status` (`completed`, `failed`) |
//! | `events_in_flight` | gauge | |
//! | `network_operations_in_flight` | gauge | |
//! | `telemetry_records_delivered_total` | counter | `publisher` |
//! | `telemetry_records_dropped_total` | counter | `publisher` |
//! | `telemetry_publish_errors_total` | counter | `publisher` |
//! | `telemetry_publisher_queued_records` | gauge | `publisher` |
//! | `telemetry_label_values_folded_total` | counter | `label` |
//!
//! The first four are named and labelled as the original Python library names them, so
//! existing dashboards keep working; every name takes the [prefix](PrometheusBuilder::prefix)
//! if one is set. The in-flight gauges and the `telemetry_*` health figures are read from the
//! pipeline the publisher is attached to at each scrape.
//!
//! Scrapes are answered in OpenMetrics when the scraper asks for it (Prometheus does) and in
//! the classic text format otherwise, gzip-compressed when asked. Metrics of a
//! [registry](PrometheusBuilder::registry) of your own are served on the same endpoint, in
//! either format.
//!
//! ```
//! use std::time::Duration;
//! use pipeline_telemetry::Telemetry;
//! use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher};
//!
//! // Port 0 lets the system choose a free port; a real deployment names one, like 9464.
//! let prometheus = std::sync::Arc::new(PrometheusPublisher::new(0)?);
//! let telemetry = Telemetry::new();
//! telemetry.add_publisher(Box::new(prometheus.clone()))?;
//!
//! telemetry.events.start_event("transcode", "job-1", None)?;
//! telemetry.events.end_event("job-1", None)?;
//! telemetry.flush(Duration::from_secs(5))?;
//!
//! println!("scrape me at http://{}/metrics", prometheus.local_addr().unwrap());
//! let text = prometheus.render(ExpositionFormat::Prometheus);
//! assert!(text.contains(
//!     "event_duration_seconds_count{event_name=\"transcode\",status=\"completed\"} 1"
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod exposition;
mod server;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

pub use error::PrometheusError;
pub use exposition::ExpositionFormat;

use crate::publish::{InPlace, MetricsPublisher, PipelineHealth, PublishError};
use crate::record::{EventMetrics, EventRef, NetworkMetrics, NetworkRef};
use crate::series::{self, is_metric_name, Kind, PipelineSeries, SeriesConfig};
use server::Server;

/// The histogram buckets used unless configured otherwise, in seconds (`+Inf` is implicit):
/// those of the original, 5 ms to 10 s.
///
/// ```
/// use pipeline_telemetry::prometheus::DEFAULT_BUCKETS;
/// assert_eq!((DEFAULT_BUCKETS[0], DEFAULT_BUCKETS[13]), (0.005, 10.0));
/// ```
pub const DEFAULT_BUCKETS: [f64; 14] = series::DEFAULT_BUCKETS;

/// Distinct values per label (`event_name`, `operation`) kept unless configured otherwise.
pub const DEFAULT_MAX_LABEL_VALUES: usize = series::DEFAULT_MAX_LABEL_VALUES;

/// The value that label values past the cap are replaced with.
pub const OTHER_LABEL_VALUE: &str = series::OTHER;

/// The address bound unless configured otherwise: this machine only.
pub const DEFAULT_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How long dropping the publisher waits for its server to stop.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// Exposes the pipeline's metrics for Prometheus to scrape.
///
/// Attach it to a [`Telemetry`](crate::Telemetry) or logger (keep an `Arc` to read
/// [`local_addr`](Self::local_addr) or [`render`](Self::render)); see the
/// [module documentation](self) for the series it serves. Shutting the pipeline down (or
/// dropping the publisher) stops the server and frees the port.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pipeline_telemetry::{EventMetrics, MetricsPublisher, Status};
/// use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher};
///
/// let publisher = PrometheusPublisher::new(0)?;
/// let start = SystemTime::now();
/// publisher.publish_event_metrics(&EventMetrics {
///     event_name: "TestEvent".into(),
///     task_id: "test-123".into(),
///     start_time: start,
///     end_time: Some(start + Duration::from_millis(1500)),
///     status: Status::Completed,
///     error: None,
///     retry_count: 0,
///     process_id: 1234,
/// })?;
/// let text = publisher.render(ExpositionFormat::Prometheus);
/// assert!(text.contains(
///     "event_duration_seconds_count{event_name=\"TestEvent\",status=\"completed\"} 1\n"
/// ));
/// assert!(text.contains(
///     "event_duration_seconds_sum{event_name=\"TestEvent\",status=\"completed\"} 1.5\n"
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PrometheusPublisher {
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
    addr: Option<SocketAddr>,
}

/// What the recording side and the HTTP threads share.
#[derive(Debug)]
struct Shared {
    series: Arc<PipelineSeries>,
    registry: Option<Arc<Registry>>,
    /// Size of the last rendering, to allocate the next one at once.
    last_len: AtomicUsize,
}

impl Shared {
    fn render(&self, format: ExpositionFormat) -> String {
        let families = self.series.snapshot_attached();
        let mut out = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 256);
        exposition::encode(&mut out, &families, format);
        if let Some(registry) = &self.registry {
            let mark = out.len();
            let encoded = match format {
                ExpositionFormat::Prometheus => {
                    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
                }
                ExpositionFormat::OpenMetrics => {
                    prometheus_client::encoding::text::encode_registry(&mut out, registry)
                }
            };
            if encoded.is_err() {
                // A metric of the user's failed to encode: serve ours rather than nothing.
                out.truncate(mark);
                tracing::warn!("prometheus endpoint: the user registry failed to encode");
            }
        }
        exposition::finish(&mut out, format);
        self.last_len.store(out.len(), Ordering::Relaxed);
        out
    }
}

impl PrometheusPublisher {
    /// Serves the metrics on `127.0.0.1:port` with the defaults of [`PrometheusBuilder`].
    /// Port 0 lets the system choose a free port (see [`local_addr`](Self::local_addr)).
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// let publisher = PrometheusPublisher::new(0)?;
    /// assert!(publisher.local_addr().unwrap().ip().is_loopback());
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    ///
    /// # Errors
    /// [`PrometheusError::Bind`] if the port is in use or not permitted;
    /// [`PrometheusError::ServerSpawn`] if the server thread cannot be started.
    pub fn new(port: u16) -> Result<Self, PrometheusError> {
        Self::builder(port).build()
    }

    /// A builder for a publisher serving on `port`, to set the address, a registry of your
    /// own, a name prefix, buckets and the label-value cap.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// let publisher = PrometheusPublisher::builder(0)
    ///     .prefix("etl")?
    ///     .buckets(&[0.1, 1.0, 10.0, 60.0])?
    ///     .max_label_values(200)?
    ///     .build()?;
    /// assert!(publisher.render(Default::default()).contains("etl_events_in_flight 0"));
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    pub fn builder(port: u16) -> PrometheusBuilder {
        PrometheusBuilder::new(port)
    }

    /// The address the endpoint listens on, with the port the system chose if `0` was asked;
    /// `None` for a publisher [built without a server](PrometheusBuilder::build_without_server).
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// let publisher = PrometheusPublisher::new(0)?;
    /// assert_ne!(publisher.local_addr().unwrap().port(), 0);
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The exposition a scrape would get now, in `format` (including the registry's metrics),
    /// for serving it from a server of your own or for tests.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::{ExpositionFormat, PrometheusPublisher};
    /// let publisher = PrometheusPublisher::builder(0).build_without_server()?;
    /// assert!(publisher.render(ExpositionFormat::OpenMetrics).ends_with("# EOF\n"));
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    pub fn render(&self, format: ExpositionFormat) -> String {
        self.shared.render(format)
    }

    fn stop_server(&self, deadline: Instant) -> Result<(), String> {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        match server.as_mut() {
            Some(s) => s.stop(deadline),
            None => Ok(()),
        }
    }
}

impl MetricsPublisher for PrometheusPublisher {
    fn name(&self) -> &str {
        "prometheus"
    }

    /// Keeps the pipeline's health handle to read in-flight records and publisher health at
    /// each scrape. Attached to several pipelines, the latest one is read.
    fn on_attach(&self, health: PipelineHealth) {
        self.shared.series.attach(health);
    }

    fn publish_event_metrics(&self, metrics: &EventMetrics) -> Result<(), PublishError> {
        self.publish_event(metrics.borrowed())
    }

    fn publish_network_metrics(&self, metrics: &NetworkMetrics) -> Result<(), PublishError> {
        self.publish_network(metrics.borrowed())
    }

    fn publish_event(&self, event: EventRef<'_>) -> Result<(), PublishError> {
        self.shared.series.record_event(event);
        Ok(())
    }

    fn publish_network(&self, operation: NetworkRef<'_>) -> Result<(), PublishError> {
        self.shared.series.record_network(operation);
        Ok(())
    }

    /// The series, updated by the recording threads themselves: a record costs a few atomic
    /// additions there and never waits in a queue.
    fn in_place(&self) -> Option<InPlace> {
        Some(InPlace::new(Arc::clone(&self.shared.series)))
    }

    /// Stops the server, freeing the port; what was recorded can still be [rendered](Self::render).
    fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        self.stop_server(deadline)
            .map_err(|message| PublishError::backend(self.name(), message))
    }
}

impl Drop for PrometheusPublisher {
    fn drop(&mut self) {
        let _ = self.stop_server(Instant::now() + DROP_TIMEOUT);
    }
}

/// Configures a [`PrometheusPublisher`]. Made by [`PrometheusPublisher::builder`].
///
/// Defaults: address [`DEFAULT_ADDR`] (127.0.0.1), no registry of your own, no prefix,
/// [`DEFAULT_BUCKETS`], [`DEFAULT_MAX_LABEL_VALUES`].
///
/// ```
/// use pipeline_telemetry::prometheus::PrometheusPublisher;
/// use prometheus_client::metrics::counter::Counter;
/// use prometheus_client::registry::Registry;
///
/// // Metrics of your own, served on the same endpoint.
/// let mut registry = Registry::default();
/// let uploads: Counter = Counter::default();
/// registry.register("uploads", "Files uploaded", uploads.clone());
/// uploads.inc();
///
/// let publisher = PrometheusPublisher::builder(0)
///     .addr([127, 0, 0, 1])
///     .registry(registry)
///     .build()?;
/// assert!(publisher.render(Default::default()).contains("uploads_total 1\n"));
/// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
/// ```
#[derive(Debug)]
pub struct PrometheusBuilder {
    addr: SocketAddr,
    registry: Option<Arc<Registry>>,
    config: SeriesConfig,
}

impl PrometheusBuilder {
    /// A builder serving on `127.0.0.1:port`, with every default; the same as
    /// [`PrometheusPublisher::builder`].
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusBuilder;
    /// let publisher = PrometheusBuilder::new(0).build()?;
    /// assert!(publisher.local_addr().unwrap().ip().is_loopback());
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    pub fn new(port: u16) -> Self {
        PrometheusBuilder {
            addr: SocketAddr::new(DEFAULT_ADDR, port),
            registry: None,
            config: SeriesConfig::default(),
        }
    }

    /// The interface address to listen on (default [`DEFAULT_ADDR`], 127.0.0.1, so nothing
    /// is exposed beyond this machine). `[0, 0, 0, 0]` listens on every interface.
    ///
    /// ```
    /// use std::net::Ipv6Addr;
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// let builder = PrometheusPublisher::builder(9464).addr(Ipv6Addr::LOCALHOST);
    /// # drop(builder);
    /// ```
    pub fn addr(mut self, addr: impl Into<IpAddr>) -> Self {
        self.addr.set_ip(addr.into());
        self
    }

    /// Serves the metrics of `registry` on the same endpoint, after the publisher's own, in
    /// whichever format the scraper asked for. Pass the registry or an `Arc` of it.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// let publisher = PrometheusPublisher::builder(0)
    ///     .registry(prometheus_client::registry::Registry::default())
    ///     .build()?;
    /// # drop(publisher);
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    pub fn registry(mut self, registry: impl Into<Arc<Registry>>) -> Self {
        self.registry = Some(registry.into());
        self
    }

    /// Puts `prefix` and `_` before every metric name: `prefix("etl")` serves
    /// `etl_event_duration_seconds`. Default: none.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::{PrometheusError, PrometheusPublisher};
    /// assert!(PrometheusPublisher::builder(0).prefix("etl").is_ok());
    /// assert!(matches!(
    ///     PrometheusPublisher::builder(0).prefix("9lives"),
    ///     Err(PrometheusError::InvalidPrefix { .. })
    /// ));
    /// ```
    ///
    /// # Errors
    /// [`PrometheusError::InvalidPrefix`] unless `prefix` is empty or a valid metric name
    /// (letters, digits, `_`, `:`, not starting with a digit).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, PrometheusError> {
        if !prefix.is_empty() && !is_metric_name(prefix) {
            return Err(PrometheusError::InvalidPrefix {
                prefix: prefix.to_owned(),
            });
        }
        self.config.prefix = if prefix.is_empty() || prefix.ends_with('_') {
            prefix.to_owned()
        } else {
            format!("{prefix}_")
        };
        Ok(self)
    }

    /// The upper bounds of the histogram buckets for event durations and network latencies,
    /// in seconds (`+Inf` is added). Default: [`DEFAULT_BUCKETS`].
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// assert!(PrometheusPublisher::builder(0).buckets(&[0.001, 0.01, 0.1]).is_ok());
    /// assert!(PrometheusPublisher::builder(0).buckets(&[1.0, 0.5]).is_err());
    /// ```
    ///
    /// # Errors
    /// [`PrometheusError::InvalidBuckets`] unless there is at least one bound and every bound
    /// is finite, not negative, and larger than the one before.
    pub fn buckets(mut self, bounds: &[f64]) -> Result<Self, PrometheusError> {
        series::check_buckets(bounds).map_err(|reason| PrometheusError::InvalidBuckets {
            buckets: bounds.to_vec(),
            reason,
        })?;
        self.config.buckets = Arc::from(bounds);
        Ok(self)
    }

    /// How many distinct values each free-form label (`event_name`, `operation`) may take.
    /// Past it, new values are reported as [`OTHER_LABEL_VALUE`] and counted in
    /// `telemetry_label_values_folded_total{label}`, so a runaway name space cannot exhaust
    /// memory or the scraper. Default: [`DEFAULT_MAX_LABEL_VALUES`].
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// assert!(PrometheusPublisher::builder(0).max_label_values(50).is_ok());
    /// assert!(PrometheusPublisher::builder(0).max_label_values(0).is_err());
    /// ```
    ///
    /// # Errors
    /// [`PrometheusError::InvalidLabelCap`] for 0 or more than 16,777,216.
    pub fn max_label_values(mut self, max: usize) -> Result<Self, PrometheusError> {
        if max == 0 || max > series::MAX_LABEL_VALUES_LIMIT {
            return Err(PrometheusError::InvalidLabelCap { max });
        }
        self.config.max_label_values = max;
        Ok(self)
    }

    /// Starts serving and returns the publisher.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// let publisher = PrometheusPublisher::builder(0).build()?;
    /// # drop(publisher);
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    ///
    /// # Errors
    /// [`PrometheusError::Bind`] naming the address if it cannot be listened on;
    /// [`PrometheusError::NameCollision`] if the registry has a metric named like one of the
    /// publisher's; [`PrometheusError::ServerSpawn`] if the server thread cannot start.
    pub fn build(self) -> Result<PrometheusPublisher, PrometheusError> {
        let addr = self.addr;
        let mut publisher = self.build_without_server()?;
        let shared = Arc::clone(&publisher.shared);
        let server = Server::start(addr, Arc::new(move |format| shared.render(format)))?;
        publisher.addr = Some(server.local_addr());
        publisher.server = Mutex::new(Some(server));
        Ok(publisher)
    }

    /// The publisher without an HTTP server: it aggregates as usual and
    /// [`render`](PrometheusPublisher::render)s on demand, for serving from a server you
    /// already run.
    ///
    /// ```
    /// use pipeline_telemetry::prometheus::PrometheusPublisher;
    /// let publisher = PrometheusPublisher::builder(0).build_without_server()?;
    /// assert!(publisher.local_addr().is_none());
    /// # Ok::<(), pipeline_telemetry::prometheus::PrometheusError>(())
    /// ```
    ///
    /// # Errors
    /// [`PrometheusError::NameCollision`] as for [`build`](Self::build).
    pub fn build_without_server(self) -> Result<PrometheusPublisher, PrometheusError> {
        let series = PipelineSeries::new(self.config);
        if let Some(registry) = &self.registry {
            check_collisions(&series, registry)?;
        }
        Ok(PrometheusPublisher {
            shared: Arc::new(Shared {
                series: Arc::new(series),
                registry: self.registry,
                last_len: AtomicUsize::new(0),
            }),
            server: Mutex::new(None),
            addr: None,
        })
    }
}

/// Refuses a registry that exposes a name one of our families uses (a family or sample name,
/// in either format), which would make the exposition invalid.
fn check_collisions(series: &PipelineSeries, registry: &Registry) -> Result<(), PrometheusError> {
    let mut ours = BTreeSet::new();
    for (name, kind) in series.family_names() {
        let suffixes: &[&str] = match kind {
            Kind::Counter => &["", "_total", "_created"],
            Kind::Gauge => &[""],
            Kind::Histogram => &["", "_bucket", "_sum", "_count", "_created"],
        };
        for suffix in suffixes {
            ours.insert(format!("{name}{suffix}"));
        }
    }
    let mut text = String::new();
    // A registry that cannot encode now is not refused here; scrapes skip it if it still fails.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut text, registry);
    for line in text.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(name) = name.filter(|n| ours.contains(*n)) {
            return Err(PrometheusError::NameCollision {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Path {
        path: String,
    }

    fn user_registry() -> (Registry, Family<Path, Counter>) {
        let mut registry = Registry::default();
        let requests = Family::<Path, Counter>::default();
        registry.register("http_requests", "Requests served", requests.clone());
        (registry, requests)
    }

    #[test]
    fn the_user_registry_is_served_in_both_formats_with_escaped_values() {
        let (registry, requests) = user_registry();
        requests
            .get_or_create(&Path {
                path: "/a\"b\\c\nd".into(),
            })
            .inc();
        let publisher = PrometheusPublisher::builder(0)
            .registry(registry)
            .build_without_server()
            .unwrap();
        let classic = publisher.render(ExpositionFormat::Prometheus);
        assert!(classic.contains("# TYPE http_requests_total counter\n"));
        assert!(classic.contains("http_requests_total{path=\"/a\\\"b\\\\c\\nd\"} 1\n"));
        assert!(!classic.contains("# EOF"));

        let om = publisher.render(ExpositionFormat::OpenMetrics);
        assert!(om.contains("# TYPE http_requests counter\n"));
        assert!(om.contains("http_requests_total{path=\"/a\\\"b\\\\c\\nd\"} 1\n"));
        assert!(om.ends_with("# EOF\n"));
        assert_eq!(om.matches("# EOF").count(), 1);
    }

    #[test]
    fn a_registry_metric_named_like_ours_is_refused() {
        for (name, clash) in [
            ("event_retries", "event_retries"),
            ("events_in_flight", "events_in_flight"),
            (
                "event_duration_seconds_count",
                "event_duration_seconds_count",
            ),
        ] {
            let mut registry = Registry::default();
            registry.register(name, "mine", Gauge::<i64>::default());
            match PrometheusPublisher::builder(0)
                .registry(registry)
                .build_without_server()
            {
                Err(PrometheusError::NameCollision { name }) => assert_eq!(name, clash),
                other => panic!("{name}: expected a collision, got {other:?}"),
            }
        }
        // With a prefix, the same names no longer clash.
        let mut registry = Registry::default();
        registry.register("event_retries", "mine", Gauge::<i64>::default());
        assert!(PrometheusPublisher::builder(0)
            .prefix("etl")
            .unwrap()
            .registry(registry)
            .build_without_server()
            .is_ok());
    }

    #[test]
    fn prefixes_are_checked_and_joined_with_one_underscore() {
        for bad in ["9x", "a-b", "é", "a b"] {
            assert!(
                PrometheusPublisher::builder(0).prefix(bad).is_err(),
                "{bad}"
            );
        }
        for (given, name) in [
            ("etl", "etl_events_in_flight"),
            ("etl_", "etl_events_in_flight"),
            ("", "events_in_flight"),
        ] {
            let p = PrometheusPublisher::builder(0)
                .prefix(given)
                .unwrap()
                .build_without_server()
                .unwrap();
            assert!(p
                .render(ExpositionFormat::Prometheus)
                .contains(&format!("\n{name} 0\n")));
        }
    }

    #[test]
    fn errors_name_the_value_and_the_fix() {
        let e = PrometheusPublisher::builder(0)
            .buckets(&[2.0, 1.0])
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("[2.0, 1.0]") && text.contains("strictly increasing"),
            "{text}"
        );
        let e = PrometheusPublisher::builder(0)
            .max_label_values(0)
            .unwrap_err();
        assert!(e.to_string().contains("between 1 and"));
    }
}
