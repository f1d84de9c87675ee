//! The sharded record store behind [`TelemetryLogger`](crate::TelemetryLogger) and
//! [`NetworkTelemetry`](crate::NetworkTelemetry).
//!
//! Each thread keeps its records in its home shard (threads take the shards in turn), so
//! threads recording at once do not write the same memory. Each shard is a lock
//! ([`ShardLock`]) over:
//! - the in-flight records started on its threads (kept until ended: their number is the
//!   caller's to bound),
//! - the retained finished records, oldest first, in segments that queued publishers share
//!   once full (see [`ring`]), and (once a finished record is looked up by id) an index from
//!   task id to the newest record of that id, so an id may be reused once its first run has
//!   ended,
//! - exact running totals, which eviction does not touch,
//! - its own copy of the publisher set, its interned names and its wall-clock anchor.
//!
//! Once a second thread starts records, [`claims`] records which shard holds each in-flight id,
//! so a start refuses an id in flight on any thread and an end or retry from another thread
//! finds its record; while one thread starts them all, its home shard answers both questions
//! and no claims are kept. A start/end pair on one thread hashes once per call, takes its home
//! shard's uncontended lock once per call (and with several recorders writes one word of the
//! claims) and reads the monotonic clock once per call; it allocates nothing for short task ids
//! and known names.
//!
//! A full store evicts the oldest record of the receiving shard, unless another shard's oldest
//! is much older (a thread stopped recording, say): then it evicts from that shard for a while,
//! so the store stays close to oldest-first however threads come and go.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;

use crate::error::TelemetryError;
use crate::publish::dispatch::{Dispatcher, InFlight, PublisherCache};
use crate::publish::worker::{Batch, Run};

/// A shard's lock: a spin lock whose waiters give their core away on every try. Its unlock is
/// one plain store where `std`'s mutex swaps (a locked instruction, which waits for every
/// store before it): an event with its network operation takes four shard locks, and this saves
/// 3 to 5 ns of its ~180 (BENCHMARKS.md, session 10). The sections it guards on the recording
/// path are short (one insert or remove, a ring push); the long holders, queries walking a
/// shard and the delivery thread collecting, are rare. It does not poison: a panic while it
/// is held cannot leave a record half-written (every change is one insert or remove).
type ShardLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;
type ShardGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T, spin::relax::Yield>;

mod claims;
mod interner;
mod ring;
mod task_id;
use claims::{Claims, Homes};
pub(crate) use interner::{Interner, Name, Names};
pub(crate) use ring::{OwnsHeap, Records, Ring, Segment};
pub(crate) use task_id::{TaskId, TaskKey};

/// What a store needs from the records it keeps.
pub(crate) trait Record: OwnsHeap + Clone + Send + Sync + 'static {
    /// Exact running totals over finished records.
    type Totals: Default + Send;
    fn task_id(&self) -> &TaskId;
    /// The low 32 bits of the task id's hash, kept so eviction never reads the id again.
    fn key_hash(&self) -> u32;
    /// Monotonic start, used to list records in the order they started.
    fn start_mono(&self) -> u64;
    /// Monotonic end, once ended: how long a record has waited for the queued publishers
    /// counts from it.
    fn end_mono(&self) -> u64;
    /// Records of this kind as handed to publishers, with the names of their shard.
    fn batch(names: Names, records: Run<Self>) -> Batch;
    fn account(totals: &mut Self::Totals, finished: &Self);
    /// The series slot a record of this kind is aggregated into on its recording thread, for
    /// publishers that keep their series in memory.
    #[cfg(feature = "series")]
    type Slot: crate::series::Absorb + std::fmt::Debug + Send + Sync + 'static;
    /// Adds the finished record to `series`; `cache` holds this shard's slots, `names` its
    /// interned names.
    #[cfg(feature = "series")]
    fn aggregate(
        &self,
        series: &crate::series::PipelineSeries,
        cache: &mut crate::series::SlotCache<Self::Slot>,
        names: &Interner,
    );
    fn merge(into: &mut Self::Totals, from: &Self::Totals);
}

/// What a new record is made from; handed to the record's constructor under the shard lock.
pub(crate) struct Start<'a> {
    pub(crate) task_id: TaskId,
    pub(crate) key_hash: u32,
    /// Wall-clock start, nanoseconds since the Unix epoch.
    pub(crate) start_wall_ns: u64,
    pub(crate) start_mono: u64,
    /// The shard's interned names: event names, hosts, operations.
    pub(crate) names: &'a mut Interner,
}

/// Above this many retained records per shard the store spreads over several shards; below it
/// one shard keeps eviction strictly oldest-first.
const RECORDS_PER_SHARD_MIN: usize = 4096;
/// Shards at most: enough that threads rarely share a home shard.
pub(crate) const MAX_SHARDS: usize = claims::MAX_HOMES;
/// Buckets of the in-flight claims: room for 7,168 ids in flight before any bucket spills.
const CLAIM_BUCKETS: usize = 1024;
/// How many evictions a shard makes before it looks again at where to evict from.
const EVICTIONS_PER_REVIEW: u32 = 64;
/// How long (nanoseconds) a finished record waits in a shard's open segment before the
/// delivery threads collect a copy of it; a busy shard seals and hands over its segments
/// sooner than that.
const COLLECT_AGE_NS: u64 = 500_000;
/// The oldest-record mark of an empty shard.
const EMPTY: u64 = u64::MAX;
/// How long a shard derives wall-clock times from the monotonic clock before reading the wall
/// clock again: wall-clock adjustments show within this time.
const WALL_ANCHOR_AGE_NS: u64 = 1_000_000_000;

