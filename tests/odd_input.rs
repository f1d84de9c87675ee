//! Odd input never panics and is kept exactly (or cut as documented), and any interleaving of
//! calls agrees with a simple model of the store.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};

use pipeline_telemetry::record::{MAX_ERROR_BYTES, TRUNCATION_MARK};
use pipeline_telemetry::{
    EventGuard, EventMetrics, NetworkTelemetry, Status, TelemetryConfig, TelemetryError,
    TelemetryLogger,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;

/// Characters that trip up encoders: quotes, escapes, control characters, NUL, a BOM, bidi
/// overrides, a combining mark and characters of every UTF-8 width.
const AWKWARD: &[char] = &[
    '"',
    '\\',
    '\0',
    '\n',
    '\r',
    '\t',
    '\u{7}',
    '\u{1b}',
    '\u{7f}',
    '\u{85}',
    '\u{feff}',
    '\u{202e}',
    '\u{301}',
    '/',
    '<',
    'a',
    'é',
    '€',
    '😀',
    '\u{10ffff}',
];

fn awkward_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(AWKWARD), 0..max).prop_map(String::from_iter)
}

/// `seed` repeated until it is at least `bytes` long (a non-empty fallback for an empty seed).
fn long_string(seed: String, bytes: usize) -> String {
    let seed = if seed.is_empty() {
        "x".to_owned()
    } else {
        seed
    };
    let mut s = String::with_capacity(bytes + seed.len());
    while s.len() < bytes {
        s.push_str(&seed);
    }
    s
}

/// Names and ids: empty, arbitrary Unicode, awkward characters, or long (up to ~100 KB).
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => any::<String>(),
        4 => awkward_string(24),
        1 => (awkward_string(6), 1usize..100_000).prop_map(|(s, n)| long_string(s, n)),
    ]
}

/// Errors: as [`odd_string`], plus lengths right around [`MAX_ERROR_BYTES`] in characters of
/// every width, so a cut falls inside a character.
fn odd_error() -> impl Strategy<Value = Option<String>> {
    let around_limit = (
        prop::sample::select(vec!["a", "é", "€", "😀", "a😀", "é€"]),
        0usize..8,
        0usize..8,
    )
        .prop_map(|(unit, below, above)| {
            let mut s = long_string(unit.to_owned(), MAX_ERROR_BYTES - below);
            s.extend(std::iter::repeat_n('a', above));
            s
        });
    prop_oneof![
        1 => Just(None),
        6 => odd_string().prop_map(Some),
        3 => around_limit.prop_map(Some),
    ]
}

/// What a stored error must be, given what was passed.
fn assert_error_kept(given: Option<&str>, stored: Option<&str>) {
    let (Some(given), Some(stored)) = (given, stored) else {
        assert_eq!(given.is_some(), stored.is_some());
        return;
    };
    if given.len() <= MAX_ERROR_BYTES {
        assert_eq!(stored, given);
        return;
    }
    assert!(stored.len() <= MAX_ERROR_BYTES, "{} bytes", stored.len());
    assert!(stored.ends_with(TRUNCATION_MARK));
    let kept = &stored[..stored.len() - TRUNCATION_MARK.len()];
    assert!(given.starts_with(kept));
    // Cut at the last character boundary that fits, not earlier.
    assert!(kept.len() + TRUNCATION_MARK.len() > MAX_ERROR_BYTES - 4);
}

/// `cases` cases; failures are saved in `proptest-regressions/odd_input.txt` (commit it).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/odd_input.txt",
        ))),
        ..ProptestConfig::default()
    }
}

fn parse_array(json: &str) -> Vec<Value> {
    let value: Value = serde_json::from_str(json).expect("valid JSON");
    value.as_array().expect("an array").clone()
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn odd_events_never_panic_and_round_trip(
        name in odd_string(),
        id in odd_string(),
        error in odd_error(),
        retries in 0u32..3,
        use_guard in any::<bool>(),
    ) {
        event_round_trip(&name, &id, error.as_deref(), retries, use_guard)?;
    }

    #[test]
    fn odd_network_ops_never_panic_and_round_trip(
        id in odd_string(),
        host in odd_string(),
        operation in prop::option::of(odd_string()),
        port in any::<u16>(),
        sent in any::<u64>(),
        received in any::<u64>(),
        error in odd_error(),
    ) {
        let bytes = (sent, received);
        network_round_trip(&id, &host, operation.as_deref(), port, bytes, error.as_deref())?;
    }
}

