//! Answers over the records: counts, retry statistics, and the [`Report`] the command-line tool
//! prints.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::record::{EventMetrics, NetworkMetrics};
use crate::telemetry::Telemetry;

/// Retry counts up to which [`RetryStats::events_by_retry_count`] lists every integer, zeros
/// included; above it only counts that occurred are listed, so one runaway event cannot make
/// the map huge.
pub const DENSE_RETRY_BUCKETS: u32 = 1024;

/// Retry statistics, as the original reports them.
///
/// ```
/// use pipeline_telemetry::TelemetryLogger;
/// let logger = TelemetryLogger::new();
/// for (id, retries) in [("a", 0), ("b", 0), ("c", 2)] {
///     logger.start_event("e", id, None)?;
///     for _ in 0..retries { logger.record_retry(id)?; }
///     logger.end_event(id, None)?;
/// }
/// let stats = logger.retry_stats();
/// assert_eq!(stats.total_retries, 2);
/// assert_eq!(stats.events_with_retries, 1);
/// assert_eq!(
///     serde_json::to_string(&stats.events_by_retry_count).unwrap(),
///     r#"{"0":2,"1":0,"2":1}"#
/// );
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryStats {
    /// Retries over all events.
    pub total_retries: u64,
    /// Events retried at least once.
    pub events_with_retries: u64,
    /// Events per retry count: every count from 0 to the highest (up to
    /// [`DENSE_RETRY_BUCKETS`]), including counts no event had. Keys serialize as strings.
    pub events_by_retry_count: BTreeMap<u32, u64>,
}

impl RetryStats {
    pub(crate) fn from_histogram(total_retries: u64, histogram: &BTreeMap<u32, u64>) -> Self {
        let highest = histogram.keys().next_back().copied().unwrap_or(0);
        let mut events_by_retry_count: BTreeMap<u32, u64> = (0..=highest.min(DENSE_RETRY_BUCKETS))
            .map(|n| (n, 0))
            .collect();
        events_by_retry_count.extend(histogram.iter().map(|(k, v)| (*k, *v)));
        RetryStats {
            total_retries,
            events_with_retries: histogram.range(1..).map(|(_, v)| v).sum(),
            events_by_retry_count,
        }
    }
}

/// Exact counts of events, evicted ones included.
///
/// ```
/// let logger = pipeline_telemetry::TelemetryLogger::new();
/// logger.start_event("e", "t", None)?;
/// assert_eq!(logger.counts().in_flight, 1);
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Every event started.
    pub total: u64,
    /// Ended without error.
    pub completed: u64,
    /// Ended with an error.
    pub failed: u64,
    /// Started and not yet ended.
    pub in_flight: u64,
}

/// Exact counts and byte totals of network operations, evicted ones included.
///
/// ```
/// let net = pipeline_telemetry::NetworkTelemetry::new();
/// net.start_operation("n", "db", 5432, None)?;
/// net.end_operation("n", 10, 20, None)?;
/// assert_eq!(net.counts().bytes_received, 20);
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetworkCounts {
    /// Every operation started.
    pub total: u64,
    /// Ended without error.
    pub succeeded: u64,
    /// Ended with an error.
    pub failed: u64,
    /// Started and not yet ended.
    pub in_flight: u64,
    /// Bytes sent by ended operations.
    pub bytes_sent: u64,
    /// Bytes received by ended operations.
    pub bytes_received: u64,
}

/// Serializes records as a pretty-printed JSON array.
pub(crate) fn to_json<T: Serialize>(records: &[T]) -> String {
    // Our records hold only strings, integers and finite floats, which always serialize.
    serde_json::to_string_pretty(records)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

/// A summary of everything recorded: counts, failures, the slowest events, retries and
/// network operations. [`Display`](fmt::Display) renders it for people; it serializes as one
/// JSON object for programs.
///
/// ```
/// use std::time::Duration;
/// use pipeline_telemetry::{report::Report, Telemetry};
///
/// let telemetry = Telemetry::new();
/// telemetry.events.start_event("e", "t", None)?;
/// telemetry.events.end_event("t", Some("boom"))?;
/// let report = Report::collect(&telemetry, Duration::from_secs(1), 5);
/// assert_eq!(report.events.failed, 1);
/// let json = serde_json::to_value(&report).unwrap();
/// assert_eq!(json["events"]["failed"], 1);
/// assert!(report.to_string().contains("boom"));
/// # Ok::<(), pipeline_telemetry::TelemetryError>(())
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Event counts.
    pub events: EventCounts,
    /// Retry statistics.
    pub retries: RetryStats,
    /// Network counts.
    pub network: NetworkCounts,
    /// Records dropped because a publisher fell behind.
    pub dropped: u64,
    /// Retained failed events.
    pub failed_events: Vec<EventMetrics>,
    /// The slowest retained finished events, slowest first.
    pub slowest_events: Vec<EventMetrics>,
    /// The slow-operation threshold used, in seconds.
    pub slow_threshold_seconds: f64,
    /// Retained failed network operations, by task id.
    pub failed_network_ops: BTreeMap<String, NetworkMetrics>,
    /// Retained network operations slower than the threshold, by task id.
    pub slow_network_ops: BTreeMap<String, NetworkMetrics>,
}

