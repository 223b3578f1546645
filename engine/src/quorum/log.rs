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
//! snapshot     "SPSN" length:u32 crc32c:u32 (of the body) body: raft's eraftpb.Snapshot
//!              (metadata: index, term, voters; data: the metadata image), replaced atomically
//! ```
//!
//! All integers big-endian. An append that conflicts with the log (an entry at an index the
//! log already has) first cuts the file at that entry, as raft requires. Recovery reads frames
//! until the first one that is short or fails its CRC and cuts the file there: a torn tail is
//! an append that was never acknowledged, because [`QuorumLog::persist`] syncs before it
//! returns. A damaged hard state or snapshot refuses to open: the hard state holds this
//! member's vote (forgetting a vote could elect two leaders in one term), and the snapshot
//! holds the entries compacted away.
//!
//! # Snapshots and compaction
//! With a snapshot at index S and term T, `raft.log` starts with the *anchor*, an entry at S
//! with term T: the snapshot's own last entry when this member compacted its log, an empty
//! entry when the leader sent the snapshot. The snapshot file is written first, then the log
//! rewritten (atomically) from the anchor on. Recovery keeps the entries after S only when the
//! log holds the anchor (same index, same term): raft's log matching then says they extend
//! the snapshot's history. Otherwise they are what the member had before the leader's snapshot
//! replaced its log, and they go. So a crash between the two writes loses nothing and keeps
//! nothing stale.

use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, HardState, Snapshot};

use super::node::DurableState;

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
const SNAPSHOT_FILE_NAME: &str = "snapshot";
const SNAPSHOT_MAGIC: &[u8; 4] = b"SPSN";
const SNAPSHOT_HEADER_BYTES: usize = 4 + 4 + 4;
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
    /// The last hard state persisted (default when none was), its commit at least the
    /// snapshot's index.
    pub hard_state: HardState,
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Every entry after the snapshot, in order.
    pub entries: Vec<Entry>,
    /// Bytes cut from a torn tail, if any.
    pub torn_bytes: u64,
}

impl Restored {
    /// What the quorum node starts from.
    pub fn into_durable(self) -> DurableState {
        DurableState {
            hard_state: self.hard_state,
            snapshot: self.snapshot,
            entries: self.entries,
        }
    }
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
        let names = storage.list(&dir).await.map_err(io("listing", &dir))?;
        for name in names.iter().filter(|name| name.ends_with(".tmp")) {
            let path = dir.join(name);
            storage.remove(&path).await.map_err(io("removing", &path))?;
        }
        let snapshot = read_snapshot(&storage, &dir.join(SNAPSHOT_FILE_NAME)).await?;
        let hard_state_path = dir.join(HARD_STATE_FILE_NAME);
        let mut hard_state = match read_whole_file(&storage, &hard_state_path).await {
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
        let mut entries: Vec<Entry> = Vec::new();
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
        if let Some(snapshot) = &snapshot {
            let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
            hard_state.commit = hard_state.commit.max(index);
            hard_state.term = hard_state.term.max(term);
            let anchored = entries
                .iter()
                .any(|entry| entry.index == index && entry.term == term);
            let starts_at_anchor = entries.first().is_some_and(|entry| entry.index == index);
            if !anchored {
                if entries.last().is_some_and(|entry| entry.index > index) {
                    tracing::warn!(
                        snapshot_index = index,
                        "dropping metadata log entries the leader's snapshot replaced"
                    );
                }
                entries.clear();
            }
            entries.retain(|entry| entry.index > index);
            if !(anchored && starts_at_anchor) {
                log.rewrite(anchor(index, term), &entries).await?;
            }
        }
        Ok((
            log,
            Restored {
                hard_state,
                snapshot,
                entries,
                torn_bytes,
            },
        ))
    }

    /// Replaces `raft.log`, atomically, by `anchor` followed by `entries`.
    async fn rewrite(&mut self, anchor: Entry, entries: &[Entry]) -> StorageResult<()> {
        let log_path = self.dir.join(LOG_FILE_NAME);
        let mut frames = Vec::new();
        let mut positions = Vec::with_capacity(entries.len() + 1);
        for entry in std::iter::once(&anchor).chain(entries) {
            positions.push((entry.index, frames.len() as u64));
            encode_frame(entry, &mut frames);
        }
        write_file_atomically(&self.storage, &log_path, &frames)
            .await
            .map_err(|source| {
                StorageError::io(format!("writing {}", log_path.display()), source)
            })?;
        let file = self
            .storage
            .open(&log_path, OpenMode::Existing)
            .await
            .map_err(|source| {
                StorageError::io(format!("opening {}", log_path.display()), source)
            })?;
        let old = std::mem::replace(&mut self.file, file);
        let _ = old.close().await;
        self.positions = positions;
        self.end_position = frames.len() as u64;
        Ok(())
    }

