//! [`GrafanaCloudPublisher`]: the pipeline's metrics pushed to Grafana Cloud with Prometheus
//! remote write 1.0.
//!
//! Grafana Cloud Metrics ingests Prometheus remote write: a protobuf `WriteRequest`,
//! snappy-compressed, posted with HTTP basic auth to the stack's remote-write URL. The
//! publisher aggregates finished events and network operations into the same series as the
//! Prometheus publisher (`pipeline_telemetry::prometheus`: same names, labels and buckets,
//! from the same series model), adds `job` and `instance` labels, and pushes every series every
//! [push interval](GrafanaCloudBuilder::push_interval) (15 s unless configured), on
//! [`flush`](MetricsPublisher::flush) and at shutdown. One dashboard
//! (`dashboards/grafana-pipeline-telemetry.json`) therefore serves a scraped and a pushed
//! pipeline alike.
//!
//! | series | kind | labels (besides `job`, `instance`) |
//! | --- | --- | --- |
//! | `event_duration_seconds_bucket` / `_sum` / `_count` | histogram | `event_name`, `status` (and `le`) |
//! | `event_retries_total` | counter | `event_name` |
//! | `network_bytes_total` | counter | `operation`, `direction` (`sent`, `received`) |
//! | `network_latency_seconds_bucket` / `_sum` / `_count` | histogram | `operation` (and `le`) |
//! | `network_operations_total` | counter | `operation`, `status` |
//! | `events_in_flight`, `network_operations_in_flight` | gauge | |
//! | `telemetry_records_delivered_total`, `telemetry_records_dropped_total`, `telemetry_publish_errors_total` | counter | `publisher` |
//! | `telemetry_publisher_queued_records` | gauge | `publisher` |
//! | `telemetry_label_values_folded_total` | counter | `label` |
//!
//! # Delivery
//! Pushes are sent oldest first from a thread of the publisher's own, so samples reach Grafana
//! Cloud in time order and the pipeline never waits for the network. As the remote-write
//! specification asks, a 5xx or 429 answer (or no answer) is retried with exponential backoff
//! and full jitter, waiting at least what a `Retry-After` header asks; any other 4xx is not
//! retried but counted in [`GrafanaStats::refused`] and logged with its body cut to 1 KB.
//! A push that failed [`max_attempts`](GrafanaCloudBuilder::max_attempts) times or grew older
//! than [`max_push_age`](GrafanaCloudBuilder::max_push_age) is dropped and counted (Grafana
//! Cloud also answers 429 to an account over its active-series limit, which no retry cures).
//! While Grafana Cloud is away, pushes wait in a bounded backlog, the oldest dropped and
//! counted first: the newest push carries the cumulative totals, so nothing but resolution is
//! lost.
//!
//! The API key is held in a [`Secret`]: it never appears in `Debug` output, logs or errors,
//! and the `Authorization` header is marked sensitive.
//!
//! ```no_run
//! use std::time::Duration;
//! use pipeline_telemetry::Telemetry;
//! use pipeline_telemetry::grafana::GrafanaCloudPublisher;
//!
//! let key = std::env::var("GRAFANA_CLOUD_API_KEY")?;
//! let grafana = GrafanaCloudPublisher::builder(
//!     key,
//!     "123456", // the stack's Prometheus "Username / Instance ID"
//!     "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push",
//! )
//! .job("transcoder")?
//! .build()?;
//! let stats = grafana.stats_handle();
//!
//! let telemetry = Telemetry::new();
//! telemetry.add_publisher(Box::new(grafana))?;
//! telemetry.events.start_event("transcode", "job-1", None)?;
//! telemetry.events.end_event("job-1", None)?;
//! telemetry.flush(Duration::from_secs(10))?; // pushes now
//! assert_eq!(stats.stats().sent, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod remote_write;
mod retry;
mod service;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, SendTimeoutError, Sender};
use serde::Serialize;

pub use config::{
    Secret, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_JOB, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BACKLOG_BYTES, DEFAULT_MAX_BACKLOG_PUSHES, DEFAULT_MAX_PUSH_AGE,
    DEFAULT_PUSH_INTERVAL, DEFAULT_REQUEST_TIMEOUT, MIN_PUSH_INTERVAL,
};
pub use error::GrafanaError;

