//! The `demo` command: runs a simulated pipeline against a real loopback echo server and prints
//! the telemetry report.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "prometheus")]
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::Args;
use pipeline_telemetry::config::DEFAULT_RETENTION;
#[cfg(feature = "prometheus")]
use pipeline_telemetry::prometheus::PrometheusPublisher;
use pipeline_telemetry::report::Report;
use pipeline_telemetry::{Telemetry, TelemetryError};
use serde::Serialize;

use crate::echo::{self, EchoServer};
use crate::error::CliError;
use crate::plan::{self, CallKind, CallPlan, EventPlan};

/// Most events a run accepts: the default retention, so every event of a run stays available
/// to the report's queries (and a run ends within minutes).
const MAX_EVENTS: u64 = DEFAULT_RETENTION as u64;

/// Most worker threads a run accepts; the events mostly sleep, but thousands of threads would
/// only measure the scheduler.
const MAX_WORKERS: u64 = 256;

/// Options of `demo`, in groups so later features (publishers, keeping the process alive for
/// scrapes) can add their own flattened group without touching these.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// What to simulate.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// How to report it.
    #[command(flatten)]
    pub report: ReportArgs,
    /// Where to publish it.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Whether to ship it to Elasticsearch.
    #[cfg(feature = "elasticsearch")]
    #[command(flatten)]
    pub elasticsearch: crate::elasticsearch_args::ElasticsearchArgs,
    /// Whether to push it to Grafana Cloud.
    #[cfg(feature = "grafana")]
    #[command(flatten)]
    pub grafana: crate::grafana_args::GrafanaArgs,
}

/// Longest `--hold` accepted: a day.
#[cfg(feature = "prometheus")]
const MAX_HOLD_SECS: u64 = 86_400;

/// How long a flush or shutdown of the publishers may take at the end of a run.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishers the run's records go to.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Publishing")]
pub struct PublishArgs {
    /// Serve the metrics for Prometheus at http://ADDR:PORT/metrics, such as 127.0.0.1:9464
    /// (port 0 picks a free port; the address is printed on standard error)
    #[cfg(feature = "prometheus")]
    #[arg(long, value_name = "ADDR:PORT")]
    pub prometheus: Option<SocketAddr>,

    /// After the report, keep serving the final values for this many seconds so a scraper can
    /// read them
    #[cfg(feature = "prometheus")]
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        requires = "prometheus",
        value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_HOLD_SECS),
    )]
    pub hold: u64,
}

/// The simulated workload.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Workload")]
pub struct WorkloadArgs {
    /// How many events to run
    #[arg(
        long,
        value_name = "N",
        default_value_t = 200,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_EVENTS),
    )]
    pub events: u64,

    /// How many worker threads run them
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_WORKERS),
    )]
    pub workers: usize,

    /// Seed of the event plans: the same seed gives the same event names, failures, retries
    /// and network calls, however the workers interleave
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
}

/// What the report shows and how.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Report")]
pub struct ReportArgs {
    /// Network operations taking longer than this many milliseconds are listed as slow
    #[arg(
        long = "slow-ms",
        value_name = "MS",
        default_value_t = 100,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=3_600_000),
    )]
    pub slow_ms: u64,

    /// How many of the slowest events to list
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Print the report as one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

impl ReportArgs {
    fn slow_threshold(&self) -> Duration {
        Duration::from_millis(self.slow_ms)
    }
}

/// Runs the demo and writes its report to `out`.
///
/// # Errors
/// If the echo server or a worker cannot be started, a worker fails, or the report cannot be
/// written.
pub fn run(args: &DemoArgs, out: &mut impl Write) -> Result<(), CliError> {
    let telemetry = Telemetry::new();
    let publishers = Publishers::attach(&telemetry, args)?;
    let server =
        EchoServer::start().map_err(|e| CliError::io("start the echo server on 127.0.0.1", e))?;
    let targets = Targets {
        echo: server.addr(),
        closed: echo::closed_address()
            .map_err(|e| CliError::io("reserve a closed port on 127.0.0.1", e))?,
    };
    let pipeline = Pipeline {
        telemetry: &telemetry,
        targets,
        seed: args.workload.seed,
        events: args.workload.events,
        next_index: AtomicU64::new(0),
    };

    let started = Instant::now();
    pipeline.run_workers(args.workload.workers)?;
    let elapsed = started.elapsed();
    // Every call has been made; stop the server's threads before the report is gathered.
    drop(server);
    // The publishers have every record before the report (and any hold) begins. A backend
    // that is down costs counted drops, shown in the report, not the run.
    if let Err(error) = telemetry.flush(PUBLISH_TIMEOUT) {
        eprintln!("pipeline-telemetry: warning: {}", CliError::Publish(error));
    }

    let report = Report::collect(&telemetry, args.report.slow_threshold(), args.report.top);
    let summary = RunSummary {
        seed: args.workload.seed,
        events_requested: args.workload.events,
        workers: args.workload.workers,
        elapsed_seconds: elapsed.as_secs_f64(),
        echo_server: targets.echo.to_string(),
        report: &report,
    };
    if args.report.json {
        summary.write_json(out)?;
    } else {
        summary.write_text(out)?;
    }
    publishers.hold(out)?;
    if let Err(error) = telemetry.shutdown(PUBLISH_TIMEOUT) {
        eprintln!("pipeline-telemetry: warning: {}", CliError::Publish(error));
    }
    publishers.report_backends();
    Ok(())
}