/// Wall-clock times derived from the monotonic clock and an anchor refreshed once a second:
/// one clock read per timestamp instead of two.
#[derive(Debug, Default)]
struct WallClock {
    anchor_mono: u64,
    anchor_wall_ns: u64,
}

impl WallClock {
    fn wall_ns(&mut self, mono: u64) -> u64 {
        if self.anchor_wall_ns == 0 || mono > self.anchor_mono + WALL_ANCHOR_AGE_NS {
            let wall = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, crate::record::nanos);
            self.anchor_mono = mono;
            self.anchor_wall_ns = wall;
        }
        // Modular arithmetic: also right when `mono` was read just before a newer anchor.
        self.anchor_wall_ns
            .wrapping_add(mono.wrapping_sub(self.anchor_mono))
    }
}

struct Shard<R: Record> {
    in_flight: HashTable<R>,
    finished: Ring<R>,
    /// Task id → sequence number of the newest finished record with that id. Built the first
    /// time a finished record of this shard is looked up by id, and kept from then on, so
    /// recording pays for it only when the finished records are being looked up by id.
    index: Option<HashTable<u64>>,
    /// This shard's expected share of the retention, which sizes its ring's segments.
    share: usize,
    /// The shard this one's evictions take from: itself, or one holding much older records.
    evict_from: usize,
    /// Evictions left before `evict_from` is chosen again.
    evictions_to_review: u32,
    totals: R::Totals,
    publishers: PublisherCache<R>,
    names: Interner,
    clock: WallClock,
}

impl<R: Record> Drop for Shard<R> {
    fn drop(&mut self) {
        // Records finished before the store was cleared or dropped still reach publishers.
        self.publishers.collect(&self.names, &self.finished, None);
    }
}

