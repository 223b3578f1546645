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
//! it is older than `producer_id_expiration_ms`; never while a transaction of theirs is open.
//!
//! Transactions (Kafka's `ProducerStateManager` again): a producer's first transactional
//! batch opens its transaction at that offset; a transaction marker (a control batch the
//! transaction coordinator has written) closes it. The open transactions give the first
//! unstable offset, below which the last stable offset lies; the aborted ones are kept (first
//! and last offset, and the last stable offset when they were aborted) so that a
//! `read_committed` fetch can be told which records to skip, until they fall below the log
//! start. A transactional producer's non-transactional batch while its transaction is open
//! is refused (`INVALID_TXN_STATE`), as are markers of an older producer epoch or an older
//! coordinator epoch than the last one seen (`INVALID_PRODUCER_EPOCH`,
//! `TRANSACTION_COORDINATOR_FENCED`).

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

/// Version 1: producers only; version 2 adds transaction state.
const SNAPSHOT_VERSION: i16 = 2;
/// Version, CRC, offset, producer count.
const SNAPSHOT_HEADER_BYTES: usize = 2 + 4 + 8 + 4;
/// Producer id, epoch, batch count (version 1).
const ENTRY_HEADER_BYTES_V1: usize = 8 + 2 + 1;
/// Producer id, epoch, coordinator epoch, open transaction's first offset, last offset, last
/// timestamp, batch count.
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 4 + 8 + 8 + 8 + 1;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8 + 8;
/// Producer id, first offset, last offset, last stable offset.
const ABORTED_BYTES: usize = 8 + 8 + 8 + 8;

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
    /// Its last batches of that epoch, oldest first; at most [`BATCHES_KEPT`], and empty when
    /// a transaction marker moved it to a new epoch.
    pub batches: VecDeque<ProducerBatch>,
    /// The epoch of the transaction coordinator that wrote its last marker (-1: none yet).
    pub coordinator_epoch: i32,
    /// The first offset of its open transaction, if one is open.
    pub txn_first_offset: Option<i64>,
    /// The offset of its last batch or marker.
    pub last_offset: i64,
    /// The timestamp of its last batch or marker, for expiry.
    pub last_timestamp: i64,
}

impl ProducerEntry {
    fn new(epoch: i16) -> ProducerEntry {
        ProducerEntry {
            epoch,
            batches: VecDeque::with_capacity(BATCHES_KEPT),
            coordinator_epoch: -1,
            txn_first_offset: None,
            last_offset: -1,
            last_timestamp: -1,
        }
    }

    fn push(&mut self, batch: ProducerBatch) {
        if self.batches.len() == BATCHES_KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
        self.last_offset = batch.last_offset;
        self.last_timestamp = batch.max_timestamp;
    }

    /// Moves to `epoch`, forgetting the older epoch's batches.
    fn set_epoch(&mut self, epoch: i16) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
    }
}

/// A transaction marker (Kafka's `EndTransactionMarker`), as the producer state takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerAppend {
    /// The producer whose transaction ends.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
    /// The epoch of the coordinator that wrote it.
    pub coordinator_epoch: i32,
    /// The marker's offset.
    pub offset: i64,
    /// The marker's timestamp.
    pub timestamp: i64,
    /// Commit (else abort).
    pub commit: bool,
}

/// A transaction that was aborted: `read_committed` readers skip its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer.
    pub producer_id: i64,
    /// Its first record's offset.
    pub first_offset: i64,
    /// The offset of its abort marker.
    pub last_offset: i64,
    /// The last stable offset once it was aborted: every transaction aborted before it ends
    /// below it (what lets a search stop, as Kafka's `TxnIndexSearchResult`).
    pub last_stable_offset: i64,
}

