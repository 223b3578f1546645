//! The log's side of producer state: snapshots on disk, and the replay of the batches after
//! the newest one when the log opens (see [`super::producers`] for the state itself).
//!
//! A snapshot `<offset>.snapshot` holds the state of every batch below `offset`. It is written
//! with the log's checkpoint when the checkpoint covers the whole log (at a roll, at a
//! checkpoint, at close), so it never covers offsets a crash can take away; the
//! [`SNAPSHOTS_KEPT`] newest are kept, so that a follower's truncation below the newest one
//! still finds one to start from. Opening ignores the snapshots past the log end (cut by a
//! truncation or a torn tail), loads the newest one that decodes, and replays the batch headers
//! from its offset to the log end. Snapshots it cannot use (past the log end, or damaged) stay
//! on disk until the snapshot written by the checkpoint that ends the open replaces them, so a
//! directory is never left without one once it had producers. A log with no snapshot file
//! thus never had producer state at a checkpoint, and replays from its recovery point only
//! (opening a log without idempotent producers reads nothing more than recovery does); one
//! whose snapshots were all unusable replays from the log start. A damaged batch that stops
//! the replay makes the log forget every producer (their next batches are accepted at any
//! sequence) rather than keep stale sequences.

use bytes::Buf;
use tracing::{info, warn};

use super::backend::{read_whole_file, write_file_atomically, Storage};
use super::batch::{self, BatchHeader};
use super::error::{StorageError, StorageResult};
use super::log::{io_error, remove_if_present, PartitionLog};
use super::producers::{
    MarkerAppend, ProducerAppend, ProducerStates, SNAPSHOTS_KEPT, SNAPSHOT_SUFFIX,
};
use super::segment::parse_file_name;

/// Bytes read at a time while replaying batch headers.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// Most reads of the same bytes while replaying before a failed CRC check is taken for
/// damage (as recovery's walk reads again).
const REPLAY_READS_MAX: u32 = 16;

pub(super) fn snapshot_name(offset: i64) -> String {
    format!("{offset:020}{SNAPSHOT_SUFFIX}")
}

impl<S: Storage> PartitionLog<S> {
    /// Idempotent producers' state: what the next producer batches are checked against.
    pub fn producer_states(&self) -> &ProducerStates {
        &self.producers
    }

    /// Loads the producer state at open: the newest usable snapshot at or below the log end,
    /// then every batch after it. Snapshots past the log end are removed.
    ///
    /// # Errors
    /// An I/O error, or corruption met while replaying the log.
    pub(super) async fn load_producers(&mut self, names: &[String]) -> StorageResult<()> {
        let log_end_offset = self.log_end_offset();
        let mut offsets: Vec<i64> = names
            .iter()
            .filter_map(|name| parse_file_name(name, SNAPSHOT_SUFFIX))
            .collect();
        offsets.sort_unstable();
        let had_snapshots = !offsets.is_empty();
        let mut loaded = None;
        while let Some(offset) = offsets.pop() {
            let path = self.dir.join(snapshot_name(offset));
            // Unusable snapshots stay on disk until a new one replaces them (at the
            // checkpoint that ends the open): a crash before that must not leave the
            // directory without a snapshot, which would read as "never had producers".
            if offset > log_end_offset {
                info!(path = %path.display(), log_end_offset, "ignoring a producer snapshot past the log end");
                self.stale_producer_snapshots.push(offset);
                continue;
            }
            let decoded = match read_whole_file(&self.storage, &path).await {
                Ok(bytes) => {
                    ProducerStates::decode_snapshot(&bytes).and_then(|(covered, states)| {
                        match covered == offset {
                            true => Ok(states),
                            false => Err(format!("covers offset {covered}, not {offset}")),
                        }
                    })
                }
                Err(error) => Err(error.to_string()),
            };
            match decoded {
                Ok(states) => {
                    loaded = Some((offset, states));
                    self.producer_snapshots.insert(offset);
                    break;
                }
                Err(reason) => {
                    warn!(path = %path.display(), %reason, "ignoring a damaged producer snapshot");
                    self.stale_producer_snapshots.push(offset);
                }
            }
        }
        self.producer_snapshots.extend(offsets);
        let (from, states) = match loaded {
            Some(loaded) => loaded,
            // A log without snapshot files never had producer state at a checkpoint (one is
            // written whenever there is state): nothing to replay below the recovery point.
            None if !had_snapshots => (self.recovery_point, ProducerStates::new()),
            // Every snapshot was damaged or past the log end: the whole log, once.
            None => (self.log_start_offset, ProducerStates::new()),
        };
        self.producers = states;
        if let Err(error) = self.replay_producers(from.max(self.log_start_offset)).await {
            // Unreadable batches are reported to whoever reads them. What they held is
            // unknown, so every producer is forgotten (their next batches are accepted at any
            // sequence, as after expiry) rather than kept with a stale last sequence.
            warn!(dir = %self.dir.display(), %error, "a damaged batch stopped the producer state replay; forgetting every producer");
            self.producers.clear();
        }
        self.producers.evict_below(self.log_start_offset);
        Ok(())
    }

