//! The small storage interface the log reaches the disk through.
//!
//! A [`Storage`] is a directory tree of files; a [`StorageFile`] is one open file with
//! positional reads and writes, `sync`, a length and `truncate`. Three implementations:
//!
//! - [`DmaStorage`]: production. glommio DMA files (O_DIRECT, io_uring), aligned buffers; must
//!   run inside a glommio executor.
//! - [`StdStorage`]: blocking `std::fs`, for offline tools (`spate log dump`) that should not
//!   need io_uring or locked memory.
//! - [`SimulatedStorage`]: memory only, keeping written and durable bytes apart; a simulated
//!   crash loses what was not synced (optionally keeping a torn prefix). Tests and the
//!   simulation use it.
//!
//! The futures are deliberately not `Send`: Spate is thread-per-core and a partition's files are
//! only ever touched from the core that owns it.

mod dma;
mod memory;
mod std_fs;

pub use dma::{DmaFile, DmaStorage};
pub use memory::{CrashMode, SimulatedFile, SimulatedStorage};
pub use std_fs::{StdFile, StdStorage};

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// Bytes read from a file: shared, cheap to clone and to slice, never copied again on the way to
/// a consumer.
pub trait ReadBuf: Deref<Target = [u8]> + Clone + 'static {
    /// The sub-range `start..start + len` without copying.
    ///
    /// # Panics
    /// If the range is out of bounds.
    fn slice(&self, start: usize, len: usize) -> Self;
}

impl ReadBuf for bytes::Bytes {
    fn slice(&self, start: usize, len: usize) -> Self {
        bytes::Bytes::slice(self, start..start + len)
    }
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file, truncating an existing one.
    CreateNew,
    /// Open an existing file for reads and writes.
    Existing,
}

/// One open file. Handles are cheap clones of one shared file, so a sync can run while the log
/// keeps appending through another clone.
#[allow(async_fn_in_trait)] // thread-per-core: these futures never leave their core.
pub trait StorageFile: Clone + std::fmt::Debug {
    /// What reads return.
    type Buf: ReadBuf;

    /// Reads up to `len` bytes at `position`; fewer only at the end of the file.
    async fn read_at(&self, position: u64, len: usize) -> io::Result<Self::Buf>;

    /// Writes `data` at `position`. Writes are positional; the log only ever writes at the end.
    async fn write_at(&self, position: u64, data: &[u8]) -> io::Result<()>;

    /// Makes every completed write durable (`fdatasync`).
    async fn sync(&self) -> io::Result<()>;

    /// Logical length in bytes: the end of the last completed write.
    fn len(&self) -> u64;

    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts the file to `len` bytes. Durable after the next [`StorageFile::sync`].
    async fn truncate(&self, len: u64) -> io::Result<()>;

    /// Releases this handle. Other clones stay usable.
    async fn close(self) -> io::Result<()>;

    /// Says that this file will grow by appends (a segment), so that the backend may reserve
    /// space ahead of them. The default does nothing.
    fn expect_appends(&self) {}
}

/// A directory tree of files.
#[allow(async_fn_in_trait)] // thread-per-core: these futures never leave their core.
pub trait Storage: Clone + std::fmt::Debug {
    /// Its open files.
    type File: StorageFile;

    /// Opens or creates a file.
    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File>;

    /// Removes a file.
    async fn remove(&self, path: &Path) -> io::Result<()>;

    /// Renames a file atomically, replacing `to`.
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// File names (not paths) in `dir`, sorted.
    async fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Creates `dir` and its parents.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Whether `path` exists.
    async fn exists(&self, path: &Path) -> bool;
}

/// Writes `data` to `path` atomically: a temporary file, synced, renamed over `path`, and the
/// directory synced. A crash leaves either the old or the new content, never a mix.
///
/// # Errors
/// Any I/O error of the steps.
pub async fn write_file_atomically<S: Storage>(
    storage: &S,
    path: &Path,
    data: &[u8],
) -> io::Result<()> {
    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(".tmp");
    let file = storage.open(&temporary, OpenMode::CreateNew).await?;
    file.write_at(0, data).await?;
    file.sync().await?;
    file.close().await?;
    storage.rename(&temporary, path).await?;
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    storage.sync_dir(parent).await
}

/// Reads a whole file.
///
/// # Errors
/// Any I/O error; `NotFound` when the file is missing.
pub async fn read_whole_file<S: Storage>(
    storage: &S,
    path: &Path,
) -> io::Result<<S::File as StorageFile>::Buf> {
    let file = storage.open(path, OpenMode::Existing).await?;
    let len = usize::try_from(file.len()).map_err(|_| io::Error::other("file too large"))?;
    let bytes = file.read_at(0, len).await;
    file.close().await?;
    bytes
}

