//! Idempotent producers' state in one partition (Kafka's `ProducerStateManager`).
//!
//! For every producer id that wrote to the partition the log keeps the producer epoch and its
//! last [`BATCHES_KEPT`] batches: sequence range and offsets. That decides whether a batch a
//! producer sends is new (its first sequence follows the last one), a retry of a batch already
//! in the log (same epoch and sequence range: acknowledged again with its original offsets,
//! not appended), or refused (`OUT_OF_ORDER_SEQUENCE_NUMBER`, `INVALID_PRODUCER_EPOCH`).
//!
//! The state is a pure function of the batches in the log, so every replica derives the same
//! from the same log: leaders update it on append, followers on replicated appends, and a
//! reopened log loads the newest snapshot at or below its end and replays the batch headers
//! after it. Snapshots are written with the log's checkpoint (see `docs/FORMAT.md`); a
//! truncation reopens the log, which drops the snapshots past the cut.
//!
//! Rules, as Kafka's `ProducerAppendInfo`:
//! - a producer the partition does not know may start at any sequence (its earlier batches
//!   may have been removed by retention);
//! - an epoch older than the producer's is refused (`INVALID_PRODUCER_EPOCH`); a newer one
//!   must start at sequence 0 and forgets the older epoch's batches;
//! - within an epoch the first sequence must follow the last (`i32::MAX` wraps to 0).
//!
//! Producers are forgotten when their last batch falls below the log start offset, or when
//! it is older than `producer_id_expiration_ms`.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut, BytesMut};

use super::batch::BatchHeader;

/// Batches remembered per producer: a retry of any of them is recognised. Kafka's
/// `max.in.flight.requests.per.connection` for idempotence is at most 5 for this reason.
pub const BATCHES_KEPT: usize = 5;

/// File name suffix of producer state snapshots: `<offset as 20 digits>.snapshot`.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

/// Snapshots kept on disk, newest first; older ones are removed when a new one is written.
pub const SNAPSHOTS_KEPT: usize = 3;

const SNAPSHOT_VERSION: i16 = 1;
/// Version, CRC, offset, producer count.
const SNAPSHOT_HEADER_BYTES: usize = 2 + 4 + 8 + 4;
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 1;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8 + 8;

/// One batch a producer wrote, as the partition remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    /// Sequence number of the first record.
    pub first_sequence: i32,
    /// Sequence number of the last record.
    pub last_sequence: i32,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The batch's max timestamp as stored.
    pub max_timestamp: i64,
}

/// What the partition knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The producer's current epoch.
    pub epoch: i16,
    /// Its last batches of that epoch, oldest first; never empty, at most [`BATCHES_KEPT`].
    pub batches: VecDeque<ProducerBatch>,
}

impl ProducerEntry {
    fn last(&self) -> &ProducerBatch {
        self.batches.back().expect("an entry holds a batch")
    }

    fn push(&mut self, batch: ProducerBatch) {
        if self.batches.len() == BATCHES_KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
    }
}

/// Why a producer's batch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// The batch does not follow the producer's last one (`OUT_OF_ORDER_SEQUENCE_NUMBER`).
    #[error(
        "producer {producer_id} sent sequence {found} at epoch {epoch}, where {expected} was \
         expected"
    )]
    OutOfOrderSequence {
        /// The producer.
        producer_id: i64,
        /// Its epoch.
        epoch: i16,
        /// The sequence that would follow.
        expected: i32,
        /// The batch's first sequence.
        found: i32,
    },
    /// The batch's producer epoch is older than the producer's (`INVALID_PRODUCER_EPOCH`).
    #[error("producer {producer_id} sent epoch {found}, older than its current epoch {current}")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: i64,
        /// The current epoch.
        current: i16,
        /// The batch's epoch.
        found: i16,
    },
    /// A producer's batch among several for one partition in one request (`INVALID_RECORD`,
    /// as Kafka, which takes one batch per partition from a producer).
    #[error("producer {producer_id} sent {batches} batches for one partition in one request")]
    SeveralBatches {
        /// The producer.
        producer_id: i64,
        /// Batches in the request's records for the partition.
        batches: usize,
    },
    /// A batch with a producer id but no epoch or sequence (`INVALID_RECORD`).
    #[error("producer {producer_id} sent a batch with epoch {epoch} and base sequence {sequence}")]
    MissingSequence {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The batch's base sequence.
        sequence: i32,
    },
}