/// The hash the finished-record index files a record under, spread from the kept 32 bits.
fn index_hash(key_hash: u32) -> u64 {
    u64::from(key_hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Segments a shard let go, dropped after its lock is released.
type Freed<R> = [Option<Segment<R>>; 2];

/// Where a shard is in its store: its index, and every shard's oldest-record mark.
#[derive(Clone, Copy)]
struct Place<'a> {
    index: usize,
    fronts: &'a [CachePadded<AtomicU64>],
}

/// Evictions a shard asks of another: `count` oldest records of shard `from`.
struct Steal {
    from: usize,
    count: usize,
}

impl<R: Record> Shard<R> {
    fn new(share: usize) -> Self {
        Shard {
            in_flight: HashTable::new(),
            finished: Ring::new(share),
            index: None,
            share,
            evict_from: usize::MAX,
            evictions_to_review: 0,
            totals: R::Totals::default(),
            publishers: PublisherCache::default(),
            names: Interner::default(),
            clock: WallClock::default(),
        }
    }

    /// The sequence number of the newest finished record with this id.
    fn newest_finished(&mut self, key_hash: u32, key: TaskKey<'_>) -> Option<u64> {
        if self.index.is_none() {
            self.build_index();
        }
        let index = self.index.as_ref()?;
        index
            .find(index_hash(key_hash), |&seq| {
                key.is(self.finished.get(seq).task_id())
            })
            .copied()
    }

    fn build_index(&mut self) {
        let mut index = HashTable::with_capacity(self.finished.len());
        let first = self.finished.first_seq();
        for (offset, record) in self.finished.iter().enumerate() {
            let seq = first + offset as u64;
            file(&mut index, &self.finished, seq, record);
        }
        self.index = Some(index);
    }

    /// Retains a finished record (which ended at `ended`, monotonic) and offers it to the
    /// queued publishers, evicting to make room (segments left with no retained record go to
    /// `freed`, to be dropped after the lock). When the room is to be made in another shard
    /// (see [`Shard::review`]), returns that shard and how many of its records to evict once
    /// this lock is released.
    // Always inlined: with two callers (the sole recorder's finish and the general one) the
    // compiler kept it out of line, and the call cost about 5 ns per event.
    #[inline(always)]
    fn keep(
        &mut self,
        record: R,
        ended: u64,
        budget: &Budget,
        at: Place<'_>,
        freed: &mut Freed<R>,
    ) -> Option<Steal> {
        let due = if budget.limit == 0 {
            0
        } else {
            budget.evictions_before_adding()
        };
        let mut steal = None;
        if due > 0 {
            if self.evictions_to_review == 0 || self.evict_from == usize::MAX {
                self.review(at, record.start_mono());
            }
            self.evictions_to_review -= 1;
            if self.evict_from == at.index {
                let mut done = 0;
                for slot in freed.iter_mut().take(due) {
                    done += usize::from(self.evict_oldest(slot));
                }
                // Nothing (or too little) here to evict: over by that much until trimmed.
                budget.overshoot(due - done);
            } else {
                steal = Some(Steal {
                    from: self.evict_from,
                    count: due,
                });
            }
        }
        let seq = self.finished.end();
        let sealed = self.finished.push(record);
        if let Some(index) = &mut self.index {
            file(index, &self.finished, seq, self.finished.get(seq));
        }
        self.publishers
            .offer(&self.names, &self.finished, sealed, ended);
        if budget.limit == 0 {
            // Retained for no query: evicted once offered, so a segment it sealed was handed over
            // before this eviction can free it. It stays in memory until its own segment goes.
            self.evict_oldest(&mut freed[0]);
        }
        steal
    }

    /// Chooses where the next evictions come from: this shard, unless another shard's oldest
    /// record is more than half again as old as this shard's oldest (`now` is a recent start).
    fn review(&mut self, at: Place<'_>, now: u64) {
        self.evictions_to_review = EVICTIONS_PER_REVIEW;
        let age = |front: u64| {
            if front == EMPTY {
                0
            } else {
                now.saturating_sub(front)
            }
        };
        let own_age = age(self.front_mono());
        let (oldest, oldest_age) = at
            .fronts
            .iter()
            .enumerate()
            .map(|(i, front)| (i, age(front.load(Ordering::Relaxed))))
            .max_by_key(|&(_, age)| age)
            .unwrap_or((at.index, 0));
        self.evict_from = if oldest != at.index && oldest_age > own_age + own_age / 2 {
            oldest
        } else {
            at.index
        };
    }

    fn front_mono(&self) -> u64 {
        self.finished.front().map_or(EMPTY, Record::start_mono)
    }

    /// Evicts this shard's oldest retained record; returns whether it had one. See
    /// [`Ring::pop_front`] for `freed`.
    #[inline(always)]
    fn evict_oldest(&mut self, freed: &mut Option<Segment<R>>) -> bool {
        if let Some(index) = &mut self.index {
            if let Some(oldest) = self.finished.front() {
                // The index may point at a newer record with the same id; then it stays.
                let seq = self.finished.first_seq();
                let hash = index_hash(oldest.key_hash());
                if let Ok(entry) = index.find_entry(hash, |&s| s == seq) {
                    entry.remove();
                }
            }
        }
        self.finished.pop_front(freed)
    }
}

/// Files `record` (at `seq`) in the index, replacing an older record of the same id.
fn file<R: Record>(index: &mut HashTable<u64>, finished: &Ring<R>, seq: u64, record: &R) {
    let at = |s: u64| finished.get(s);
    let hash = index_hash(record.key_hash());
    match index.find_entry(hash, |&s| s != seq && at(s).task_id() == record.task_id()) {
        Ok(mut older) => *older.get_mut() = seq,
        Err(absent) => {
            absent
                .into_table()
                .insert_unique(hash, seq, |&s| index_hash(at(s).key_hash()));
        }
    }
}

/// The retention shared by all shards: how many finished records the store keeps.
///
/// A shard evicts its own oldest record only once the whole store is full, so the store keeps
/// `limit` records however unevenly the task ids hash. While the store fills, each kept record
/// costs one atomic add; once full, a finished record replaces its shard's oldest and the
/// counter is only read, which costs no cache-line traffic between cores.
#[derive(Debug)]
struct Budget {
    limit: usize,
    used: CachePadded<AtomicUsize>,
}

impl Budget {
    /// How many records to evict before adding one.
    fn evictions_before_adding(&self) -> usize {
        let used = self.used.load(Ordering::Relaxed);
        if used < self.limit {
            // Two threads may both take the last slot; the overshoot is trimmed below.
            self.used.fetch_add(1, Ordering::Relaxed);
            0
        } else if used > self.limit {
            self.used.fetch_sub(1, Ordering::Relaxed);
            2
        } else {
            1
        }
    }

    /// Records kept without the evictions planned for them: trimmed by later evictions.
    fn overshoot(&self, by: usize) {
        if by > 0 {
            self.used.fetch_add(by, Ordering::Relaxed);
        }
    }
}

/// A sharded store of records of one kind.
pub(crate) struct Store<R: Record> {
    shards: Box<[CachePadded<ShardLock<Shard<R>>>]>,
    /// Each shard's oldest finished record (its monotonic start), [`EMPTY`] for none: read by
    /// other shards choosing where to evict from.
    fronts: Box<[CachePadded<AtomicU64>]>,
    /// Which shard holds each in-flight id; none with one shard. Kept only once a second
    /// thread starts records (see [`Mode`]).
    claims: Option<Claims>,
    mode: AtomicU8,
    /// The home shard of the first thread to start a record, [`NO_HOME`] before.
    first_home: AtomicUsize,
    /// Held while the store turns to [`Mode::Claimed`].
    turning: Mutex<()>,
    hasher: foldhash::fast::RandomState,
    shard_mask: usize,
    budget: Budget,
    /// The store's own clock: reading it skips the thread-local override check of
    /// `quanta::Instant::now`.
    clock: quanta::Clock,
    /// The clock's raw reading when the store was made: monotonic times count from it.
    base: u64,
    dispatcher: Arc<Dispatcher>,
}

impl<R: Record> std::fmt::Debug for Store<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.shards.len())
            .field("in_flight", &self.in_flight_len())
            .field("retained", &self.retained_len())
            .finish_non_exhaustive()
    }
}

/// How many shards a store with this retention uses, when not set explicitly.
pub(crate) fn default_shards(retention: usize) -> usize {
    if retention == 0 {
        return MAX_SHARDS;
    }
    let wanted = (retention / RECORDS_PER_SHARD_MIN).clamp(1, MAX_SHARDS);
    // Round down to a power of two so a mask picks the shard.
    1 << wanted.ilog2()
}

/// Whether a store keeps claims. While one thread starts all records they are all in its home
/// shard, which answers every question claims would, so that thread pays nothing for them.
/// When another thread starts one, the store claims every record in flight and keeps claims
/// from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Every in-flight record is in the first recorder's home shard; no claims.
    OneRecorder,
    /// Claiming the records in flight; wait on `turning`.
    Turning,
    /// Every in-flight record is claimed.
    Claimed,
}

const NO_HOME: usize = usize::MAX;

/// This thread's turn number: its home shard in every store is this number masked. A thread
/// takes the smallest number no running thread holds, so threads that replace finished ones
/// take over their shards (and records) instead of spreading over new ones.
#[inline]
fn thread_turn() -> usize {
    let turn = CACHED_TURN.get();
    if turn != NO_TURN {
        return turn;
    }
    take_turn()
}

const NO_TURN: usize = usize::MAX;

thread_local! {
    /// This thread's turn once taken: a plain read, where the turn itself (which has a
    /// destructor) would be checked for initialization on every read.
    static CACHED_TURN: Cell<usize> = const { Cell::new(NO_TURN) };
}

