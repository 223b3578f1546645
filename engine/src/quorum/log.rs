//! [`QuorumLog`]: what a quorum member keeps on disk, raft's log and hard state, on the
//! [`Storage`] trait (so the simulation can crash it).
//!
//! Files, in the `__cluster_metadata-0` directory of the data directory:
//!
//! ```text
//! raft.log     frames, back to back, one per entry:
//!                length:u32  crc32c:u32 (of the body)  body:
//!                index:u64 term:u64 entry_type:u8 context_length:u32 context data
//! hard-state   "SPHS" term:u64 vote:u64 commit:u64 crc32c:u32 (of the 28 bytes before),
//!              replaced atomically
//! ```
//!
//! All integers big-endian. An append that conflicts with the log (an entry at an index the
//! log already has) first cuts the file at that entry, as raft requires. Recovery reads frames
//! until the first one that is short or fails its CRC and cuts the file there: a torn tail is
//! an append that was never acknowledged, because [`QuorumLog::persist`] syncs before it
//! returns. A damaged hard state refuses to open: it holds this member's vote, and forgetting a
//! vote could elect two leaders in one term.
//!
//! The whole log is kept in memory (metadata is small); snapshots and log compaction are not
//! there yet.

use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, EntryType, HardState};

use crate::storage::backend::{
    read_whole_file, write_file_atomically, OpenMode, Storage, StorageFile,
};
use crate::storage::{StorageError, StorageResult};

/// The directory of the metadata log inside a data directory.
pub const QUORUM_DIR_NAME: &str = "__cluster_metadata-0";
const LOG_FILE_NAME: &str = "raft.log";
const HARD_STATE_FILE_NAME: &str = "hard-state";
const HARD_STATE_MAGIC: &[u8; 4] = b"SPHS";
const HARD_STATE_BYTES: usize = 4 + 8 + 8 + 8 + 4;
const FRAME_HEADER_BYTES: usize = 8;
const BODY_FIXED_BYTES: usize = 8 + 8 + 1 + 4;

/// A quorum member's durable raft state. See the module docs.
#[derive(Debug)]
pub struct QuorumLog<S: Storage> {
    storage: S,
    dir: PathBuf,
    file: S::File,
    /// Each entry's index and the position of its frame, in order.
    positions: Vec<(u64, u64)>,
    end_position: u64,
}

/// What [`QuorumLog::open`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// The last hard state persisted (default when none was).
    pub hard_state: HardState,
    /// Every entry, in order.
    pub entries: Vec<Entry>,
    /// Bytes cut from a torn tail, if any.
    pub torn_bytes: u64,
}

