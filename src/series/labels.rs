//! The values of one free-form label (event name, operation), each with a slot holding every
//! series that carries it, capped: past `cap` distinct values, new values share the slot of
//! [`OTHER`] and are counted.
//!
//! A record finds its slot with one hash of its label value and a shared read lock on one of 16
//! shards, then updates the slot's atomics: one lookup per record, however many series it
//! feeds. Only a value never seen before takes a shard's write lock.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

/// The value that label values past the cap are folded into.
pub(crate) const OTHER: &str = "__other__";

const SHARDS: usize = 16;

/// One shard: value and its slot (shared, so recording threads can keep it; see
/// [`LabelSlots::slot`]).
type Shard<S> = RwLock<HashTable<(Arc<str>, Arc<Slot<S>>)>>;

/// The series of one label value: the shared ones, which records published from anywhere add
/// to atomically, and one part per store shard aggregating in place, which only that shard
/// writes (so without atomic additions). Readings add them up.
#[derive(Debug)]
pub(crate) struct Slot<S> {
    shared: S,
    parts: RwLock<Vec<S>>,
}

/// A handle on the cells of some series: a writer keeps one as its part of a [`Slot`], the
/// slot keeps a clone for readers, and both reach the cells in one step.
pub(crate) trait Part: Clone {
    /// Whether both handles share their cells.
    fn is(&self, other: &Self) -> bool;
}

impl<S> Slot<S> {
    fn new(shared: S) -> Self {
        Slot {
            shared,
            parts: RwLock::new(Vec::new()),
        }
    }

    /// The series every writer may add to.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &S {
        &self.shared
    }

    /// Calls `read` with the shared series and every part.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&S, &[S]) -> T) -> T {
        let parts = self.parts.read().unwrap_or_else(|p| p.into_inner());
        read(&self.shared, &parts)
    }
}

impl<S: Part> Slot<S> {
    /// A new part, made by `make`, for one writer to keep.
    pub(crate) fn new_part(&self, make: impl FnOnce() -> S) -> S {
        let part = make();
        self.parts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(part.clone());
        part
    }

    /// Adds `part` into the shared series with `absorb` and forgets it; readers see it in one
    /// place or the other, never both.
    pub(crate) fn retire_part(&self, part: &S, absorb: impl FnOnce(&S, &S)) {
        let mut parts = self.parts.write().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = parts.iter().position(|p| p.is(part)) {
            absorb(&self.shared, part);
            parts.swap_remove(at);
        }
    }
}

/// The distinct values of one label and their slots, capped.
pub(crate) struct LabelSlots<S> {
    name: &'static str,
    cap: usize,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard<S>]>,
    /// The slot of [`OTHER`], shared by every folded value.
    other: Arc<Slot<S>>,
    admitted: AtomicUsize,
    folded: AtomicU64,
}

impl<S> std::fmt::Debug for LabelSlots<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelSlots")
            .field("name", &self.name)
            .field("cap", &self.cap)
            .field("admitted", &self.admitted.load(Ordering::Relaxed))
            .field("folded", &self.folded.load(Ordering::Relaxed))
            .finish()
    }
}

impl<S> LabelSlots<S> {
    /// An empty set for the label `name` admitting at most `cap` distinct values; `other` is
    /// the slot folded values share.
    pub(crate) fn new(name: &'static str, cap: usize, other: S) -> Self {
        LabelSlots {
            name,
            cap,
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            other: Arc::new(Slot::new(other)),
            admitted: AtomicUsize::new(0),
            folded: AtomicU64::new(0),
        }
    }

