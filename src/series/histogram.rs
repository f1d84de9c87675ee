//! Fixed-bucket histograms of durations, updated with atomics at record time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The buckets of the original (Python `prometheus_client`'s defaults), in seconds; `+Inf` is
/// implicit.
pub(crate) const DEFAULT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Checks bucket bounds: at least one, finite, not negative (they are durations), strictly
/// increasing. `+Inf` is always added and may not be given.
pub(crate) fn check_buckets(bounds: &[f64]) -> Result<(), &'static str> {
    if bounds.is_empty() {
        return Err("at least one bound is needed (the +Inf bucket is always added)");
    }
    if bounds.iter().any(|b| !b.is_finite()) {
        return Err("bounds must be finite numbers of seconds; +Inf is added automatically");
    }
    if bounds.iter().any(|b| *b < 0.0) {
        return Err("bounds are durations and may not be negative");
    }
    if bounds.windows(2).any(|w| w[0] >= w[1]) {
        return Err("bounds must be strictly increasing");
    }
    Ok(())
}

/// Bucket bounds in the two forms a histogram needs: seconds for the exposition, and whole
/// nanoseconds to find a duration's bucket without converting it to a float.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    seconds: Arc<[f64]>,
    /// Each bound rounded to the nearest nanosecond: 0.005 s is 5,000,000 ns whatever the
    /// binary form of 0.005. Durations are whole nanoseconds, so a duration is at most a bound
    /// exactly when it is at most that bound's nanoseconds.
    nanos: Arc<[u64]>,
    /// Where each octave of durations falls among `nanos`, to find a bucket in one look-up.
    octaves: Arc<Octaves>,
}

impl Bounds {
    /// Bounds in seconds, checked with [`check_buckets`] (finite, not negative).
    pub(crate) fn new(seconds: Arc<[f64]>) -> Self {
        // `as` saturates: a bound beyond u64::MAX nanoseconds (584 years) holds every duration.
        let nanos: Arc<[u64]> = seconds.iter().map(|s| (s * 1e9).round() as u64).collect();
        let octaves = Arc::new(octaves_of(&nanos));
        Bounds {
            seconds,
            nanos,
            octaves,
        }
    }

    /// The bucket of `nanos`; see [`bucket_of`].
    #[inline]
    fn bucket(&self, nanos: u64) -> usize {
        bucket_of(&self.nanos, &self.octaves, nanos)
    }
}

/// For each octave of durations in nanoseconds (octave `o` holds those whose highest set bit
/// is bit `o - 1`; octave 0 holds 0), how many bounds lie below all of its values and how many
/// below some of them. With bounds spread over many octaves, as bucket bounds are, the two
/// are equal or one apart: a duration's bucket is one table look-up and at most a compare or
/// two, where counting the bounds below it costs one compare per bound.
type Octaves = [[u32; 2]; 65];

fn octaves_of(bounds: &[u64]) -> Octaves {
    let below = |value: u64| bounds.partition_point(|&bound| bound < value) as u32;
    std::array::from_fn(|octave| match octave {
        0 => [0, 0],
        _ => [below(1 << (octave - 1)), below(u64::MAX >> (64 - octave))],
    })
}

/// The bucket of `nanos`: the first whose bound is >= it (bounds are inclusive upper limits),
/// so the number of bounds below it. Integers: no float conversion on the recording thread.
#[inline]
fn bucket_of(bounds: &[u64], octaves: &Octaves, nanos: u64) -> usize {
    let octave = (u64::BITS - nanos.leading_zeros()) as usize;
    let [below_all, below_some] = octaves[octave];
    // Only the bounds within the value's octave are left to compare.
    let within = bounds
        .get(below_all as usize..below_some as usize)
        .unwrap_or_default();
    below_all as usize + within.partition_point(|&bound| bound < nanos)
}