/// The publishers attached to a run.
struct Publishers {
    #[cfg(feature = "prometheus")]
    prometheus: Option<(Arc<PrometheusPublisher>, Duration)>,
    #[cfg(feature = "elasticsearch")]
    elasticsearch: Option<pipeline_telemetry::elasticsearch::StatsHandle>,
    #[cfg(feature = "grafana")]
    grafana: Option<pipeline_telemetry::grafana::StatsHandle>,
}

impl Publishers {
    /// Starts the publishers asked for and attaches them to `telemetry`.
    #[cfg_attr(not(feature = "prometheus"), allow(unused_variables))]
    fn attach(telemetry: &Telemetry, demo: &DemoArgs) -> Result<Self, CliError> {
        let args = &demo.publish;
        #[cfg(feature = "elasticsearch")]
        let elasticsearch = match demo
            .elasticsearch
            .publisher()
            .map_err(CliError::Elasticsearch)?
        {
            Some(publisher) => {
                let stats = publisher.stats_handle();
                telemetry.add_publisher(Box::new(publisher))?;
                Some(stats)
            }
            None => None,
        };
        #[cfg(feature = "grafana")]
        let grafana = match demo.grafana.publisher().map_err(CliError::Grafana)? {
            Some(publisher) => {
                eprintln!(
                    "pipeline-telemetry: pushing metrics to {} every 15 s and at the end",
                    publisher.endpoint()
                );
                let stats = publisher.stats_handle();
                telemetry.add_publisher(Box::new(publisher))?;
                Some(stats)
            }
            None => None,
        };
        #[cfg(feature = "prometheus")]
        let prometheus = match args.prometheus {
            Some(addr) => {
                let publisher = PrometheusPublisher::builder(addr.port())
                    .addr(addr.ip())
                    .build()
                    .map_err(CliError::Prometheus)?;
                let publisher = Arc::new(publisher);
                telemetry.add_publisher(Box::new(Arc::clone(&publisher)))?;
                if let Some(bound) = publisher.local_addr() {
                    eprintln!(
                        "pipeline-telemetry: serving Prometheus metrics at http://{bound}/metrics"
                    );
                }
                Some((publisher, Duration::from_secs(args.hold)))
            }
            None => None,
        };
        Ok(Publishers {
            #[cfg(feature = "prometheus")]
            prometheus,
            #[cfg(feature = "elasticsearch")]
            elasticsearch,
            #[cfg(feature = "grafana")]
            grafana,
        })
    }

    /// Says on standard error what the push backends did with the records.
    fn report_backends(&self) {
        #[cfg(feature = "grafana")]
        if let Some(stats) = &self.grafana {
            let s = stats.stats();
            eprintln!(
                "pipeline-telemetry: Grafana Cloud: {} pushes stored, {} refused, {} dropped",
                s.sent, s.refused, s.dropped
            );
            if let Some(reason) = s.last_refusal.as_ref().or(s.last_error.as_ref()) {
                eprintln!("pipeline-telemetry: Grafana Cloud: last failure: {reason}");
            }
        }
        #[cfg(feature = "elasticsearch")]
        if let Some(stats) = &self.elasticsearch {
            let s = stats.stats();
            eprintln!(
                "pipeline-telemetry: Elasticsearch: {} documents stored, {} refused, {} dropped",
                s.sent, s.refused, s.dropped
            );
            if let Some(reason) = &s.last_refusal {
                eprintln!("pipeline-telemetry: Elasticsearch: last refusal: {reason}");
            }
        }
    }

    /// Keeps the scrape endpoint serving the final values for `--hold` seconds, once the
    /// report is out.
    #[cfg_attr(not(feature = "prometheus"), allow(unused_variables))]
    fn hold(&self, out: &mut impl Write) -> Result<(), CliError> {
        #[cfg(feature = "prometheus")]
        if let Some((publisher, hold)) = &self.prometheus {
            if !hold.is_zero() {
                out.flush().map_err(write_error)?;
                if let Some(bound) = publisher.local_addr() {
                    eprintln!(
                        "pipeline-telemetry: holding http://{bound}/metrics for {}s",
                        hold.as_secs()
                    );
                }
                thread::sleep(*hold);
            }
        }
        Ok(())
    }
}