fn event_round_trip(
    name: &str,
    id: &str,
    error: Option<&str>,
    retries: u32,
    use_guard: bool,
) -> Result<(), TestCaseError> {
    let logger = TelemetryLogger::new();
    let started: Result<Option<EventGuard<'_>>, _> = if use_guard {
        logger.track(name, id).map(Some)
    } else {
        logger.start_event(name, id, Some(42)).map(|()| None)
    };
    match (name.is_empty(), id.is_empty()) {
        (true, _) => prop_assert_eq!(
            started.as_ref().err(),
            Some(&TelemetryError::EmptyEventName)
        ),
        (false, true) => {
            prop_assert_eq!(started.as_ref().err(), Some(&TelemetryError::EmptyTaskId))
        }
        (false, false) => prop_assert!(started.is_ok()),
    }
    let Ok(guard) = started else {
        // Nothing was recorded, and ending or retrying the id is an error too.
        prop_assert!(logger.end_event(id, error).is_err());
        prop_assert!(logger.record_retry(id).is_err());
        prop_assert_eq!(logger.counts().total, 0);
        prop_assert_eq!(parse_array(&logger.to_json()).len(), 0);
        return Ok(());
    };
    for n in 1..=retries {
        prop_assert_eq!(logger.record_retry(id), Ok(n));
    }
    match (guard, error) {
        (Some(guard), Some(e)) => guard.fail(e).unwrap(),
        (Some(guard), None) => guard.complete().unwrap(),
        (None, error) => logger.end_event(id, error).unwrap(),
    }
    // Ending again is refused, naming the id.
    prop_assert_eq!(
        logger.end_event(id, None),
        Err(TelemetryError::UnknownTask {
            task_id: id.to_owned()
        })
    );

    let record = logger.get_metrics(id).expect("retained");
    prop_assert_eq!(&record.event_name, name);
    prop_assert_eq!(&record.task_id, id);
    prop_assert_eq!(record.retry_count, retries);
    prop_assert_eq!(
        record.process_id,
        if use_guard { std::process::id() } else { 42 }
    );
    prop_assert_eq!(
        record.status,
        if error.is_some() {
            Status::Failed
        } else {
            Status::Completed
        }
    );
    assert_error_kept(error, record.error.as_deref());

    let items = parse_array(&logger.to_json());
    let item = items
        .iter()
        .find(|v| v["task_id"] == id)
        .expect("the record is in the JSON");
    prop_assert_eq!(&item["event_name"], &Value::from(name));
    prop_assert_eq!(item["error"].as_str(), record.error.as_deref());
    prop_assert_eq!(&item["retry_count"], &Value::from(retries));
    prop_assert_eq!(logger.failed_events().len(), usize::from(error.is_some()));
    Ok(())
}