/// One histogram series: a count per bucket (not cumulative), then the sum in nanoseconds,
/// in cells borrowed from the slot that holds every series of a label value (see
/// [`EventSlot`](super::EventSlot)): one allocation per slot, so recording reaches a bucket
/// count in one step from the slot.
///
/// The count is the sum of the bucket counts, so a snapshot is always consistent with its
/// buckets; the sum is exact to the nanosecond.
///
/// The bounds are not kept here but passed in: every histogram of a
/// [`PipelineSeries`](super::PipelineSeries) has the series' bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Histogram<'a> {
    cells: &'a [AtomicU64],
}

impl<'a> Histogram<'a> {
    /// How many cells a histogram with `bounds` takes: one count per bound, one for `+Inf`,
    /// and the sum.
    pub(crate) fn cells(bounds: &Bounds) -> usize {
        bounds.nanos.len() + 2
    }

    /// The histogram in `cells` (as many as [`Histogram::cells`] says).
    #[inline]
    pub(crate) fn over(cells: &'a [AtomicU64]) -> Self {
        Histogram { cells }
    }

    #[inline]
    fn counts_and_sum(&self) -> (&'a [AtomicU64], Option<&'a AtomicU64>) {
        match self.cells.split_last() {
            Some((sum, counts)) => (counts, Some(sum)),
            None => (&[], None),
        }
    }

