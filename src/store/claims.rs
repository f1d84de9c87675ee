//! Which shard holds the in-flight record of a task id, kept apart from the records.
//!
//! A store keeps each thread's records in that thread's home shard, so two threads recording
//! at once never write the same lines. What still has to be shared is the answer to "is this
//! id in flight anywhere, and where?": a start must refuse an id in flight on another thread,
//! and an end may come from another thread than the start. [`Claims`] answers it with one
//! 64-byte bucket per hash: a start writes one word of one line, and an end from the starting
//! thread clears that word without taking a lock.
//!
//! A claim is the id's hash with its low bits replaced by the home shard's index. Two ids may
//! share a claim's hash bits, so a matching claim only says where to look; the store checks the
//! records themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hashbrown::HashTable;

/// Low bits of a claim that hold the home shard's index.
const HOME_BITS: u32 = 4;
const HOME_MASK: u64 = (1 << HOME_BITS) - 1;
/// Claims in one bucket; more spill into the bucket's overflow table.
const SLOTS: usize = 7;
/// The bucket's first word: bit 0 is its lock, bits 1 to 7 say which slots hold a claim, the
/// rest counts the bucket's claims in the overflow. An empty bucket reads as one word.
const LOCKED: u64 = 1;
const OCCUPIED_SHIFT: u32 = 1;
const OCCUPIED: u64 = ((1 << SLOTS) - 1) << OCCUPIED_SHIFT;
const ONE_SPILLED: u64 = 1 << (SLOTS as u32 + OCCUPIED_SHIFT);
const OVERFLOW_STRIPES: usize = 16;

/// The home shards of a claim-hash, one bit per shard.
pub(crate) type Homes = u16;

/// Shards fit the home bits of a claim and the bits of [`Homes`].
pub(crate) const MAX_HOMES: usize = 1 << HOME_BITS;
const _: () = assert!(MAX_HOMES <= Homes::BITS as usize);

#[repr(align(64))]
#[derive(Default)]
struct Bucket {
    state: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

/// Where the in-flight records are, by task-id hash. See the module docs.
pub(crate) struct Claims {
    buckets: Box<[Bucket]>,
    /// Claims of full buckets, keyed by the claim's hash bits.
    overflow: Box<[Mutex<HashTable<u64>>]>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

/// The claim of `home` for `hash`: never zero, which marks a free slot.
fn claim_of(hash: u64, home: usize) -> u64 {
    let bits = hash & !HOME_MASK;
    let bits = if bits == 0 { 1 << HOME_BITS } else { bits };
    bits | home as u64
}

fn same_id_bits(claim: u64, wanted: u64) -> bool {
    claim & !HOME_MASK == wanted & !HOME_MASK
}

fn home_bit(claim: u64) -> Homes {
    1 << (claim & HOME_MASK)
}

fn slot_bit(slot: usize) -> u64 {
    1 << (slot as u32 + OCCUPIED_SHIFT)
}

/// The occupied slots of a bucket state, as slot indexes.
fn occupied(state: u64) -> impl Iterator<Item = usize> {
    let mut bits = (state & OCCUPIED) >> OCCUPIED_SHIFT;
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let slot = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            slot
        })
    })
}

impl Claims {
    /// Room for `buckets` (rounded up to a power of two) times seven claims before any spills.
    pub(crate) fn new(buckets: usize) -> Self {
        let buckets = buckets.max(1).next_power_of_two();
        Claims {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            overflow: (0..OVERFLOW_STRIPES)
                .map(|_| Mutex::new(HashTable::new()))
                .collect(),
        }
    }

    fn bucket(&self, hash: u64) -> (usize, &Bucket) {
        // The shard tables use the low and top bits of the hash; buckets take the middle.
        let index = (hash >> 20) as usize & (self.buckets.len() - 1);
        (index, &self.buckets[index])
    }