    /// Keeps `snapshot`, of this member's own applied state, and drops the entries before its
    /// index (the entry at its index stays as the anchor).
    ///
    /// # Errors
    /// An I/O error; the caller must then stop the member.
    pub async fn compact(&mut self, snapshot: &Snapshot) -> StorageResult<()> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        self.write_snapshot(snapshot).await?;
        let log_path = self.dir.join(LOG_FILE_NAME);
        let start = self
            .positions
            .iter()
            .find(|&&(entry_index, _)| entry_index == index)
            .map(|&(_, position)| position)
            .expect("a member compacts only entries it holds");
        let bytes = self
            .file
            .read_at(start, (self.end_position - start) as usize)
            .await
            .map_err(|source| {
                StorageError::io(format!("reading {}", log_path.display()), source)
            })?;
        let mut entries = Vec::new();
        let mut position = 0;
        while let Some((entry, size)) = decode_frame(&bytes[position..]) {
            entries.push(entry);
            position += size;
        }
        assert_eq!(
            position as u64,
            self.end_position - start,
            "the log's own frames decode"
        );
        let anchor = entries.remove(0);
        assert_eq!((anchor.index, anchor.term), (index, term), "the anchor");
        self.rewrite(anchor, &entries).await
    }

    async fn write_snapshot(&self, snapshot: &Snapshot) -> StorageResult<()> {
        let path = self.dir.join(SNAPSHOT_FILE_NAME);
        let body = snapshot.write_to_bytes().map_err(|error| {
            StorageError::io(
                format!("encoding {}", path.display()),
                std::io::Error::other(error),
            )
        })?;
        let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        bytes.extend_from_slice(&body);
        write_file_atomically(&self.storage, &path, &bytes)
            .await
            .map_err(|source| StorageError::io(format!("writing {}", path.display()), source))
    }

    /// Makes a `snapshot` from the leader (which replaces the whole log), `entries`
    /// (replacing any the log has from the first one's index on) and `hard_state` durable, in
    /// that order.
    ///
    /// # Errors
    /// An I/O error; the caller must then stop the member, as raft cannot go on without its
    /// writes.
    pub async fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        snapshot: Option<&Snapshot>,
    ) -> StorageResult<()> {
        let log_path = self.dir.join(LOG_FILE_NAME);
        if let Some(snapshot) = snapshot {
            // The leader's snapshot replaces the whole log.
            let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
            self.write_snapshot(snapshot).await?;
            self.rewrite(anchor(index, term), &[]).await?;
        }
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
            #[cfg(feature = "mutations")]
            let skip_sync =
                crate::mutation::is_enabled(crate::mutation::Mutation::QuorumAppendNotSynced);
            #[cfg(not(feature = "mutations"))]
            let skip_sync = false;
            if !skip_sync {
                self.file.sync().await.map_err(|source| {
                    StorageError::io(format!("syncing {}", log_path.display()), source)
                })?;
            }
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

/// The entry `raft.log` starts with after a snapshot at `index` and `term` it was sent.
fn anchor(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Entry::default()
    }
}

