//! [`SimulatedStorage`]: files in memory with written and durable bytes kept apart.
//!
//! Every file holds the bytes written so far and the bytes that were durable at its last sync.
//! [`SimulatedStorage::crash`] replaces each file by its durable bytes, optionally followed by a
//! torn prefix of what was written after the last sync, as a power loss would. Creations,
//! renames and removals are durable at once (a journaling file system with synced directories).
//! Faults can be injected: flipped bytes (which the CRC must catch), failing syncs (which must
//! poison the log) and a power cut after a given number of mutating operations
//! ([`SimulatedStorage::cut_power_after`], to crash a multi-step change at each step). Randomness comes only from the seed given to [`CrashMode::TornTail`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::{OpenMode, Storage, StorageFile};
use crate::rng::SplitMix64;

#[derive(Debug, Default)]
struct FileData {
    written: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, Rc<RefCell<FileData>>>,
    dirs: BTreeSet<PathBuf>,
    fail_syncs: bool,
    syncs: u64,
    /// Mutating operations left before the simulated power cut, if one is set.
    mutations_left: Option<u64>,
    /// Reads of files under this directory return a flipped byte now and then.
    read_corruption: Option<ReadCorruption>,
    /// Bytes the next read covering them returns flipped: `(path, position, mask)`.
    flip_next_reads: Vec<(PathBuf, usize, u8)>,
}

/// Transient read corruption: the stored bytes stay intact, a read returns one byte flipped
/// (a bad cable, a controller bug), with probability `1 / one_in`.
#[derive(Debug)]
struct ReadCorruption {
    under: PathBuf,
    one_in: u64,
    rng: SplitMix64,
    flipped: u64,
}