impl<S: Storage> QuorumLog<S> {
    /// Opens (creating) the quorum directory in `data_dir` and recovers it.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] for a damaged hard state or entries out of order, or an I/O
    /// error.
    pub async fn open(storage: S, data_dir: &Path) -> StorageResult<(QuorumLog<S>, Restored)> {
        let dir = data_dir.join(QUORUM_DIR_NAME);
        let io = |what: &str, path: &Path| {
            let context = format!("{what} {}", path.display());
            move |source| StorageError::io(context, source)
        };
        storage
            .create_dir_all(&dir)
            .await
            .map_err(io("creating", &dir))?;
        let hard_state_path = dir.join(HARD_STATE_FILE_NAME);
        let hard_state = match read_whole_file(&storage, &hard_state_path).await {
            Ok(bytes) => decode_hard_state(&bytes).ok_or_else(|| StorageError::Corrupt {
                segment: hard_state_path.clone(),
                position: 0,
                reason: "damaged raft hard state (term, vote, commit)".into(),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HardState::default(),
            Err(source) => {
                return Err(StorageError::io(
                    format!("reading {}", hard_state_path.display()),
                    source,
                ))
            }
        };
        let log_path = dir.join(LOG_FILE_NAME);
        let file = match storage.open(&log_path, OpenMode::Existing).await {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let file = storage
                    .open(&log_path, OpenMode::CreateNew)
                    .await
                    .map_err(io("creating", &log_path))?;
                storage.sync_dir(&dir).await.map_err(io("syncing", &dir))?;
                file
            }
            opened => opened.map_err(io("opening", &log_path))?,
        };
        let bytes = file
            .read_at(0, file.len() as usize)
            .await
            .map_err(io("reading", &log_path))?;
        let mut log = QuorumLog {
            storage,
            dir,
            file,
            positions: Vec::new(),
            end_position: 0,
        };
        let mut entries = Vec::new();
        let mut position = 0_usize;
        while let Some((entry, size)) = decode_frame(&bytes[position..]) {
            if let Some(&(last, _)) = log.positions.last() {
                if entry.index != last + 1 {
                    return Err(StorageError::Corrupt {
                        segment: log_path,
                        position: position as u64,
                        reason: format!("entry {} follows entry {last}", entry.index),
                    });
                }
            }
            log.positions.push((entry.index, position as u64));
            entries.push(entry);
            position += size;
        }
        log.end_position = position as u64;
        let torn_bytes = bytes.len() as u64 - log.end_position;
        if torn_bytes > 0 {
            tracing::warn!(
                path = %log_path.display(), position, torn_bytes,
                "cutting a torn tail of the metadata log"
            );
            log.file
                .truncate(log.end_position)
                .await
                .map_err(io("truncating", &log_path))?;
            log.file.sync().await.map_err(io("syncing", &log_path))?;
        }
        Ok((
            log,
            Restored {
                hard_state,
                entries,
                torn_bytes,
            },
        ))
    }

    /// Makes `entries` (replacing any the log has from the first one's index on) and
    /// `hard_state` durable, in that order.
    ///
    /// # Errors
    /// An I/O error; the caller must then stop the member, as raft cannot go on without its
    /// writes.
    pub async fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> StorageResult<()> {
        let log_path = self.dir.join(LOG_FILE_NAME);
        if let Some(first) = entries.first() {
            let kept = self
                .positions
                .partition_point(|&(index, _)| index < first.index);
            if kept < self.positions.len() {
                let cut = self.positions[kept].1;
                self.positions.truncate(kept);
                self.file.truncate(cut).await.map_err(|source| {
                    StorageError::io(format!("truncating {}", log_path.display()), source)
                })?;
                self.end_position = cut;
            }
            if let Some(&(last, _)) = self.positions.last() {
                assert_eq!(first.index, last + 1, "raft appends follow the log");
            }
            let mut frames = Vec::new();
            for entry in entries {
                self.positions
                    .push((entry.index, self.end_position + frames.len() as u64));
                encode_frame(entry, &mut frames);
            }
            self.file
                .write_at(self.end_position, &frames)
                .await
                .map_err(|source| {
                    StorageError::io(format!("writing {}", log_path.display()), source)
                })?;
            self.end_position += frames.len() as u64;
            self.file.sync().await.map_err(|source| {
                StorageError::io(format!("syncing {}", log_path.display()), source)
            })?;
        }
        if let Some(hard_state) = hard_state {
            let path = self.dir.join(HARD_STATE_FILE_NAME);
            write_file_atomically(&self.storage, &path, &encode_hard_state(hard_state))
                .await
                .map_err(|source| {
                    StorageError::io(format!("writing {}", path.display()), source)
                })?;
        }
        Ok(())
    }
}

fn entry_type_code(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn encode_frame(entry: &Entry, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(BODY_FIXED_BYTES + entry.context.len() + entry.data.len());
    body.extend_from_slice(&entry.index.to_be_bytes());
    body.extend_from_slice(&entry.term.to_be_bytes());
    body.push(entry_type_code(entry.get_entry_type()));
    body.extend_from_slice(&(entry.context.len() as u32).to_be_bytes());
    body.extend_from_slice(&entry.context);
    body.extend_from_slice(&entry.data);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
}

/// The entry in the frame at the start of `bytes` and the frame's size, or `None` when the
/// frame is short or damaged (the end of the log).
fn decode_frame(bytes: &[u8]) -> Option<(Entry, usize)> {
    let header = bytes.get(..FRAME_HEADER_BYTES)?;
    let length = u32::from_be_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header[4..8].try_into().ok()?);
    let body = bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES.checked_add(length)?)?;
    if body.len() < BODY_FIXED_BYTES || crc32c::crc32c(body) != crc {
        return None;
    }
    let index = u64::from_be_bytes(body[..8].try_into().ok()?);
    let term = u64::from_be_bytes(body[8..16].try_into().ok()?);
    let entry_type = match body[16] {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    };
    let context_length = u32::from_be_bytes(body[17..21].try_into().ok()?) as usize;
    let context = body.get(BODY_FIXED_BYTES..BODY_FIXED_BYTES.checked_add(context_length)?)?;
    let data = &body[BODY_FIXED_BYTES + context_length..];
    let mut entry = Entry {
        index,
        term,
        context: bytes::Bytes::copy_from_slice(context),
        data: bytes::Bytes::copy_from_slice(data),
        ..Entry::default()
    };
    entry.set_entry_type(entry_type);
    Some((entry, FRAME_HEADER_BYTES + length))
}