async fn read_snapshot<S: Storage>(storage: &S, path: &Path) -> StorageResult<Option<Snapshot>> {
    let bytes = match read_whole_file(storage, path).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::io(
                format!("reading {}", path.display()),
                source,
            ))
        }
    };
    let corrupt = || StorageError::Corrupt {
        segment: path.to_path_buf(),
        position: 0,
        reason: "damaged metadata snapshot".into(),
    };
    let bytes: &[u8] = &bytes;
    if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err(corrupt());
    }
    let length = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if body.len() != length || crc32c::crc32c(body) != crc {
        return Err(corrupt());
    }
    Snapshot::parse_from_bytes(body)
        .map(Some)
        .map_err(|_| corrupt())
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
            log.persist(&first, Some(&hard_state(1, 2, 1)), None)
                .await
                .unwrap();
            // A new leader's entries replace 2 and 3.
            let second = [entry(2, 2, "B"), entry(3, 2, "C"), entry(4, 2, "D")];
            log.persist(&second, Some(&hard_state(2, 3, 3)), None)
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
            log.persist(&[entry(1, 1, "kept")], Some(&hard_state(1, 1, 1)), None)
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
            log.persist(&[entry(2, 1, "next")], None, None)
                .await
                .unwrap();
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

    fn snapshot(index: u64, term: u64, data: &str) -> Snapshot {
        let mut snapshot = Snapshot {
            data: bytes::Bytes::copy_from_slice(data.as_bytes()),
            ..Snapshot::default()
        };
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot
            .mut_metadata()
            .mut_conf_state()
            .set_voters(vec![1, 2, 3]);
        snapshot
    }

    /// Entries 1..=6 in terms 1 and 2, committed to 5.
    async fn six_entries(storage: &SimulatedStorage) -> QuorumLog<SimulatedStorage> {
        let (mut log, _) = QuorumLog::open(storage.clone(), Path::new("/data"))
            .await
            .unwrap();
        let entries: Vec<Entry> = (1..=6)
            .map(|index| entry(index, if index <= 3 { 1 } else { 2 }, "e"))
            .collect();
        log.persist(&entries, Some(&hard_state(2, 1, 5)), None)
            .await
            .unwrap();
        log
    }

    /// A power cut at every step of a compaction: the member always reopens with either the
    /// old snapshot and every entry, or the new snapshot and the entries after it.
    #[test]
    fn compaction_survives_a_power_cut_at_every_step() {
        block_on(async {
            let mut completed = false;
            for budget in 0..50 {
                let storage = SimulatedStorage::new();
                let mut log = six_entries(&storage).await;
                storage.cut_power_after(Some(budget));
                let result = log.compact(&snapshot(4, 2, "image at 4")).await;
                drop(log);
                storage.crash(CrashMode::DropUnsynced);
                storage.cut_power_after(None);
                let (mut log, restored) = QuorumLog::open(storage.clone(), Path::new("/data"))
                    .await
                    .unwrap_or_else(|error| panic!("power cut after {budget} steps: {error}"));
                let indexes: Vec<u64> = restored.entries.iter().map(|entry| entry.index).collect();
                match &restored.snapshot {
                    None => assert_eq!(indexes, [1, 2, 3, 4, 5, 6], "after {budget} steps"),
                    Some(snapshot) => {
                        assert_eq!(snapshot.get_metadata().index, 4);
                        assert_eq!(&snapshot.data[..], b"image at 4");
                        assert_eq!(indexes, [5, 6], "after {budget} steps");
                    }
                }
                assert_eq!(restored.hard_state.commit, 5);
                // The log goes on from there.
                log.persist(&[entry(7, 2, "next")], None, None)
                    .await
                    .unwrap();
                drop(log);
                let (_, again) = QuorumLog::open(storage.clone(), Path::new("/data"))
                    .await
                    .unwrap();
                assert_eq!(again.entries.last().map(|entry| entry.index), Some(7));
                assert_eq!(again.entries.len(), restored.entries.len() + 1);
                if result.is_ok() {
                    assert!(restored.snapshot.is_some());
                    completed = true;
                    break;
                }
            }
            assert!(completed, "the compaction completes with enough steps");
        });
    }

    /// A snapshot from the leader replaces the whole log, conflicting entries included, also
    /// when the power goes in the middle; entries that follow it in the same write are kept.
    #[test]
    fn a_leaders_snapshot_replaces_the_log_even_across_a_power_cut() {
        block_on(async {
            let mut completed = false;
            for budget in 0..50 {
                let storage = SimulatedStorage::new();
                let mut log = six_entries(&storage).await;
                // The leader's history differs from entry 4 on (term 3 at index 8).
                storage.cut_power_after(Some(budget));
                let result = log
                    .persist(
                        &[entry(9, 3, "after")],
                        Some(&hard_state(3, 0, 8)),
                        Some(&snapshot(8, 3, "leader image")),
                    )
                    .await;
                drop(log);
                storage.crash(CrashMode::DropUnsynced);
                storage.cut_power_after(None);
                let (_, restored) = QuorumLog::open(storage.clone(), Path::new("/data"))
                    .await
                    .unwrap_or_else(|error| panic!("power cut after {budget} steps: {error}"));
                let indexes: Vec<u64> = restored.entries.iter().map(|entry| entry.index).collect();
                match &restored.snapshot {
                    None => assert_eq!(indexes, [1, 2, 3, 4, 5, 6], "after {budget} steps"),
                    Some(snapshot) => {
                        assert_eq!(snapshot.get_metadata().index, 8);
                        assert!(
                            indexes.is_empty() || indexes == [9],
                            "after {budget} steps: {indexes:?}, no stale entry"
                        );
                        assert!(restored.hard_state.commit >= 8);
                    }
                }
                if result.is_ok() {
                    assert_eq!(indexes, [9]);
                    assert_eq!(restored.hard_state, hard_state(3, 0, 8));
                    completed = true;
                    break;
                }
            }
            assert!(completed, "the write completes with enough steps");
        });
    }

    #[test]
    fn a_damaged_snapshot_refuses_to_open() {
        block_on(async {
            let storage = SimulatedStorage::new();
            let mut log = six_entries(&storage).await;
            log.compact(&snapshot(4, 2, "image")).await.unwrap();
            drop(log);
            let path = Path::new("/data")
                .join(QUORUM_DIR_NAME)
                .join(SNAPSHOT_FILE_NAME);
            storage.corrupt_byte(&path, 14, 0x01);
            assert!(matches!(
                QuorumLog::open(storage.clone(), Path::new("/data")).await,
                Err(StorageError::Corrupt { .. })
            ));
        });
    }
}
