//! Names a shard has seen (event names, hosts, operations), each kept once.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use super::task_id::two_words;

/// Names seen often (event names, hosts, operations), kept once per shard so a record holds
/// a 4-byte index instead of its own copy: no allocation, and, unlike a shared `Arc`, no
/// reference count that two cores would pass back and forth. Bounded: past
/// [`Interner::CAPACITY`] distinct names, further ones are allocated per record.
///
/// The names are one shared table, replaced (not changed) when a name is added, so a batch of
/// records on its way to the publishers carries the table with one reference count.
///
/// Short names (16 bytes or less, as most are) are found first in a small direct-mapped table
/// keyed by the name's bytes themselves: no hashing of the name and no byte comparison.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    index: HashTable<u32>,
    names: Names,
    /// Short names found lately, by [`ShortKey`]; made on first use (a publisher's resolving
    /// interner never needs it).
    short: Option<Box<[ShortSlot; SHORT_SLOTS]>>,
}

/// A shard's interned names, by index.
pub(crate) type Names = Arc<[Arc<str>]>;

/// A name as a record holds it.
#[derive(Debug, Clone)]
pub(crate) enum Name {
    /// Position in the shard's [`Interner`].
    Shared(u32),
    /// Its own copy: the interner was full, or the record left its shard (for a publisher).
    Own(Arc<str>),
}

/// A name that owns nothing and reads as the empty string (no interner holds this many
/// names): what a blank record holds.
impl Default for Name {
    fn default() -> Self {
        Name::Shared(u32::MAX)
    }
}

impl Name {
    /// Whether the name holds its own copy.
    #[inline]
    pub(crate) fn owns_heap(&self) -> bool {
        matches!(self, Name::Own(_))
    }

    /// Its position in the shard's interner, if it has one.
    #[cfg(feature = "series")]
    #[inline]
    pub(crate) fn id(&self) -> Option<u32> {
        match self {
            Name::Shared(id) => Some(*id),
            Name::Own(_) => None,
        }
    }

    pub(crate) fn as_str<'a>(&'a self, names: &'a Interner) -> &'a str {
        match self {
            Name::Shared(id) => names.names.get(*id as usize).map_or("", |n| n),
            Name::Own(name) => name,
        }
    }
}

impl Interner {
    const CAPACITY: usize = 1024;

    /// An interner that only resolves the names of `names` (on a publisher's thread).
    pub(crate) fn resolving(names: Names) -> Self {
        Interner {
            index: HashTable::new(),
            names,
            short: None,
        }
    }

    /// The names so far, for records leaving the shard.
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// The name as a record holds it: its interned index, found without hashing when it is
    /// short and was seen lately. Always inlined into the recording path, and every path to
    /// the name returns a plain index: a name assembled in memory by a call would be read back
    /// as one 16-byte load by the record's insertion, which waits for the call's two stores.
    #[inline(always)]
    pub(crate) fn get(&mut self, name: &str) -> Name {
        match self.id(name) {
            Some(id) => Name::Shared(id),
            None => Name::Own(own(name)),
        }
    }

    /// The name's index; `None` when the interner is full and does not have it.
    #[inline(always)]
    fn id(&mut self, name: &str) -> Option<u32> {
        let Some(key) = ShortKey::of(name.as_bytes()) else {
            return self.find_or_add(name);
        };
        let at = key.slot();
        if let Some(short) = &self.short {
            if short[at].key == key {
                return Some(short[at].id);
            }
        }
        self.short_miss(name, key, at)
    }

    /// A short name not in its slot of the short-name table: found or added, then put there.
    #[cold]
    #[inline(never)]
    fn short_miss(&mut self, name: &str, key: ShortKey, at: usize) -> Option<u32> {
        let found = self.find_or_add(name);
        let short = self
            .short
            .get_or_insert_with(|| Box::new([ShortSlot::default(); SHORT_SLOTS]));
        if let Some(id) = found {
            short[at] = ShortSlot { key, id };
        }
        found
    }

