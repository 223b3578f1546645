//! The idempotent producer's sequence numbers (pure; the producer's threads call it under its
//! lock).
//!
//! Each partition's batches get consecutive sequence numbers, under a producer id and epoch,
//! when they are first sent, and keep them through every retry, so that the broker stores a
//! retried batch once and refuses one that would leave a gap. A batch answered
//! OUT_OF_ORDER_SEQUENCE_NUMBER while an earlier batch of its partition is unresolved is
//! retried (the earlier one failed and will be retried first); otherwise it is a real gap.
//!
//! When a batch of a partition fails for good (a non-retriable error, or its retries or
//! delivery time ran out), the partition's sequence has a hole no later batch can cross: the
//! partition is broken. Its batches that already have sequence numbers fail too (they may or
//! may not be in the log, as any failed send), and once none is unresolved the partition starts
//! again at sequence 0 under a new producer id, which [`Sequencer::wants_new_producer`] asks the
//! producer to fetch (InitProducerId). Other partitions keep theirs: a producer id is only a
//! namespace for sequence numbers, so partitions may use different ones.

use std::collections::{BTreeMap, VecDeque};

use crate::storage::producers::last_sequence;

/// A producer id and epoch from InitProducerId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// The producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
}

/// A batch's place in its partition's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    /// Under which producer id and epoch.
    pub identity: ProducerIdentity,
    /// The sequence number of its first record.
    pub base_sequence: i32,
}

/// What [`Sequencer::assign`] decided for a batch without sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Send it with these.
    Assigned(Sequenced),
    /// Not yet: no producer id yet, or its partition is broken and waits for its unresolved
    /// batches or for a new producer id.
    Hold,
}

#[derive(Debug)]
struct PartitionSequence {
    identity: ProducerIdentity,
    next: i32,
    /// Base sequences of batches sent and not yet delivered or failed, oldest first.
    unresolved: VecDeque<i32>,
    /// A batch failed for good: the sequence has a hole.
    broken: bool,
    /// The next batch would cross `i32::MAX`: the partition restarts under a new producer
    /// id once its batches are resolved (a batch must not wrap, or it is encoded as two).
    exhausted: bool,
    /// Requests in flight carrying a batch of the partition, and the leader they went to.
    in_flight: usize,
    leader: i32,
}

impl PartitionSequence {
    fn new(identity: ProducerIdentity) -> Self {
        PartitionSequence {
            identity,
            next: 0,
            unresolved: VecDeque::new(),
            broken: false,
            exhausted: false,
            in_flight: 0,
            leader: -1,
        }
    }
}

/// Every partition's sequence. See the module docs.
#[derive(Debug, Default)]
pub struct Sequencer {
    current: Option<ProducerIdentity>,
    partitions: BTreeMap<(String, i32), PartitionSequence>,
    /// A broken partition has nothing unresolved and used the current identity.
    wants_new: bool,
}

impl Sequencer {
    /// Whether the producer should fetch a producer id (it has none, or a broken partition
    /// waits for a new one).
    pub fn wants_new_producer(&self) -> bool {
        self.current.is_none() || self.wants_new
    }

    /// A producer id from InitProducerId: new partitions and reset ones use it.
    pub fn adopt(&mut self, identity: ProducerIdentity) {
        self.current = Some(identity);
        self.wants_new = false;
    }

    /// Sequence numbers for a batch of `records` records to `partition` sent for the first
    /// time, or [`Assignment::Hold`].
    ///
    /// # Panics
    /// If `records` is 0.
    pub fn assign(&mut self, partition: &(String, i32), records: usize) -> Assignment {
        assert!(records > 0, "a batch holds records");
        let Some(current) = self.current else {
            return Assignment::Hold;
        };
        let entry = self
            .partitions
            .entry(partition.clone())
            .or_insert_with(|| PartitionSequence::new(current));
        let delta = i32::try_from(records - 1).expect("a batch holds fewer than 2^31 records");
        if i64::from(entry.next) + i64::from(delta) > i64::from(i32::MAX) {
            entry.exhausted = true;
        }
        if entry.broken || entry.exhausted {
            if !entry.unresolved.is_empty() {
                return Assignment::Hold;
            }
            if entry.identity == current {
                self.wants_new = true;
                return Assignment::Hold;
            }
            let (in_flight, leader) = (entry.in_flight, entry.leader);
            *entry = PartitionSequence {
                in_flight,
                leader,
                ..PartitionSequence::new(current)
            };
        }
        let base_sequence = entry.next;
        entry.next = last_sequence(base_sequence, delta)
            .checked_add(1)
            .unwrap_or(0);
        entry.unresolved.push_back(base_sequence);
        Assignment::Assigned(Sequenced {
            identity: entry.identity,
            base_sequence,
        })
    }