#[cold]
fn take_turn() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static RETURNED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    struct Turn(usize);
    impl Drop for Turn {
        fn drop(&mut self) {
            CACHED_TURN.set(NO_TURN);
            let mut returned = RETURNED.lock().unwrap_or_else(|p| p.into_inner());
            returned.push(self.0);
        }
    }
    thread_local!(static TURN: Turn = {
        let mut returned = RETURNED.lock().unwrap_or_else(|p| p.into_inner());
        let smallest = (0..returned.len()).min_by_key(|&i| returned[i]);
        Turn(smallest.map_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed), |i| returned.swap_remove(i)))
    });
    // While the thread's locals are being destroyed (a guard dropped by another local's
    // destructor, say), any shard will do.
    TURN.try_with(|turn| {
        CACHED_TURN.set(turn.0);
        turn.0
    })
    .unwrap_or(0)
}

impl<R: Record> Store<R> {
    /// `shards` is rounded down to a power of two, at least 1 and at most [`MAX_SHARDS`].
    pub(crate) fn new(retention: usize, shards: usize, dispatcher: Arc<Dispatcher>) -> Self {
        let shards = 1usize << shards.clamp(1, MAX_SHARDS).ilog2();
        let share = retention.div_ceil(shards);
        let clock = quanta::Clock::new();
        Store {
            shards: (0..shards)
                .map(|_| CachePadded::new(ShardLock::new(Shard::new(share))))
                .collect(),
            fronts: (0..shards)
                .map(|_| CachePadded::new(AtomicU64::new(EMPTY)))
                .collect(),
            claims: (shards > 1).then(|| Claims::new(CLAIM_BUCKETS)),
            mode: AtomicU8::new(Mode::OneRecorder as u8),
            first_home: AtomicUsize::new(NO_HOME),
            turning: Mutex::new(()),
            hasher: foldhash::fast::RandomState::default(),
            shard_mask: shards - 1,
            budget: Budget {
                limit: retention,
                used: CachePadded::new(AtomicUsize::new(0)),
            },
            base: clock.raw(),
            clock,
            dispatcher,
        }
    }

    pub(crate) fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Nanoseconds on the monotonic clock since this store was made. The clock is the CPU's
    /// time-stamp counter where it is reliable (a few nanoseconds to read), the operating
    /// system's monotonic clock otherwise.
    #[inline]
    pub(crate) fn mono_now(&self) -> u64 {
        // Raw readings and one scaling of their difference: no `Instant` or `Duration` on the
        // way, whose conversions cost about as much as the reading itself.
        self.clock.delta_as_nanos(self.base, self.clock.raw())
    }

