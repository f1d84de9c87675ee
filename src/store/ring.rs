//! A shard's finished records, oldest first, in fixed-size segments: the newest is being
//! filled; the others are sealed and shared (`Arc`) with the publishers' delivery threads.
//!
//! Why segments: a queued publisher needs every finished record and the store keeps them too.
//! Copying each record into a batch for the delivery thread cost the recording thread 13–16 ns
//! per `end_event` (+21–25% with the Elasticsearch publisher attached, issue 6); handing over a
//! sealed segment costs one reference count per segment. A record is written once, by the
//! recording thread, and never again while anyone reads it: the delivery thread only reads.
//!
//! Eviction only moves the oldest retained record's number; a segment is freed once all its
//! records are evicted and no delivery thread still holds it. Memory therefore runs at most
//! two segments per shard past the retention (a partly evicted oldest one, a partly filled
//! newest one). Freeing a segment drops only the records that own heap memory (see
//! [`Records`]).

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::sync::Arc;

/// Records of one segment. Sealed segments are full and never change.
pub(crate) type Segment<R> = Arc<Records<R>>;

/// What the ring asks of a record: whether dropping it frees anything.
pub(crate) trait OwnsHeap: Default {
    /// Whether the record holds heap memory of its own (a long task id, an error message, a
    /// name outside the interner). Must be true whenever dropping the record would free
    /// anything: a record said to own nothing is never dropped.
    fn owns_heap(&self) -> bool;
}

/// The records of a segment, in the order pushed. Most records own no heap memory, and
/// dropping them does nothing, but dropping them one by one still reads each: a segment's
/// worth of records long out of the cache. So records are kept undropped, those that own
/// heap memory are listed as they are pushed, and only those are dropped with the segment.
pub(crate) struct Records<R: OwnsHeap> {
    records: Vec<ManuallyDrop<R>>,
    /// Positions of the records that own heap memory.
    owning: Vec<u32>,
}

impl<R: OwnsHeap> Records<R> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Records {
            records: Vec::with_capacity(capacity),
            owning: Vec::new(),
        }
    }

    /// Adds a record. Whether it owns heap memory is decided here, once: records are not
    /// changed after they are pushed (a record given heap memory later would never free it).
    #[inline]
    pub(crate) fn push(&mut self, record: R) {
        if record.owns_heap() {
            self.owning.push(self.records.len() as u32);
        }
        self.records.push(ManuallyDrop::new(record));
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    fn capacity(&self) -> usize {
        self.records.capacity()
    }

    #[cfg(test)]
    fn last(&self) -> Option<&R> {
        self.records.last().map(|r| &**r)
    }

    /// The records in `range` (which must lie within the segment), in order.
    pub(crate) fn range(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl ExactSizeIterator<Item = &R> + Clone {
        self.records[range].iter().map(|r| &**r)
    }

    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &R> + Clone {
        self.range(0..self.len())
    }
}

impl<R: OwnsHeap> std::fmt::Debug for Records<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("len", &self.len())
            .field("owning_heap", &self.owning.len())
            .finish()
    }
}

impl<R: OwnsHeap> std::ops::Index<usize> for Records<R> {
    type Output = R;

    #[inline]
    fn index(&self, index: usize) -> &R {
        &self.records[index]
    }
}

impl<R: OwnsHeap> FromIterator<R> for Records<R> {
    fn from_iter<I: IntoIterator<Item = R>>(records: I) -> Self {
        let mut all = Records::with_capacity(0);
        records.into_iter().for_each(|r| all.push(r));
        all
    }
}

impl<R: OwnsHeap> Drop for Records<R> {
    fn drop(&mut self) {
        for &at in &self.owning {
            if let Some(record) = self.records.get_mut(at as usize) {
                drop(ManuallyDrop::into_inner(std::mem::take(record)));
            }
        }
    }
}

/// Most records per segment: a sealed segment is one hand-over to the publishers, so this is
/// also the batch size a busy shard hands over (256 rather than 64 per batch took a no-op
/// publisher's cost on a pair from about +45% to +25%, `CORE_BENCH_DRIVE=…,publisher`), and
/// each segment is one allocation and one free (512 rather than 256: 3–5 ns less per event in
/// the peers bench, where a shard retains 100,000 records; at most two segments per shard past
/// the retention stay in memory).
const SEGMENT_MAX: usize = 512;
/// Fewest records per segment.
const SEGMENT_MIN: usize = 8;

pub(crate) struct Ring<R: OwnsHeap> {
    sealed: VecDeque<Segment<R>>,
    open: Records<R>,
    /// Records per segment: `1 << shift`.
    shift: u32,
    /// Number of the first record in memory (`sealed[0][0]`, or `open[0]` with none sealed).
    /// Record numbers are the shard's own and never reused.
    base: u64,
    /// Number of the oldest retained record; those between `base` and it are evicted.
    first: u64,
    /// Number the next record will get.
    end: u64,
}