use crate::publish::{InPlace, MetricsPublisher, PipelineHealth, PublishError};
use crate::record::{EventMetrics, EventRef, NetworkMetrics, NetworkRef};
use crate::series::{self, is_metric_name, PipelineSeries, SeriesConfig};
use config::Settings;
use remote_write::Encoder;
use service::{Command, Failure, Service, Shared};

/// How long dropping a publisher that was not shut down waits for its last push.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// The publisher's name in logs and in the `publisher` label of the health series.
const NAME: &str = "grafana-cloud";

/// Pushes the pipeline's metrics to Grafana Cloud (or any Prometheus remote-write receiver:
/// Prometheus with `--web.enable-remote-write-receiver`, Mimir, Cortex, Thanos Receive,
/// VictoriaMetrics).
///
/// Attach it to a [`Telemetry`](crate::Telemetry) or logger; keep a
/// [`stats_handle`](Self::stats_handle) to read its [figures](GrafanaStats) afterwards. See
/// the [module documentation](self) for the series and the delivery rules. Shutting the
/// pipeline down (or dropping the publisher) pushes a last time and stops the push thread.
///
/// ```no_run
/// use std::time::Instant;
/// use std::time::Duration;
/// use pipeline_telemetry::{MetricsPublisher, EventMetrics, Status};
/// use pipeline_telemetry::grafana::GrafanaCloudPublisher;
///
/// let publisher = GrafanaCloudPublisher::new(
///     std::env::var("GRAFANA_CLOUD_API_KEY")?,
///     "123456",
///     "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push",
/// )?;
/// let start = std::time::SystemTime::now();
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
/// publisher.flush(Instant::now() + Duration::from_secs(10))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GrafanaCloudPublisher {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    endpoint: String,
    user: String,
    job: String,
    instance: String,
    push_interval: Duration,
    /// For [`write_request_body`](Self::write_request_body); the push thread has its own.
    encoder: Mutex<Option<Encoder>>,
}