/// A batch's producer fields and the offsets it has (or will have) in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerAppend {
    /// The producer.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
    /// Where the batch sits.
    pub batch: ProducerBatch,
}

impl ProducerAppend {
    /// The producer fields of a batch whose first record has offset `first_offset` and whose
    /// max timestamp is `max_timestamp`, or `None` for a batch without a producer id or a
    /// control batch (transaction markers carry no sequence).
    pub fn of(header: &BatchHeader, first_offset: i64, max_timestamp: i64) -> Option<Self> {
        if header.producer_id < 0 || header.is_control() {
            return None;
        }
        Some(ProducerAppend {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            batch: ProducerBatch {
                first_sequence: header.base_sequence,
                last_sequence: last_sequence(header.base_sequence, header.last_offset_delta),
                first_offset,
                last_offset: first_offset + i64::from(header.last_offset_delta),
                max_timestamp,
            },
        })
    }
}

/// What a producer's batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: append it.
    New,
    /// A retry of this batch, already in the log: acknowledge it with these offsets.
    Duplicate(ProducerBatch),
}

/// The sequence number of the last record of a batch (Kafka's
/// `DefaultRecordBatch.incrementSequence`: sequences wrap from `i32::MAX` to 0).
pub fn last_sequence(first_sequence: i32, last_offset_delta: i32) -> i32 {
    if first_sequence > i32::MAX - last_offset_delta {
        last_offset_delta - (i32::MAX - first_sequence) - 1
    } else {
        first_sequence + last_offset_delta
    }
}

/// Whether `next` follows `last`.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// Every producer's state in one partition. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    entries: BTreeMap<i64, ProducerEntry>,
}

/// Entries changed by the batches of one append, not yet applied.
pub type StagedProducers = BTreeMap<i64, ProducerEntry>;

impl ProducerStates {
    /// No producer known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Known producers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A producer's state.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    /// Checks a producer's batch against the state, as changed by the earlier batches of the
    /// same append in `staged`, and stages its change there when it is new.
    ///
    /// # Errors
    /// Why the batch is refused; nothing is staged then.
    pub fn check(
        &self,
        staged: &mut StagedProducers,
        append: &ProducerAppend,
    ) -> Result<Verdict, ProducerError> {
        let ProducerAppend {
            producer_id,
            epoch,
            batch,
        } = *append;
        if epoch < 0 || batch.first_sequence < 0 {
            return Err(ProducerError::MissingSequence {
                producer_id,
                epoch,
                sequence: batch.first_sequence,
            });
        }
        let current = staged
            .get(&producer_id)
            .or_else(|| self.entries.get(&producer_id));
        if let Some(current) = current {
            if epoch < current.epoch {
                return Err(ProducerError::InvalidProducerEpoch {
                    producer_id,
                    current: current.epoch,
                    found: epoch,
                });
            }
            if epoch == current.epoch {
                // Retries are of batches in the log, never of earlier batches of this append.
                let in_log = self
                    .entries
                    .get(&producer_id)
                    .filter(|kept| kept.epoch == epoch);
                let retried = in_log
                    .into_iter()
                    .flat_map(|kept| &kept.batches)
                    .find(|kept| {
                        (kept.first_sequence, kept.last_sequence)
                            == (batch.first_sequence, batch.last_sequence)
                    });
                if let Some(retried) = retried {
                    return Ok(Verdict::Duplicate(*retried));
                }
                let last = current.last().last_sequence;
                if !in_sequence(last, batch.first_sequence) {
                    return Err(ProducerError::OutOfOrderSequence {
                        producer_id,
                        epoch,
                        expected: last.checked_add(1).unwrap_or(0),
                        found: batch.first_sequence,
                    });
                }
            } else if batch.first_sequence != 0 {
                return Err(ProducerError::OutOfOrderSequence {
                    producer_id,
                    epoch,
                    expected: 0,
                    found: batch.first_sequence,
                });
            }
        }
        let mut entry = match current {
            Some(current) if current.epoch == epoch => current.clone(),
            _ => ProducerEntry {
                epoch,
                batches: VecDeque::with_capacity(BATCHES_KEPT),
            },
        };
        entry.push(batch);
        staged.insert(producer_id, entry);
        Ok(Verdict::New)
    }