/// A transaction a marker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    /// The producer.
    pub producer_id: i64,
    /// Its first record's offset.
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    /// Aborted (else committed).
    pub aborted: bool,
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
    /// A non-transactional batch while the producer's transaction is open
    /// (`INVALID_TXN_STATE`).
    #[error("producer {producer_id} sent a non-transactional batch while its transaction is open")]
    InvalidTxnState {
        /// The producer.
        producer_id: i64,
    },
    /// A transactional batch that would open a transaction, whose verification a marker for
    /// the producer overtook (`INVALID_TXN_STATE`; see `storage::verification`).
    #[error(
        "producer {producer_id}'s transactional batch is not part of an ongoing transaction: \
         the transaction ended while the batch was being verified"
    )]
    Unverified {
        /// The producer.
        producer_id: i64,
    },
    /// A transaction marker from an older coordinator epoch than the producer's last one
    /// (`TRANSACTION_COORDINATOR_FENCED`).
    #[error(
        "a marker for producer {producer_id} from coordinator epoch {found}, older than {current}"
    )]
    CoordinatorFenced {
        /// The producer.
        producer_id: i64,
        /// The last coordinator epoch seen.
        current: i32,
        /// The marker's.
        found: i32,
    },
    /// A control batch from a producer: only the transaction coordinator writes markers
    /// (`INVALID_RECORD`, as Kafka's `LogValidator`).
    #[error("a control batch (producer {producer_id}) from a client")]
    ControlBatchFromClient {
        /// The batch's producer id.
        producer_id: i64,
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
    /// Part of a transaction.
    pub transactional: bool,
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
            transactional: header.is_transactional(),
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
    /// Open transactions: first offset to producer id (derived from `entries`).
    open_txns: BTreeMap<i64, i64>,
    /// Aborted transactions by the offset of their marker.
    aborted: BTreeMap<i64, AbortedTxn>,
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

    /// Whether no producer and no aborted transaction is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.aborted.is_empty()
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
            transactional,
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
                // After a marker moved the producer to this epoch, it starts at 0.
                let expected = current
                    .batches
                    .back()
                    .map_or(0, |last| last.last_sequence.checked_add(1).unwrap_or(0));
                let follows = match current.batches.back() {
                    Some(last) => in_sequence(last.last_sequence, batch.first_sequence),
                    None => batch.first_sequence == 0,
                };
                if !follows {
                    return Err(ProducerError::OutOfOrderSequence {
                        producer_id,
                        epoch,
                        expected,
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
        if !transactional && current.is_some_and(|current| current.txn_first_offset.is_some()) {
            return Err(ProducerError::InvalidTxnState { producer_id });
        }
        let mut entry = match current {
            Some(current) => {
                let mut entry = current.clone();
                entry.set_epoch(epoch);
                entry
            }
            None => ProducerEntry::new(epoch),
        };
        if transactional && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(batch.first_offset);
        }
        entry.push(batch);
        staged.insert(producer_id, entry);
        Ok(Verdict::New)
    }

    /// Applies the changes of a successful append.
    pub fn apply(&mut self, staged: StagedProducers) {
        for (producer_id, entry) in staged {
            self.insert(producer_id, entry);
        }
    }

    /// Sets a producer's entry, keeping the open transactions in step.
    fn insert(&mut self, producer_id: i64, entry: ProducerEntry) {
        if let Some(first_offset) = entry.txn_first_offset {
            self.open_txns.insert(first_offset, producer_id);
        }
        if let Some(old) = self.entries.insert(producer_id, entry) {
            let new = self.entries[&producer_id].txn_first_offset;
            if let Some(first_offset) = old.txn_first_offset.filter(|&old| Some(old) != new) {
                self.open_txns.remove(&first_offset);
            }
        }
    }

    /// Removes the entries `keep` refuses, keeping the open transactions in step; returns
    /// how many went.
    fn remove_where(&mut self, keep: impl Fn(&ProducerEntry) -> bool) -> usize {
        let before = self.entries.len();
        let open_txns = &mut self.open_txns;
        self.entries.retain(|_, entry| {
            let kept = keep(entry);
            if let (false, Some(first_offset)) = (kept, entry.txn_first_offset) {
                open_txns.remove(&first_offset);
            }
            kept
        });
        before - self.entries.len()
    }

    /// Checks a transaction marker the coordinator asks to write.
    ///
    /// # Errors
    /// [`ProducerError::InvalidProducerEpoch`] for an epoch older than the producer's,
    /// [`ProducerError::CoordinatorFenced`] for an older coordinator epoch than its last
    /// marker's.
    pub fn check_marker(&self, marker: &MarkerAppend) -> Result<(), ProducerError> {
        let Some(entry) = self.entries.get(&marker.producer_id) else {
            return Ok(());
        };
        if marker.epoch < entry.epoch {
            return Err(ProducerError::InvalidProducerEpoch {
                producer_id: marker.producer_id,
                current: entry.epoch,
                found: marker.epoch,
            });
        }
        if marker.coordinator_epoch < entry.coordinator_epoch {
            return Err(ProducerError::CoordinatorFenced {
                producer_id: marker.producer_id,
                current: entry.coordinator_epoch,
                found: marker.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Takes a marker in the log (checked by the leader, or replicated, or replayed): the
    /// producer's open transaction, if any, ends, and an aborted one is remembered.
    pub fn complete(&mut self, marker: &MarkerAppend) -> Option<CompletedTxn> {
        let mut entry = self
            .entries
            .get(&marker.producer_id)
            .cloned()
            .unwrap_or_else(|| ProducerEntry::new(marker.epoch));
        entry.set_epoch(marker.epoch);
        entry.coordinator_epoch = marker.coordinator_epoch;
        entry.last_offset = marker.offset;
        entry.last_timestamp = marker.timestamp;
        let first_offset = entry.txn_first_offset.take();
        self.insert(marker.producer_id, entry);
        let first_offset = first_offset?;
        let completed = CompletedTxn {
            producer_id: marker.producer_id,
            first_offset,
            last_offset: marker.offset,
            aborted: !marker.commit,
        };
        if completed.aborted {
            let last_stable_offset = self.first_unstable_offset().unwrap_or(marker.offset + 1);
            self.aborted.insert(
                marker.offset,
                AbortedTxn {
                    producer_id: marker.producer_id,
                    first_offset,
                    last_offset: marker.offset,
                    last_stable_offset: last_stable_offset.min(marker.offset + 1),
                },
            );
        }
        Some(completed)
    }

    /// The first offset of the oldest open transaction: records from there on are not
    /// stable yet.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.open_txns.keys().next().copied()
    }

    /// The open transactions: first offset and producer id, oldest first.
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.open_txns
            .iter()
            .map(|(&first_offset, &producer_id)| (first_offset, producer_id))
    }

    /// The aborted transactions a `read_committed` fetch of `[fetch_offset, upper_bound)`
    /// must be told of: those ending at or after `fetch_offset` that began before
    /// `upper_bound`. As Kafka's transaction index search, it stops at the first one aborted
    /// when everything below `upper_bound` was already stable.
    pub fn aborted_overlapping(&self, fetch_offset: i64, upper_bound: i64) -> Vec<AbortedTxn> {
        let mut found = Vec::new();
        for aborted in self
            .aborted
            .range(fetch_offset..)
            .map(|(_, aborted)| aborted)
        {
            if aborted.first_offset < upper_bound {
                found.push(*aborted);
            }
            if aborted.last_stable_offset >= upper_bound {
                break;
            }
        }
        found
    }

    /// The first offsets of every batch the producers' sequence state remembers (the last
    /// few of each producer): the cleaner keeps these batches, emptied if need be, so that
    /// state rebuilt from the log still knows them.
    pub fn remembered_batch_offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.entries
            .values()
            .flat_map(|entry| entry.batches.iter().map(|batch| batch.first_offset))
    }

    /// The offset of each known producer's last batch or marker: the cleaner keeps a marker
    /// that is some producer's last, so that state rebuilt from the log keeps its epochs.
    pub fn last_offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.entries.values().map(|entry| entry.last_offset)
    }

    /// Every aborted transaction remembered, by marker offset.
    pub fn aborted_transactions(&self) -> impl Iterator<Item = &AbortedTxn> + '_ {
        self.aborted.values()
    }

    /// Records a batch already in the log (a follower's append, recovery) without checking
    /// it: the leader checked it against its state, which may have forgotten the producer
    /// (expired, or evicted) where this one did not, so the batch's epoch is taken as it is,
    /// as Kafka's replication path does.
    pub fn observe(&mut self, append: &ProducerAppend) {
        let mut entry = self
            .entries
            .get(&append.producer_id)
            .cloned()
            .unwrap_or_else(|| ProducerEntry::new(append.epoch));
        entry.set_epoch(append.epoch);
        if append.transactional && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(append.batch.first_offset);
        }
        entry.push(append.batch);
        self.insert(append.producer_id, entry);
    }

    /// Forgets every producer: their next batches are accepted at any sequence.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.open_txns.clear();
        self.aborted.clear();
    }

    /// Forgets producers whose last batch or marker lies below `log_start_offset` (removed
    /// by retention or DeleteRecords), unless a transaction of theirs is open, and aborted
    /// transactions that ended below it. Returns how many producers were forgotten.
    pub fn evict_below(&mut self, log_start_offset: i64) -> usize {
        self.aborted = self.aborted.split_off(&log_start_offset);
        self.remove_where(|entry| {
            entry.last_offset >= log_start_offset || entry.txn_first_offset.is_some()
        })
    }

    /// Forgets producers whose last batch's or marker's timestamp is `expiration_ms` or more
    /// before `now_ms` (Kafka's `producer.id.expiration.ms`), unless a transaction of theirs
    /// is open. Returns how many were forgotten.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.remove_where(|entry| {
            entry.txn_first_offset.is_some()
                || now_ms.saturating_sub(entry.last_timestamp) < expiration_ms
        })
    }

    /// The snapshot file image of this state, which covers every batch below `offset`.
    pub fn encode_snapshot(&self, offset: i64) -> BytesMut {
        let entries_bytes: usize = self
            .entries
            .values()
            .map(|entry| ENTRY_HEADER_BYTES + entry.batches.len() * BATCH_BYTES)
            .sum();
        let mut bytes = BytesMut::with_capacity(
            SNAPSHOT_HEADER_BYTES + entries_bytes + 4 + self.aborted.len() * ABORTED_BYTES,
        );
        bytes.put_i16(SNAPSHOT_VERSION);
        bytes.put_u32(0);
        bytes.put_i64(offset);
        bytes.put_u32(u32::try_from(self.entries.len()).expect("fewer than 2^32 producers"));
        for (&producer_id, entry) in &self.entries {
            bytes.put_i64(producer_id);
            bytes.put_i16(entry.epoch);
            bytes.put_i32(entry.coordinator_epoch);
            bytes.put_i64(entry.txn_first_offset.unwrap_or(-1));
            bytes.put_i64(entry.last_offset);
            bytes.put_i64(entry.last_timestamp);
            bytes.put_u8(u8::try_from(entry.batches.len()).expect("at most BATCHES_KEPT"));
            for batch in &entry.batches {
                bytes.put_i32(batch.first_sequence);
                bytes.put_i32(batch.last_sequence);
                bytes.put_i64(batch.first_offset);
                bytes.put_i64(batch.last_offset);
                bytes.put_i64(batch.max_timestamp);
            }
        }
        bytes.put_u32(u32::try_from(self.aborted.len()).expect("fewer than 2^32 aborted"));
        for aborted in self.aborted.values() {
            bytes.put_i64(aborted.producer_id);
            bytes.put_i64(aborted.first_offset);
            bytes.put_i64(aborted.last_offset);
            bytes.put_i64(aborted.last_stable_offset);
        }
        let crc = crc32c::crc32c(&bytes[6..]);
        bytes[2..6].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Parses a snapshot file image (version 1 or 2): the offset it covers and the state.
    ///
    /// # Errors
    /// A sentence saying what does not check out (version, CRC, lengths).
    pub fn decode_snapshot(mut bytes: &[u8]) -> Result<(i64, ProducerStates), String> {
        if bytes.len() < SNAPSHOT_HEADER_BYTES {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let version = bytes.get_i16();
        if version != 1 && version != SNAPSHOT_VERSION {
            return Err(format!("unknown version {version}"));
        }
        let crc = bytes.get_u32();
        if crc32c::crc32c(bytes) != crc {
            return Err("CRC mismatch".to_owned());
        }
        let offset = bytes.get_i64();
        let count = bytes.get_u32();
        let mut states = ProducerStates::new();
        let header_bytes = if version == 1 {
            ENTRY_HEADER_BYTES_V1
        } else {
            ENTRY_HEADER_BYTES
        };
        for _ in 0..count {
            if bytes.remaining() < header_bytes {
                return Err("truncated producer entry".to_owned());
            }
            let producer_id = bytes.get_i64();
            let mut entry = ProducerEntry::new(bytes.get_i16());
            if version > 1 {
                entry.coordinator_epoch = bytes.get_i32();
                entry.txn_first_offset = Some(bytes.get_i64()).filter(|&first| first >= 0);
                entry.last_offset = bytes.get_i64();
                entry.last_timestamp = bytes.get_i64();
            }
            let batches_count = usize::from(bytes.get_u8());
            // Version 1 entries always held a batch; version 2 ones may hold none (a marker
            // moved the producer to a new epoch).
            if (version == 1 && batches_count == 0)
                || batches_count > BATCHES_KEPT
                || bytes.remaining() < batches_count * BATCH_BYTES
            {
                return Err(format!(
                    "producer {producer_id} has {batches_count} batches"
                ));
            }
            for _ in 0..batches_count {
                let batch = ProducerBatch {
                    first_sequence: bytes.get_i32(),
                    last_sequence: bytes.get_i32(),
                    first_offset: bytes.get_i64(),
                    last_offset: bytes.get_i64(),
                    max_timestamp: bytes.get_i64(),
                };
                let (last_offset, last_timestamp) = (entry.last_offset, entry.last_timestamp);
                entry.push(batch);
                if version > 1 {
                    // A marker after the batches may be the producer's last word.
                    entry.last_offset = last_offset;
                    entry.last_timestamp = last_timestamp;
                }
            }
            if let Some(first_offset) = entry.txn_first_offset {
                if first_offset >= offset {
                    return Err(format!(
                        "producer {producer_id}'s transaction opens at {first_offset}, past {offset}"
                    ));
                }
                if states.open_txns.insert(first_offset, producer_id).is_some() {
                    return Err(format!("two transactions open at offset {first_offset}"));
                }
            }
            if states.entries.insert(producer_id, entry).is_some() {
                return Err(format!("producer {producer_id} listed twice"));
            }
        }
        if version > 1 {
            if bytes.remaining() < 4 {
                return Err("truncated aborted transaction count".to_owned());
            }
            let aborted_count = bytes.get_u32() as usize;
            if bytes.remaining() < aborted_count.saturating_mul(ABORTED_BYTES) {
                return Err(format!("{aborted_count} aborted transactions do not fit"));
            }
            for _ in 0..aborted_count {
                let aborted = AbortedTxn {
                    producer_id: bytes.get_i64(),
                    first_offset: bytes.get_i64(),
                    last_offset: bytes.get_i64(),
                    last_stable_offset: bytes.get_i64(),
                };
                if aborted.first_offset > aborted.last_offset || aborted.last_offset >= offset {
                    return Err(format!(
                        "aborted transaction {aborted:?} does not fit {offset}"
                    ));
                }
                if states
                    .aborted
                    .insert(aborted.last_offset, aborted)
                    .is_some()
                {
                    return Err(format!(
                        "two aborted transactions end at {}",
                        aborted.last_offset
                    ));
                }
            }
        }
        if bytes.has_remaining() {
            return Err(format!("{} bytes after the last entry", bytes.remaining()));
        }
        Ok((offset, states))
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
            transactional: false,
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

    fn transactional(producer_id: i64, epoch: i16, sequence: i32, at: i64) -> ProducerAppend {
        ProducerAppend {
            transactional: true,
            ..append(producer_id, epoch, sequence, 1, at)
        }
    }

    fn marker(producer_id: i64, epoch: i16, at: i64, commit: bool) -> MarkerAppend {
        MarkerAppend {
            producer_id,
            epoch,
            coordinator_epoch: 0,
            offset: at,
            timestamp: 1_000 + at,
            commit,
        }
    }

    #[test]
    fn open_transactions_hold_the_first_unstable_offset_until_their_markers() {
        let mut states = ProducerStates::new();
        check(&mut states, append(1, 0, 0, 1, 0)).unwrap();
        assert_eq!(states.first_unstable_offset(), None);
        check(&mut states, transactional(2, 0, 0, 1)).unwrap();
        check(&mut states, transactional(3, 0, 0, 2)).unwrap();
        check(&mut states, transactional(2, 0, 1, 3)).unwrap();
        assert_eq!(states.first_unstable_offset(), Some(1));
        assert_eq!(
            states.open_transactions().collect::<Vec<_>>(),
            [(1, 2), (2, 3)]
        );
        // 2 commits: 3's transaction, from offset 2, is the oldest open one.
        let committed = states.complete(&marker(2, 0, 4, true));
        assert_eq!(
            committed,
            Some(CompletedTxn {
                producer_id: 2,
                first_offset: 1,
                last_offset: 4,
                aborted: false
            })
        );
        assert_eq!(states.first_unstable_offset(), Some(2));
        // 3 aborts: nothing is open, and the aborted transaction is remembered.
        let aborted = states.complete(&marker(3, 0, 5, false)).unwrap();
        assert!(aborted.aborted);
        assert_eq!(states.first_unstable_offset(), None);
        assert_eq!(
            states.aborted_transactions().copied().collect::<Vec<_>>(),
            [AbortedTxn {
                producer_id: 3,
                first_offset: 2,
                last_offset: 5,
                last_stable_offset: 6
            }]
        );
        // A marker without an open transaction ends nothing.
        assert_eq!(states.complete(&marker(3, 0, 6, false)), None);
        assert_eq!(states.aborted_transactions().count(), 1);
    }

    #[test]
    fn aborted_transactions_overlapping_a_fetch_are_found_and_the_search_stops() {
        let mut states = ProducerStates::new();
        // 1 aborts [0, 3] while 2's transaction from 1 is open; 2 aborts [1, 5]; 4 aborts
        // [10, 11] alone.
        check(&mut states, transactional(1, 0, 0, 0)).unwrap();
        check(&mut states, transactional(2, 0, 0, 1)).unwrap();
        states.complete(&marker(1, 0, 3, false));
        states.complete(&marker(2, 0, 5, false));
        check(&mut states, transactional(4, 0, 0, 10)).unwrap();
        states.complete(&marker(4, 0, 11, false));
        let ids = |found: Vec<AbortedTxn>| -> Vec<i64> {
            found.iter().map(|aborted| aborted.producer_id).collect()
        };
        assert_eq!(ids(states.aborted_overlapping(0, 12)), [1, 2, 4]);
        assert_eq!(ids(states.aborted_overlapping(4, 12)), [2, 4]);
        assert_eq!(ids(states.aborted_overlapping(0, 1)), [1]);
        assert_eq!(ids(states.aborted_overlapping(6, 10)), Vec::<i64>::new());
        // 1's abort happened while 2's transaction kept the stable offset at 1: the search
        // goes on past it to 2's.
        assert_eq!(ids(states.aborted_overlapping(0, 2)), [1, 2]);
        // Below the log start they are forgotten.
        states.evict_below(6);
        assert_eq!(ids(states.aborted_overlapping(0, 12)), [4]);
    }

    #[test]
    fn transaction_rules_refuse_mixed_writes_and_fenced_markers() {
        let mut states = ProducerStates::new();
        check(&mut states, transactional(1, 0, 0, 0)).unwrap();
        assert_eq!(
            check(&mut states, append(1, 0, 1, 1, 1)),
            Err(ProducerError::InvalidTxnState { producer_id: 1 })
        );
        let mut newer = marker(1, 0, 1, false);
        newer.coordinator_epoch = 3;
        assert_eq!(states.check_marker(&newer), Ok(()));
        states.complete(&newer);
        let mut older = marker(1, 0, 2, true);
        older.coordinator_epoch = 2;
        assert!(matches!(
            states.check_marker(&older),
            Err(ProducerError::CoordinatorFenced {
                current: 3,
                found: 2,
                ..
            })
        ));
        // An abort at a bumped epoch (the coordinator's timeout) fences the old epoch; the
        // new one starts at sequence 0.
        let mut bumped = marker(1, 1, 2, false);
        bumped.coordinator_epoch = 3;
        states.complete(&bumped);
        assert!(matches!(
            states.check_marker(&marker(1, 0, 3, true)),
            Err(ProducerError::InvalidProducerEpoch { .. })
        ));
        assert!(matches!(
            check(&mut states, transactional(1, 1, 1, 3)),
            Err(ProducerError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            check(&mut states, transactional(1, 1, 0, 3)),
            Ok(Verdict::New)
        );
    }

    #[test]
    fn producers_with_open_transactions_are_neither_evicted_nor_expired() {
        let mut states = ProducerStates::new();
        check(&mut states, transactional(1, 0, 0, 0)).unwrap();
        check(&mut states, append(2, 0, 0, 1, 1)).unwrap();
        assert_eq!(states.evict_below(5), 1);
        assert_eq!(states.expire(1_000_000, 10), 0);
        assert_eq!(states.first_unstable_offset(), Some(0));
        states.complete(&marker(1, 0, 6, true));
        assert_eq!(states.expire(1_000_000, 10), 1);
        assert!(states.is_empty());
    }

    #[test]
    fn snapshots_keep_transactions_and_read_version_one() {
        let mut states = ProducerStates::new();
        check(&mut states, transactional(1, 0, 0, 0)).unwrap();
        check(&mut states, transactional(2, 0, 0, 1)).unwrap();
        states.complete(&marker(2, 0, 2, false));
        let mut bumped = marker(3, 4, 3, false);
        bumped.coordinator_epoch = 7;
        states.complete(&bumped);
        let bytes = states.encode_snapshot(4);
        let (offset, decoded) = ProducerStates::decode_snapshot(&bytes).unwrap();
        assert_eq!((offset, &decoded), (4, &states));
        assert_eq!(decoded.first_unstable_offset(), Some(0));
        assert_eq!(decoded.get(3).map(|entry| entry.coordinator_epoch), Some(7));
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(ProducerStates::decode_snapshot(&damaged).is_err());
        }
        // Version 1 (before transactions): producer id, epoch, batches.
        let mut v1 = BytesMut::new();
        v1.put_i16(1);
        v1.put_u32(0);
        v1.put_i64(9);
        v1.put_u32(1);
        v1.put_i64(5);
        v1.put_i16(2);
        v1.put_u8(1);
        for value in [3_i32, 4] {
            v1.put_i32(value);
        }
        for value in [7_i64, 8, 1_008] {
            v1.put_i64(value);
        }
        let crc = crc32c::crc32c(&v1[6..]);
        v1[2..6].copy_from_slice(&crc.to_be_bytes());
        let (offset, old) = ProducerStates::decode_snapshot(&v1).unwrap();
        assert_eq!(offset, 9);
        let entry = old.get(5).unwrap();
        assert_eq!(
            (entry.epoch, entry.last_offset, entry.last_timestamp),
            (2, 8, 1_008)
        );
        assert_eq!(entry.txn_first_offset, None);
    }
}