    /// The label's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Runs `update` on the slot of `value`: its own (made with `make` if the value is new and
    /// the cap allows), or [`OTHER`]'s, counted as folded.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        value: &str,
        make: impl FnOnce() -> S,
        update: impl FnOnce(&S) -> R,
    ) -> R {
        let hash = self.hasher.hash_one(value);
        let shard = self.shard(hash);
        if let Some((_, slot)) = shard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .find(hash, |(v, _)| **v == *value)
        {
            return update(&slot.shared);
        }
        match self.admit(hash, shard, value, make) {
            Some(slot) => update(&slot.shared),
            None => self.fold(update),
        }
    }

    fn shard(&self, hash: u64) -> &Shard<S> {
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    /// The slot of `value` for a recording thread to keep and use without looking it up
    /// again: its own (made with `make` if the value is new and the cap allows), or `None`
    /// if the value is folded. Each use of [`LabelSlots::other`] for a folded value must
    /// be counted with [`LabelSlots::count_folded`].
    pub(crate) fn slot(&self, value: &str, make: impl FnOnce() -> S) -> Option<Arc<Slot<S>>> {
        let hash = self.hasher.hash_one(value);
        let shard = self.shard(hash);
        if let Some((_, slot)) = shard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .find(hash, |(v, _)| **v == *value)
        {
            return Some(Arc::clone(slot));
        }
        self.admit(hash, shard, value, make)
    }

    /// The slot of [`OTHER`], for folded values.
    pub(crate) fn other(&self) -> &Arc<Slot<S>> {
        &self.other
    }

    /// Counts `n` records folded into [`OTHER`] through a kept slot.
    pub(crate) fn count_folded(&self, n: u64) {
        self.folded.fetch_add(n, Ordering::Relaxed);
    }

    /// Admits `value` with a slot made by `make`, if the cap allows; `None` if it is to be
    /// folded.
    #[cold]
    fn admit(
        &self,
        hash: u64,
        shard: &Shard<S>,
        value: &str,
        make: impl FnOnce() -> S,
    ) -> Option<Arc<Slot<S>>> {
        // A full set folds without the write lock, so a runaway name space does not serialize
        // the recording threads. (A value admitted by another thread at this very moment may
        // be folded once.)
        if self.admitted.load(Ordering::Acquire) >= self.cap {
            return None;
        }
        let mut table = shard.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, slot)) = table.find(hash, |(v, _)| **v == *value) {
            return Some(Arc::clone(slot));
        }
        // Reserve a place under the cap; another shard may be admitting at the same time.
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .ok()?;
        let hasher = &self.hasher;
        let slot = Arc::new(Slot::new(make()));
        table.insert_unique(hash, (Arc::from(value), Arc::clone(&slot)), |(v, _)| {
            hasher.hash_one(&**v)
        });
        Some(slot)
    }

    fn fold<R>(&self, update: impl FnOnce(&S) -> R) -> R {
        self.folded.fetch_add(1, Ordering::Relaxed);
        update(&self.other.shared)
    }

    /// Calls `read` with every value and its slot, [`OTHER`] last and only if something was
    /// folded into it. Shards are read one at a time, so recording goes on meanwhile.
    pub(crate) fn for_each(&self, mut read: impl FnMut(&Arc<str>, &Slot<S>)) {
        for shard in self.shards.iter() {
            let table = shard.read().unwrap_or_else(|p| p.into_inner());
            for (value, slot) in table.iter() {
                read(value, slot);
            }
        }
        if self.folded() > 0 {
            read(&Arc::from(OTHER), &self.other);
        }
    }

    /// Distinct values admitted so far (at most the cap).
    #[cfg(test)]
    pub(crate) fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// How many times a value was folded into [`OTHER`] because the cap was reached.
    pub(crate) fn folded(&self) -> u64 {
        self.folded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn counts(slots: &LabelSlots<AtomicU64>) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        slots.for_each(|v, c| out.push((v.to_string(), c.shared().load(Ordering::Relaxed))));
        out.sort();
        out
    }

    fn add(slots: &LabelSlots<AtomicU64>, value: &str) {
        slots.with(value, AtomicU64::default, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }

    #[test]
    fn each_value_has_one_slot() {
        let slots = LabelSlots::new("event_name", 10, AtomicU64::default());
        for v in ["load", "save", "load", "load"] {
            add(&slots, v);
        }
        assert_eq!(
            counts(&slots),
            [("load".to_owned(), 3), ("save".to_owned(), 1)]
        );
        assert_eq!(slots.admitted(), 2);
        assert_eq!(slots.folded(), 0);
    }

    #[test]
    fn values_past_the_cap_fold_into_other_and_are_counted() {
        let slots = LabelSlots::new("event_name", 3, AtomicU64::default());
        for v in ["a", "b", "c"] {
            add(&slots, v);
        }
        for i in 0..100 {
            add(&slots, &format!("runaway-{i}"));
        }
        // Admitted values keep their slots after the cap is reached.
        add(&slots, "b");
        assert_eq!(
            counts(&slots),
            [
                (OTHER.to_owned(), 100),
                ("a".to_owned(), 1),
                ("b".to_owned(), 2),
                ("c".to_owned(), 1)
            ]
        );
        assert_eq!(slots.admitted(), 3);
        assert_eq!(slots.folded(), 100);
    }

    #[test]
    fn the_cap_holds_under_concurrent_admission() {
        let slots = Arc::new(LabelSlots::new("op", 50, AtomicU64::default()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let slots = Arc::clone(&slots);
                std::thread::spawn(move || {
                    for i in 0..100 {
                        add(&slots, &format!("{t}-{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(slots.admitted(), 50);
        assert_eq!(slots.folded(), 400 - 50);
        let total: u64 = counts(&slots).iter().map(|(_, n)| n).sum();
        assert_eq!(total, 400);
        assert_eq!(counts(&slots).len(), 51);
    }
}
