//! Bytes held per retained finished event, counted by a wrapper around the system allocator.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench memory
//! ```
//!
//! For each retention N (no publisher) a logger is created (before the baseline), then pairs
//! are run until every shard is full, i.e. exactly N finished records are retained and the
//! evicted ones freed.
//! The live-bytes delta over N is the cost of one retained event, its strings included: a task
//! id of up to 24 bytes is stored inline in the record and event names are shared, so there is
//! no per-event string allocation left to subtract (a long id or an error message would add
//! its own allocation). Two measures of "bytes":
//! - requested: what the program asked the allocator for (`Layout::size`);
//! - malloc footprint: what glibc actually sets aside (`malloc_usable_size` + the 8-byte chunk
//!   header), i.e. requested plus rounding to 16 bytes and the header.
//!
//! Then rounds of N more pairs (every one evicting) show what the steady state holds.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use pipeline_telemetry::{TelemetryConfig, TelemetryLogger};
use support::{fill_to_steady_state, run_pairs, Ids, EVENT_NAME};

/// Allocations at or above this size are containers (ring buffers, hash tables); below it,
/// per-event allocations (long task ids, error messages, names past the interner's capacity).
const LARGE: usize = 4096;

/// glibc's chunk header, not included in `malloc_usable_size`.
const CHUNK_HEADER: usize = 8;

/// Rounds of `retention` further pairs run after the fill, each evicting as many records.
const ROUNDS: usize = 16;

extern "C" {
    fn malloc_usable_size(ptr: *mut u8) -> usize;
}

struct Counting;

static REQUESTED_SMALL: AtomicIsize = AtomicIsize::new(0);
static REQUESTED_LARGE: AtomicIsize = AtomicIsize::new(0);
static FOOTPRINT_SMALL: AtomicIsize = AtomicIsize::new(0);
static FOOTPRINT_LARGE: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

fn account(ptr: *mut u8, size: usize, sign: isize) {
    let footprint = unsafe { malloc_usable_size(ptr) } + CHUNK_HEADER;
    let (requested, held) = if size >= LARGE {
        (&REQUESTED_LARGE, &FOOTPRINT_LARGE)
    } else {
        (&REQUESTED_SMALL, &FOOTPRINT_SMALL)
    };
    requested.fetch_add(sign * size as isize, Ordering::Relaxed);
    held.fetch_add(sign * footprint as isize, Ordering::Relaxed);
    BLOCKS.fetch_add(sign, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            account(ptr, layout.size(), 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            account(ptr, layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(ptr, layout.size(), -1);
        System.dealloc(ptr, layout);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(ptr, layout.size(), -1);
        let new = System.realloc(ptr, layout, new_size);
        if new.is_null() {
            account(ptr, layout.size(), 1);
        } else {
            account(new, new_size, 1);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Clone, Copy)]
struct Live {
    requested_small: isize,
    requested_large: isize,
    footprint_small: isize,
    footprint_large: isize,
    blocks: isize,
}

impl Live {
    fn now() -> Live {
        Live {
            requested_small: REQUESTED_SMALL.load(Ordering::Relaxed),
            requested_large: REQUESTED_LARGE.load(Ordering::Relaxed),
            footprint_small: FOOTPRINT_SMALL.load(Ordering::Relaxed),
            footprint_large: FOOTPRINT_LARGE.load(Ordering::Relaxed),
            blocks: BLOCKS.load(Ordering::Relaxed),
        }
    }

    fn since(self, base: Live) -> Live {
        Live {
            requested_small: self.requested_small - base.requested_small,
            requested_large: self.requested_large - base.requested_large,
            footprint_small: self.footprint_small - base.footprint_small,
            footprint_large: self.footprint_large - base.footprint_large,
            blocks: self.blocks - base.blocks,
        }
    }

    fn requested(self) -> isize {
        self.requested_small + self.requested_large
    }

    fn footprint(self) -> isize {
        self.footprint_small + self.footprint_large
    }
}

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> Option<isize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: isize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn measure(retention: usize) {
    let logger = TelemetryLogger::with_config(&TelemetryConfig::default().retention(retention));
    let mut ids = Ids::default();
    // Warm the id buffer so that formatting ids later allocates nothing.
    ids.next_batch(support::BATCH);
    let mut later = Vec::with_capacity(ROUNDS);
    let (base, rss_base) = (Live::now(), rss());
    // Every shard full: exactly `retention` records held, the evicted ones freed.
    fill_to_steady_state(&logger, &mut ids, retention);
    let held = Live::now().since(base);
    let rss_held = rss().zip(rss_base).map(|(after, before)| after - before);
    let id_len = ids.next_batch(1)[0].len();
    assert_eq!(
        id_len,
        "task-10000000".len(),
        "ids all have the same length"
    );
    let string_bytes = retention * (id_len + EVENT_NAME.len());

    // Steady state: keep evicting and watch for growth (hash-table tombstones can make the
    // index grow once after the fill).
    for round in 1..=ROUNDS {
        for _ in 0..retention.div_ceil(support::BATCH) {
            run_pairs(&logger, ids.next_batch(support::BATCH));
        }
        later.push((round, Live::now().since(base)));
    }

    let n = retention as f64;
    let strings = string_bytes as f64 / n;
    let per = |bytes: isize| bytes as f64 / n;
    // The steady state reported is the largest seen over the rounds.
    let (_, steady) = *later
        .iter()
        .max_by_key(|(_, live)| live.requested())
        .expect("at least one round");
    let row = |what: &str, filled: f64, steady: f64| {
        println!("  {what:<34} {filled:>8.1} {steady:>8.1}");
    };
    println!(
        "retention {retention} (no publisher): {strings:.1} string bytes per event \
         (task id {id_len} + event name {}), all counted below (target: <= 160 beyond them)",
        EVENT_NAME.len()
    );
    println!(
        "  {:<34} {:>8} {:>8}",
        "bytes per retained event", "filled", "steady"
    );
    row(
        "requested from the allocator",
        per(held.requested()),
        per(steady.requested()),
    );
    row(
        "  per-event allocations",
        per(held.requested_small),
        per(steady.requested_small),
    );
    row(
        "  containers (ring, index, tables)",
        per(held.requested_large),
        per(steady.requested_large),
    );
    row(
        "malloc footprint",
        per(held.footprint()),
        per(steady.footprint()),
    );
    row("live allocations", per(held.blocks), per(steady.blocks));
    if let Some(rss) = rss_held {
        println!("  RSS growth while filling: {:.1} B/event", per(rss));
    }
    // Where the steady state grew past the filled figure (hash-table tombstones make the index
    // double once, after a number of evictions that grows with the table).
    let mut growth = Vec::new();
    let mut last = held.requested();
    for (round, live) in &later {
        if live.requested() != last {
            growth.push(format!(
                "after {round} x {retention}: {:+.1}",
                per(live.requested() - held.requested())
            ));
            last = live.requested();
        }
    }
    if !growth.is_empty() {
        println!("  requested B/event vs filled, {}", growth.join(", "));
    }
}

fn main() {
    println!(
        "Bytes held per retained finished event. \"filled\": just after every shard filled; \
         \"steady\": the largest figure after each of {ROUNDS} rounds of as many evicting pairs."
    );
    for retention in [1_000, 100_000, 1_000_000] {
        measure(retention);
    }
}