/// Most reads [`read_at_agreed`] makes.
const AGREEING_READS_MAX: usize = 64;

/// Reads in a row that must return the same bytes for [`read_at_agreed`] to take them.
/// Two are not enough: at a high rate of bad reads two in a row now and then flip the same
/// byte (the simulation's one bad read in four, which flips one byte of a 61-byte batch
/// header, made two reads agree on a wrong epoch about once in a thousand header re-reads,
/// seed 1380); three make it about once in four million there.
pub const AGREEING_READS: usize = 3;

/// Reads `len` bytes at `position` until [`AGREEING_READS`] reads in a row return the same
/// bytes: a byte flipped on the way from the disk shows in one read, not in all of them. For
/// bytes no checksum covers: the small text files (checkpoints, the leader epoch cache) and a
/// batch's partition leader epoch, which Kafka's batch CRC leaves out.
///
/// # Errors
/// Any I/O error; `InvalidData` when no [`AGREEING_READS`] reads in a row agree within
/// [`AGREEING_READS_MAX`] reads.
pub async fn read_at_agreed<F: StorageFile>(
    file: &F,
    position: u64,
    len: usize,
) -> io::Result<F::Buf> {
    let mut previous = file.read_at(position, len).await?;
    let mut agreeing = 1;
    for _ in 1..AGREEING_READS_MAX {
        let next = file.read_at(position, len).await?;
        if *next == *previous {
            agreeing += 1;
            if agreeing == AGREEING_READS {
                return Ok(next);
            }
        } else {
            agreeing = 1;
        }
        previous = next;
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "no {AGREEING_READS} of {AGREEING_READS_MAX} reads of {len} bytes at position \
             {position} in a row agree"
        ),
    ))
}

/// Reads a whole file as [`read_at_agreed`] reads.
///
/// # Errors
/// As [`read_whole_file`]; `InvalidData` as [`read_at_agreed`].
pub async fn read_whole_file_agreed<S: Storage>(
    storage: &S,
    path: &Path,
) -> io::Result<<S::File as StorageFile>::Buf> {
    let file = storage.open(path, OpenMode::Existing).await?;
    let len = usize::try_from(file.len()).map_err(|_| io::Error::other("file too large"))?;
    let bytes = read_at_agreed(&file, 0, len).await;
    file.close().await?;
    bytes
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use bytes::Bytes;
    use futures_lite::future::block_on;

    use super::*;

    /// A file whose reads return what the test scripted, in order.
    #[derive(Debug, Clone)]
    struct ScriptedReads(Rc<RefCell<VecDeque<&'static [u8]>>>);

    impl StorageFile for ScriptedReads {
        type Buf = Bytes;

        async fn read_at(&self, _position: u64, _len: usize) -> io::Result<Bytes> {
            let next = self.0.borrow_mut().pop_front().expect("a scripted read");
            Ok(Bytes::from_static(next))
        }

        async fn write_at(&self, _position: u64, _data: &[u8]) -> io::Result<()> {
            unreachable!()
        }

        async fn sync(&self) -> io::Result<()> {
            unreachable!()
        }

        fn len(&self) -> u64 {
            4
        }

        async fn truncate(&self, _len: u64) -> io::Result<()> {
            unreachable!()
        }

        async fn close(self) -> io::Result<()> {
            Ok(())
        }
    }

    fn scripted(reads: &[&'static [u8]]) -> ScriptedReads {
        ScriptedReads(Rc::new(RefCell::new(reads.iter().copied().collect())))
    }

    #[test]
    fn agreed_reads_want_three_in_a_row() {
        block_on(async {
            // Two bad reads in a row that flipped the same byte are not taken.
            let file = scripted(&[b"good", b"bXod", b"bXod", b"good", b"good", b"good"]);
            assert_eq!(&read_at_agreed(&file, 0, 4).await.unwrap()[..], b"good");
            assert!(file.0.borrow().is_empty());
            // Reads that never settle are an error, not a guess.
            let mut flapping: Vec<&'static [u8]> = Vec::new();
            for _ in 0..AGREEING_READS_MAX / 2 {
                flapping.extend([&b"good"[..], &b"good"[..], &b"bXod"[..]]);
            }
            let file = scripted(&flapping);
            let error = read_at_agreed(&file, 0, 4).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        });
    }
}
