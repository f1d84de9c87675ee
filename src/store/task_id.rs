//! Task ids as records keep them ([`TaskId`]) and as calls look them up ([`TaskKey`]).
//!
//! A short id is read from the caller's string as three machine words, with a few loads whose
//! lengths are fixed, and is compared and hashed as those words. A byte-by-byte copy of the id
//! (what `memcpy` does for a short string) would be read back as words a moment later, and a
//! load wider than the stores it reads waits for them to reach the cache: that wait was the
//! largest single cost of a start.

use std::hash::BuildHasher;

/// Bytes of the longest task id kept inline in a record; longer ones take an allocation.
const INLINE: usize = 22;

/// A task id as a record keeps it: up to [`INLINE`] bytes inline, else boxed. Dereferences to
/// the id's `&str`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum TaskId {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

/// A task id as a call gives it, ready to hash and to compare with [`TaskId`]s.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TaskKey<'a> {
    /// At most [`INLINE`] bytes, little-endian in three zero-padded words.
    Inline {
        len: u8,
        words: [u64; 3],
    },
    Long(&'a str),
}

impl<'a> TaskKey<'a> {
    #[inline]
    pub(crate) fn new(task_id: &'a str) -> Self {
        let bytes = task_id.as_bytes();
        let len = bytes.len();
        let words = match (two_words(bytes), len) {
            (Some([low, high]), _) => [low, high, 0],
            (None, ..=INLINE) => [first_8(bytes), first_8(&bytes[8..]), tail_from(bytes, 16)],
            (None, _) => return TaskKey::Long(task_id),
        };
        TaskKey::Inline {
            len: len as u8,
            words,
        }
    }

    /// The hash the store files the id under.
    #[inline]
    pub(crate) fn hash(&self, hasher: &impl BuildHasher) -> u64 {
        match *self {
            TaskKey::Inline { len, words } => hasher.hash_one((len, words[0], words[1], words[2])),
            TaskKey::Long(id) => hasher.hash_one(id),
        }
    }

    /// Whether `id` is this id.
    #[inline]
    pub(crate) fn is(&self, id: &TaskId) -> bool {
        match (self, id) {
            (TaskKey::Inline { len, words }, TaskId::Inline { len: l, bytes }) => {
                len == l && *words == words_of(bytes)
            }
            (TaskKey::Long(key), TaskId::Heap(id)) => *key == &**id,
            // A given id always takes the same form.
            _ => false,
        }
    }

    /// The id, owned.
    #[inline]
    pub(crate) fn to_id(self) -> TaskId {
        match self {
            TaskKey::Inline { len, words } => {
                let mut bytes = [0; INLINE];
                bytes[..8].copy_from_slice(&words[0].to_le_bytes());
                bytes[8..16].copy_from_slice(&words[1].to_le_bytes());
                bytes[16..].copy_from_slice(&words[2].to_le_bytes()[..INLINE - 16]);
                TaskId::Inline { len, bytes }
            }
            TaskKey::Long(id) => TaskId::Heap(id.into()),
        }
    }
}

impl TaskId {
    /// The key to look this id up with.
    #[inline]
    pub(crate) fn key(&self) -> TaskKey<'_> {
        match self {
            TaskId::Inline { len, bytes } => TaskKey::Inline {
                len: *len,
                words: words_of(bytes),
            },
            TaskId::Heap(id) => TaskKey::Long(id),
        }
    }

    /// Whether the id took an allocation.
    #[inline]
    pub(crate) fn owns_heap(&self) -> bool {
        matches!(self, TaskId::Heap(_))
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Always valid: the bytes are those of the `&str` the id was made from, cut at its
            // end.
            TaskId::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            TaskId::Heap(id) => id,
        }
    }
}