impl State {
    /// Counts one mutating operation, or refuses it once the power is cut.
    fn mutate(&mut self) -> io::Result<()> {
        match self.mutations_left.as_mut() {
            Some(0) => Err(io::Error::other("simulated power loss")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// What a simulated crash keeps of the bytes written after the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing: every file is cut back to its durable bytes.
    DropUnsynced,
    /// A prefix of random length (from `seed`) of each file's unsynced appended bytes survives,
    /// as when the disk had written some blocks but not all.
    TornTail {
        /// Seed of the deterministic choice of prefix lengths.
        seed: u64,
    },
}

/// An in-memory [`Storage`] for tests and simulation. Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct SimulatedStorage {
    state: Rc<RefCell<State>>,
}

impl SimulatedStorage {
    /// Empty storage.
    pub fn new() -> SimulatedStorage {
        SimulatedStorage::default()
    }

    /// Simulates a power loss. Open handles must not be used afterwards; reopen the log.
    pub fn crash(&self, mode: CrashMode) {
        let state = self.state.borrow();
        let mut rng = match mode {
            CrashMode::DropUnsynced => None,
            CrashMode::TornTail { seed } => Some(SplitMix64::new(seed)),
        };
        for data in state.files.values() {
            let mut data = data.borrow_mut();
            let mut survivor = data.durable.clone();
            if let Some(rng) = rng.as_mut() {
                let extends_durable = data.written.len() > data.durable.len()
                    && data.written[..data.durable.len()] == data.durable[..];
                if extends_durable {
                    let unsynced = &data.written[data.durable.len()..];
                    let keep = rng.below(unsynced.len() as u64 + 1) as usize;
                    survivor.extend_from_slice(&unsynced[..keep]);
                }
            }
            data.written = survivor.clone();
            data.durable = survivor;
        }
    }

    /// Flips the bits of `mask` in the byte at `position` of `path`, written and durable alike:
    /// a media error that only a checksum can catch.
    ///
    /// # Panics
    /// If the file does not exist or `position` is past its end.
    pub fn corrupt_byte(&self, path: &Path, position: usize, mask: u8) {
        let state = self.state.borrow();
        let mut data = state.files.get(path).expect("file exists").borrow_mut();
        data.written[position] ^= mask;
        if position < data.durable.len() {
            data.durable[position] ^= mask;
        }
    }

    /// Cuts a file to `len` bytes, written and durable alike.
    ///
    /// # Panics
    /// If the file does not exist.
    pub fn cut(&self, path: &Path, len: usize) {
        let state = self.state.borrow();
        let mut data = state.files.get(path).expect("file exists").borrow_mut();
        data.written.truncate(len);
        data.durable.truncate(len);
    }

    /// Loses every file and directory under `root`, as when the disk holding them is replaced
    /// by an empty one. Open handles must not be used afterwards (crash first).
    pub fn lose_tree(&self, root: &Path) {
        let mut state = self.state.borrow_mut();
        state.files.retain(|path, _| !path.starts_with(root));
        state.dirs.retain(|dir| !dir.starts_with(root));
    }

    /// Whether any file lies under `root` (in a subdirectory too): a broker's test for a data
    /// directory holding no partition.
    pub fn holds_files_under(&self, root: &Path) -> bool {
        self.state
            .borrow()
            .files
            .keys()
            .any(|path| path.starts_with(root))
    }

    /// From now on a read of a segment file (`.log`) under `under` returns, one time in
    /// `one_in`, one byte flipped at a position drawn from `seed` (the stored bytes stay
    /// intact); `None` stops it. Only a checksum catches it.
    pub fn set_read_corruption(&self, corruption: Option<(&Path, u64, u64)>) {
        self.state.borrow_mut().read_corruption =
            corruption.map(|(under, one_in, seed)| ReadCorruption {
                under: under.to_path_buf(),
                one_in: one_in.max(1),
                rng: SplitMix64::new(seed),
                flipped: 0,
            });
    }

    /// The next read of `path` that covers `position` returns that byte with the bits of
    /// `mask` flipped; later reads return it intact (the stored bytes stay intact). Queued
    /// twice, it flips the next two reads that cover the byte.
    pub fn flip_next_read(&self, path: &Path, position: usize, mask: u8) {
        self.state
            .borrow_mut()
            .flip_next_reads
            .push((path.to_path_buf(), position, mask));
    }

    /// Reads that returned a flipped byte since [`SimulatedStorage::set_read_corruption`].
    pub fn corrupted_reads(&self) -> u64 {
        self.state
            .borrow()
            .read_corruption
            .as_ref()
            .map_or(0, |corruption| corruption.flipped)
    }

    /// Makes every later sync fail with an I/O error (or succeed again).
    pub fn set_fail_syncs(&self, fail: bool) {
        self.state.borrow_mut().fail_syncs = fail;
    }

    /// Lets `mutations` more mutating operations (writes, syncs, truncations, creations,
    /// removals, renames, directory syncs) happen, then fails every later one with an I/O
    /// error, as if the power went out there; follow with [`SimulatedStorage::crash`] to see
    /// what survived. `None` restores the power.
    pub fn cut_power_after(&self, mutations: Option<u64>) {
        self.state.borrow_mut().mutations_left = mutations;
    }

    /// Number of successful file syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Durable length of a file, if it exists.
    pub fn durable_len(&self, path: &Path) -> Option<usize> {
        let state = self.state.borrow();
        state
            .files
            .get(path)
            .map(|data| data.borrow().durable.len())
    }

    /// Every file path, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.borrow().files.keys().cloned().collect()
    }
}

/// An open [`SimulatedStorage`] file.
#[derive(Debug, Clone)]
pub struct SimulatedFile {
    data: Rc<RefCell<FileData>>,
    state: Rc<RefCell<State>>,
    path: PathBuf,
}

impl StorageFile for SimulatedFile {
    type Buf = Bytes;

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        let data = self.data.borrow();
        let start = (position as usize).min(data.written.len());
        let end = start.saturating_add(len).min(data.written.len());
        let mut state = self.state.borrow_mut();
        let flip = state
            .read_corruption
            .as_mut()
            .filter(|corruption| {
                self.path.starts_with(&corruption.under)
                    && self
                        .path
                        .extension()
                        .is_some_and(|extension| extension == "log")
                    && end > start
            })
            .and_then(|corruption| {
                let flip = corruption.rng.below(corruption.one_in) == 0;
                corruption.flipped += u64::from(flip);
                flip.then(|| corruption.rng.below((end - start) as u64) as usize)
            });
        let mut flips: Vec<(usize, u8)> = flip.map(|at| (at, 0x5A)).into_iter().collect();
        // One queued flip per byte per read: a flip queued twice for the same byte reaches
        // two reads, as the same bad read twice in a row.
        let mut flipped_here: Vec<usize> = Vec::new();
        state.flip_next_reads.retain(|(path, position, mask)| {
            let covered = *path == self.path
                && (start..end).contains(position)
                && !flipped_here.contains(position);
            if covered {
                flipped_here.push(*position);
                flips.push((position - start, *mask));
            }
            !covered
        });
        if flips.is_empty() {
            return Ok(Bytes::copy_from_slice(&data.written[start..end]));
        }
        let mut read = data.written[start..end].to_vec();
        for (at, mask) in flips {
            read[at] ^= mask;
        }
        Ok(Bytes::from(read))
    }