    fn overflow(&self, bucket: usize) -> std::sync::MutexGuard<'_, HashTable<u64>> {
        self.overflow[bucket % OVERFLOW_STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the bucket of `hash` until the guard drops: while it is held no other claim for
    /// this hash can be added, so a start can check and claim without a race.
    #[inline]
    pub(crate) fn lock(&self, hash: u64) -> ClaimGuard<'_> {
        let (index, bucket) = self.bucket(hash);
        let mut spins = 0u32;
        loop {
            let state = bucket.state.load(Ordering::Relaxed);
            if state & LOCKED == 0
                && bucket
                    .state
                    .compare_exchange_weak(
                        state,
                        state | LOCKED,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return ClaimGuard {
                    claims: self,
                    index,
                    bucket,
                    hash,
                };
            }
            // The holder does a few table operations; if it was descheduled, let it run.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// The shards that may hold an in-flight record with this hash. Without a lock: a claim
    /// added or removed during the call may or may not show.
    pub(crate) fn homes(&self, hash: u64) -> Homes {
        let (index, bucket) = self.bucket(hash);
        let state = bucket.state.load(Ordering::Acquire);
        let wanted = claim_of(hash, 0);
        let mut homes = 0;
        for slot in occupied(state) {
            let claim = bucket.slots[slot].load(Ordering::Relaxed);
            if same_id_bits(claim, wanted) {
                homes |= home_bit(claim);
            }
        }
        if state >= ONE_SPILLED {
            for &claim in self.overflow(index).iter_hash(wanted & !HOME_MASK) {
                if same_id_bits(claim, wanted) {
                    homes |= home_bit(claim);
                }
            }
        }
        homes
    }

    /// Removes one claim of `home` for `hash`, whose record has just left that shard.
    #[inline]
    pub(crate) fn release(&self, hash: u64, home: usize) {
        let claim = claim_of(hash, home);
        let (_, bucket) = self.bucket(hash);
        'scan: loop {
            let state = bucket.state.load(Ordering::Acquire);
            for slot in occupied(state) {
                if bucket.slots[slot].load(Ordering::Relaxed) == claim {
                    let bit = slot_bit(slot);
                    if bucket.state.fetch_and(!bit, Ordering::Release) & bit != 0 {
                        return;
                    }
                    // Another release of an equal claim took this slot first: look again.
                    continue 'scan;
                }
            }
            break;
        }
        // Not in the bucket: it spilled. Rare, so the lock is fine.
        self.lock(hash).release_spilled(claim);
    }

    /// Forgets every claim.
    pub(crate) fn clear(&self) {
        for (index, bucket) in self.buckets.iter().enumerate() {
            let guard = self.lock_index(index, bucket);
            self.overflow(index).clear();
            // Unlocks with no claims.
            guard.bucket.state.store(0, Ordering::Release);
            std::mem::forget(guard);
        }
    }

    fn lock_index<'a>(&'a self, index: usize, bucket: &'a Bucket) -> ClaimGuard<'a> {
        // Any hash that maps to this bucket will do.
        let hash = (index as u64) << 20;
        let guard = self.lock(hash);
        debug_assert!(std::ptr::eq(guard.bucket, bucket));
        guard
    }
}

/// A locked bucket; see [`Claims::lock`].
pub(crate) struct ClaimGuard<'a> {
    claims: &'a Claims,
    index: usize,
    bucket: &'a Bucket,
    hash: u64,
}