/// The empty id.
impl Default for TaskId {
    fn default() -> Self {
        TaskId::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

impl From<&str> for TaskId {
    fn from(task_id: &str) -> Self {
        TaskKey::new(task_id).to_id()
    }
}

impl std::ops::Deref for TaskId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The inline bytes as the words [`TaskKey::new`] makes of them.
#[inline]
fn words_of(bytes: &[u8; INLINE]) -> [u64; 3] {
    let mut last = [0; 8];
    last[..INLINE - 16].copy_from_slice(&bytes[16..]);
    [
        first_8(bytes),
        first_8(&bytes[8..]),
        u64::from_le_bytes(last),
    ]
}

/// Up to sixteen bytes as two little-endian, zero-padded words: with the length, the bytes
/// whole. `None` for longer ones. The interner keys its short names with these too.
#[inline]
pub(super) fn two_words(bytes: &[u8]) -> Option<[u64; 2]> {
    match bytes.len() {
        0..=8 => Some([up_to_8(bytes), 0]),
        9..=16 => Some([first_8(bytes), tail_from(bytes, 8)]),
        _ => None,
    }
}

/// The first eight bytes as a little-endian word (`bytes` has at least eight).
#[inline]
fn first_8(bytes: &[u8]) -> u64 {
    bytes.first_chunk().map_or(0, |b| u64::from_le_bytes(*b))
}

/// The bytes from `from` on (one to eight of them, `bytes` at least eight long) as a
/// zero-padded word, from one load of the last eight bytes.
#[inline]
fn tail_from(bytes: &[u8], from: usize) -> u64 {
    let last = bytes.last_chunk().map_or(0, |b| u64::from_le_bytes(*b));
    last >> (8 * (8 - (bytes.len() - from)))
}

/// Up to eight bytes as a zero-padded word. Overlapping loads cover the bytes; where they
/// overlap they carry the same bytes to the same places, so or-ing them is exact.
#[inline]
fn up_to_8(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let half = |b: Option<&[u8; 4]>| b.map_or(0, |b| u64::from(u32::from_le_bytes(*b)));
    match len {
        0 => 0,
        1..=3 => {
            let byte = |at: usize| u64::from(bytes[at]) << (8 * at);
            byte(0) | byte(len / 2) | byte(len - 1)
        }
        4..=7 => half(bytes.first_chunk()) | half(bytes.last_chunk()) << (8 * (len - 4)),
        _ => first_8(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_id_takes_no_more_room_than_a_string() {
        assert_eq!(std::mem::size_of::<TaskId>(), 24);
    }

    #[test]
    fn ids_of_every_inline_length_and_beyond_read_back_whole() {
        let text = "abcdefghijklmnopqrstuvwxyz0123456789";
        for len in 0..=text.len() {
            let id = TaskId::from(&text[..len]);
            assert_eq!(id.as_str(), &text[..len]);
            assert_eq!(matches!(id, TaskId::Inline { .. }), len <= INLINE);
        }
    }

    #[test]
    fn trailing_zero_bytes_make_a_different_id() {
        // Inline words are zero-padded: only the length tells "a" from "a\0".
        let ids = ["a", "a\0", "a\0\0", "\0", ""];
        for a in ids {
            for b in ids {
                assert_eq!(
                    TaskKey::new(a).is(&TaskId::from(b)),
                    a == b,
                    "{a:?} / {b:?}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn a_key_is_its_id_and_no_other(a in "\\PC{0,30}", b in "\\PC{0,30}") {
            let hasher = foldhash::fast::FixedState::default();
            let (key_a, key_b) = (TaskKey::new(&a), TaskKey::new(&b));
            let (id_a, id_b) = (key_a.to_id(), key_b.to_id());
            prop_assert_eq!(id_a.as_str(), a.as_str());
            prop_assert!(key_a.is(&id_a));
            prop_assert_eq!(key_a.is(&id_b), a == b);
            prop_assert_eq!(id_a == id_b, a == b);
            prop_assert_eq!(id_a.key().hash(&hasher), key_a.hash(&hasher));
            if a == b {
                prop_assert_eq!(key_a.hash(&hasher), key_b.hash(&hasher));
            }
        }

        #[test]
        fn ids_differing_in_one_byte_differ(
            len in 1usize..=INLINE + 2,
            at in 0usize..INLINE + 2,
            byte in 0u8..0x80,
        ) {
            let a = "x".repeat(len);
            let mut b = a.clone().into_bytes();
            let at = at % len;
            b[at] = byte;
            let b = String::from_utf8(b).unwrap();
            prop_assert_eq!(TaskKey::new(&a).is(&TaskId::from(b.as_str())), a == b);
        }
    }
}