/// Where the simulated network calls go.
#[derive(Debug, Clone, Copy)]
struct Targets {
    /// The demo's echo server.
    echo: SocketAddr,
    /// A port nothing listens on.
    closed: SocketAddr,
}

impl Targets {
    fn for_call(&self, kind: CallKind) -> SocketAddr {
        match kind {
            CallKind::Echo | CallKind::SlowEcho => self.echo,
            CallKind::Refused => self.closed,
        }
    }
}

/// The shared state of one run: workers take the next event index from `next_index` until
/// `events` have been handed out.
struct Pipeline<'a> {
    telemetry: &'a Telemetry,
    targets: Targets,
    seed: u64,
    events: u64,
    next_index: AtomicU64,
}

impl Pipeline<'_> {
    /// Runs every event on `workers` threads and waits for them.
    fn run_workers(&self, workers: usize) -> Result<(), CliError> {
        thread::scope(|scope| {
            let mut handles = Vec::with_capacity(workers);
            for worker in 0..workers {
                let handle = thread::Builder::new()
                    .name(format!("worker-{worker}"))
                    .spawn_scoped(scope, || self.work_until_done())
                    .map_err(|e| CliError::io(format!("start worker thread {worker}"), e))?;
                handles.push(handle);
            }
            // Join every worker before looking at results, so one failure does not leave the
            // others to be joined implicitly (where a panic would escape).
            let results: Vec<Result<(), CliError>> = handles
                .into_iter()
                .enumerate()
                .map(|(worker, handle)| {
                    handle
                        .join()
                        .unwrap_or(Err(CliError::WorkerPanicked { worker }))
                })
                .collect();
            results.into_iter().collect()
        })
    }

    /// One worker: runs events until none are left.
    fn work_until_done(&self) -> Result<(), CliError> {
        loop {
            // Only uniqueness of the indices matters, not ordering with other memory.
            let index = self.next_index.fetch_add(1, Ordering::Relaxed);
            if index >= self.events {
                return Ok(());
            }
            self.run_event(&plan::plan_event(self.seed, index))?;
        }
    }

    /// Runs one event as planned: its attempts, its network calls, then its outcome.
    ///
    /// A failed network call does not fail its event: the simulated steps treat their calls
    /// as best-effort lookups. Event failures come from the plan alone, so they are the same
    /// for a seed whatever the network does.
    fn run_event(&self, plan: &EventPlan) -> Result<(), TelemetryError> {
        let event = self.telemetry.events.track(plan.name, &plan.task_id)?;
        thread::sleep(plan.work_per_attempt);
        // Each retry stands for an attempt that hit a transient problem and was run again.
        for _ in 0..plan.retries {
            event.retry()?;
            thread::sleep(plan.work_per_attempt);
        }
        for (n, call) in plan.calls.iter().enumerate() {
            self.call(&format!("{}/net-{n}", plan.task_id), call)?;
        }
        match plan.failure {
            Some(error) => event.fail(error),
            None => event.complete(),
        }
    }

    /// Makes one real TCP call and records it as a network operation.
    fn call(&self, call_id: &str, call: &CallPlan) -> Result<(), TelemetryError> {
        let addr = self.targets.for_call(call.kind);
        let request =
            echo::request_line(call.kind == CallKind::SlowEcho, call_id, call.payload_bytes);
        let mut operation = self.telemetry.network.track(
            call_id,
            &addr.ip().to_string(),
            addr.port(),
            Some(call.kind.operation()),
        )?;
        let exchange = echo::exchange(addr, &request);
        operation.sent(exchange.bytes_sent);
        operation.received(exchange.bytes_received);
        match exchange.error {
            Some(error) => operation.fail(&error),
            None => operation.complete(),
        }
    }
}

/// The report with the run's settings. In JSON the report's own keys (`events`, `network`,
/// `retries`, `dropped`, ...) stay at the top level next to the settings.
#[derive(Debug, Serialize)]
struct RunSummary<'a> {
    seed: u64,
    events_requested: u64,
    workers: usize,
    elapsed_seconds: f64,
    echo_server: String,
    #[serde(flatten)]
    report: &'a Report,
}

impl RunSummary<'_> {
    fn write_json(&self, out: &mut impl Write) -> Result<(), CliError> {
        serde_json::to_writer_pretty(&mut *out, self).map_err(CliError::Json)?;
        writeln!(out).map_err(write_error)
    }

    fn write_text(&self, out: &mut impl Write) -> Result<(), CliError> {
        writeln!(
            out,
            "Demo: {} events on {} workers, seed {}, in {:.3}s (echo server {})\n",
            self.events_requested, self.workers, self.seed, self.elapsed_seconds, self.echo_server
        )
        .and_then(|()| write!(out, "{}", self.report))
        .map_err(write_error)
    }
}

fn write_error(error: std::io::Error) -> CliError {
    CliError::io("write the report to standard output", error)
}
