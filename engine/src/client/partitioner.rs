//! Which partition a record goes to, as the Java client and librdkafka's `murmur2_random`
//! partitioner choose it, so that a key lands on the same partition whichever of them wrote it.
//!
//! - A record with an explicit partition goes there.
//! - A keyed record goes to `toPositive(murmur2(key)) % partitions` (Kafka's
//!   `Utils.murmur2`, `Utils.toPositive`).
//! - A record without a key sticks to one partition per topic until the producer closes the
//!   batch it was filling (KIP-480), then moves to another one, so keyless records make full
//!   batches instead of one small batch per partition.
//!
//! Sans-IO: the random numbers for the sticky choice come in as arguments.

use std::collections::BTreeMap;

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with Kafka's seed, over the key bytes.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: the sign bit cleared (not `abs`, which overflows).
pub fn to_positive(number: i32) -> i32 {
    number & 0x7fff_ffff
}

/// The partition of a keyed record among `partitions`.
///
/// # Panics
/// If `partitions` is not positive.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    to_positive(murmur2(key)) % partitions
}

/// The producer's partitioner: explicit partitions, murmur2 for keys, sticky for the rest.
#[derive(Debug, Default, Clone)]
pub struct Partitioner {
    /// The partition each topic's keyless records currently stick to.
    sticky: BTreeMap<String, i32>,
}

impl Partitioner {
    /// A partitioner with no sticky choices yet.
    pub fn new() -> Partitioner {
        Partitioner::default()
    }

    /// The partition for a record of `topic` (with `partitions` partitions). `random` is used
    /// only when a keyless record needs a new sticky partition.
    ///
    /// # Panics
    /// If `partitions` is not positive.
    pub fn partition(
        &mut self,
        topic: &str,
        explicit: Option<i32>,
        key: Option<&[u8]>,
        partitions: i32,
        random: u64,
    ) -> i32 {
        assert!(partitions > 0, "a topic has at least one partition");
        if let Some(partition) = explicit {
            return partition;
        }
        if let Some(key) = key {
            return partition_for_key(key, partitions);
        }
        match self.sticky.get(topic) {
            Some(&partition) if partition < partitions => partition,
            _ => {
                let partition = (random % partitions as u64) as i32;
                self.sticky.insert(topic.to_owned(), partition);
                partition
            }
        }
    }

    /// The batch keyless records of `topic` were filling on `closed_partition` is closed:
    /// move them to another partition (a different one when there are several), as KIP-480.
    pub fn batch_closed(
        &mut self,
        topic: &str,
        closed_partition: i32,
        partitions: i32,
        random: u64,
    ) {
        if self.sticky.get(topic) != Some(&closed_partition) || partitions <= 0 {
            return;
        }
        let next = if partitions == 1 {
            0
        } else {
            // One of the other partitions, uniformly.
            let offset = 1 + (random % (partitions as u64 - 1)) as i32;
            (closed_partition + offset) % partitions
        };
        self.sticky.insert(topic.to_owned(), next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest.testMurmur2 (the Java client's own vectors); kafka-python's
        // murmur2 gives the same values as unsigned integers.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), *hash, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keys_land_where_the_java_client_puts_them() {
        // toPositive(murmur2(key)) % 12, as computed by kafka-python's DefaultPartitioner.
        assert_eq!(partition_for_key(b"21", 12), 0);
        assert_eq!(partition_for_key(b"foobar", 12), 6);
        assert_eq!(partition_for_key(b"a-little-bit-long-string", 12), 8);
        assert_eq!(partition_for_key(b"abc", 12), 3);
        assert_eq!(partition_for_key(b"key-1", 12), 0);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
    }

    #[test]
    fn keyless_records_stick_until_their_batch_closes() {
        let mut partitioner = Partitioner::new();
        let first = partitioner.partition("t", None, None, 6, 4);
        assert_eq!(first, 4);
        // Other random numbers do not move it while the batch is open.
        for random in 0..10 {
            assert_eq!(partitioner.partition("t", None, None, 6, random), first);
        }
        // Keys and explicit partitions are not affected by stickiness.
        assert_eq!(partitioner.partition("t", None, Some(b"foobar"), 12, 0), 6);
        assert_eq!(partitioner.partition("t", Some(2), None, 6, 0), 2);
        partitioner.batch_closed("t", first, 6, 7);
        let second = partitioner.partition("t", None, None, 6, 0);
        assert_ne!(
            second, first,
            "a closed batch moves keyless records elsewhere"
        );
        // Another topic has its own choice; closing a batch of another partition changes nothing.
        assert_eq!(partitioner.partition("u", None, None, 3, 2), 2);
        partitioner.batch_closed("u", 0, 3, 1);
        assert_eq!(partitioner.partition("u", None, None, 3, 0), 2);
        // A topic that shrank below the sticky partition (not possible in Kafka, but metadata
        // can be stale) gets a new choice.
        assert_eq!(partitioner.partition("t", None, None, 1, 9), 0);
    }
}