    /// Applies the changes of a successful append.
    pub fn apply(&mut self, staged: StagedProducers) {
        for (producer_id, entry) in staged {
            self.entries.insert(producer_id, entry);
        }
    }

    /// Records a batch already in the log (a follower's append, recovery) without checking
    /// it: the leader checked it against its state, which may have forgotten the producer
    /// (expired, or evicted) where this one did not, so the batch's epoch is taken as it is,
    /// as Kafka's replication path does.
    pub fn observe(&mut self, append: &ProducerAppend) {
        let entry = self
            .entries
            .entry(append.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: append.epoch,
                batches: VecDeque::with_capacity(BATCHES_KEPT),
            });
        if append.epoch != entry.epoch {
            entry.epoch = append.epoch;
            entry.batches.clear();
        }
        entry.push(append.batch);
    }

    /// Forgets every producer: their next batches are accepted at any sequence.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Forgets producers whose last batch lies below `log_start_offset` (removed by retention
    /// or DeleteRecords). Returns how many were forgotten.
    pub fn evict_below(&mut self, log_start_offset: i64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, entry| entry.last().last_offset >= log_start_offset);
        before - self.entries.len()
    }

    /// Forgets producers whose last batch's timestamp is `expiration_ms` or more before
    /// `now_ms` (Kafka's `producer.id.expiration.ms`). Returns how many were forgotten.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, entry| now_ms.saturating_sub(entry.last().max_timestamp) < expiration_ms);
        before - self.entries.len()
    }

    /// The snapshot file image of this state, which covers every batch below `offset`.
    pub fn encode_snapshot(&self, offset: i64) -> BytesMut {
        let entries_bytes: usize = self
            .entries
            .values()
            .map(|entry| ENTRY_HEADER_BYTES + entry.batches.len() * BATCH_BYTES)
            .sum();
        let mut bytes = BytesMut::with_capacity(SNAPSHOT_HEADER_BYTES + entries_bytes);
        bytes.put_i16(SNAPSHOT_VERSION);
        bytes.put_u32(0);
        bytes.put_i64(offset);
        bytes.put_u32(u32::try_from(self.entries.len()).expect("fewer than 2^32 producers"));
        for (&producer_id, entry) in &self.entries {
            bytes.put_i64(producer_id);
            bytes.put_i16(entry.epoch);
            bytes.put_u8(u8::try_from(entry.batches.len()).expect("at most BATCHES_KEPT"));
            for batch in &entry.batches {
                bytes.put_i32(batch.first_sequence);
                bytes.put_i32(batch.last_sequence);
                bytes.put_i64(batch.first_offset);
                bytes.put_i64(batch.last_offset);
                bytes.put_i64(batch.max_timestamp);
            }
        }
        let crc = crc32c::crc32c(&bytes[6..]);
        bytes[2..6].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Parses a snapshot file image: the offset it covers and the state.
    ///
    /// # Errors
    /// A sentence saying what does not check out (version, CRC, lengths).
    pub fn decode_snapshot(mut bytes: &[u8]) -> Result<(i64, ProducerStates), String> {
        if bytes.len() < SNAPSHOT_HEADER_BYTES {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let version = bytes.get_i16();
        if version != SNAPSHOT_VERSION {
            return Err(format!("unknown version {version}"));
        }
        let crc = bytes.get_u32();
        if crc32c::crc32c(bytes) != crc {
            return Err("CRC mismatch".to_owned());
        }
        let offset = bytes.get_i64();
        let count = bytes.get_u32();
        let mut entries = BTreeMap::new();
        for _ in 0..count {
            if bytes.remaining() < ENTRY_HEADER_BYTES {
                return Err("truncated producer entry".to_owned());
            }
            let producer_id = bytes.get_i64();
            let epoch = bytes.get_i16();
            let batches_count = usize::from(bytes.get_u8());
            if batches_count == 0
                || batches_count > BATCHES_KEPT
                || bytes.remaining() < batches_count * BATCH_BYTES
            {
                return Err(format!(
                    "producer {producer_id} has {batches_count} batches"
                ));
            }
            let mut batches = VecDeque::with_capacity(BATCHES_KEPT);
            for _ in 0..batches_count {
                batches.push_back(ProducerBatch {
                    first_sequence: bytes.get_i32(),
                    last_sequence: bytes.get_i32(),
                    first_offset: bytes.get_i64(),
                    last_offset: bytes.get_i64(),
                    max_timestamp: bytes.get_i64(),
                });
            }
            entries.insert(producer_id, ProducerEntry { epoch, batches });
        }
        if bytes.has_remaining() {
            return Err(format!("{} bytes after the last entry", bytes.remaining()));
        }
        Ok((offset, ProducerStates { entries }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(
        producer_id: i64,
        epoch: i16,
        first_sequence: i32,
        records: i32,
        at: i64,
    ) -> ProducerAppend {
        ProducerAppend {
            producer_id,
            epoch,
            batch: ProducerBatch {
                first_sequence,
                last_sequence: last_sequence(first_sequence, records - 1),
                first_offset: at,
                last_offset: at + i64::from(records) - 1,
                max_timestamp: 1_000 + at,
            },
        }
    }

    fn check(
        states: &mut ProducerStates,
        append: ProducerAppend,
    ) -> Result<Verdict, ProducerError> {
        let mut staged = StagedProducers::new();
        let verdict = states.check(&mut staged, &append)?;
        states.apply(staged);
        Ok(verdict)
    }

    #[test]
    fn batches_in_sequence_are_new_and_a_retry_is_a_duplicate_with_its_offsets() {
        let mut states = ProducerStates::new();
        assert_eq!(check(&mut states, append(7, 0, 0, 3, 10)), Ok(Verdict::New));
        assert_eq!(check(&mut states, append(7, 0, 3, 2, 13)), Ok(Verdict::New));
        let retried = check(&mut states, append(7, 0, 0, 3, 99));
        assert_eq!(
            retried,
            Ok(Verdict::Duplicate(append(7, 0, 0, 3, 10).batch)),
            "a retry is answered with the offsets it got first"
        );
        assert_eq!(states.get(7).map(|entry| entry.batches.len()), Some(2));
    }

    #[test]
    fn a_gap_or_a_sequence_before_the_window_is_out_of_order() {
        let mut states = ProducerStates::new();
        for (index, at) in (0..7).zip((0..).step_by(2)) {
            check(&mut states, append(1, 0, index * 2, 2, at)).unwrap();
        }
        assert!(matches!(
            check(&mut states, append(1, 0, 15, 1, 20)),
            Err(ProducerError::OutOfOrderSequence {
                expected: 14,
                found: 15,
                ..
            })
        ));
        // Batch 0 fell out of the five kept: its retry can no longer be recognised.
        assert!(matches!(
            check(&mut states, append(1, 0, 0, 2, 20)),
            Err(ProducerError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            check(&mut states, append(1, 0, 4, 2, 20)),
            Ok(Verdict::Duplicate(_))
        ));
    }

    #[test]
    fn epochs_fence_older_batches_and_a_new_epoch_starts_at_zero() {
        let mut states = ProducerStates::new();
        check(&mut states, append(1, 3, 0, 1, 0)).unwrap();
        assert!(matches!(
            check(&mut states, append(1, 2, 1, 1, 1)),
            Err(ProducerError::InvalidProducerEpoch {
                current: 3,
                found: 2,
                ..
            })
        ));
        assert!(matches!(
            check(&mut states, append(1, 4, 5, 1, 1)),
            Err(ProducerError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(check(&mut states, append(1, 4, 0, 1, 1)), Ok(Verdict::New));
        assert_eq!(
            states
                .get(1)
                .map(|entry| (entry.epoch, entry.batches.len())),
            Some((4, 1))
        );
    }

    #[test]
    fn an_unknown_producer_may_start_anywhere_and_bad_fields_are_refused() {
        let mut states = ProducerStates::new();
        assert_eq!(check(&mut states, append(5, 0, 42, 1, 0)), Ok(Verdict::New));
        assert!(matches!(
            check(&mut states, append(6, 0, -1, 1, 1)),
            Err(ProducerError::MissingSequence { .. })
        ));
        assert!(states.get(6).is_none(), "a refused batch stages nothing");
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        let mut states = ProducerStates::new();
        check(&mut states, append(1, 0, i32::MAX - 1, 2, 0)).unwrap();
        assert_eq!(check(&mut states, append(1, 0, 0, 1, 2)), Ok(Verdict::New));
    }

    #[test]
    fn batches_of_one_append_are_checked_against_each_other() {
        let states = ProducerStates::new();
        let mut staged = StagedProducers::new();
        assert_eq!(
            states.check(&mut staged, &append(1, 0, 0, 2, 0)),
            Ok(Verdict::New)
        );
        assert!(states.check(&mut staged, &append(1, 0, 5, 1, 2)).is_err());
        assert_eq!(
            states.check(&mut staged, &append(1, 0, 2, 1, 2)),
            Ok(Verdict::New)
        );
        assert!(
            states.is_empty(),
            "nothing applies before the append succeeds"
        );
    }

    #[test]
    fn eviction_and_expiry_forget_producers() {
        let mut states = ProducerStates::new();
        check(&mut states, append(1, 0, 0, 1, 0)).unwrap();
        check(&mut states, append(2, 0, 0, 1, 50)).unwrap();
        assert_eq!(states.evict_below(10), 1);
        assert!(states.get(1).is_none());
        assert_eq!(states.expire(1_050 + 99, 100), 0);
        assert_eq!(states.expire(1_050 + 100, 100), 1);
        assert!(states.is_empty());
    }

    #[test]
    fn observe_follows_the_log_without_checks() {
        let mut states = ProducerStates::new();
        states.observe(&append(1, 1, 7, 1, 0));
        states.observe(&append(1, 1, 8, 1, 1));
        states.observe(&append(1, 2, 0, 1, 2));
        let entry = states.get(1).unwrap();
        assert_eq!((entry.epoch, entry.batches.len()), (2, 1));
        // An older epoch the leader accepted (it had forgotten the producer) is taken as is.
        states.observe(&append(1, 0, 5, 1, 3));
        let entry = states.get(1).unwrap();
        assert_eq!((entry.epoch, entry.batches[0].first_sequence), (0, 5));
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut states = ProducerStates::new();
        for at in 0..8 {
            check(&mut states, append(1, 0, at as i32, 1, at)).unwrap();
        }
        check(&mut states, append(9, 2, 0, 4, 8)).unwrap();
        let bytes = states.encode_snapshot(12);
        assert_eq!(
            ProducerStates::decode_snapshot(&bytes),
            Ok((12, states.clone()))
        );
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(
                ProducerStates::decode_snapshot(&damaged).is_err(),
                "byte {position}"
            );
        }
        assert!(ProducerStates::decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        let empty = ProducerStates::new().encode_snapshot(0);
        assert_eq!(
            ProducerStates::decode_snapshot(&empty),
            Ok((0, ProducerStates::new()))
        );
    }
}
