//! Offsets committed inside a transaction (TxnOffsetCommit), kept apart from the committed ones
//! until the transaction's marker reaches the `__consumer_offsets` partition: a commit marker
//! makes them committed, an abort marker drops them (Kafka's `pendingTransactionalOffsetCommits`).
//!
//! Their records go to the partition in transactional batches of the producer, so that the
//! partition's producer state fences a zombie producer's commit by epoch, as any transactional
//! write. The coordinator is the only writer of those batches to its partition, so it numbers
//! them itself: the next sequence of each producer, learnt again from the batches when a new
//! leader loads the partition.

use std::collections::BTreeMap;

use super::records::CommittedOffset;

/// A `(topic, partition)`.
type TopicPartition = (String, i32);

/// The producer fields of a transactional batch of offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnBatch {
    /// The transactional producer.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
    /// The sequence of the batch's first record.
    pub base_sequence: i32,
}

/// An offset an open transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingOffset {
    offset: CommittedOffset,
    /// A plain commit of the same group and partition was written after it: when the
    /// transaction commits, the later record wins, as Kafka compares the records' positions
    /// in the partition (`CommitRecordMetadataAndOffset::olderThan`). Still pending until
    /// then (OffsetFetch with `require_stable` waits for the marker either way).
    overtaken: bool,
}

/// The pending transactional offsets of one coordinator, by producer.
#[derive(Debug, Default)]
pub struct TxnOffsets {
    /// Per producer, per group, the offsets its open transaction committed.
    pending: BTreeMap<i64, BTreeMap<String, BTreeMap<TopicPartition, PendingOffset>>>,
    /// Per producer, the epoch of its last batch here and the sequence its next one takes.
    next_sequences: BTreeMap<i64, (i16, i32)>,
}

impl TxnOffsets {
    /// The producer fields for a new batch of `records` records of `producer_id` at
    /// `producer_epoch`, numbered after its earlier batches (from 0 at a new epoch).
    pub fn next_batch(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        records: usize,
    ) -> TxnBatch {
        let base_sequence = match self.next_sequences.get(&producer_id) {
            Some(&(epoch, next)) if epoch == producer_epoch => next,
            _ => 0,
        };
        let count = i32::try_from(records).unwrap_or(i32::MAX);
        self.next_sequences
            .insert(producer_id, (producer_epoch, advance(base_sequence, count)));
        TxnBatch {
            producer_id,
            producer_epoch,
            base_sequence,
        }
    }

    /// A batch of `producer_id` found in the log while loading: later batches follow it.
    pub fn load_batch(&mut self, batch: TxnBatch, records: usize) {
        let count = i32::try_from(records).unwrap_or(i32::MAX);
        let newer = self
            .next_sequences
            .get(&batch.producer_id)
            .is_none_or(|&(epoch, _)| epoch <= batch.producer_epoch);
        if newer {
            self.next_sequences.insert(
                batch.producer_id,
                (batch.producer_epoch, advance(batch.base_sequence, count)),
            );
        }
    }

    /// `producer_id`'s transaction committed `offset` for `group_id`'s `key`, not visible yet.
    pub fn add(
        &mut self,
        producer_id: i64,
        group_id: &str,
        key: TopicPartition,
        offset: CommittedOffset,
    ) {
        self.pending
            .entry(producer_id)
            .or_default()
            .entry(group_id.to_owned())
            .or_default()
            .insert(
                key,
                PendingOffset {
                    offset,
                    overtaken: false,
                },
            );
    }

    /// A plain commit of `group_id`'s `key` was written (or replayed): it comes after every
    /// transactional offset of that key pending now, which no longer apply when their
    /// transactions commit.
    pub fn overtaken(&mut self, group_id: &str, key: &TopicPartition) {
        for groups in self.pending.values_mut() {
            if let Some(pending) = groups
                .get_mut(group_id)
                .and_then(|offsets| offsets.get_mut(key))
            {
                pending.overtaken = true;
            }
        }
    }

    /// `producer_id`'s transaction ended: its offsets, by group, to make committed (on commit;
    /// on abort the caller drops them), leaving out those a later plain commit overtook.
    pub fn complete(
        &mut self,
        producer_id: i64,
    ) -> BTreeMap<String, BTreeMap<TopicPartition, CommittedOffset>> {
        let groups = self.pending.remove(&producer_id).unwrap_or_default();
        groups
            .into_iter()
            .map(|(group_id, offsets)| {
                let applied = offsets
                    .into_iter()
                    .filter(|(_, pending)| !pending.overtaken)
                    .map(|(key, pending)| (key, pending.offset))
                    .collect();
                (group_id, applied)
            })
            .collect()
    }