impl ClaimGuard<'_> {
    /// The shards that may hold an in-flight record with the locked hash.
    #[inline]
    pub(crate) fn homes(&self) -> Homes {
        let state = self.bucket.state.load(Ordering::Relaxed);
        if state & !LOCKED == 0 {
            return 0;
        }
        self.claims.homes(self.hash)
    }

    /// Claims the locked hash for `home`, and unlocks.
    #[inline]
    pub(crate) fn claim(self, home: usize) {
        let claim = claim_of(self.hash, home);
        let state = self.bucket.state.load(Ordering::Relaxed);
        // Only lock-free releases run beside us, and they only free slots.
        let free = (!state & OCCUPIED) >> OCCUPIED_SHIFT;
        if free != 0 {
            let slot = free.trailing_zeros() as usize;
            self.bucket.slots[slot].store(claim, Ordering::Relaxed);
            // Marks the slot taken and unlocks in one step; the slot's bit was clear and the
            // lock's set, so flipping both does it.
            self.bucket
                .state
                .fetch_xor(slot_bit(slot) | LOCKED, Ordering::Release);
            std::mem::forget(self);
            return;
        }
        let hash = claim & !HOME_MASK;
        self.claims
            .overflow(self.index)
            .insert_unique(hash, claim, |c| c & !HOME_MASK);
        self.bucket.state.fetch_add(ONE_SPILLED, Ordering::Release);
    }

    fn release_spilled(&self, claim: u64) {
        let mut overflow = self.claims.overflow(self.index);
        if let Ok(entry) = overflow.find_entry(claim & !HOME_MASK, |&c| c == claim) {
            entry.remove();
            self.bucket.state.fetch_sub(ONE_SPILLED, Ordering::Release);
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.bucket.state.fetch_and(!LOCKED, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_shows_its_home_until_released() {
        let claims = Claims::new(4);
        let hash = 0xDEAD_BEEF_0000_1234;
        assert_eq!(claims.homes(hash), 0);
        claims.lock(hash).claim(3);
        assert_eq!(claims.homes(hash), 1 << 3);
        // Another hash in the same bucket is not confused with it.
        assert_eq!(claims.homes(hash ^ (1 << 40)), 0);
        claims.release(hash, 3);
        assert_eq!(claims.homes(hash), 0);
    }

    #[test]
    fn claims_past_a_full_bucket_spill_and_come_back() {
        let claims = Claims::new(1);
        let hashes: Vec<u64> = (1..=20u64).map(|i| i << 32).collect();
        for (i, &hash) in hashes.iter().enumerate() {
            claims.lock(hash).claim(i % MAX_HOMES);
        }
        for (i, &hash) in hashes.iter().enumerate() {
            assert_eq!(claims.homes(hash), 1 << (i % MAX_HOMES), "claim {i}");
        }
        for (i, &hash) in hashes.iter().enumerate().rev() {
            claims.release(hash, i % MAX_HOMES);
            assert_eq!(claims.homes(hash), 0, "claim {i}");
        }
        assert_eq!(claims.buckets[0].state.load(Ordering::Relaxed), 0);
        // Every slot is free again, so new claims fill the bucket before spilling.
        claims.lock(1 << 32).claim(0);
        assert_eq!(claims.buckets[0].state.load(Ordering::Relaxed), slot_bit(0));
    }

    #[test]
    fn the_same_hash_may_be_claimed_by_several_homes() {
        let claims = Claims::new(2);
        let hash = 42 << 16;
        claims.lock(hash).claim(1);
        claims.lock(hash).claim(5);
        claims.lock(hash).claim(5);
        assert_eq!(claims.homes(hash), (1 << 1) | (1 << 5));
        claims.release(hash, 5);
        assert_eq!(claims.homes(hash), (1 << 1) | (1 << 5));
        claims.release(hash, 5);
        assert_eq!(claims.homes(hash), 1 << 1);
    }

    #[test]
    fn a_hash_of_zero_bits_still_claims() {
        let claims = Claims::new(1);
        claims.lock(0).claim(0);
        assert_eq!(claims.homes(0), 1);
        claims.clear();
        assert_eq!(claims.homes(0), 0);
    }

    #[test]
    fn the_lock_excludes_a_second_claimer() {
        let claims = std::sync::Arc::new(Claims::new(1));
        let hash = 7 << 32;
        let guard = claims.lock(hash);
        let other = std::sync::Arc::clone(&claims);
        let waiter = std::thread::spawn(move || {
            let guard = other.lock(hash);
            guard.homes()
        });
        guard.claim(2);
        assert_eq!(waiter.join().unwrap(), 1 << 2);
    }
}