    #[inline(never)]
    fn find_or_add(&mut self, name: &str) -> Option<u32> {
        let state = foldhash::fast::FixedState::default();
        let hash = state.hash_one(name);
        let names = &self.names;
        if let Some(&id) = self.index.find(hash, |&id| *names[id as usize] == *name) {
            return Some(id);
        }
        if self.names.len() >= Self::CAPACITY {
            return None;
        }
        let id = self.names.len() as u32;
        // Rare (once per distinct name), so copying the table of references is fine.
        let mut grown = Vec::with_capacity(self.names.len() + 1);
        grown.extend(self.names.iter().cloned());
        grown.push(Arc::from(name));
        self.names = grown.into();
        let names = &self.names;
        self.index
            .insert_unique(hash, id, |&i| state.hash_one(&*names[i as usize]));
        Some(id)
    }
}

/// A name's own copy, for a record whose name the full interner does not hold.
#[cold]
#[inline(never)]
fn own(name: &str) -> Arc<str> {
    Arc::from(name)
}

/// Slots of the short-name table: a few more than the names a pipeline usually has.
const SHORT_SLOTS: usize = 256;

#[derive(Debug, Clone, Copy, Default)]
struct ShortSlot {
    key: ShortKey,
    id: u32,
}

/// A name of at most 16 bytes, whole, in two words and its length (read as task ids are, see
/// [`two_words`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ShortKey {
    low: u64,
    high: u64,
    /// The length plus one, so that no name's key is the empty slot's.
    len: u64,
}

impl ShortKey {
    #[inline]
    fn of(name: &[u8]) -> Option<ShortKey> {
        let [low, high] = two_words(name)?;
        Some(ShortKey {
            low,
            high,
            len: name.len() as u64 + 1,
        })
    }

    #[inline]
    fn slot(&self) -> usize {
        let mixed = self.low ^ self.high.rotate_left(29) ^ self.len;
        (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHORT_SLOTS.trailing_zeros())) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_up_to_the_interner_capacity() {
        let mut names = Interner::default();
        let load = names.get("load");
        assert!(
            matches!((&load, names.get("load")), (Name::Shared(a), Name::Shared(b)) if *a == b)
        );
        for i in 0..Interner::CAPACITY {
            names.get(&i.to_string());
        }
        let late = names.get("late");
        assert!(matches!(late, Name::Own(_)));
        assert_eq!(late.as_str(&names), "late");
        assert_eq!(load.as_str(&names), "load");
    }

    /// Every name of every length up to past the short limit, with names differing in one
    /// byte at every position: each is found as itself, however the short table collides.
    #[test]
    fn short_and_long_names_resolve_to_themselves() {
        let mut names = Interner::default();
        let mut all = vec![String::new()];
        for len in 1..=20 {
            let base: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            all.push(base.clone());
            for at in 0..len {
                let mut bytes = base.clone().into_bytes();
                bytes[at] = b'Z';
                all.push(String::from_utf8(bytes).expect("ascii"));
            }
        }
        let ids: Vec<Name> = all.iter().map(|n| names.get(n)).collect();
        for _ in 0..2 {
            for (name, first) in all.iter().zip(&ids) {
                let again = names.get(name);
                assert_eq!(again.as_str(&names), name.as_str());
                assert!(
                    matches!((first, &again), (Name::Shared(a), Name::Shared(b)) if a == b),
                    "{name:?} got another id"
                );
            }
        }
    }

    #[test]
    fn short_keys_tell_apart_names_that_share_their_words() {
        // Same overlapping words, different lengths; and a name with trailing zero bytes.
        let keys = [
            "abcdefgh",
            "abcdefghh",
            "ab",
            "ab\0",
            "\0",
            "",
            "abcdefghabcdefgh",
        ]
        .map(|n| ShortKey::of(n.as_bytes()).expect("short"));
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(ShortKey::of(&[b'x'; 17]).is_none());
    }
}