impl Report {
    /// Gathers a report; `top` bounds the list of slowest events.
    pub fn collect(telemetry: &Telemetry, slow_threshold: Duration, top: usize) -> Self {
        let events = &telemetry.events;
        let network = &telemetry.network;
        let mut slowest: Vec<EventMetrics> = events
            .all_metrics()
            .into_iter()
            .filter(|m| m.end_time.is_some())
            .collect();
        slowest.sort_by_key(|m| std::cmp::Reverse(m.duration()));
        slowest.truncate(top);
        Report {
            events: events.counts(),
            retries: events.retry_stats(),
            network: network.counts(),
            dropped: telemetry.dropped(),
            failed_events: events.failed_events(),
            slowest_events: slowest,
            slow_threshold_seconds: slow_threshold.as_secs_f64(),
            failed_network_ops: network.get_failed_operations(),
            slow_network_ops: network.get_slow_operations(slow_threshold),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.events;
        writeln!(f, "Events")?;
        writeln!(
            f,
            "  total {}  completed {}  failed {}  in flight {}  dropped by publishers {}",
            e.total, e.completed, e.failed, e.in_flight, self.dropped
        )?;
        writeln!(f, "\nFailed events ({})", self.failed_events.len())?;
        for m in self.failed_events.iter().take(DISPLAY_LIMIT) {
            writeln!(
                f,
                "  {:<24} {:<16} {:>10}  {}",
                m.event_name,
                m.task_id,
                seconds(m.duration()),
                m.error.as_deref().unwrap_or("")
            )?;
        }
        more(f, self.failed_events.len())?;
        writeln!(f, "\nSlowest events")?;
        for m in &self.slowest_events {
            writeln!(
                f,
                "  {:<24} {:<16} {:>10}  {}",
                m.event_name,
                m.task_id,
                seconds(m.duration()),
                m.status
            )?;
        }
        let r = &self.retries;
        writeln!(
            f,
            "\nRetries\n  total {}  events with retries {}",
            r.total_retries, r.events_with_retries
        )?;
        for (count, events) in &r.events_by_retry_count {
            let retries = if *count == 1 { "retry" } else { "retries" };
            writeln!(f, "  {count} {retries}: {events} events")?;
        }
        let n = &self.network;
        writeln!(
            f,
            "\nNetwork operations\n  total {}  succeeded {}  failed {}  in flight {}  sent {} B  received {} B",
            n.total, n.succeeded, n.failed, n.in_flight, n.bytes_sent, n.bytes_received
        )?;
        writeln!(
            f,
            "\nFailed network operations ({})",
            self.failed_network_ops.len()
        )?;
        for (id, op) in self.failed_network_ops.iter().take(DISPLAY_LIMIT) {
            writeln!(
                f,
                "  {:<16} {}:{} {:<12} {}",
                id,
                op.host,
                op.port,
                op.operation,
                op.error.as_deref().unwrap_or("")
            )?;
        }
        more(f, self.failed_network_ops.len())?;
        writeln!(
            f,
            "\nSlow network operations (> {}) ({})",
            seconds(Duration::from_secs_f64(self.slow_threshold_seconds)),
            self.slow_network_ops.len()
        )?;
        for (id, op) in self.slow_network_ops.iter().take(DISPLAY_LIMIT) {
            writeln!(
                f,
                "  {:<16} {}:{} {:<12} {:>10}",
                id,
                op.host,
                op.port,
                op.operation,
                seconds(op.latency())
            )?;
        }
        more(f, self.slow_network_ops.len())
    }
}

/// Rows of each list the text form shows; the JSON form has them all.
const DISPLAY_LIMIT: usize = 20;

fn more(f: &mut fmt::Formatter<'_>, listed: usize) -> fmt::Result {
    if listed > DISPLAY_LIMIT {
        writeln!(f, "  … and {} more", listed - DISPLAY_LIMIT)?;
    }
    Ok(())
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_histogram_reports_one_zero_bucket() {
        let stats = RetryStats::from_histogram(0, &BTreeMap::new());
        assert_eq!(stats.events_by_retry_count, BTreeMap::from([(0, 0)]));
        assert_eq!(stats.events_with_retries, 0);
    }

    #[test]
    fn a_runaway_retry_count_does_not_fill_the_map() {
        let stats =
            RetryStats::from_histogram(u64::from(u32::MAX), &BTreeMap::from([(u32::MAX, 1)]));
        assert_eq!(
            stats.events_by_retry_count.len(),
            DENSE_RETRY_BUCKETS as usize + 2
        );
        assert_eq!(stats.events_with_retries, 1);
    }
}