    async fn write_at(&self, position: u64, bytes: &[u8]) -> io::Result<()> {
        self.state.borrow_mut().mutate()?;
        let mut data = self.data.borrow_mut();
        let start = position as usize;
        if data.written.len() < start + bytes.len() {
            data.written.resize(start + bytes.len(), 0);
        }
        data.written[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        // A sync takes time on a real disk; yielding lets other tasks run meanwhile, as they
        // would, so that group commit can be observed.
        futures_lite::future::yield_now().await;
        let mut state = self.state.borrow_mut();
        if state.fail_syncs {
            return Err(io::Error::other("simulated fsync failure"));
        }
        state.mutate()?;
        state.syncs += 1;
        let mut data = self.data.borrow_mut();
        data.durable = data.written.clone();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.borrow().written.len() as u64
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.state.borrow_mut().mutate()?;
        self.data.borrow_mut().written.truncate(len as usize);
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

impl Storage for SimulatedStorage {
    type File = SimulatedFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<SimulatedFile> {
        let mut state = self.state.borrow_mut();
        let parent = path.parent().unwrap_or_else(|| Path::new(""));
        if !parent.as_os_str().is_empty() && !state.dirs.contains(parent) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        let data = match mode {
            OpenMode::CreateNew => {
                state.mutate()?;
                let data = Rc::new(RefCell::new(FileData::default()));
                state.files.insert(path.to_path_buf(), data.clone());
                data
            }
            OpenMode::Existing => state
                .files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?,
        };
        Ok(SimulatedFile {
            data,
            state: self.state.clone(),
            path: path.to_path_buf(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.mutate()?;
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.mutate()?;
        let data = state
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        state.files.insert(to.to_path_buf(), data);
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.borrow();
        if !state.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(state
            .files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.mutate()?;
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    async fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.state.borrow_mut().mutate()
    }

    async fn exists(&self, path: &Path) -> bool {
        let state = self.state.borrow();
        state.files.contains_key(path) || state.dirs.contains(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn crash_keeps_only_synced_bytes() {
        block_on(async {
            let storage = SimulatedStorage::new();
            storage.create_dir_all(Path::new("/d")).await.unwrap();
            let path = Path::new("/d/f");
            let file = storage.open(path, OpenMode::CreateNew).await.unwrap();
            file.write_at(0, b"durable").await.unwrap();
            file.sync().await.unwrap();
            file.write_at(7, b" and lost").await.unwrap();
            storage.crash(CrashMode::DropUnsynced);
            let file = storage.open(path, OpenMode::Existing).await.unwrap();
            assert_eq!(&file.read_at(0, 100).await.unwrap()[..], b"durable");
        });
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_unsynced_bytes() {
        block_on(async {
            let storage = SimulatedStorage::new();
            storage.create_dir_all(Path::new("/d")).await.unwrap();
            let path = Path::new("/d/f");
            let file = storage.open(path, OpenMode::CreateNew).await.unwrap();
            file.write_at(0, b"abc").await.unwrap();
            file.sync().await.unwrap();
            file.write_at(3, b"defghijklmnop").await.unwrap();
            storage.crash(CrashMode::TornTail { seed: 7 });
            let file = storage.open(path, OpenMode::Existing).await.unwrap();
            let survived = file.read_at(0, 100).await.unwrap();
            assert!(survived.starts_with(b"abc"));
            assert!(b"abcdefghijklmnop".starts_with(&survived));
        });
    }

    #[test]
    fn failing_sync_reports_an_error() {
        block_on(async {
            let storage = SimulatedStorage::new();
            storage.create_dir_all(Path::new("/d")).await.unwrap();
            let file = storage
                .open(Path::new("/d/f"), OpenMode::CreateNew)
                .await
                .unwrap();
            storage.set_fail_syncs(true);
            assert!(file.sync().await.is_err());
        });
    }
}