impl std::fmt::Debug for GrafanaCloudPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrafanaCloudPublisher")
            .field("endpoint", &self.endpoint)
            .field("user", &self.user)
            .field("api_key", &"***")
            .field("job", &self.job)
            .field("instance", &self.instance)
            .field("push_interval", &self.push_interval)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl GrafanaCloudPublisher {
    /// A publisher pushing to `endpoint` as user `org_slug` with `api_key`, with every
    /// default of [`GrafanaCloudBuilder`].
    ///
    /// `endpoint` is the stack's remote-write URL, such as
    /// `https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push`; `org_slug`
    /// is the basic-auth user name Grafana Cloud shows with it (the stack's Prometheus
    /// instance ID, a number); `api_key` is an access policy token with the `metrics:write`
    /// scope. Grafana Cloud shows the URL and user on the stack's Prometheus details page
    /// ("Send Metrics") in the Grafana Cloud portal. Nothing is sent until the first push.
    ///
    /// ```
    /// use pipeline_telemetry::grafana::{GrafanaCloudPublisher, GrafanaError};
    ///
    /// let err = GrafanaCloudPublisher::new("glc_key", "123456", "grafana.net").unwrap_err();
    /// assert!(matches!(err, GrafanaError::InvalidEndpoint { .. }));
    /// assert!(err.to_string().contains("Send Metrics"));
    /// assert!(!err.to_string().contains("glc_key"));
    /// ```
    ///
    /// # Errors
    /// See [`GrafanaCloudBuilder::build`].
    pub fn new(
        api_key: impl Into<Secret>,
        org_slug: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> Result<Self, GrafanaError> {
        Self::builder(api_key, org_slug, endpoint).build()
    }

    /// A builder for a publisher pushing to `endpoint` as `org_slug` with `api_key` (see
    /// [`new`](Self::new)), to set the push interval, labels, retries and bounds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    ///
    /// let builder = GrafanaCloudPublisher::builder(
    ///     "glc_key",
    ///     "123456",
    ///     "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push",
    /// )
    /// .push_interval(Duration::from_secs(30))?
    /// .job("etl")?
    /// .instance("worker-3")?;
    /// assert!(!format!("{builder:?}").contains("glc_key"));
    /// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
    /// ```
    pub fn builder(
        api_key: impl Into<Secret>,
        org_slug: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> GrafanaCloudBuilder {
        GrafanaCloudBuilder::new(api_key, org_slug, endpoint)
    }

    /// The publisher's figures now.
    ///
    /// ```
    /// # use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    /// # // A closed local port: the last push, at drop, is refused at once.
    /// # let publisher = GrafanaCloudPublisher::builder("k", "1", "http://127.0.0.1:9/api/v1/write")
    /// #     .max_attempts(1)?
    /// #     .build()?;
    /// let stats = publisher.stats();
    /// println!("{} pushes sent, {} refused, {} dropped", stats.sent, stats.refused, stats.dropped);
    /// assert_eq!(stats.pushes, 0); // the first push comes one push interval after start
    /// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
    /// ```
    pub fn stats(&self) -> GrafanaStats {
        self.shared.stats()
    }

    /// A cheap, cloneable view of the figures that stays valid after the publisher is moved
    /// into a pipeline or shut down.
    ///
    /// ```no_run
    /// use pipeline_telemetry::Telemetry;
    /// use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    ///
    /// let publisher = GrafanaCloudPublisher::new(
    ///     std::env::var("GRAFANA_CLOUD_API_KEY")?,
    ///     "123456",
    ///     "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push",
    /// )?;
    /// let stats = publisher.stats_handle();
    /// Telemetry::new().add_publisher(Box::new(publisher))?;
    /// assert_eq!(stats.stats().refused, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The remote-write URL pushed to.
    ///
    /// ```
    /// # use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    /// let url = "http://127.0.0.1:9/api/v1/write"; // a closed port: nothing is stored
    /// let publisher = GrafanaCloudPublisher::builder("glc_key", "123456", url)
    ///     .max_attempts(1)?
    ///     .build()?;
    /// assert_eq!(publisher.endpoint(), url);
    /// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `job` and `instance` labels every series carries.
    ///
    /// ```
    /// # use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    /// let url = "http://127.0.0.1:9/api/v1/write"; // a closed port: nothing is stored
    /// let publisher = GrafanaCloudPublisher::builder("glc_key", "123456", url)
    ///     .instance("worker-3")?
    ///     .max_attempts(1)?
    ///     .build()?;
    /// assert_eq!(publisher.labels(), ("pipeline-telemetry", "worker-3"));
    /// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
    /// ```
    pub fn labels(&self) -> (&str, &str) {
        (&self.job, &self.instance)
    }

    /// The HTTP body a push would send now: the snappy-compressed remote-write
    /// `WriteRequest` of every series, stamped with the current time (without the families'
    /// metadata, which goes along once a minute). Nothing is sent; for inspection, tests and
    /// benchmarks.
    ///
    /// ```
    /// # use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    /// # // A closed local port: the last push, at drop, is refused at once.
    /// # let publisher = GrafanaCloudPublisher::builder("k", "1", "http://127.0.0.1:9/api/v1/write")
    /// #     .max_attempts(1)?
    /// #     .build()?;
    /// let body = publisher.write_request_body();
    /// println!("a push is {} bytes on the wire", body.len());
    /// let protobuf = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
    /// assert!(protobuf.len() > body.len());
    /// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
    /// ```
    pub fn write_request_body(&self) -> Vec<u8> {
        let families = self.shared.series.snapshot_attached();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut encoder = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
        let encoder = encoder.get_or_insert_with(|| Encoder::new(&self.job, &self.instance));
        encoder
            .encode(&families, timestamp, false)
            .map(|e| e.body)
            .unwrap_or_default()
    }

    fn failure(&self, failure: Failure) -> PublishError {
        match failure {
            Failure::Refused(reason) => {
                PublishError::backend(NAME, format!("Grafana Cloud refused the push: {reason}"))
            }
            Failure::Dropped(reason) => PublishError::backend(
                NAME,
                format!("the push was dropped: {reason}; see GrafanaStats::last_error"),
            ),
        }
    }

    fn deadline_exceeded(&self) -> PublishError {
        PublishError::DeadlineExceeded {
            publisher: NAME.to_owned(),
            queued: self.shared.stats().backlog_pushes as usize,
        }
    }

    fn closed(&self) -> PublishError {
        PublishError::Closed {
            publisher: NAME.to_owned(),
        }
    }

    /// Sends `command` and waits for its answer until `deadline`.
    fn request(
        &self,
        deadline: Instant,
        command: impl FnOnce(service::Ack) -> Command,
    ) -> Result<(), PublishError> {
        let (ack, done) = crossbeam_channel::bounded(1);
        match self.commands.send_deadline(command(ack), deadline) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => return Err(self.deadline_exceeded()),
            Err(SendTimeoutError::Disconnected(_)) => return Err(self.closed()),
        }
        match done.recv_deadline(deadline) {
            Ok(result) => result.map_err(|f| self.failure(f)),
            Err(RecvTimeoutError::Timeout) => Err(self.deadline_exceeded()),
            Err(RecvTimeoutError::Disconnected) => Err(self.closed()),
        }
    }
}

impl MetricsPublisher for GrafanaCloudPublisher {
    fn name(&self) -> &str {
        NAME
    }

    /// Keeps the pipeline's health handle, read at each push for the in-flight and
    /// `telemetry_*` series. Attached to several pipelines, the latest one is read.
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
        Some(InPlace::new(Arc::clone(&self.shared.series)).flushing())
    }

    /// Pushes a snapshot now and waits until it is stored, refused or dropped, or until
    /// `deadline`. Pushes still in the backlog from before go first.
    ///
    /// # Errors
    /// [`PublishError::Backend`] if Grafana Cloud refused the push (such as 401 for a wrong
    /// API key) or it was dropped after its retries; [`PublishError::DeadlineExceeded`] (with
    /// the pushes still in the backlog as `queued`) if it was not settled by `deadline`;
    /// [`PublishError::Closed`] after shutdown.
    fn flush(&self, deadline: Instant) -> Result<(), PublishError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed());
        }
        self.request(deadline, Command::Flush)
    }

    /// Pushes a last snapshot, delivers what the backlog holds until shortly before `deadline`
    /// (the rest is dropped and counted in [`GrafanaStats::dropped_shutdown`]) and stops the
    /// push thread. The thread stops trying a tenth of the time left (at most 100 ms) early, so
    /// that this call returns its outcome, with final figures, rather than a timeout.
    fn shutdown(&self, deadline: Instant) -> Result<(), PublishError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.request(deadline, |ack| Command::Shutdown(deadline, ack));
        if result.is_ok() || matches!(result, Err(PublishError::Backend { .. })) {
            // The thread answered and is returning.
            if let Some(handle) = self.thread.lock().ok().and_then(|mut h| h.take()) {
                let _ = handle.join();
            }
        }
        result
    }
}

