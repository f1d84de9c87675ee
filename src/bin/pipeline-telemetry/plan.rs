//! What each simulated event does, derived from the seed and the event's index alone.
//!
//! Workers pick events up in whatever order the scheduler lets them, so nothing here may depend
//! on a shared random stream: every event gets its own generator, seeded from the run's seed
//! and its index. The same seed therefore gives the same names, failures, retries, durations
//! and network calls however the threads interleave.

use std::time::Duration;

/// Pipeline step names the simulated events are drawn from.
const EVENT_NAMES: [&str; 8] = [
    "ingest-orders",
    "validate-schema",
    "enrich-customers",
    "dedupe-records",
    "transform-batch",
    "aggregate-metrics",
    "export-parquet",
    "notify-downstream",
];

/// Error messages of events that fail, as a pipeline step would report them.
const FAILURE_MESSAGES: [&str; 5] = [
    "schema mismatch: field `amount` expected decimal, got string",
    "upstream batch incomplete: 3 of 16 partitions missing",
    "scratch volume full while spilling sort buffer",
    "deadline exceeded waiting for lock on output table",
    "checksum mismatch in downloaded object",
];

/// Share of events that end as failed.
const FAILURE_PERCENT: u32 = 12;
/// Most retries an event makes.
pub const MAX_RETRIES: u32 = 3;
/// Most network calls an event makes.
const MAX_CALLS: u32 = 2;
/// Shortest and longest simulated work per attempt, in microseconds.
const WORK_MICROS: std::ops::RangeInclusive<u64> = 1_000..=6_000;
/// Smallest and largest payload sent to the echo server, in bytes.
const PAYLOAD_BYTES: std::ops::RangeInclusive<usize> = 16..=512;

/// Mixes the run's seed before the index is folded in (the 64-bit golden ratio), so that
/// neighbouring seeds do not give overlapping per-event seeds.
const SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Everything one simulated event will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPlan {
    /// The event's task id, such as `evt-00042`.
    pub task_id: String,
    /// The pipeline step it runs.
    pub name: &'static str,
    /// Simulated work per attempt; an event with retries works once per attempt.
    pub work_per_attempt: Duration,
    /// How many times the event is retried before its final attempt.
    pub retries: u32,
    /// The error the event ends with, if it fails.
    pub failure: Option<&'static str>,
    /// The network calls it makes, in order.
    pub calls: Vec<CallPlan>,
}

/// One network call of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPlan {
    /// Which server behaviour the call meets.
    pub kind: CallKind,
    /// Bytes of payload to send (the request line is a little longer).
    pub payload_bytes: usize,
}

/// How a network call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Answered at once.
    Echo,
    /// Answered after the server's slow-reply delay.
    SlowEcho,
    /// Aimed at a closed port: the connection is refused.
    Refused,
}

impl CallKind {
    /// The operation name recorded for the call.
    pub fn operation(self) -> &'static str {
        match self {
            CallKind::Echo | CallKind::Refused => "echo",
            CallKind::SlowEcho => "echo_slow",
        }
    }
}

/// The task id of the event with this index.
pub fn task_id(index: u64) -> String {
    format!("evt-{index:05}")
}

/// The plan of event `index` in a run with `seed`.
pub fn plan_event(seed: u64, index: u64) -> EventPlan {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(SEED_MIX) ^ index);
    // The draws below happen in a fixed order; reordering them changes every seed's plans.
    let name = EVENT_NAMES[rng.usize(..EVENT_NAMES.len())];
    let work_per_attempt = Duration::from_micros(rng.u64(WORK_MICROS));
    let retries = draw_retries(&mut rng);
    let failure = (rng.u32(..100) < FAILURE_PERCENT)
        .then(|| FAILURE_MESSAGES[rng.usize(..FAILURE_MESSAGES.len())]);
    let call_count = draw_call_count(&mut rng);
    let calls = (0..call_count).map(|_| draw_call(&mut rng)).collect();
    EventPlan {
        task_id: task_id(index),
        name,
        work_per_attempt,
        retries,
        failure,
        calls,
    }
}

/// Most events succeed at once; a few need one to [`MAX_RETRIES`] retries.
fn draw_retries(rng: &mut fastrand::Rng) -> u32 {
    match rng.u32(..100) {
        0..=64 => 0,
        65..=84 => 1,
        85..=94 => 2,
        _ => MAX_RETRIES,
    }
}

/// Up to [`MAX_CALLS`] calls, none for two events in five.
fn draw_call_count(rng: &mut fastrand::Rng) -> u32 {
    match rng.u32(..100) {
        0..=39 => 0,
        40..=79 => 1,
        _ => MAX_CALLS,
    }
}

/// Mostly prompt echoes; one in ten slow, one in ten refused.
fn draw_call(rng: &mut fastrand::Rng) -> CallPlan {
    let kind = match rng.u32(..100) {
        0..=79 => CallKind::Echo,
        80..=89 => CallKind::SlowEcho,
        _ => CallKind::Refused,
    };
    CallPlan {
        kind,
        payload_bytes: rng.usize(PAYLOAD_BYTES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_depends_on_seed_and_index_only() {
        assert_eq!(plan_event(42, 7), plan_event(42, 7));
        let seed_42: Vec<_> = (0..50).map(|i| plan_event(42, i)).collect();
        let seed_43: Vec<_> = (0..50).map(|i| plan_event(43, i)).collect();
        assert_ne!(seed_42, seed_43);
        assert_eq!(seed_42[7].task_id, "evt-00007");
    }

    #[test]
    fn plans_stay_within_their_bounds() {
        for plan in (0..1_000).map(|i| plan_event(1, i)) {
            assert!(plan.retries <= MAX_RETRIES);
            assert!(plan.calls.len() <= MAX_CALLS as usize);
            assert!(WORK_MICROS.contains(&(plan.work_per_attempt.as_micros() as u64)));
            assert!(plan
                .calls
                .iter()
                .all(|c| PAYLOAD_BYTES.contains(&c.payload_bytes)));
        }
    }
}
