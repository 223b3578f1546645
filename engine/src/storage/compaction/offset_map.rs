//! The cleaner's map from key to the offset of its latest record in the dirty part of the log.
//!
//! Bounded by bytes (`log.cleaner.dedupe.buffer.size`): keys are counted with a fixed
//! overhead each. Lookups, and the offsets it holds sorted; the map itself is never walked in
//! its own order, so that order cannot leak into what the cleaner writes. Keys are hashed with CRC32C (hardware-accelerated, and deterministic);
//! equal hashes still compare the whole keys.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Bytes counted for each entry besides its key: the offset, the table slot and the box.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 48;

/// CRC32C as a hasher: fast on keys of any length, and the same on every run.
#[derive(Debug, Default)]
pub(crate) struct Crc32cHasher(u32);

impl Hasher for Crc32cHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        // Spread the 32 bits over the word: hashbrown takes its control bits from the top.
        u64::from(self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// Key to latest offset, with the bytes it takes.
#[derive(Debug, Default)]
pub(crate) struct OffsetMap {
    latest: HashMap<Box<[u8]>, i64, BuildHasherDefault<Crc32cHasher>>,
    size_bytes: usize,
}

impl OffsetMap {
    /// Records `offset` as the latest record of `key`. Offsets of one key only grow.
    pub(crate) fn insert(&mut self, key: &[u8], offset: i64) {
        match self.latest.get_mut(key) {
            Some(latest) => {
                debug_assert!(*latest < offset, "offsets are inserted in log order");
                *latest = offset;
            }
            None => {
                self.latest.insert(key.into(), offset);
                self.size_bytes += key.len() + ENTRY_OVERHEAD_BYTES;
            }
        }
    }

    /// The offset of `key`'s latest record, if the map saw the key.
    pub(crate) fn get(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(key).copied()
    }

    /// Every latest offset the map holds, in ascending order.
    pub(crate) fn latest_offsets_sorted(&self) -> Vec<i64> {
        let mut offsets: Vec<i64> = self.latest.values().copied().collect();
        offsets.sort_unstable();
        offsets
    }

    /// Bytes taken.
    pub(crate) fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_offset_and_counts_its_bytes() {
        let mut map = OffsetMap::default();
        map.insert(b"a", 1);
        map.insert(b"bb", 2);
        let size = map.size_bytes();
        assert_eq!(size, 3 + 2 * ENTRY_OVERHEAD_BYTES);
        map.insert(b"a", 3);
        assert_eq!(map.get(b"a"), Some(3));
        assert_eq!(map.get(b"bb"), Some(2));
        assert_eq!(map.get(b"c"), None);
        assert_eq!(map.size_bytes(), size, "an update takes no more room");
        assert_eq!(map.latest_offsets_sorted(), [2, 3]);
    }
}