impl Drop for GrafanaCloudPublisher {
    fn drop(&mut self) {
        let _ = self.shutdown(Instant::now() + DROP_TIMEOUT);
    }
}

/// The publisher's figures at one moment.
///
/// Every push (one snapshot of every series) ends in exactly one of `sent`, `refused` or
/// `dropped`, or is still in the backlog: `pushes = sent + refused + dropped +
/// backlog_pushes`.
///
/// ```
/// let stats = pipeline_telemetry::grafana::GrafanaStats::default();
/// assert_eq!(stats.pushes, stats.sent + stats.refused + stats.dropped + stats.backlog_pushes);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GrafanaStats {
    /// Snapshots taken (one per push interval, flush and shutdown).
    pub pushes: u64,
    /// Pushes the receiver stored (answered 2xx).
    pub sent: u64,
    /// Samples in the pushes sent.
    pub samples_sent: u64,
    /// Pushes refused for good: a 4xx other than 429 (or a redirect), not retried.
    pub refused: u64,
    /// Pushes given up: the sum of the four `dropped_*` figures.
    pub dropped: u64,
    /// Dropped, oldest first, because the backlog was full.
    pub dropped_backlog_full: u64,
    /// Dropped after `max_attempts` failed requests.
    pub dropped_retry_limit: u64,
    /// Dropped because they grew older than `max_push_age` while being retried.
    pub dropped_too_old: u64,
    /// Dropped because shutdown's deadline passed first.
    pub dropped_shutdown: u64,
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// Requests that were retries of a push.
    pub retried: u64,
    /// Requests that got no answer, a 5xx or a 429.
    pub failed_requests: u64,
    /// Of `failed_requests`, the 429 answers (rate limits, or the account's active-series
    /// limit).
    pub throttled: u64,
    /// Request body bytes sent (compressed), retries included.
    pub bytes_sent: u64,
    /// Pushes waiting to be sent or retried.
    pub backlog_pushes: u64,
    /// Compressed bytes of the pushes waiting.
    pub backlog_bytes: u64,
    /// The last refusal: status and the body (cut to 1 KB).
    pub last_refusal: Option<String>,
    /// The last retryable failure: no answer, 5xx or 429, with the body (cut to 1 KB).
    pub last_error: Option<String>,
}

