//! Helpers shared by the `core` and `memory` benches: unique task ids, the pair being measured,
//! loggers brought to a known state, and a publisher that does nothing.
// Each bench binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pipeline_telemetry::{MetricsPublisher, TelemetryConfig, TelemetryLogger};

/// The event name of every measured event (9 bytes).
pub const EVENT_NAME: &str = "transcode";

/// The first task id number: ids are `task-10000000`, `task-10000001`, ... (13 bytes each for
/// the first 90 million).
const FIRST_ID: u64 = 10_000_000;

/// Ids formatted per batch into a reused buffer, so formatting stays outside timed regions
/// and allocates nothing once the buffer is warm.
pub const BATCH: usize = 4096;

/// A source of task ids unique within a logger. Lanes made with [`Ids::lane`] share the
/// counter, so threads draw disjoint ids.
#[derive(Debug)]
pub struct Ids {
    next: Arc<AtomicU64>,
    buf: Vec<String>,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            next: Arc::new(AtomicU64::new(FIRST_ID)),
            buf: Vec::new(),
        }
    }
}

impl Ids {
    /// Another source drawing from the same sequence (for another thread).
    pub fn lane(&self) -> Ids {
        Ids {
            next: Arc::clone(&self.next),
            buf: Vec::new(),
        }
    }

    /// Formats the next `n` ids into the reused buffer and returns them.
    pub fn next_batch(&mut self, n: usize) -> &[String] {
        if self.buf.len() < n {
            self.buf.resize_with(n, || String::with_capacity(24));
        }
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        for (number, id) in (first..).zip(&mut self.buf[..n]) {
            id.clear();
            write!(id, "task-{number}").expect("writing to a String cannot fail");
        }
        &self.buf[..n]
    }
}

/// The measured operation: one event started and ended (completed) on `logger`.
#[inline(always)]
pub fn pair(logger: &TelemetryLogger, task_id: &str) {
    logger
        .start_event(EVENT_NAME, task_id, None)
        .expect("start_event");
    logger.end_event(task_id, None).expect("end_event");
}

/// One pair per id, in order.
#[inline(always)]
pub fn run_pairs(logger: &TelemetryLogger, ids: &[String]) {
    for id in ids {
        pair(logger, id);
    }
}

/// Runs pairs until `logger` retains `retention` finished records, i.e. until every shard is
/// full, so that from then on every pair evicts one record (the steady state of a long-running
/// process).
pub fn fill_to_steady_state(logger: &TelemetryLogger, ids: &mut Ids, retention: usize) {
    while logger.retained_len() < retention {
        run_pairs(logger, ids.next_batch(BATCH));
    }
    assert!(logger.retained_len() >= retention);
}

/// A logger with `config` (whose retention is `retention`) in steady state.
pub fn steady_logger(config: &TelemetryConfig, retention: usize) -> (TelemetryLogger, Ids) {
    let logger = TelemetryLogger::with_config(config);
    let mut ids = Ids::default();
    fill_to_steady_state(&logger, &mut ids, retention);
    (logger, ids)
}

/// A publisher that accepts everything and does nothing with it. Its delivery thread still
/// converts each record to an [`EventMetrics`](pipeline_telemetry::EventMetrics).
#[derive(Debug)]
pub struct Noop;

impl MetricsPublisher for Noop {
    fn name(&self) -> &str {
        "noop"
    }
}