    /// Whether a batch of `partition` may go to `leader` now: not while requests carrying its
    /// batches are in flight to another broker (a leader change), since a leader that never
    /// saw the producer accepts any sequence and could take a later batch before an earlier
    /// one that the old leader fails.
    pub fn may_send_to(&self, partition: &(String, i32), leader: i32) -> bool {
        self.partitions
            .get(partition)
            .is_none_or(|entry| entry.in_flight == 0 || entry.leader == leader)
    }

    /// A request carrying a batch of `partition` goes to `leader`.
    pub fn sent(&mut self, partition: &(String, i32), leader: i32) {
        if let Some(entry) = self.partitions.get_mut(partition) {
            entry.in_flight += 1;
            entry.leader = leader;
        }
    }

    /// A request carrying a batch of `partition` was answered, failed, or not sent after all.
    pub fn returned(&mut self, partition: &(String, i32)) {
        if let Some(entry) = self.partitions.get_mut(partition) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }

    /// Whether `partition` is broken: a batch of it with sequence numbers must fail instead of
    /// being sent or retried.
    pub fn is_broken(&self, partition: &(String, i32)) -> bool {
        self.partitions
            .get(partition)
            .is_some_and(|entry| entry.broken)
    }

    /// Whether OUT_OF_ORDER_SEQUENCE_NUMBER for this batch is only the echo of an earlier
    /// batch of its partition still unresolved (retry it after that one).
    pub fn out_of_order_is_transient(&self, partition: &(String, i32), batch: &Sequenced) -> bool {
        self.partitions.get(partition).is_some_and(|entry| {
            entry.identity == batch.identity
                && entry.unresolved.front() != Some(&batch.base_sequence)
                && entry.unresolved.contains(&batch.base_sequence)
        })
    }