/// A cheap, cloneable view of one publisher's [figures](GrafanaStats), valid after the
/// publisher is moved into a pipeline or shut down. Made by
/// [`GrafanaCloudPublisher::stats_handle`].
///
/// ```
/// # use pipeline_telemetry::grafana::GrafanaCloudPublisher;
/// # let publisher = GrafanaCloudPublisher::builder("k", "1", "http://127.0.0.1:9/api/v1/write")
/// #     .max_attempts(1)?
/// #     .build()?;
/// let handle = publisher.stats_handle();
/// std::thread::spawn(move || println!("{:?}", handle.stats())).join().unwrap();
/// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
/// ```
#[derive(Debug, Clone)]
pub struct StatsHandle {
    shared: Arc<Shared>,
}

impl StatsHandle {
    /// The figures now.
    ///
    /// ```
    /// # use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    /// # let publisher = GrafanaCloudPublisher::builder("k", "1", "http://127.0.0.1:9/api/v1/write")
    /// #     .max_attempts(1)?
    /// #     .build()?;
    /// assert_eq!(publisher.stats_handle().stats().dropped, 0);
    /// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
    /// ```
    pub fn stats(&self) -> GrafanaStats {
        self.shared.stats()
    }
}

/// Configures a [`GrafanaCloudPublisher`]. Made by [`GrafanaCloudPublisher::builder`].
///
/// Setters that can refuse a value return `Result` at once; the endpoint and credentials are
/// checked by [`build`](Self::build). Defaults: push interval [`DEFAULT_PUSH_INTERVAL`]
/// (15 s), job [`DEFAULT_JOB`], instance `HOSTNAME:PID`, no prefix, the buckets and label cap
/// of the Prometheus publisher, request timeout [`DEFAULT_REQUEST_TIMEOUT`], backoff
/// [`DEFAULT_BACKOFF_INITIAL`] to [`DEFAULT_BACKOFF_MAX`], [`DEFAULT_MAX_ATTEMPTS`] attempts,
/// [`DEFAULT_MAX_PUSH_AGE`], backlog of [`DEFAULT_MAX_BACKLOG_PUSHES`] pushes and
/// [`DEFAULT_MAX_BACKLOG_BYTES`]. `Debug` output never shows the API key.
///
/// ```
/// use std::time::Duration;
/// use pipeline_telemetry::grafana::GrafanaCloudPublisher;
///
/// let builder = GrafanaCloudPublisher::builder("glc_key", "123456", "http://127.0.0.1:9090/api/v1/write")
///     .push_interval(Duration::from_secs(60))?
///     .backoff(Duration::from_millis(100), Duration::from_secs(5))?
///     .max_attempts(5)?
///     .max_push_age(Duration::from_secs(120))?
///     .max_backlog_pushes(20)?;
/// # drop(builder);
/// # Ok::<(), pipeline_telemetry::grafana::GrafanaError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GrafanaCloudBuilder {
    api_key: Secret,
    user: String,
    endpoint: String,
    job: String,
    instance: Option<String>,
    series: SeriesConfig,
    push_interval: Duration,
    request_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_attempts: u32,
    max_push_age: Duration,
    max_backlog_pushes: usize,
    max_backlog_bytes: usize,
}