    #[inline]
    fn lock(&self, index: usize) -> ShardGuard<'_, Shard<R>> {
        self.shards[index].lock()
    }

    #[inline]
    fn home(&self) -> usize {
        thread_turn() & self.shard_mask
    }

    // Always inlined, with `Shard::evict_oldest`: both run on every finish, and as calls they
    // cost about 4 ns per event.
    #[inline(always)]
    fn mark_front(&self, index: usize, shard: &Shard<R>) {
        let front = shard.front_mono();
        if self.fronts[index].load(Ordering::Relaxed) != front {
            self.fronts[index].store(front, Ordering::Relaxed);
        }
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            0 => Mode::OneRecorder,
            1 => Mode::Turning,
            _ => Mode::Claimed,
        }
    }

    /// Waits until a store turning to claims has claimed every record in flight.
    #[cold]
    fn wait_for_claims(&self) {
        drop(self.turning.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The claims a start from `home` must take: none while this thread is the store's only
    /// recorder (checked again under its shard's lock), else the claims, turning the store to
    /// claims first if this is the second recorder.
    #[inline]
    fn claims_for_start(&self, home: usize) -> Option<&Claims> {
        let claims = self.claims.as_ref()?;
        if self.mode() == Mode::Claimed {
            return Some(claims);
        }
        // A plain load first: a compare-exchange would take the line exclusive on every start.
        let mut first = self.first_home.load(Ordering::Acquire);
        if first == NO_HOME {
            first = match self.first_home.compare_exchange(
                NO_HOME,
                home,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => home,
                Err(first) => first,
            };
        }
        if first == home {
            return None;
        }
        self.turn_to_claims(claims);
        Some(claims)
    }

    /// Claims every record in flight and keeps claims from then on. Records that recorders
    /// without claims add meanwhile are claimed too: such a recorder checks the mode under its
    /// shard's lock, which the claiming takes after announcing the turn.
    #[cold]
    fn turn_to_claims(&self, claims: &Claims) {
        let _turning = self.turning.lock().unwrap_or_else(|p| p.into_inner());
        if self.mode() == Mode::Claimed {
            return;
        }
        self.mode.store(Mode::Turning as u8, Ordering::SeqCst);
        for index in 0..self.shards.len() {
            let shard = self.lock(index);
            for record in shard.in_flight.iter() {
                claims
                    .lock(record.task_id().key().hash(&self.hasher))
                    .claim(index);
            }
        }
        self.mode.store(Mode::Claimed as u8, Ordering::Release);
    }

    /// Runs `op` on shards that may hold `task_id` in flight, locked, until it returns `Some`:
    /// this thread's home shard, then those its claims point to; or, while one thread records,
    /// that thread's shard alone. Returns what `op` returned, the shard, and whether the
    /// shard's records are claimed.
    #[inline]
    fn with_in_flight<T>(
        &self,
        hash: u64,
        mut op: impl FnMut(usize, &mut Shard<R>) -> Option<T>,
    ) -> Option<(T, usize, bool)> {
        let Some(claims) = &self.claims else {
            return op(0, &mut self.lock(0)).map(|found| (found, 0, false));
        };
        loop {
            if self.mode() == Mode::Claimed {
                let home = self.home();
                let others = claims.homes(hash) & !(1 << home);
                for index in std::iter::once(home).chain(shards_of(others)) {
                    if let Some(found) = op(index, &mut self.lock(index)) {
                        return Some((found, index, true));
                    }
                }
                return None;
            }
            let first = self.first_home.load(Ordering::Acquire);
            if first == NO_HOME {
                return None;
            }
            let mut shard = self.lock(first);
            match self.mode() {
                // Only the first recorder's shard holds records in flight.
                Mode::OneRecorder => {
                    return op(first, &mut shard).map(|found| (found, first, false))
                }
                Mode::Claimed => {}
                Mode::Turning => {
                    drop(shard);
                    self.wait_for_claims();
                }
            }
        }
    }

    /// Whether one of the `homes` shards holds `task_id` in flight.
    fn in_flight_in(&self, homes: Homes, hash: u64, key: TaskKey<'_>) -> bool {
        shards_of(homes).any(|index| {
            let shard = self.lock(index);
            shard
                .in_flight
                .find(hash, |r| key.is(r.task_id()))
                .is_some()
        })
    }

    /// Adds an in-flight record built by `make` to this thread's home shard; refuses an id
    /// that is already in flight on any thread, keeping the first.
    pub(crate) fn start(
        &self,
        task_id: &str,
        make: impl FnOnce(Start<'_>) -> R,
    ) -> Result<(), TelemetryError> {
        let start_mono = self.mono_now();
        let key = TaskKey::new(task_id);
        let hash = key.hash(&self.hasher);
        let id = key.to_id();
        let home = self.home();
        let already = || TelemetryError::AlreadyInFlight {
            task_id: task_id.to_owned(),
        };
        loop {
            // Held until the record is in place: no other start of this id can slip in between.
            let claim = self.claims_for_start(home).map(|claims| claims.lock(hash));
            if let Some(claim) = &claim {
                let homes = claim.homes();
                if homes != 0 && self.in_flight_in(homes, hash, key) {
                    return Err(already());
                }
            }
            let mut guard = self.lock(home);
            let shard = &mut *guard;
            if claim.is_none() {
                match self.mode() {
                    Mode::OneRecorder => {}
                    // Another thread started recording since: start again with claims.
                    Mode::Claimed => continue,
                    Mode::Turning => {
                        drop(guard);
                        self.wait_for_claims();
                        continue;
                    }
                }
            }
            // One probe finds a duplicate (without claims, the only check) or the free place.
            let hasher = &self.hasher;
            let place = shard.in_flight.entry(
                hash,
                |r| key.is(r.task_id()),
                |r| r.task_id().key().hash(hasher),
            );
            let hashbrown::hash_table::Entry::Vacant(place) = place else {
                return Err(already());
            };
            place.insert(make(Start {
                task_id: id,
                key_hash: hash as u32,
                start_wall_ns: shard.clock.wall_ns(start_mono),
                start_mono,
                names: &mut shard.names,
            }));
            if let Some(claim) = claim {
                claim.claim(home);
            }
            return Ok(());
        }
    }

    /// Changes an in-flight record.
    pub(crate) fn update<T>(
        &self,
        task_id: &str,
        change: impl FnOnce(&mut R) -> T,
    ) -> Result<T, TelemetryError> {
        let key = TaskKey::new(task_id);
        let hash = key.hash(&self.hasher);
        let mut change = Some(change);
        let found = self.with_in_flight(hash, |_, shard| {
            let record = shard.in_flight.find_mut(hash, |r| key.is(r.task_id()))?;
            change.take().map(|change| change(record))
        });
        found.map(|(t, _, _)| t).ok_or_else(|| unknown(task_id))
    }

    /// Ends an in-flight record: `end` fills in its outcome, then it is counted, offered to
    /// the publishers and retained.
    pub(crate) fn finish(
        &self,
        task_id: &str,
        end: impl FnOnce(&mut R),
    ) -> Result<(), TelemetryError> {
        let key = TaskKey::new(task_id);
        let hash = key.hash(&self.hasher);
        let mut end = Some(end);
        // Filled under the lock, freed after it: freeing is the slowest part.
        let mut freed: Freed<R> = [None, None];
        // While one thread records, its home shard holds every record in flight and none is
        // claimed: one lock, no claims to release.
        if let Some(home) = self.sole_home() {
            let mut guard = self.lock(home);
            if self.claims.is_none() || self.mode() == Mode::OneRecorder {
                let steal = self
                    .finish_in(home, &mut guard, hash, key, &mut end, &mut freed)
                    .ok_or_else(|| unknown(task_id))?;
                drop(guard);
                if let Some(steal) = steal {
                    self.evict_elsewhere(steal);
                }
                return Ok(());
            }
        }
        let found = self.with_in_flight(hash, |index, shard| {
            self.finish_in(index, shard, hash, key, &mut end, &mut freed)
        });
        let Some((steal, index, claimed)) = found else {
            return Err(unknown(task_id));
        };
        if claimed {
            if let Some(claims) = &self.claims {
                claims.release(hash, index);
            }
        }
        if let Some(steal) = steal {
            self.evict_elsewhere(steal);
        }
        // `freed` is dropped here, after the lock.
        Ok(())
    }

    /// The shard that holds every record in flight while one thread records.
    #[inline]
    fn sole_home(&self) -> Option<usize> {
        if self.claims.is_none() {
            return Some(0);
        }
        if self.mode() != Mode::OneRecorder {
            return None;
        }
        let first = self.first_home.load(Ordering::Acquire);
        (first != NO_HOME).then_some(first)
    }

    /// Finishes the record with this id in `shard` (locked, at `index`) with `end`, if the
    /// record is there (`end` is taken only then: the caller may look in several shards).
    #[inline(always)]
    fn finish_in(
        &self,
        index: usize,
        shard: &mut Shard<R>,
        hash: u64,
        key: TaskKey<'_>,
        end: &mut Option<impl FnOnce(&mut R)>,
        freed: &mut Freed<R>,
    ) -> Option<Option<Steal>> {
        let mut entry = shard
            .in_flight
            .find_entry(hash, |r| key.is(r.task_id()))
            .ok()?;
        // Finished, counted and aggregated in the table, then moved out whole: read in its
        // new place in the ring, or changed there, its fields would be read straight after
        // the wide stores of the move (or the move would read them straight after theirs).
        (end.take()?)(entry.get_mut());
        let finished = entry.get();
        R::account(&mut shard.totals, finished);
        let ended = finished.end_mono();
        shard
            .publishers
            .aggregate(&self.dispatcher, &shard.names, &shard.finished, finished);
        let (record, _) = entry.remove();
        let place = Place {
            index,
            fronts: &self.fronts,
        };
        let steal = shard.keep(record, ended, &self.budget, place, freed);
        self.mark_front(index, shard);
        Some(steal)
    }

    /// Evicts the oldest records of another shard, for room a shard made for its own.
    #[cold]
    fn evict_elsewhere(&self, steal: Steal) {
        let mut guard = self.lock(steal.from);
        let mut freed: Vec<Segment<R>> = Vec::new();
        let mut done = 0;
        while done < steal.count {
            let mut segment = None;
            if !guard.evict_oldest(&mut segment) {
                break;
            }
            done += 1;
            freed.extend(segment);
        }
        self.mark_front(steal.from, &guard);
        drop(guard);
        self.budget.overshoot(steal.count - done);
    }

    /// Applies `read` to the record with this id: the in-flight one if there is one, else the
    /// newest retained finished one.
    pub(crate) fn get<T>(&self, task_id: &str, read: impl Fn(&R, &Interner) -> T) -> Option<T> {
        let key = TaskKey::new(task_id);
        let hash = key.hash(&self.hasher);
        let in_flight = self.with_in_flight(hash, |_, shard| {
            let record = shard.in_flight.find(hash, |r| key.is(r.task_id()))?;
            Some(read(record, &shard.names))
        });
        if let Some((found, _, _)) = in_flight {
            return Some(found);
        }
        let mut newest: Option<(u64, T)> = None;
        for index in 0..self.shards.len() {
            let mut guard = self.lock(index);
            let shard = &mut *guard;
            let Some(seq) = shard.newest_finished(hash as u32, key) else {
                continue;
            };
            let record = shard.finished.get(seq);
            if newest
                .as_ref()
                .is_none_or(|(start, _)| record.start_mono() > *start)
            {
                newest = Some((record.start_mono(), read(record, &shard.names)));
            }
        }
        newest.map(|(_, found)| found)
    }
    /// Collects from every retained record (in flight and finished) the ones `pick` keeps,
    /// in the order they started.
    pub(crate) fn select<T>(&self, mut pick: impl FnMut(&R, &Interner) -> Option<T>) -> Vec<T> {
        let mut picked = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for record in shard.in_flight.iter().chain(shard.finished.iter()) {
                if let Some(t) = pick(record, &shard.names) {
                    picked.push((record.start_mono(), t));
                }
            }
        }
        picked.sort_by_key(|(start, _)| *start);
        picked.into_iter().map(|(_, t)| t).collect()
    }

    /// The running totals and the number of in-flight records, each shard read under one
    /// lock, and `visit` applied to every in-flight record. A record ending during the call is
    /// counted exactly once: in flight or finished.
    pub(crate) fn totals_and_in_flight(&self, mut visit: impl FnMut(&R)) -> (R::Totals, usize) {
        let mut all = R::Totals::default();
        let mut in_flight = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock();
            R::merge(&mut all, &shard.totals);
            in_flight += shard.in_flight.len();
            shard.in_flight.iter().for_each(&mut visit);
        }
        (all, in_flight)
    }

    pub(crate) fn in_flight_len(&self) -> usize {
        self.sum(|s| s.in_flight.len())
    }

    pub(crate) fn retained_len(&self) -> usize {
        self.sum(|s| s.finished.len())
    }

    fn sum(&self, f: impl Fn(&Shard<R>) -> usize) -> usize {
        self.shards.iter().map(|s| f(&s.lock())).sum()
    }

    /// Forgets every record and total (publishers stay attached).
    pub(crate) fn clear(&self) {
        // Claims first: a start racing with this leaves at worst a claim without a record,
        // which only costs a later start of that id a look.
        if let Some(claims) = &self.claims {
            claims.clear();
        }
        for (index, shard) in self.shards.iter().enumerate() {
            let mut shard = shard.lock();
            let share = shard.share;
            *shard = Shard::new(share);
            self.mark_front(index, &shard);
        }
        self.budget.used.store(0, Ordering::Relaxed);
    }
}