impl<R: OwnsHeap> Ring<R> {
    /// A ring for a shard expected to retain about `share` records: segments are an eighth
    /// of that, between [`SEGMENT_MIN`] and [`SEGMENT_MAX`], so a small store does not hold
    /// many evicted records.
    pub(crate) fn new(share: usize) -> Self {
        let len = (share / 8)
            .next_power_of_two()
            .clamp(SEGMENT_MIN, SEGMENT_MAX);
        Ring {
            sealed: VecDeque::new(),
            open: Records::with_capacity(0),
            shift: len.ilog2(),
            base: 0,
            first: 0,
            end: 0,
        }
    }

    /// Records per segment.
    pub(crate) fn segment_len(&self) -> usize {
        1 << self.shift
    }

    /// Number of the first record of the open segment.
    pub(crate) fn open_base(&self) -> u64 {
        self.end - self.open.len() as u64
    }

    /// Number the next record will get.
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Number of the oldest retained record (equal to [`Ring::end`] when none is).
    pub(crate) fn first_seq(&self) -> u64 {
        self.first
    }

    /// Retained records.
    pub(crate) fn len(&self) -> usize {
        (self.end - self.first) as usize
    }

    /// Records the ring has room for without allocating, evicted ones included.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        (self.sealed.len() << self.shift) + self.open.capacity()
    }

    /// The record numbered `seq`, which must be in memory (evicted or not). Panics otherwise,
    /// like slice indexing: the store only asks for numbers it holds.
    #[inline]
    pub(crate) fn get(&self, seq: u64) -> &R {
        let offset = (seq - self.base) as usize;
        match self.sealed.get(offset >> self.shift) {
            Some(segment) => &segment[offset & (self.segment_len() - 1)],
            None => &self.open[offset - (self.sealed.len() << self.shift)],
        }
    }

    /// The oldest retained record.
    #[inline]
    pub(crate) fn front(&self) -> Option<&R> {
        (self.first < self.end).then(|| self.get(self.first))
    }

    /// The record pushed last, evicted or not; `None` before the first push.
    #[cfg(test)]
    pub(crate) fn newest(&self) -> Option<&R> {
        self.open.last()
    }

    /// The newest sealed segment and the number of its first record.
    pub(crate) fn newest_sealed(&self) -> Option<(u64, &Segment<R>)> {
        let segment = self.sealed.back()?;
        Some((self.open_base() - segment.len() as u64, segment))
    }

    /// The open segment's records numbered `from` and on (`from` at least [`Ring::open_base`]).
    pub(crate) fn open_from(&self, from: u64) -> impl ExactSizeIterator<Item = &R> + Clone {
        let skip = from.saturating_sub(self.open_base()) as usize;
        self.open.range(skip.min(self.open.len())..self.open.len())
    }

    /// The retained records, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &R> {
        self.sealed
            .iter()
            .flat_map(|segment| segment.iter())
            .chain(self.open.iter())
            .skip((self.first - self.base) as usize)
    }

    /// Appends a record. Returns whether it sealed the open segment to make room: then
    /// [`Ring::newest_sealed`] is that segment.
    #[inline]
    pub(crate) fn push(&mut self, record: R) -> bool {
        let sealed = self.open.len() >= self.segment_len();
        if sealed {
            let fresh = Records::with_capacity(self.segment_len());
            let full = std::mem::replace(&mut self.open, fresh);
            self.sealed.push_back(Arc::new(full));
        } else if self.open.capacity() == 0 {
            self.open = Records::with_capacity(self.segment_len());
        }
        self.open.push(record);
        self.end += 1;
        sealed
    }

    /// Evicts the oldest retained record; returns whether there was one. A sealed segment
    /// left with no retained record goes to `freed`, to be dropped after the shard's lock:
    /// freeing is slow, and the delivery threads may still hold the segment.
    #[inline]
    pub(crate) fn pop_front(&mut self, freed: &mut Option<Segment<R>>) -> bool {
        if self.first >= self.end {
            return false;
        }
        self.first += 1;
        if self.first - self.base >= self.segment_len() as u64 && !self.sealed.is_empty() {
            *freed = self.sealed.pop_front();
            self.base += self.segment_len() as u64;
        }
        true
    }
}

