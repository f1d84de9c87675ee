//! A start/end pair written plainly, beside the library's: how fast the same steps can be.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench pair_sketch
//! PAIR_SKETCH_DRIVE=<retention>,<pairs> taskset -c 1 <bench binary>
//! ```
//!
//! The sketch does what a `start_event` + `end_event` pair of one recording thread must: read
//! the clock, read the task id as words and hash them, lock a mutex, refuse an id already in
//! flight (one probe of a `hashbrown` table that also finds the free place), intern the event
//! name through a direct-mapped table of short names, derive a wall-clock time, and at the end
//! find the record, take it out, finish it, count it and push it into a ring that evicts its
//! oldest record once `retention` are kept. It leaves out what only other cases need: ids
//! longer than 16 bytes, a second thread (claims, shards), publishers, queries. It is not the
//! library and nothing uses it: it is the reference the library's own path is measured
//! against (BENCHMARKS.md, "What session 8 measured"), where it ran a pair in 43.5 ns against
//! the library's 72.5, with half the instructions.
//!
//! The driver times `<pairs>` pairs of each (the sketch, then the library with the default
//! configuration at that retention), both brought to steady state first, and prints ns per
//! pair and their ratio. Pin it to one CPU (`taskset`): it reports plain wall time.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use hashbrown::HashTable;
use pipeline_telemetry::{TelemetryConfig, TelemetryLogger};

mod support;

use support::{Ids, EVENT_NAME};

/// A task id of at most 16 bytes as two little-endian words and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Key([u64; 3]);

impl Key {
    fn of(id: &str) -> Option<Key> {
        let [low, high] = two_words(id.as_bytes())?;
        Some(Key([low, high, id.len() as u64]))
    }
}

/// Up to sixteen bytes as two zero-padded words, read with fixed-length loads (as the
/// library's task ids are).
#[inline]
fn two_words(bytes: &[u8]) -> Option<[u64; 2]> {
    let first_8 = |b: &[u8]| b.first_chunk().map_or(0, |w| u64::from_le_bytes(*w));
    let len = bytes.len();
    match len {
        0 => Some([0, 0]),
        1..=3 => {
            let byte = |at: usize| u64::from(bytes[at]) << (8 * at);
            Some([byte(0) | byte(len / 2) | byte(len - 1), 0])
        }
        4..=7 => {
            let half = |b: Option<&[u8; 4]>| b.map_or(0, |w| u64::from(u32::from_le_bytes(*w)));
            Some([
                half(bytes.first_chunk()) | half(bytes.last_chunk()) << (8 * (len - 4)),
                0,
            ])
        }
        8 => Some([first_8(bytes), 0]),
        9..=16 => {
            let last = bytes.last_chunk().map_or(0, |w| u64::from_le_bytes(*w));
            Some([first_8(bytes), last >> (8 * (16 - len))])
        }
        _ => None,
    }
}

/// The fields the library's event record keeps; the sketch writes them and reads only some.
#[derive(Debug)]
#[allow(dead_code)]
struct Record {
    key: Key,
    name: u32,
    process_id: u32,
    start_mono: u64,
    start_wall_ns: u64,
    duration_ns: u64,
    retry_count: u32,
    failed: bool,
    error: Option<Box<str>>,
}

/// Slots of the short-name table.
const SHORT_SLOTS: usize = 256;

#[derive(Debug)]
struct Shard {
    in_flight: HashTable<Record>,
    finished: VecDeque<Record>,
    retention: usize,
    completed: u64,
    failed: u64,
    short: Box<[([u64; 3], u32); SHORT_SLOTS]>,
    names: Vec<Box<str>>,
    anchor_mono: u64,
    anchor_wall_ns: u64,
}

impl Shard {
    #[inline]
    fn intern(&mut self, name: &str) -> u32 {
        let Some(key) = Key::of(name) else {
            return self.intern_slowly(name);
        };
        let [low, high, len] = key.0;
        let mixed = low ^ high.rotate_left(29) ^ len;
        let slot = (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize;
        let (seen, id) = self.short[slot];
        if seen == key.0 {
            return id;
        }
        let id = self.intern_slowly(name);
        self.short[slot] = (key.0, id);
        id
    }

    #[inline(never)]
    fn intern_slowly(&mut self, name: &str) -> u32 {
        let id = match self.names.iter().position(|n| **n == *name) {
            Some(at) => at,
            None => {
                self.names.push(name.into());
                self.names.len() - 1
            }
        };
        id as u32
    }

    /// As the library derives it: from the monotonic clock and an anchor read once a second.
    fn wall_ns(&mut self, mono: u64) -> u64 {
        if self.anchor_wall_ns == 0 || mono > self.anchor_mono + 1_000_000_000 {
            self.anchor_mono = mono;
            self.anchor_wall_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
        }
        self.anchor_wall_ns
            .wrapping_add(mono.wrapping_sub(self.anchor_mono))
    }
}

#[derive(Debug)]
struct Sketch {
    shard: Mutex<Shard>,
    hasher: foldhash::fast::RandomState,
    clock: quanta::Clock,
    base: u64,
}

impl Sketch {
    fn new(retention: usize) -> Self {
        let clock = quanta::Clock::new();
        Sketch {
            shard: Mutex::new(Shard {
                in_flight: HashTable::new(),
                finished: VecDeque::with_capacity(retention),
                retention,
                completed: 0,
                failed: 0,
                short: Box::new([([0; 3], 0); SHORT_SLOTS]),
                names: Vec::new(),
                anchor_mono: 0,
                anchor_wall_ns: 0,
            }),
            hasher: foldhash::fast::RandomState::default(),
            base: clock.raw(),
            clock,
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.base, self.clock.raw())
    }