    /// Records one observation of `nanos` nanoseconds: two atomic additions. `bounds` are
    /// those the histogram was made with.
    #[inline]
    pub(crate) fn observe(self, bounds: &Bounds, nanos: u64) {
        let (counts, sum) = self.counts_and_sum();
        if let Some(count) = counts.get(bounds.bucket(nanos)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sum) = sum {
            sum.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// Records one observation of `nanos` nanoseconds into a histogram only one thread at a
    /// time writes (a store shard's part, under the shard's lock): two plain stores, no atomic
    /// addition.
    #[inline]
    pub(crate) fn observe_alone(self, bounds: &Bounds, nanos: u64) {
        let (counts, sum) = self.counts_and_sum();
        if let Some(count) = counts.get(bounds.bucket(nanos)) {
            add_alone(count, 1);
        }
        if let Some(sum) = sum {
            add_alone(sum, nanos);
        }
    }

    /// One snapshot of several histograms made with `bounds`, added up.
    pub(crate) fn snapshot_of(
        bounds: &Bounds,
        parts: impl IntoIterator<Item = Histogram<'a>>,
    ) -> HistogramSnapshot {
        let bounds = Arc::clone(&bounds.seconds);
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum_nanos = 0u64;
        for part in parts {
            let (part_counts, part_sum) = part.counts_and_sum();
            for (total, count) in counts.iter_mut().zip(part_counts) {
                *total = total.wrapping_add(count.load(Ordering::Relaxed));
            }
            let part_sum = part_sum.map_or(0, |sum| sum.load(Ordering::Relaxed));
            sum_nanos = sum_nanos.wrapping_add(part_sum);
        }
        let mut running = 0u64;
        for count in &mut counts {
            running = running.wrapping_add(*count);
            *count = running;
        }
        HistogramSnapshot {
            bounds,
            cumulative: counts,
            sum: sum_nanos as f64 / 1e9,
        }
    }
}

/// Zeroed cells, `len` of them, in one allocation.
pub(crate) fn zeroed_cells(len: usize) -> Arc<[AtomicU64]> {
    (0..len).map(|_| AtomicU64::new(0)).collect()
}

/// Adds `n` to a value only one thread at a time writes: a load and a store, where an atomic
/// addition would lock the cache line. Readers on other threads see the old or the new value.
#[inline]
pub(crate) fn add_alone(value: &AtomicU64, n: u64) {
    value.store(
        value.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A histogram series read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// Upper bounds in seconds, without `+Inf`.
    pub(crate) bounds: Arc<[f64]>,
    /// Cumulative counts, one per bound then one for `+Inf` (which is the total count).
    pub(crate) cumulative: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub(crate) sum: f64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub(crate) fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::nanos;
    use std::time::Duration;

    fn histogram() -> (Arc<[AtomicU64]>, Bounds) {
        let bounds = Bounds::new(Arc::from(&DEFAULT_BUCKETS[..]));
        (zeroed_cells(Histogram::cells(&bounds)), bounds)
    }

    fn snapshot(cells: &[AtomicU64], bounds: &Bounds) -> HistogramSnapshot {
        Histogram::snapshot_of(bounds, [Histogram::over(cells)])
    }

    #[test]
    fn bounds_are_inclusive_and_cumulative_counts_end_with_the_total() {
        let (cells, b) = histogram();
        let h = Histogram::over(&cells);
        h.observe(&b, nanos(Duration::from_millis(5))); // le 0.005
        h.observe(&b, nanos(Duration::from_micros(5001))); // le 0.01
        h.observe_alone(&b, nanos(Duration::from_millis(1500))); // le 2.5
        h.observe(&b, nanos(Duration::from_secs(60))); // +Inf only
        let s = snapshot(&cells, &b);
        assert_eq!(s.cumulative.len(), 15);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[9], 2); // le 1.0
        assert_eq!(s.cumulative[10], 3); // le 2.5
        assert_eq!(s.cumulative[13], 3); // le 10
        assert_eq!(s.count(), 4);
        assert!((s.sum - 61.510_001).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn a_duration_equal_to_a_bound_counts_in_it_whatever_the_bound_s_binary_form() {
        // No bound here has an exact binary form: 0.00013 * 1e9 is 129,999.99999999999 in
        // floats, and 0.1 * 3 is 0.30000000000000004.
        let bounds = Bounds::new(Arc::from(&[0.00013, 0.1, 0.1 * 3.0, 0.7, 1e12][..]));
        let cells = zeroed_cells(Histogram::cells(&bounds));
        let h = Histogram::over(&cells);
        h.observe(&bounds, 130_000); // le 0.00013
        h.observe(&bounds, 100_000_000); // le 0.1
        h.observe(&bounds, 100_000_001); // le 0.3
        h.observe(&bounds, 300_000_000); // le 0.3: the bound rounds to the nearest nanosecond
        h.observe(&bounds, 700_000_000); // le 0.7
        h.observe(&bounds, u64::MAX); // le 1e12: past u64 nanoseconds, the bound holds everything
        let s = snapshot(&cells, &bounds);
        assert_eq!(s.cumulative, vec![1, 2, 4, 5, 6, 6]);
    }

    proptest::proptest! {
        #[test]
        fn a_value_s_bucket_is_the_first_whose_bound_holds_it(
            bounds in proptest::collection::btree_set(
                proptest::prop_oneof![0u64..1_000_000, proptest::num::u64::ANY],
                1..80,
            ),
            values in proptest::collection::vec(
                proptest::prop_oneof![0u64..1_100_000, proptest::num::u64::ANY],
                1..50,
            ),
        ) {
            let bounds: Vec<u64> = bounds.into_iter().collect();
            let octaves = octaves_of(&bounds);
            let near_bounds = bounds
                .iter()
                .flat_map(|&b| [b.saturating_sub(1), b, b.saturating_add(1)]);
            let edges = [0, 1, 2, 3, u64::MAX - 1, u64::MAX];
            for value in values.into_iter().chain(near_bounds).chain(edges) {
                let expected = bounds.iter().position(|&b| b >= value).unwrap_or(bounds.len());
                proptest::prop_assert_eq!(bucket_of(&bounds, &octaves, value), expected);
            }
        }
    }

    #[test]
    fn sum_is_exact_for_the_hand_built_event() {
        let (cells, b) = histogram();
        Histogram::over(&cells).observe(&b, nanos(Duration::from_millis(1500)));
        assert_eq!(snapshot(&cells, &b).sum, 1.5);
    }

    #[test]
    fn bucket_checks_name_the_problem() {
        assert!(check_buckets(&DEFAULT_BUCKETS).is_ok());
        assert!(check_buckets(&[]).is_err());
        assert!(check_buckets(&[1.0, f64::INFINITY]).is_err());
        assert!(check_buckets(&[f64::NAN]).is_err());
        assert!(check_buckets(&[-1.0, 1.0]).is_err());
        assert!(check_buckets(&[1.0, 1.0]).is_err());
        assert!(check_buckets(&[0.0, 0.5]).is_ok());
    }
}