    /// The batch was delivered (`delivered`) or failed for good.
    pub fn resolved(&mut self, partition: &(String, i32), batch: &Sequenced, delivered: bool) {
        let Some(entry) = self.partitions.get_mut(partition) else {
            return;
        };
        if entry.identity != batch.identity {
            return;
        }
        entry
            .unresolved
            .retain(|base_sequence| *base_sequence != batch.base_sequence);
        if !delivered {
            entry.broken = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: ProducerIdentity = ProducerIdentity {
        producer_id: 7,
        epoch: 0,
    };
    const SECOND: ProducerIdentity = ProducerIdentity {
        producer_id: 8,
        epoch: 0,
    };

    fn key() -> (String, i32) {
        ("t".to_owned(), 0)
    }

    fn assigned(assignment: Assignment) -> Sequenced {
        match assignment {
            Assignment::Assigned(sequenced) => sequenced,
            Assignment::Hold => panic!("held"),
        }
    }

    #[test]
    fn batches_get_consecutive_sequences_once_there_is_an_id() {
        let mut sequencer = Sequencer::default();
        assert!(sequencer.wants_new_producer());
        assert_eq!(sequencer.assign(&key(), 3), Assignment::Hold);
        sequencer.adopt(FIRST);
        assert!(!sequencer.wants_new_producer());
        let first = assigned(sequencer.assign(&key(), 3));
        let second = assigned(sequencer.assign(&key(), 2));
        let other = assigned(sequencer.assign(&("t".to_owned(), 1), 1));
        assert_eq!((first.base_sequence, second.base_sequence), (0, 3));
        assert_eq!(other.base_sequence, 0, "each partition counts its own");
        // The first failed and is retried: the second's OUT_OF_ORDER is its echo.
        assert!(sequencer.out_of_order_is_transient(&key(), &second));
        assert!(!sequencer.out_of_order_is_transient(&key(), &first));
        sequencer.resolved(&key(), &first, true);
        assert!(!sequencer.out_of_order_is_transient(&key(), &second));
    }

    #[test]
    fn a_failed_batch_breaks_its_partition_until_a_new_id_restarts_it() {
        let mut sequencer = Sequencer::default();
        sequencer.adopt(FIRST);
        let first = assigned(sequencer.assign(&key(), 1));
        let second = assigned(sequencer.assign(&key(), 1));
        let other = assigned(sequencer.assign(&("t".to_owned(), 1), 1));
        sequencer.resolved(&key(), &first, false);
        assert!(sequencer.is_broken(&key()));
        assert_eq!(
            sequencer.assign(&key(), 1),
            Assignment::Hold,
            "waits for the second"
        );
        assert!(!sequencer.wants_new_producer());
        sequencer.resolved(&key(), &second, false);
        assert_eq!(sequencer.assign(&key(), 1), Assignment::Hold);
        assert!(sequencer.wants_new_producer(), "asks for a new id");
        sequencer.adopt(SECOND);
        let restarted = assigned(sequencer.assign(&key(), 2));
        assert_eq!(
            restarted,
            Sequenced {
                identity: SECOND,
                base_sequence: 0
            }
        );
        assert!(!sequencer.is_broken(&key()));
        // The other partition keeps its id and sequence.
        let next = assigned(sequencer.assign(&("t".to_owned(), 1), 1));
        assert_eq!(next.identity, FIRST);
        assert_eq!(next.base_sequence, other.base_sequence + 1);
    }

    #[test]
    fn a_batch_never_crosses_the_end_of_the_sequence_space() {
        let mut sequencer = Sequencer::default();
        sequencer.adopt(FIRST);
        let first = assigned(sequencer.assign(&key(), 1));
        sequencer.partitions.get_mut(&key()).unwrap().next = i32::MAX - 2;
        let last = assigned(sequencer.assign(&key(), 2));
        assert_eq!(last.base_sequence, i32::MAX - 2);
        // Three records from i32::MAX would wrap inside the batch: held until the
        // partition's batches are resolved, then a new id.
        assert_eq!(sequencer.assign(&key(), 3), Assignment::Hold);
        sequencer.resolved(&key(), &first, true);
        sequencer.resolved(&key(), &last, true);
        assert_eq!(sequencer.assign(&key(), 3), Assignment::Hold);
        assert!(sequencer.wants_new_producer());
        sequencer.adopt(SECOND);
        let restarted = assigned(sequencer.assign(&key(), 3));
        assert_eq!((restarted.identity, restarted.base_sequence), (SECOND, 0));
        assert!(!sequencer.is_broken(&key()));
    }

    #[test]
    fn sequences_wrap_to_zero_between_batches() {
        let mut sequencer = Sequencer::default();
        sequencer.adopt(FIRST);
        assigned(sequencer.assign(&key(), 1));
        sequencer.partitions.get_mut(&key()).unwrap().next = i32::MAX - 1;
        assert_eq!(
            assigned(sequencer.assign(&key(), 2)).base_sequence,
            i32::MAX - 1
        );
        let wrapped = assigned(sequencer.assign(&key(), 1));
        assert_eq!((wrapped.identity, wrapped.base_sequence), (FIRST, 0));
    }

    #[test]
    fn a_partition_sends_to_one_leader_at_a_time() {
        let mut sequencer = Sequencer::default();
        sequencer.adopt(FIRST);
        assert!(sequencer.may_send_to(&key(), 1));
        assigned(sequencer.assign(&key(), 1));
        sequencer.sent(&key(), 1);
        sequencer.sent(&key(), 1);
        assert!(sequencer.may_send_to(&key(), 1));
        assert!(!sequencer.may_send_to(&key(), 2), "the leader moved: wait");
        sequencer.returned(&key());
        assert!(!sequencer.may_send_to(&key(), 2));
        sequencer.returned(&key());
        assert!(sequencer.may_send_to(&key(), 2));
    }
}