    /// Observes the producer fields of every batch from `from` to the log end. Without them
    /// a `read_committed` reader would be served aborted transactions as committed, so a read
    /// that fails its CRC check is read again before it is taken for damage.
    async fn replay_producers(&mut self, from: i64) -> StorageResult<()> {
        let log_end_offset = self.log_end_offset();
        let mut offset = from;
        let mut batches = 0u64;
        while offset < log_end_offset {
            // A read whose CRC check fails may have been a bad read, not damage: read again.
            let mut reads = 1;
            let fetched = loop {
                match self.read(offset, REPLAY_READ_BYTES, None).await {
                    Err(StorageError::Corrupt { .. }) if reads < REPLAY_READS_MAX => reads += 1,
                    fetched => break fetched?,
                }
            };
            let mut next = offset;
            for chunk in &fetched.chunks {
                let mut bytes: &[u8] = chunk;
                while bytes.has_remaining() {
                    let header =
                        BatchHeader::parse(bytes).expect("reads return whole, checked batches");
                    if header.last_offset() >= offset {
                        if header.is_control() {
                            let marker = batch::control_marker(&bytes[..header.size_bytes()]);
                            if let Ok(marker) = marker {
                                self.producers.complete(&MarkerAppend {
                                    producer_id: header.producer_id,
                                    epoch: header.producer_epoch,
                                    coordinator_epoch: marker.coordinator_epoch,
                                    offset: header.base_offset,
                                    timestamp: header.max_timestamp,
                                    commit: marker.commit,
                                });
                            }
                        } else if let Some(append) =
                            ProducerAppend::of(&header, header.base_offset, header.max_timestamp)
                        {
                            self.producers.observe(&append);
                        }
                        batches += 1;
                    }
                    next = header.next_offset();
                    bytes.advance(header.size_bytes());
                }
            }
            assert!(
                next > offset,
                "a read at {offset} below the log end returns a batch"
            );
            offset = next;
        }
        if batches > 0 {
            info!(
                dir = %self.dir.display(),
                from,
                batches,
                producers = self.producers.len(),
                "producer state rebuilt from the log"
            );
        }
        Ok(())
    }

    /// Writes the producer state as a snapshot at the log end, when the checkpoint being
    /// written covers the whole log, and removes snapshots beyond the newest
    /// [`SNAPSHOTS_KEPT`], and the unusable ones found at open. A log that never saw a producer
    /// id writes none.
    pub(super) async fn write_producer_snapshot(&mut self) -> StorageResult<()> {
        let offset = self.log_end_offset();
        if !self.producer_snapshot_due() {
            return Ok(());
        }
        let path = self.dir.join(snapshot_name(offset));
        write_file_atomically(
            &self.storage,
            &path,
            &self.producers.encode_snapshot(offset),
        )
        .await
        .map_err(io_error(|| format!("writing {}", path.display())))?;
        self.producer_snapshot_written(offset).await
    }

    /// Whether a producer snapshot is to be written: there is producer state, or there are
    /// snapshot files (which an empty snapshot must replace, or they would be loaded).
    pub(super) fn producer_snapshot_due(&self) -> bool {
        !self.producers.is_empty()
            || !self.producer_snapshots.is_empty()
            || !self.stale_producer_snapshots.is_empty()
    }

    /// Records that the snapshot at `offset` is on disk, and removes the ones it makes
    /// unneeded: the unusable ones found at open, and those beyond the newest
    /// [`SNAPSHOTS_KEPT`].
    pub(super) async fn producer_snapshot_written(&mut self, offset: i64) -> StorageResult<()> {
        self.producer_snapshots.insert(offset);
        // The new snapshot covers the durable log up to here on its own: older and unusable
        // ones may go.
        for stale in std::mem::take(&mut self.stale_producer_snapshots) {
            if stale != offset {
                remove_if_present(&self.storage, &self.dir.join(snapshot_name(stale))).await?;
            }
        }
        while self.producer_snapshots.len() > SNAPSHOTS_KEPT {
            let oldest = self.producer_snapshots.pop_first().expect("not empty");
            remove_if_present(&self.storage, &self.dir.join(snapshot_name(oldest))).await?;
        }
        Ok(())
    }
}
