//! The newest batches of a partition, in memory, for tailing consumers.
//!
//! Tailing consumers ask for what was just appended; serving them from memory keeps their reads
//! off the disk. The cache holds whole batches as shared [`Bytes`] (the same bytes that were
//! written, not a copy) and is bounded by `tail_cache_bytes`, evicting the oldest first. It only
//! ever holds a contiguous run of offsets ending at the log end.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug, Clone)]
struct CachedBatch {
    base_offset: i64,
    next_offset: i64,
    bytes: Bytes,
}

/// See the module docs.
#[derive(Debug)]
pub struct TailCache {
    batches: VecDeque<CachedBatch>,
    size_bytes: usize,
    size_bytes_max: usize,
}

impl TailCache {
    /// An empty cache holding at most `size_bytes_max` bytes.
    pub fn new(size_bytes_max: usize) -> TailCache {
        TailCache {
            batches: VecDeque::new(),
            size_bytes: 0,
            size_bytes_max,
        }
    }

    /// Adds the batch just appended. It must follow the newest cached batch.
    pub fn push(&mut self, base_offset: i64, next_offset: i64, bytes: Bytes) {
        if let Some(last) = self.batches.back() {
            if last.next_offset != base_offset {
                self.clear();
            }
        }
        if bytes.len() > self.size_bytes_max {
            self.clear();
            return;
        }
        self.size_bytes += bytes.len();
        self.batches.push_back(CachedBatch {
            base_offset,
            next_offset,
            bytes,
        });
        while self.size_bytes > self.size_bytes_max {
            let evicted = self.batches.pop_front().expect("size accounted");
            self.size_bytes -= evicted.bytes.len();
        }
    }

    /// Empties the cache (after a truncation or a roll that changes the tail).
    pub fn clear(&mut self) {
        self.batches.clear();
        self.size_bytes = 0;
    }

    /// Forgets the batches that start below `offset` (the cleaner rewrote them on disk).
    pub fn forget_below(&mut self, offset: i64) {
        while let Some(first) = self.batches.front() {
            if first.base_offset >= offset {
                break;
            }
            let evicted = self.batches.pop_front().expect("just seen");
            self.size_bytes -= evicted.bytes.len();
        }
    }

    /// Whole batches starting with the one holding `offset`, ending before `limit_offset`, at most
    /// `max_bytes` but at least one batch. `None` when `offset` is older than the cache.
    pub fn read(&self, offset: i64, limit_offset: i64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let first = self.batches.front()?;
        if offset < first.base_offset {
            return None;
        }
        let start = self
            .batches
            .partition_point(|batch| batch.next_offset <= offset);
        let mut out = Vec::new();
        let mut total = 0;
        for batch in self.batches.range(start..) {
            if batch.next_offset > limit_offset {
                break;
            }
            if !out.is_empty() && total + batch.bytes.len() > max_bytes {
                break;
            }
            total += batch.bytes.len();
            out.push(batch.bytes.clone());
        }
        Some(out)
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_newest_batches_within_bounds() {
        let mut cache = TailCache::new(30);
        for i in 0..5 {
            cache.push(i * 2, i * 2 + 2, Bytes::from(vec![i as u8; 10]));
        }
        assert_eq!(cache.size_bytes(), 30);
        assert!(
            cache.read(3, 10, 100).is_none(),
            "offsets 0..4 were evicted"
        );
        assert_eq!(cache.read(5, 10, 100).unwrap().len(), 3);
        let batches = cache.read(7, 10, 100).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0][0], 3);
        let one = cache.read(6, 10, 1).unwrap();
        assert_eq!(one.len(), 1, "at least one batch even over max_bytes");
        assert_eq!(
            cache.read(6, 8, 100).unwrap().len(),
            1,
            "limit offset respected"
        );
        assert!(cache.read(10, 10, 100).unwrap().is_empty());
    }
}