    fn hash(&self, key: Key) -> u64 {
        self.hasher.hash_one((key.0[0], key.0[1], key.0[2]))
    }

    #[inline(never)]
    fn start(&self, name: &str, id: &str) -> Result<(), &'static str> {
        let mono = self.now();
        let key = Key::of(id).ok_or("the sketch takes ids of at most 16 bytes")?;
        let hash = self.hash(key);
        let mut shard = self.shard.lock().map_err(|_| "poisoned")?;
        let shard = &mut *shard;
        let name = shard.intern(name);
        let start_wall_ns = shard.wall_ns(mono);
        let place = shard
            .in_flight
            .entry(hash, |r| r.key == key, |r| self.hash(r.key));
        let hashbrown::hash_table::Entry::Vacant(place) = place else {
            return Err("already in flight");
        };
        place.insert(Record {
            key,
            name,
            process_id: 7,
            start_mono: mono,
            start_wall_ns,
            duration_ns: 0,
            retry_count: 0,
            failed: false,
            error: None,
        });
        Ok(())
    }

    #[inline(never)]
    fn end(&self, id: &str, error: Option<&str>) -> Result<(), &'static str> {
        let now = self.now();
        let key = Key::of(id).ok_or("the sketch takes ids of at most 16 bytes")?;
        let hash = self.hash(key);
        let mut shard = self.shard.lock().map_err(|_| "poisoned")?;
        let shard = &mut *shard;
        let entry = shard
            .in_flight
            .find_entry(hash, |r| r.key == key)
            .map_err(|_| "not in flight")?;
        let (mut record, _) = entry.remove();
        record.duration_ns = now.saturating_sub(record.start_mono);
        record.failed = error.is_some();
        record.error = error.map(Box::from);
        if record.failed {
            shard.failed += 1;
        } else {
            shard.completed += 1;
        }
        if shard.finished.len() >= shard.retention {
            shard.finished.pop_front();
        }
        shard.finished.push_back(record);
        Ok(())
    }
}

#[inline(never)]
fn sketch_pairs(sketch: &Sketch, ids: &[String]) {
    for id in std::hint::black_box(ids) {
        sketch.start(EVENT_NAME, id).expect("unique id");
        sketch.end(id, None).expect("in flight");
    }
}

#[inline(never)]
fn library_pairs(logger: &TelemetryLogger, ids: &[String]) {
    support::run_pairs(logger, std::hint::black_box(ids));
}

/// Nanoseconds per pair of `pairs` runs of `run` over fresh ids.
fn time(ids: &mut Ids, pairs: usize, run: impl Fn(&[String])) -> f64 {
    let batch = ids.next_batch(pairs).to_vec();
    let started = Instant::now();
    run(&batch);
    started.elapsed().as_nanos() as f64 / pairs as f64
}

fn main() {
    let spec = std::env::var("PAIR_SKETCH_DRIVE").unwrap_or_else(|_| "100000,3000000".into());
    let numbers: Vec<usize> = spec
        .split(',')
        .map(|n| n.trim().replace('_', "").parse())
        .collect::<Result<_, _>>()
        .expect("PAIR_SKETCH_DRIVE=<retention>,<pairs>");
    let [retention, pairs] = numbers[..] else {
        panic!("PAIR_SKETCH_DRIVE=<retention>,<pairs>");
    };
    let mut ids = Ids::default();

    let sketch = Sketch::new(retention);
    while sketch.shard.lock().expect("not poisoned").finished.len() < retention {
        sketch_pairs(&sketch, ids.next_batch(support::BATCH));
    }
    let sketch_ns = time(&mut ids, pairs, |batch| sketch_pairs(&sketch, batch));

    let logger = TelemetryLogger::with_config(&TelemetryConfig::default().retention(retention));
    support::fill_to_steady_state(&logger, &mut ids, retention);
    let library_ns = time(&mut ids, pairs, |batch| library_pairs(&logger, batch));

    println!(
        "retention {retention}, {pairs} pairs: sketch {sketch_ns:.1} ns per pair, \
         library {library_ns:.1} ns per pair (×{:.2} of the sketch)",
        library_ns / sketch_ns
    );
}