fn network_round_trip(
    id: &str,
    host: &str,
    operation: Option<&str>,
    port: u16,
    (sent, received): (u64, u64),
    error: Option<&str>,
) -> Result<(), TestCaseError> {
    let net = NetworkTelemetry::new();
    let started = net.start_operation(id, host, port, operation);
    if id.is_empty() {
        prop_assert_eq!(started, Err(TelemetryError::EmptyTaskId));
        prop_assert!(net.end_operation(id, sent, received, None).is_err());
        prop_assert_eq!(net.counts().total, 0);
        return Ok(());
    }
    prop_assert!(started.is_ok());
    net.end_operation(id, sent, received, error).unwrap();
    let op = net.get_metrics(id).expect("retained");
    prop_assert_eq!(&op.task_id, id);
    prop_assert_eq!(&op.host, host);
    prop_assert_eq!(op.port, port);
    let want_operation = operation.filter(|o| !o.is_empty()).unwrap_or("remote_call");
    prop_assert_eq!(op.operation.as_str(), want_operation);
    prop_assert_eq!((op.bytes_sent, op.bytes_received), (sent, received));
    assert_error_kept(error, op.error.as_deref());
    prop_assert_eq!(
        net.get_failed_operations().contains_key(id),
        error.is_some()
    );

    let items = parse_array(&net.to_json());
    prop_assert_eq!(items.len(), 1);
    prop_assert_eq!(&items[0]["task_id"], &Value::from(id));
    prop_assert_eq!(&items[0]["host"], &Value::from(host));
    prop_assert_eq!(&items[0]["bytes_sent"], &Value::from(sent));
    prop_assert_eq!(items[0]["error"].as_str(), op.error.as_deref());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Interleavings against a model
// ---------------------------------------------------------------------------------------------

const IDS: &[&str] = &["a", "b", "c", "\"d\"", "é"];

#[derive(Debug, Clone)]
enum Op {
    Start {
        id: usize,
        name: usize,
    },
    End {
        id: usize,
        error: Option<&'static str>,
    },
    Retry {
        id: usize,
    },
    NetStart {
        id: usize,
    },
    NetEnd {
        id: usize,
        sent: u64,
        received: u64,
        error: Option<&'static str>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..IDS.len();
    let error = prop::option::of(prop::sample::select(vec!["", "boom", "x\"y"]));
    prop_oneof![
        3 => (id.clone(), 0usize..3).prop_map(|(id, name)| Op::Start { id, name }),
        3 => (id.clone(), error.clone()).prop_map(|(id, error)| Op::End { id, error }),
        2 => id.clone().prop_map(|id| Op::Retry { id }),
        2 => id.clone().prop_map(|id| Op::NetStart { id }),
        2 => (id, 0u64..1000, 0u64..1000, error)
            .prop_map(|(id, sent, received, error)| Op::NetEnd { id, sent, received, error }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelEvent {
    id: usize,
    name: usize,
    retries: u32,
    error: Option<&'static str>,
    ended: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct ModelOp {
    id: usize,
    sent: u64,
    received: u64,
    error: Option<&'static str>,
}

/// The store as the docs describe it: at most one run of an id in flight, ended runs retained
/// oldest-first up to `retention`, exact totals.
#[derive(Debug, Default)]
struct Model {
    in_flight: HashMap<usize, ModelEvent>,
    retained: VecDeque<ModelEvent>,
    completed: u64,
    failed: u64,
    retries_of_finished: BTreeMap<u32, u64>,
    net_in_flight: HashMap<usize, ()>,
    net_retained: VecDeque<ModelOp>,
    net_succeeded: u64,
    net_failed: u64,
    bytes: (u64, u64),
}

impl Model {
    fn retain<T>(ring: &mut VecDeque<T>, retention: usize, item: T) {
        if retention == 0 {
            return;
        }
        if ring.len() == retention {
            ring.pop_front();
        }
        ring.push_back(item);
    }

    fn newest(&self, id: usize) -> Option<&ModelEvent> {
        self.in_flight
            .get(&id)
            .or_else(|| self.retained.iter().rev().find(|e| e.id == id))
    }
}

fn name_of(i: usize) -> String {
    ["load", "transform \"x\"", "save\u{0}"][i].to_owned()
}

fn check_event(got: Option<EventMetrics>, want: Option<&ModelEvent>) -> Result<(), TestCaseError> {
    match (got, want) {
        (None, None) => {}
        (Some(got), Some(want)) => {
            prop_assert_eq!(&got.task_id, IDS[want.id]);
            prop_assert_eq!(got.event_name, name_of(want.name));
            prop_assert_eq!(got.retry_count, want.retries);
            prop_assert_eq!(got.error.as_deref(), want.error);
            let status = match (want.ended, want.error) {
                (false, _) => Status::Pending,
                (true, None) => Status::Completed,
                (true, Some(_)) => Status::Failed,
            };
            prop_assert_eq!(got.status, status);
            prop_assert_eq!(got.end_time.is_some(), want.ended);
        }
        (got, want) => prop_assert!(false, "store has {got:?}, model has {want:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn interleavings_agree_with_the_model(
        retention in prop::sample::select(vec![0usize, 1, 2, 3, 5, 100]),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        agrees_with_the_model(retention, &ops)?;
    }
}

fn agrees_with_the_model(retention: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let config = TelemetryConfig::default().retention(retention);
    let logger = TelemetryLogger::with_config(&config);
    let net = NetworkTelemetry::with_config(&config);
    let mut model = Model::default();

    for op in ops {
        match *op {
            Op::Start { id, name } => {
                let got = logger.start_event(&name_of(name), IDS[id], None);
                match model.in_flight.entry(id) {
                    Entry::Occupied(_) => prop_assert_eq!(
                        got,
                        Err(TelemetryError::AlreadyInFlight {
                            task_id: IDS[id].into()
                        })
                    ),
                    Entry::Vacant(slot) => {
                        prop_assert_eq!(got, Ok(()));
                        slot.insert(ModelEvent {
                            id,
                            name,
                            retries: 0,
                            error: None,
                            ended: false,
                        });
                    }
                }
            }
            Op::End { id, error } => {
                let got = logger.end_event(IDS[id], error);
                match model.in_flight.remove(&id) {
                    None => prop_assert_eq!(
                        got,
                        Err(TelemetryError::UnknownTask {
                            task_id: IDS[id].into()
                        })
                    ),
                    Some(mut e) => {
                        prop_assert_eq!(got, Ok(()));
                        e.error = error;
                        e.ended = true;
                        if error.is_some() {
                            model.failed += 1
                        } else {
                            model.completed += 1
                        }
                        *model.retries_of_finished.entry(e.retries).or_default() += 1;
                        Model::retain(&mut model.retained, retention, e);
                    }
                }
            }
            Op::Retry { id } => {
                let got = logger.record_retry(IDS[id]);
                match model.in_flight.get_mut(&id) {
                    None => prop_assert_eq!(
                        got,
                        Err(TelemetryError::UnknownTask {
                            task_id: IDS[id].into()
                        })
                    ),
                    Some(e) => {
                        e.retries += 1;
                        prop_assert_eq!(got, Ok(e.retries));
                    }
                }
            }
            Op::NetStart { id } => {
                let got = net.start_operation(IDS[id], "host", 1, None);
                prop_assert_eq!(got.is_ok(), !model.net_in_flight.contains_key(&id));
                model.net_in_flight.insert(id, ());
            }
            Op::NetEnd {
                id,
                sent,
                received,
                error,
            } => {
                let got = net.end_operation(IDS[id], sent, received, error);
                prop_assert_eq!(got.is_ok(), model.net_in_flight.remove(&id).is_some());
                if got.is_ok() {
                    if error.is_some() {
                        model.net_failed += 1
                    } else {
                        model.net_succeeded += 1
                    }
                    model.bytes.0 += sent;
                    model.bytes.1 += received;
                    Model::retain(
                        &mut model.net_retained,
                        retention,
                        ModelOp {
                            id,
                            sent,
                            received,
                            error,
                        },
                    );
                }
            }
        }
        // Lookups agree after every step.
        for (id, task_id) in IDS.iter().enumerate() {
            check_event(logger.get_metrics(task_id), model.newest(id))?;
        }
    }

    // Counts.
    let counts = logger.counts();
    let in_flight = model.in_flight.len() as u64;
    prop_assert_eq!(
        (
            counts.total,
            counts.completed,
            counts.failed,
            counts.in_flight
        ),
        (
            model.completed + model.failed + in_flight,
            model.completed,
            model.failed,
            in_flight
        )
    );
    prop_assert_eq!(logger.retained_len(), model.retained.len());
    prop_assert_eq!(
        logger.all_metrics().len(),
        model.retained.len() + model.in_flight.len()
    );
    prop_assert_eq!(
        logger.failed_events().len(),
        model.retained.iter().filter(|e| e.error.is_some()).count()
    );

    // Retry statistics: finished (evicted included) and in flight, dense from 0.
    let mut histogram = model.retries_of_finished.clone();
    for e in model.in_flight.values() {
        *histogram.entry(e.retries).or_default() += 1;
    }
    let highest = histogram.keys().next_back().copied().unwrap_or(0);
    let dense: BTreeMap<u32, u64> = (0..=highest)
        .map(|n| (n, histogram.get(&n).copied().unwrap_or(0)))
        .collect();
    let stats = logger.retry_stats();
    prop_assert_eq!(&stats.events_by_retry_count, &dense);
    prop_assert_eq!(
        stats.total_retries,
        histogram
            .iter()
            .map(|(n, events)| u64::from(*n) * events)
            .sum::<u64>()
    );
    prop_assert_eq!(
        stats.events_with_retries,
        histogram.range(1..).map(|(_, e)| e).sum::<u64>()
    );

    // Network.
    let nc = net.counts();
    let net_in_flight = model.net_in_flight.len() as u64;
    prop_assert_eq!(
        (
            nc.total,
            nc.succeeded,
            nc.failed,
            nc.in_flight,
            nc.bytes_sent,
            nc.bytes_received
        ),
        (
            model.net_succeeded + model.net_failed + net_in_flight,
            model.net_succeeded,
            model.net_failed,
            net_in_flight,
            model.bytes.0,
            model.bytes.1
        )
    );
    prop_assert_eq!(net.retained_len(), model.net_retained.len());
    let mut want_failed = BTreeMap::new();
    for op in &model.net_retained {
        if op.error.is_some() {
            want_failed.insert(IDS[op.id].to_owned(), op.clone());
        }
    }
    let got_failed = net.get_failed_operations();
    prop_assert_eq!(
        got_failed.keys().collect::<Vec<_>>(),
        want_failed.keys().collect::<Vec<_>>()
    );
    for (id, op) in &got_failed {
        let want = &want_failed[id];
        prop_assert_eq!(
            (op.bytes_sent, op.bytes_received),
            (want.sent, want.received)
        );
        prop_assert_eq!(op.error.as_deref(), want.error);
    }
    for (id, task_id) in IDS.iter().enumerate() {
        let got = net.get_metrics(task_id);
        if model.net_in_flight.contains_key(&id) {
            prop_assert_eq!(got.map(|o| o.end_time), Some(None));
        } else {
            let want = model.net_retained.iter().rev().find(|o| o.id == id);
            prop_assert_eq!(
                got.map(|o| (o.bytes_sent, o.bytes_received, o.error)),
                want.map(|o| (o.sent, o.received, o.error.map(str::to_owned)))
            );
        }
    }

    // The JSON holds exactly the retained and in-flight events.
    prop_assert_eq!(
        parse_array(&logger.to_json()).len(),
        model.retained.len() + model.in_flight.len()
    );
    prop_assert_eq!(
        parse_array(&net.to_json()).len(),
        model.net_retained.len() + model.net_in_flight.len()
    );
    Ok(())
}
