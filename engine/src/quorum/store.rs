//! [`QuorumStore`]: raft-rs's view of a quorum member's log, in memory: the latest snapshot
//! (with its data, which raft-rs's own `MemStorage` does not keep), the entries after it and
//! the hard state. The node mutates it as it hands the same changes to its driver to make
//! durable; raft-rs only reads it.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct QuorumStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot; index 0 (and no data) before the first.
    snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
}

impl QuorumStore {
    /// A store for the quorum `conf_state`, restored from what the member's disk held.
    ///
    /// # Panics
    /// When `entries` are not contiguous or do not follow `snapshot` (the disk's recovery
    /// guarantees both).
    pub fn new(
        conf_state: ConfState,
        hard_state: HardState,
        snapshot: Option<Snapshot>,
        entries: &[Entry],
    ) -> QuorumStore {
        let mut store = QuorumStore {
            hard_state,
            conf_state,
            snapshot: Snapshot::default(),
            entries: Vec::new(),
        };
        if let Some(snapshot) = snapshot {
            store.install_snapshot(snapshot);
        }
        store.append(entries);
        store
    }

    /// The snapshot the log starts after (index 0 before the first).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        self.snapshot.get_metadata()
    }

    /// Appends entries, replacing any from the first one's index on.
    ///
    /// # Panics
    /// When the entries would leave a gap or overwrite the snapshot.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let first_index = self.first_log_index();
        assert!(
            first.index >= first_index && first.index <= self.last_log_index() + 1,
            "entries from {} do not follow a log of {first_index}..={}",
            first.index,
            self.last_log_index()
        );
        self.entries.truncate((first.index - first_index) as usize);
        self.entries.extend_from_slice(entries);
    }

    /// Records the hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Records a new commit index.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Replaces the whole log by a snapshot from the leader: every entry goes (those after it
    /// may conflict with the leader's log).
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let metadata = snapshot.get_metadata();
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.conf_state = metadata.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Takes a snapshot of this member's own applied state at `index` and drops the entries up
    /// to it. Returns the snapshot.
    ///
    /// # Panics
    /// When `index` is not a committed entry of the log after the current snapshot.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Snapshot {
        assert!(
            index > self.snapshot_metadata().index && index <= self.hard_state.commit,
            "snapshot at {index}: the log holds {}..={}, committed to {}",
            self.first_log_index(),
            self.last_log_index(),
            self.hard_state.commit
        );
        let term = self
            .entry_term(index)
            .expect("a committed entry is in the log");
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(self.conf_state.clone());
        self.entries
            .drain(..(index + 1 - self.first_log_index()) as usize);
        self.snapshot = snapshot.clone();
        snapshot
    }

    fn first_log_index(&self) -> u64 {
        self.snapshot_metadata().index + 1
    }

    fn last_log_index(&self) -> u64 {
        self.snapshot_metadata().index + self.entries.len() as u64
    }

    fn entry_term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_metadata().index {
            return Some(self.snapshot_metadata().term);
        }
        let position = index.checked_sub(self.first_log_index())?;
        self.entries.get(position as usize).map(|entry| entry.term)
    }
}

impl raft::Storage for QuorumStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_log_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_log_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let start = (low - self.first_log_index()) as usize;
        let end = (high - self.first_log_index()) as usize;
        let max_size = max_size.into().unwrap_or(u64::MAX);
        // As raft-rs's `limit_size`: at least one entry, then as many as fit.
        let mut size = 0_u64;
        let mut entries = Vec::new();
        for entry in &self.entries[start..end] {
            size += protobuf::Message::compute_size(entry) as u64;
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(entry.clone());
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.snapshot_metadata().index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entry_term(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_log_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_log_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_metadata().index < request_index.max(1) {
            // No snapshot yet, or an older one than asked for: raft asks again later.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn store_with(entries: &[Entry], commit: u64) -> QuorumStore {
        let hard_state = HardState {
            commit,
            term: 2,
            ..HardState::default()
        };
        QuorumStore::new(
            ConfState::from((vec![1, 2, 3], vec![])),
            hard_state,
            None,
            entries,
        )
    }

    #[test]
    fn compaction_keeps_the_entries_after_the_snapshot_and_answers_as_raft_expects() {
        let mut store = store_with(&[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)], 3);
        assert!(matches!(
            store.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        let snapshot = store.compact(3, b"image".to_vec());
        assert_eq!(
            (snapshot.get_metadata().index, snapshot.get_metadata().term),
            (3, 2)
        );
        assert_eq!(store.snapshot(0, 2).unwrap(), snapshot);
        assert_eq!(store.first_index().unwrap(), 4);
        assert_eq!(store.last_index().unwrap(), 4);
        assert_eq!(store.term(3).unwrap(), 2, "the snapshot's own term");
        assert!(matches!(
            store.term(2),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            store.entries(3, 5, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            store
                .entries(4, 5, None, GetEntriesContext::empty(false))
                .unwrap(),
            [entry(4, 2)]
        );
        store.append(&[entry(5, 3)]);
        assert_eq!(store.last_index().unwrap(), 5);
    }

    #[test]
    fn an_installed_snapshot_replaces_the_whole_log() {
        let mut store = store_with(&[entry(1, 1), entry(2, 1)], 1);
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 7;
        snapshot.mut_metadata().term = 4;
        snapshot
            .mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        store.install_snapshot(snapshot);
        assert_eq!(store.first_index().unwrap(), 8);
        assert_eq!(store.last_index().unwrap(), 7);
        assert_eq!(store.initial_state().unwrap().hard_state.commit, 7);
        assert_eq!(store.term(7).unwrap(), 4);
        store.append(&[entry(8, 4)]);
        assert_eq!(store.last_index().unwrap(), 8);
    }
}