impl<R: Record> InFlight for Store<R> {
    fn in_flight_len(&self) -> usize {
        Store::in_flight_len(self)
    }

    fn hand_over(&self, wait: bool) {
        // Without `wait` (the delivery thread collecting on its own), only records that waited
        // a while: a busy shard's records go in whole segments, with no copying.
        let ended_before = (!wait).then(|| self.mono_now().saturating_sub(COLLECT_AGE_NS));
        for shard in self.shards.iter() {
            let guard = if wait {
                Some(shard.lock())
            } else {
                // A busy shard hands its batch over itself, soon.
                shard.try_lock()
            };
            if let Some(mut guard) = guard {
                let shard = &mut *guard;
                shard
                    .publishers
                    .collect(&shard.names, &shard.finished, ended_before);
            }
        }
    }
}

/// The shard indexes in `homes`, lowest first.
fn shards_of(mut homes: Homes) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (homes != 0).then(|| {
            let index = homes.trailing_zeros() as usize;
            homes &= homes - 1;
            index
        })
    })
}

fn unknown(task_id: &str) -> TelemetryError {
    TelemetryError::UnknownTask {
        task_id: task_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventRecord;
    use std::time::Duration;

    fn record(start: Start<'_>, mono: u64) -> EventRecord {
        EventRecord {
            task_id: start.task_id,
            event_name: start.names.get("e"),
            error: None,
            start_wall_ns: start.start_wall_ns,
            start_mono: mono,
            duration_ns: 0,
            retry_count: 0,
            process_id: 1,
            key_hash: start.key_hash,
            status: crate::Status::Pending,
        }
    }

    fn store(retention: usize, shards: usize) -> Store<EventRecord> {
        let d = Arc::new(Dispatcher::new(16, Duration::from_secs(1)));
        Store::new(retention, shards, d)
    }

    fn finish(s: &Store<EventRecord>, id: &str, start: u64) {
        s.start(id, |st| record(st, start)).unwrap();
        s.finish(id, |r| r.status = crate::Status::Completed)
            .unwrap();
    }

    #[test]
    fn one_shard_evicts_strictly_oldest_first() {
        let s = store(3, 1);
        for i in 0..5 {
            finish(&s, &format!("t{i}"), i);
        }
        let kept: Vec<String> = s.select(|r, _| Some(r.task_id.to_string()));
        assert_eq!(kept, ["t2", "t3", "t4"]);
        assert!(s.get("t0", |_, _| ()).is_none());
        assert!(s.get("t4", |_, _| ()).is_some());
    }

    #[test]
    fn a_reused_id_finds_its_newest_run_and_survives_eviction_of_the_older() {
        let s = store(2, 1);
        finish(&s, "same", 0);
        finish(&s, "same", 1);
        assert_eq!(s.get("same", |r, _| r.start_mono), Some(1));
        finish(&s, "other", 2); // evicts the first "same"
        assert_eq!(s.get("same", |r, _| r.start_mono), Some(1));
        finish(&s, "other2", 3); // evicts the second
        assert_eq!(s.get("same", |r, _| r.start_mono), None);
    }

    #[test]
    fn retention_is_exact_across_shards_and_rings_stay_near_their_size() {
        let s = store(1000, 16);
        for i in 0..10_000 {
            finish(&s, &format!("task-{i}"), i);
        }
        assert_eq!(s.retained_len(), 1000);
        let mut capacity = 0;
        for shard in s.shards.iter() {
            let shard = shard.lock();
            capacity += shard.finished.capacity();
            assert!(shard.index.is_none(), "nothing was looked up");
        }
        assert!(capacity <= 1000 + 1000 / 4 + 16 * 8, "capacity {capacity}");
    }

    #[test]
    fn a_store_keeps_its_whole_retention_however_ids_hash() {
        let s = store(100_000, 16);
        for i in 0..100_000 {
            finish(&s, &format!("task-{i}"), i);
        }
        assert_eq!(s.retained_len(), 100_000);
        assert!(s.get("task-0", |_, _| ()).is_some());
        finish(&s, "one-more", 100_000);
        assert_eq!(s.retained_len(), 100_000);
    }

    #[test]
    fn the_index_built_on_first_lookup_is_kept_up_to_date() {
        let s = store(50, 1);
        for i in 0..40 {
            finish(&s, &format!("t{i}"), i);
        }
        assert_eq!(s.get("t5", |r, _| r.start_mono), Some(5));
        for i in 40..100 {
            finish(&s, &format!("t{}", i % 70), i);
        }
        // Runs 0..50 were evicted; ids t0..t29 were reused by runs 70..100.
        assert_eq!(s.get("t45", |r, _| r.start_mono), None);
        assert_eq!(s.get("t5", |r, _| r.start_mono), Some(75));
        assert_eq!(s.get("t60", |r, _| r.start_mono), Some(60));
        assert_eq!(s.get("t2", |r, _| r.start_mono), Some(72));
        let shard = s.shards[0].lock();
        assert_eq!(shard.index.as_ref().unwrap().len(), shard.finished.len());
    }

    #[test]
    fn wall_times_follow_the_monotonic_clock_within_an_anchor() {
        let mut clock = WallClock::default();
        let first = clock.wall_ns(1_000);
        assert_eq!(clock.wall_ns(1_500), first + 500);
        // Read just before a newer anchor: still consistent.
        assert_eq!(clock.wall_ns(900), first - 100);
        let later = clock.wall_ns(1_000 + 2 * WALL_ANCHOR_AGE_NS);
        assert!(later >= first);
    }

    #[test]
    fn zero_retention_keeps_nothing_but_finds_in_flight() {
        let s = store(0, 4);
        s.start("a", |st| record(st, 0)).unwrap();
        assert!(s.get("a", |_, _| ()).is_some());
        s.finish("a", |_| ()).unwrap();
        assert!(s.get("a", |_, _| ()).is_none());
        assert_eq!(s.retained_len(), 0);
    }

    /// Runs `f` on a new thread, which has its own home shard.
    fn on_another_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| scope.spawn(f).join().unwrap())
    }

    #[test]
    fn a_record_started_on_one_thread_is_found_ended_and_refused_on_another() {
        let s = store(1000, 16);
        s.start("shared", |st| record(st, 7)).unwrap();
        on_another_thread(|| {
            assert!(matches!(
                s.start("shared", |st| record(st, 8)),
                Err(TelemetryError::AlreadyInFlight { .. })
            ));
            assert_eq!(s.get("shared", |r, _| r.start_mono), Some(7));
            assert_eq!(s.update("shared", |r| r.start_mono), Ok(7));
            s.finish("shared", |r| r.status = crate::Status::Completed)
                .unwrap();
        });
        assert_eq!(s.in_flight_len(), 0);
        assert!(matches!(
            s.finish("shared", |_| ()),
            Err(TelemetryError::UnknownTask { .. })
        ));
        assert_eq!(
            s.get("shared", |r, _| r.status),
            Some(crate::Status::Completed)
        );
        // Ended, so it may start again, on either thread.
        s.start("shared", |st| record(st, 9)).unwrap();
        assert_eq!(
            on_another_thread(|| s.get("shared", |r, _| r.start_mono)),
            Some(9)
        );
    }

    #[test]
    fn of_racing_starts_of_one_id_exactly_one_wins() {
        let s = store(1000, 16);
        for round in 0..200 {
            let id = format!("race-{round}");
            let barrier = std::sync::Barrier::new(4);
            let wins: usize = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            usize::from(s.start(&id, |st| record(st, round)).is_ok())
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).sum()
            });
            assert_eq!(wins, 1, "round {round}");
            s.finish(&id, |_| ()).unwrap();
        }
        assert_eq!(s.in_flight_len(), 0);
    }

    #[test]
    fn a_second_recorder_finds_and_refuses_what_the_first_started_without_claims() {
        let s = store(1000, 16);
        for i in 0..100 {
            s.start(&format!("a-{i}"), |st| record(st, i)).unwrap();
        }
        assert_eq!(s.mode(), Mode::OneRecorder);
        on_another_thread(|| {
            assert!(matches!(
                s.start("a-7", |st| record(st, 0)),
                Err(TelemetryError::AlreadyInFlight { .. })
            ));
            s.finish("a-8", |_| ()).unwrap();
            s.start("b-1", |st| record(st, 0)).unwrap();
        });
        assert_eq!(s.mode(), Mode::Claimed);
        assert!(matches!(
            s.start("b-1", |st| record(st, 0)),
            Err(TelemetryError::AlreadyInFlight { .. })
        ));
        for i in (0..100).filter(|&i| i != 8) {
            s.finish(&format!("a-{i}"), |_| ()).unwrap();
        }
        s.finish("b-1", |_| ()).unwrap();
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.retained_len(), 101);
    }

    #[test]
    fn threads_turning_a_store_to_claims_at_once_lose_no_duplicate() {
        for _ in 0..30 {
            let s = store(1000, 16);
            let barrier = std::sync::Barrier::new(3);
            let started: usize = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..3)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            (0..200)
                                .filter(|i| s.start(&format!("id-{i}"), |st| record(st, 0)).is_ok())
                                .count()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            assert_eq!(started, 200);
            assert_eq!(s.in_flight_len(), 200);
            for i in 0..200 {
                s.finish(&format!("id-{i}"), |_| ()).unwrap();
            }
            assert_eq!(s.in_flight_len(), 0);
        }
    }

    #[test]
    fn more_ids_in_flight_than_claim_slots_are_found_and_released_across_threads() {
        // 2 x 10,000 in flight: past the 7,168 bucket slots, so claims spill and come back.
        let s = store(1000, 16);
        let ids = |t: usize| (0..10_000).map(move |i| format!("t{t}-{i}"));
        std::thread::scope(|scope| {
            for t in 0..2 {
                let s = &s;
                scope.spawn(move || {
                    for id in ids(t) {
                        s.start(&id, |st| record(st, 0)).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.in_flight_len(), 20_000);
        // Each thread ends the other's records, and finds every one through the claims.
        std::thread::scope(|scope| {
            for t in 0..2 {
                let s = &s;
                scope.spawn(move || {
                    for id in ids(1 - t) {
                        assert!(matches!(
                            s.start(&id, |st| record(st, 1)),
                            Err(TelemetryError::AlreadyInFlight { .. })
                        ));
                        s.finish(&id, |_| ()).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.in_flight_len(), 0);
        let claims = s.claims.as_ref().unwrap();
        for id in ids(0).chain(ids(1)) {
            assert_eq!(
                claims.homes(TaskKey::new(&id).hash(&s.hasher)),
                0,
                "{id} still claimed"
            );
        }
    }

    #[test]
    fn the_newest_run_of_an_id_wins_across_threads() {
        let s = store(1000, 16);
        finish(&s, "again", 1);
        on_another_thread(|| finish(&s, "again", 2));
        assert_eq!(s.get("again", |r, _| r.start_mono), Some(2));
    }

    #[test]
    fn a_thread_that_stops_does_not_keep_its_records_forever() {
        // Thread A fills the store and stops; thread B keeps recording. B's records must
        // replace A's, oldest first, not each other.
        let s = store(1000, 16);
        on_another_thread(|| {
            for i in 0..1000 {
                finish(&s, &format!("a-{i}"), i);
            }
        });
        for i in 0..1000 {
            finish(&s, &format!("b-{i}"), 10_000 + i);
        }
        assert_eq!(s.retained_len(), 1000);
        let kept_of_b = s
            .select(|r, _| r.task_id.starts_with("b-").then_some(()))
            .len();
        assert!(kept_of_b >= 900, "kept {kept_of_b} of B's 1000 newest");
        assert!(s.get("b-999", |_, _| ()).is_some());
        assert!(s.get("a-0", |_, _| ()).is_none());
    }

    #[test]
    fn default_shards_are_one_for_small_retention() {
        assert_eq!(default_shards(10), 1);
        assert_eq!(default_shards(8192), 2);
        assert_eq!(default_shards(100_000), 16);
        assert_eq!(default_shards(0), MAX_SHARDS);
    }
}