fn encode_hard_state(hard_state: &HardState) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HARD_STATE_BYTES);
    bytes.extend_from_slice(HARD_STATE_MAGIC);
    bytes.extend_from_slice(&hard_state.term.to_be_bytes());
    bytes.extend_from_slice(&hard_state.vote.to_be_bytes());
    bytes.extend_from_slice(&hard_state.commit.to_be_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    bytes
}

fn decode_hard_state(bytes: &[u8]) -> Option<HardState> {
    if bytes.len() != HARD_STATE_BYTES || &bytes[..4] != HARD_STATE_MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(bytes[28..32].try_into().ok()?);
    if crc32c::crc32c(&bytes[..28]) != crc {
        return None;
    }
    let field = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Some(HardState {
        term: field(4),
        vote: field(12),
        commit: field(20),
        ..HardState::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::{CrashMode, SimulatedStorage};

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::copy_from_slice(data.as_bytes()),
            ..Entry::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(future)
    }

    #[test]
    fn entries_and_hard_state_survive_a_crash_and_conflicts_are_cut() {
        block_on(async {
            let storage = SimulatedStorage::new();
            let data_dir = Path::new("/data");
            let (mut log, restored) = QuorumLog::open(storage.clone(), data_dir).await.unwrap();
            assert_eq!(restored, Restored::default());
            let first = [entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")];
            log.persist(&first, Some(&hard_state(1, 2, 1)))
                .await
                .unwrap();
            // A new leader's entries replace 2 and 3.
            let second = [entry(2, 2, "B"), entry(3, 2, "C"), entry(4, 2, "D")];
            log.persist(&second, Some(&hard_state(2, 3, 3)))
                .await
                .unwrap();
            drop(log);
            storage.crash(CrashMode::DropUnsynced);
            let (_, restored) = QuorumLog::open(storage.clone(), data_dir).await.unwrap();
            assert_eq!(restored.hard_state, hard_state(2, 3, 3));
            assert_eq!(
                restored.entries,
                [
                    entry(1, 1, "a"),
                    entry(2, 2, "B"),
                    entry(3, 2, "C"),
                    entry(4, 2, "D")
                ]
            );
            assert_eq!(restored.torn_bytes, 0);
        });
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_damaged_hard_state_refuses_to_open() {
        block_on(async {
            let storage = SimulatedStorage::new();
            let data_dir = Path::new("/data");
            let (mut log, _) = QuorumLog::open(storage.clone(), data_dir).await.unwrap();
            log.persist(&[entry(1, 1, "kept")], Some(&hard_state(1, 1, 1)))
                .await
                .unwrap();
            drop(log);
            let log_path = data_dir.join(QUORUM_DIR_NAME).join(LOG_FILE_NAME);
            let len = storage.durable_len(&log_path).unwrap();
            // A second frame written halfway: its bytes are there but cut short.
            let mut frames = Vec::new();
            encode_frame(&entry(2, 1, "torn"), &mut frames);
            let (log, _) = QuorumLog::open(storage.clone(), data_dir).await.unwrap();
            log.file
                .write_at(len as u64, &frames[..frames.len() - 3])
                .await
                .unwrap();
            log.file.sync().await.unwrap();
            drop(log);
            let (mut log, restored) = QuorumLog::open(storage.clone(), data_dir).await.unwrap();
            assert_eq!(restored.entries, [entry(1, 1, "kept")]);
            assert_eq!(restored.torn_bytes, frames.len() as u64 - 3);
            log.persist(&[entry(2, 1, "next")], None).await.unwrap();
            drop(log);
            let (_, restored) = QuorumLog::open(storage.clone(), data_dir).await.unwrap();
            assert_eq!(restored.entries, [entry(1, 1, "kept"), entry(2, 1, "next")]);

            let hard_state_path = data_dir.join(QUORUM_DIR_NAME).join(HARD_STATE_FILE_NAME);
            storage.corrupt_byte(&hard_state_path, 9, 0x40);
            assert!(matches!(
                QuorumLog::open(storage.clone(), data_dir).await,
                Err(StorageError::Corrupt { .. })
            ));
        });
    }
}
