//! Errors of the recording API.

use std::fmt;

/// What went wrong with a recording call. Nothing recorded before the call is lost when one of
/// these is returned, and the call changed nothing.
///
/// ```
/// use pipeline_telemetry::{TelemetryError, TelemetryLogger};
///
/// let logger = TelemetryLogger::new();
/// match logger.end_event("never-started", None) {
///     Err(TelemetryError::UnknownTask { task_id }) => assert_eq!(task_id, "never-started"),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TelemetryError {
    /// An event name was empty.
    EmptyEventName,
    /// A task id was empty.
    EmptyTaskId,
    /// No event or operation with this id is in flight (never started, or already ended).
    UnknownTask {
        /// The id that was asked for.
        task_id: String,
    },
    /// A start was asked for an id that is still in flight; the first record is kept.
    AlreadyInFlight {
        /// The id that is in flight.
        task_id: String,
    },
    /// A delivery worker thread could not be started.
    WorkerSpawn {
        /// The operating system's reason.
        reason: String,
    },
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TelemetryError::EmptyEventName => {
                f.write_str("event name is empty; give every event a non-empty name")
            }
            TelemetryError::EmptyTaskId => {
                f.write_str("task id is empty; give every event and operation a non-empty id")
            }
            TelemetryError::UnknownTask { task_id } => write!(
                f,
                "no record with task id {task_id:?} is in flight: it was never started or has \
                 already ended; start it before ending or retrying it"
            ),
            TelemetryError::AlreadyInFlight { task_id } => write!(
                f,
                "task id {task_id:?} is already in flight; end it before starting it again, or \
                 use a unique id per execution (the first record was kept)"
            ),
            TelemetryError::WorkerSpawn { reason } => write!(
                f,
                "could not start the publisher delivery thread: {reason}; check the process's \
                 thread limit"
            ),
        }
    }
}

impl std::error::Error for TelemetryError {}