fn setting(setting: &'static str, value: impl std::fmt::Debug, reason: &str) -> GrafanaError {
    GrafanaError::InvalidSetting {
        setting,
        value: format!("{value:?}"),
        reason: reason.to_owned(),
    }
}

fn label(setting: &'static str, value: &str) -> Result<String, GrafanaError> {
    if value.is_empty() {
        return Err(GrafanaError::InvalidLabel {
            setting,
            value: value.to_owned(),
            reason: "a label value may not be empty (Prometheus drops empty labels)".into(),
        });
    }
    Ok(value.to_owned())
}

impl GrafanaCloudBuilder {
    /// A builder with every default; see [`GrafanaCloudPublisher::new`] for the arguments.
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let builder = GrafanaCloudBuilder::new("glc_key", "123456", "http://127.0.0.1:9090/api/v1/write");
    /// # drop(builder);
    /// ```
    pub fn new(
        api_key: impl Into<Secret>,
        org_slug: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> Self {
        GrafanaCloudBuilder {
            api_key: api_key.into(),
            user: org_slug.into(),
            endpoint: endpoint.into(),
            job: DEFAULT_JOB.to_owned(),
            instance: None,
            series: SeriesConfig::default(),
            push_interval: DEFAULT_PUSH_INTERVAL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_push_age: DEFAULT_MAX_PUSH_AGE,
            max_backlog_pushes: DEFAULT_MAX_BACKLOG_PUSHES,
            max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
        }
    }

    /// How often every series is pushed. Default: [`DEFAULT_PUSH_INTERVAL`] (15 s). Grafana
    /// Cloud bills by samples per minute: each push sends one sample per series.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().push_interval(Duration::from_secs(60)).is_ok());
    /// assert!(b.push_interval(Duration::ZERO).is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] below [`MIN_PUSH_INTERVAL`] (10 ms).
    pub fn push_interval(mut self, interval: Duration) -> Result<Self, GrafanaError> {
        if interval < MIN_PUSH_INTERVAL {
            return Err(setting(
                "push_interval",
                interval,
                "give at least 10 ms (Grafana Cloud's default is 15 s)",
            ));
        }
        self.push_interval = interval;
        Ok(self)
    }

    /// The `job` label of every series. Default: [`DEFAULT_JOB`] (`pipeline-telemetry`).
    /// Give the scrape job's name to see a pushed and a scraped pipeline under one job.
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().job("etl").is_ok());
    /// assert!(b.job("").is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidLabel`] for an empty value.
    pub fn job(mut self, job: impl AsRef<str>) -> Result<Self, GrafanaError> {
        self.job = label("job", job.as_ref())?;
        Ok(self)
    }