    /// Whether an open transaction committed an offset for `group_id`'s `key` (OffsetFetch
    /// with `require_stable` then answers UNSTABLE_OFFSET_COMMIT).
    pub fn is_pending(&self, group_id: &str, key: &TopicPartition) -> bool {
        self.pending.values().any(|groups| {
            groups
                .get(group_id)
                .is_some_and(|offsets| offsets.contains_key(key))
        })
    }

    /// The batch `batch` of `records` records was not written: when no later batch of its
    /// producer was numbered, its sequences are given out again (a gap would make every
    /// later batch OUT_OF_ORDER_SEQUENCE).
    pub fn unwritten(&mut self, batch: TxnBatch, records: usize) {
        let count = i32::try_from(records).unwrap_or(i32::MAX);
        let after = advance(batch.base_sequence, count);
        if self.next_sequences.get(&batch.producer_id) == Some(&(batch.producer_epoch, after)) {
            self.next_sequences.insert(
                batch.producer_id,
                (batch.producer_epoch, batch.base_sequence),
            );
        }
    }
}

/// The sequence `count` records after `sequence`, wrapping from `i32::MAX` to 0 as Kafka's
/// sequences do.
fn advance(sequence: i32, count: i32) -> i32 {
    let next = i64::from(sequence) + i64::from(count);
    i32::try_from(next % (i64::from(i32::MAX) + 1)).expect("below i32::MAX")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(value: i64) -> CommittedOffset {
        CommittedOffset {
            offset: value,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
            expire_timestamp_ms: None,
        }
    }

    #[test]
    fn batches_are_numbered_per_producer_from_zero_at_each_epoch_and_after_a_load() {
        let mut offsets = TxnOffsets::default();
        assert_eq!(offsets.next_batch(7, 0, 2).base_sequence, 0);
        assert_eq!(offsets.next_batch(7, 0, 1).base_sequence, 2);
        assert_eq!(offsets.next_batch(8, 3, 1).base_sequence, 0);
        assert_eq!(offsets.next_batch(7, 1, 1).base_sequence, 0);

        let mut loaded = TxnOffsets::default();
        loaded.load_batch(
            TxnBatch {
                producer_id: 7,
                producer_epoch: 1,
                base_sequence: 4,
            },
            3,
        );
        // An older epoch's batch later in the scan cannot be (epochs only grow), and is
        // ignored.
        loaded.load_batch(
            TxnBatch {
                producer_id: 7,
                producer_epoch: 0,
                base_sequence: 9,
            },
            1,
        );
        assert_eq!(loaded.next_batch(7, 1, 1).base_sequence, 7);
        assert_eq!(advance(i32::MAX, 1), 0);
    }

    #[test]
    fn pending_offsets_are_per_producer_and_group_until_the_transaction_completes() {
        let mut offsets = TxnOffsets::default();
        offsets.add(7, "g", ("t".into(), 0), offset(5));
        offsets.add(7, "g", ("t".into(), 0), offset(6));
        offsets.add(8, "h", ("t".into(), 1), offset(1));
        assert!(offsets.is_pending("g", &("t".into(), 0)));
        assert!(!offsets.is_pending("g", &("t".into(), 1)));
        let completed = offsets.complete(7);
        assert_eq!(completed["g"][&("t".to_owned(), 0)].offset, 6);
        assert!(!offsets.is_pending("g", &("t".into(), 0)));
        assert!(offsets.complete(7).is_empty());
        assert!(offsets.is_pending("h", &("t".into(), 1)));
        // A batch that was not written gives its sequences back, unless a later one took
        // the next.
        let first = offsets.next_batch(9, 0, 2);
        offsets.unwritten(first, 2);
        assert_eq!(offsets.next_batch(9, 0, 1).base_sequence, 0);
        let _second = offsets.next_batch(9, 0, 1);
        offsets.unwritten(
            TxnBatch {
                producer_id: 9,
                producer_epoch: 0,
                base_sequence: 0,
            },
            1,
        );
        assert_eq!(offsets.next_batch(9, 0, 1).base_sequence, 2);
    }
}
