//! What recording allocates, counted by a global allocator that counts the calling thread's
//! allocations only (the test harness's own threads are left out).
//!
//! At steady state a start/end pair with a short task id and a known name allocates nothing of
//! its own: the id is kept inline, the name is interned, and the ring allocates one segment
//! per 512 records. Guards (`track`) keep their id the same way.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pipeline_telemetry::{NetworkTelemetry, TelemetryConfig, TelemetryLogger};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; counting touches only const-initialised
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, which `System.alloc` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `run` makes on this thread.
fn allocations(run: impl FnOnce()) -> u64 {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    run();
    COUNTING.with(|on| on.set(false));
    COUNT.with(Cell::get)
}

const PAIRS: usize = 25_600;

/// Task ids of 13 bytes, made before counting.
fn ids(prefix: &str) -> Vec<String> {
    (0..PAIRS).map(|i| format!("{prefix}-{i:08}")).collect()
}

#[test]
fn a_pair_at_steady_state_allocates_only_its_share_of_a_segment() {
    let logger = TelemetryLogger::with_config(&TelemetryConfig::default().retention(10_000));
    for id in ids("warm") {
        logger.start_event("step", &id, None).unwrap();
        logger.end_event(&id, None).unwrap();
    }
    let ids = ids("task");
    let by_id = allocations(|| {
        for id in &ids {
            logger.start_event("step", id, None).unwrap();
            logger.end_event(id, None).unwrap();
        }
    });
    // Two per segment of 512 (its buffer and its reference count).
    assert!(
        by_id <= 2 * (PAIRS / 512) as u64 + 2,
        "{by_id} allocations for {PAIRS} pairs"
    );

    let ids: Vec<String> = ids.iter().map(|id| format!("g{id}")).collect();
    let guarded = allocations(|| {
        for id in &ids {
            logger.track("step", id).unwrap().complete().unwrap();
        }
    });
    assert!(
        guarded <= 2 * (PAIRS / 512) as u64 + 2,
        "{guarded} allocations for {PAIRS} guards"
    );
}

#[test]
fn a_network_operation_at_steady_state_allocates_only_its_share_of_a_segment() {
    let network = NetworkTelemetry::new();
    let run = |prefix: &str| {
        let ids = ids(prefix);
        allocations(|| {
            for id in &ids {
                network
                    .start_operation(id, "db.internal", 5432, Some("query"))
                    .unwrap();
                network.end_operation(id, 100, 2_000, None).unwrap();
            }
        })
    };
    run("warm");
    let made = run("op");
    assert!(
        made <= 2 * (PAIRS / 512) as u64 + 2,
        "{made} allocations for {PAIRS} operations"
    );
}