    /// The `instance` label of every series. Default: `HOSTNAME:PID`, so that two processes
    /// never write the same series (Grafana Cloud would refuse their samples as out of
    /// order). A fixed name keeps the series across restarts; then give each concurrent
    /// process its own.
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.instance("worker-3").is_ok());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidLabel`] for an empty value.
    pub fn instance(mut self, instance: impl AsRef<str>) -> Result<Self, GrafanaError> {
        self.instance = Some(label("instance", instance.as_ref())?);
        Ok(self)
    }

    /// Puts `prefix` and `_` before every metric name, as
    /// `PrometheusBuilder::prefix` does.
    /// Default: none.
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().prefix("etl").is_ok());
    /// assert!(b.prefix("9lives").is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidLabel`] unless `prefix` is empty or a valid metric name
    /// (letters, digits, `_`, `:`, not starting with a digit).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, GrafanaError> {
        if !prefix.is_empty() && !is_metric_name(prefix) {
            return Err(GrafanaError::InvalidLabel {
                setting: "prefix",
                value: prefix.to_owned(),
                reason: "use letters, digits, '_' and ':' only, not starting with a digit \
                         (such as \"pipeline\")"
                    .into(),
            });
        }
        self.series.prefix = if prefix.is_empty() || prefix.ends_with('_') {
            prefix.to_owned()
        } else {
            format!("{prefix}_")
        };
        Ok(self)
    }

    /// The upper bounds of the histogram buckets, in seconds (`+Inf` is added). Default: the
    /// Prometheus publisher's, 5 ms to 10 s. Fewer buckets mean fewer series to pay for.
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().buckets(&[0.01, 0.1, 1.0, 10.0]).is_ok());
    /// assert!(b.buckets(&[1.0, 0.5]).is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] unless there is at least one bound and every bound is
    /// finite, not negative, and larger than the one before.
    pub fn buckets(mut self, bounds: &[f64]) -> Result<Self, GrafanaError> {
        series::check_buckets(bounds).map_err(|reason| setting("buckets", bounds, reason))?;
        self.series.buckets = Arc::from(bounds);
        Ok(self)
    }

    /// How many distinct values each free-form label (`event_name`, `operation`) may take;
    /// past it, values are folded into `__other__` and counted. Default: 1,000 (each value is
    /// up to 19 series per status, and Grafana Cloud bills by active series).
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().max_label_values(100).is_ok());
    /// assert!(b.max_label_values(0).is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] for 0 or more than 16,777,216.
    pub fn max_label_values(mut self, max: usize) -> Result<Self, GrafanaError> {
        if max == 0 || max > series::MAX_LABEL_VALUES_LIMIT {
            return Err(setting(
                "max_label_values",
                max,
                "give between 1 and 16777216",
            ));
        }
        self.series.max_label_values = max;
        Ok(self)
    }

    /// How long one request may take, connecting included. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`] (10 s). A request that times out is retried.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.request_timeout(Duration::from_secs(5)).is_ok());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] for zero or more than an hour.
    pub fn request_timeout(mut self, timeout: Duration) -> Result<Self, GrafanaError> {
        if timeout.is_zero() || timeout > Duration::from_secs(3600) {
            return Err(setting(
                "request_timeout",
                timeout,
                "give more than zero and at most an hour",
            ));
        }
        self.request_timeout = timeout;
        Ok(self)
    }

    /// The backoff between attempts: retry `n` waits a random time up to
    /// `min(max, initial * 2^n)` (full jitter), or longer if the server's `Retry-After` asks.
    /// Default: [`DEFAULT_BACKOFF_INITIAL`] (250 ms) to [`DEFAULT_BACKOFF_MAX`] (30 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().backoff(Duration::from_millis(50), Duration::from_secs(1)).is_ok());
    /// assert!(b.backoff(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] if `initial` is zero or `max` is below `initial`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Result<Self, GrafanaError> {
        if initial.is_zero() || max < initial {
            return Err(setting(
                "backoff",
                (initial, max),
                "initial must be more than zero and max at least initial",
            ));
        }
        self.backoff_initial = initial;
        self.backoff_max = max;
        Ok(self)
    }

    /// How many requests one push may take before it is dropped and counted. Default:
    /// [`DEFAULT_MAX_ATTEMPTS`] (10).
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().max_attempts(3).is_ok());
    /// assert!(b.max_attempts(0).is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] for 0.
    pub fn max_attempts(mut self, attempts: u32) -> Result<Self, GrafanaError> {
        if attempts == 0 {
            return Err(setting("max_attempts", attempts, "give at least 1"));
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// How old a push may grow while it waits or is retried before it is dropped and
    /// counted. Default: [`DEFAULT_MAX_PUSH_AGE`] (5 minutes).
    ///
    /// ```
    /// use std::time::Duration;
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.max_push_age(Duration::from_secs(60)).is_ok());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] for zero.
    pub fn max_push_age(mut self, age: Duration) -> Result<Self, GrafanaError> {
        if age.is_zero() {
            return Err(setting("max_push_age", age, "give more than zero"));
        }
        self.max_push_age = age;
        Ok(self)
    }

    /// How many pushes the backlog holds while the receiver is slow or away; past it the
    /// oldest is dropped and counted. Default: [`DEFAULT_MAX_BACKLOG_PUSHES`] (100).
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().max_backlog_pushes(10).is_ok());
    /// assert!(b.max_backlog_pushes(0).is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] for 0.
    pub fn max_backlog_pushes(mut self, pushes: usize) -> Result<Self, GrafanaError> {
        if pushes == 0 {
            return Err(setting("max_backlog_pushes", pushes, "give at least 1"));
        }
        self.max_backlog_pushes = pushes;
        Ok(self)
    }

    /// How many compressed bytes the backlog holds; past it the oldest push is dropped and
    /// counted (the newest is always kept). Default: [`DEFAULT_MAX_BACKLOG_BYTES`] (32 MiB).
    ///
    /// ```
    /// use pipeline_telemetry::grafana::GrafanaCloudBuilder;
    /// let b = GrafanaCloudBuilder::new("k", "1", "http://127.0.0.1:9090/api/v1/write");
    /// assert!(b.clone().max_backlog_bytes(1 << 20).is_ok());
    /// assert!(b.max_backlog_bytes(0).is_err());
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidSetting`] for 0.
    pub fn max_backlog_bytes(mut self, bytes: usize) -> Result<Self, GrafanaError> {
        if bytes == 0 {
            return Err(setting("max_backlog_bytes", bytes, "give at least 1"));
        }
        self.max_backlog_bytes = bytes;
        Ok(self)
    }

    /// Checks the endpoint and credentials and starts the push thread. Nothing is sent until
    /// the first push.
    ///
    /// ```no_run
    /// use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    /// let publisher = GrafanaCloudPublisher::builder(
    ///     std::env::var("GRAFANA_CLOUD_API_KEY")?,
    ///     "123456",
    ///     "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push",
    /// )
    /// .build()?;
    /// # drop(publisher);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`GrafanaError::InvalidEndpoint`] for a missing or malformed URL (not `http(s)`, no
    /// host or path, credentials in it, or a `grafana.net` address that is not the
    /// remote-write one), its message saying where Grafana Cloud shows the right one;
    /// [`GrafanaError::InvalidCredential`] for an empty user name or API key, or one with
    /// spaces, control or non-ASCII characters (or `:` in the user name);
    /// [`GrafanaError::WorkerSpawn`] if the push thread cannot start.
    pub fn build(self) -> Result<GrafanaCloudPublisher, GrafanaError> {
        let endpoint = config::parse_endpoint(&self.endpoint)?;
        config::check_user(&self.user)?;
        config::check_key(&self.api_key)?;
        if endpoint.plain_remote {
            tracing::warn!(
                endpoint = %endpoint.url,
                "grafana cloud: the API key will be sent over plain HTTP to a remote host; use https://"
            );
        }
        let authorization = config::basic_auth(&self.user, &self.api_key);
        let encoded = authorization
            .expose()
            .trim_start_matches("Basic ")
            .to_owned();
        let instance = self.instance.unwrap_or_else(config::default_instance);
        let settings = Settings {
            endpoint: endpoint.clone(),
            authorization: Arc::new(authorization),
            secrets: Arc::from(vec![Secret::new(encoded), self.api_key.clone()]),
            push_interval: self.push_interval,
            request_timeout: self.request_timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            max_attempts: self.max_attempts,
            max_push_age: self.max_push_age,
            max_backlog_pushes: self.max_backlog_pushes,
            max_backlog_bytes: self.max_backlog_bytes,
        };
        let shared = Arc::new(Shared::new(PipelineSeries::new(self.series)));
        let service = Service::new(settings, Arc::clone(&shared), &self.job, &instance);
        let (commands, receiver) = crossbeam_channel::bounded(16);
        let thread = std::thread::Builder::new()
            .name("telemetry-grafana-push".into())
            .spawn(move || service.run(receiver))
            .map_err(|e| GrafanaError::WorkerSpawn {
                reason: e.to_string(),
            })?;
        Ok(GrafanaCloudPublisher {
            shared,
            commands,
            thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
            endpoint: endpoint.url,
            user: self.user,
            job: self.job,
            instance,
            push_interval: self.push_interval,
            encoder: Mutex::new(None),
        })
    }
}