impl<R: OwnsHeap> std::fmt::Debug for Ring<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("retained", &self.len())
            .field("segments", &(self.sealed.len() + 1))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl OwnsHeap for u64 {
        fn owns_heap(&self) -> bool {
            false
        }
    }

    /// A record that may hold a reference count, to see which records a segment drops.
    #[derive(Default)]
    struct Holder(Option<Arc<()>>);

    impl OwnsHeap for Holder {
        fn owns_heap(&self) -> bool {
            self.0.is_some()
        }
    }

    #[test]
    fn a_freed_segment_drops_exactly_the_records_that_own_heap_memory() {
        let held = Arc::new(());
        let mut ring = Ring::new(0);
        for i in 0..40u64 {
            ring.push(Holder((i % 3 == 0).then(|| Arc::clone(&held))));
        }
        assert_eq!(Arc::strong_count(&held), 1 + 14);
        let mut dropped = 0;
        while ring.len() > 0 {
            let mut freed = None;
            ring.pop_front(&mut freed);
            dropped += freed.map_or(0, |s| s.len());
        }
        assert_eq!(dropped, 32, "four full segments of eight freed");
        assert_eq!(
            Arc::strong_count(&held),
            1 + 3,
            "records 33, 36 and 39 are in segments still in memory"
        );
        drop(ring);
        assert_eq!(Arc::strong_count(&held), 1);
    }

    fn pushed(share: usize, n: u64) -> Ring<u64> {
        let mut ring = Ring::new(share);
        for i in 0..n {
            ring.push(i);
        }
        ring
    }

    #[test]
    fn records_are_found_by_number_across_segments_and_evicted_oldest_first() {
        let mut ring = pushed(64, 30);
        assert_eq!(ring.segment_len(), 8);
        assert_eq!(ring.len(), 30);
        assert_eq!(
            (0..30).map(|i| *ring.get(i)).collect::<Vec<_>>(),
            (0..30).collect::<Vec<_>>()
        );
        let mut freed = None;
        for _ in 0..7 {
            assert!(ring.pop_front(&mut freed));
            assert!(freed.is_none(), "the first segment still holds a record");
        }
        assert!(ring.pop_front(&mut freed));
        assert_eq!(
            freed.take().map(|s| s.len()),
            Some(8),
            "all eight evicted: freed"
        );
        assert_eq!(ring.front(), Some(&8));
        assert_eq!(
            ring.iter().copied().collect::<Vec<_>>(),
            (8..30).collect::<Vec<_>>()
        );
        assert_eq!(*ring.get(29), 29);
        assert_eq!(ring.first_seq(), 8);
    }

    #[test]
    fn sealing_hands_out_the_full_segment_and_its_first_number() {
        let mut ring = Ring::new(0);
        let sealed: Vec<bool> = (0..17u64).map(|i| ring.push(i)).collect();
        assert_eq!(
            sealed.iter().filter(|s| **s).count(),
            2,
            "at records 8 and 16"
        );
        assert!(sealed[8] && sealed[16]);
        let (first, segment) = ring.newest_sealed().unwrap();
        assert_eq!(first, 8);
        assert!(segment.iter().eq(&[8, 9, 10, 11, 12, 13, 14, 15]));
        assert!(ring.open_from(16).eq(&[16]));
        assert_eq!(ring.open_from(17).len(), 0);
        assert_eq!(ring.newest(), Some(&16));
    }

    #[test]
    fn an_emptied_ring_keeps_at_most_two_segments_in_memory() {
        let mut ring = Ring::new(0);
        let mut freed_records = 0;
        for i in 0..1000u64 {
            ring.push(i);
            let mut freed = None;
            assert!(ring.pop_front(&mut freed));
            freed_records += freed.map_or(0, |s| s.len());
            assert_eq!(ring.len(), 0);
            assert!(ring.capacity() <= 2 * ring.segment_len());
        }
        assert!(!ring.pop_front(&mut None));
        assert!(freed_records >= 1000 - 2 * ring.segment_len());
    }

    proptest::proptest! {
        /// Against a `VecDeque` of the retained numbers: the same records, found by number,
        /// oldest first; sealed segments are the records pushed before, in order; freed
        /// segments hold only evicted records; memory stays within two segments of the
        /// retained records.
        #[test]
        fn behaves_like_a_queue_of_numbered_records(
            share in 0usize..3000,
            steps in proptest::collection::vec((0usize..40, 0usize..40), 1..60),
        ) {
            let mut ring: Ring<u64> = Ring::new(share);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u64;
            let mut freed_upto = 0u64;
            for (pushes, pops) in steps {
                for _ in 0..pushes {
                    proptest::prop_assert_eq!(ring.end(), next);
                    if ring.push(next) {
                        let (first, segment) = ring.newest_sealed().unwrap();
                        let len = segment.len() as u64;
                        proptest::prop_assert_eq!(len, ring.segment_len() as u64);
                        proptest::prop_assert_eq!(first + len, next);
                        let expected: Vec<u64> = (first..next).collect();
                        proptest::prop_assert!(segment.iter().eq(expected.iter()));
                    }
                    proptest::prop_assert_eq!(ring.newest(), Some(&next));
                    model.push_back(next);
                    next += 1;
                }
                for _ in 0..pops {
                    let mut freed = None;
                    proptest::prop_assert_eq!(ring.pop_front(&mut freed), model.pop_front().is_some());
                    if let Some(segment) = freed {
                        proptest::prop_assert_eq!(segment[0], freed_upto);
                        freed_upto += segment.len() as u64;
                        proptest::prop_assert!(freed_upto <= ring.first_seq());
                    }
                }
                proptest::prop_assert_eq!(ring.len(), model.len());
                proptest::prop_assert_eq!(ring.front(), model.front());
                proptest::prop_assert!(ring.iter().eq(model.iter()));
                for &seq in &model {
                    proptest::prop_assert_eq!(*ring.get(seq), seq);
                }
                proptest::prop_assert!(ring.capacity() <= ring.len() + 2 * ring.segment_len());
            }
        }
    }
}
