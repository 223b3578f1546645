//! [`DmaStorage`]: glommio DMA files, the production backend.
//!
//! Files are opened with O_DIRECT and driven through io_uring by the glommio executor of the
//! core that owns them. Direct I/O needs positions and lengths aligned to the file-system block
//! (4 KiB), while the log appends batches of any size. Each file therefore keeps a **write
//! buffer**: an aligned DMA buffer that starts at the block holding the end of the last write
//! and collects appends. Appending copies the bytes into it (the single copy on the write path);
//! the buffer is written out in one I/O when it holds [`WRITE_OUT_BYTES`], before every sync,
//! before a read of bytes still in it, and on close. So an fsync per append costs one write and
//! one fdatasync, and concurrent appenders that share an fsync (group commit) also share the
//! write. Writes out are serialised: each rewrites the partial block the previous one ended in.
//! The write out of a full buffer runs behind the append that filled it, in a task of its own,
//! while appends fill the next buffer; an append that fills that one too waits for the first,
//! so at most two buffers exist per file. A failed write behind is reported by the next call.
//!
//! Segment files (see [`StorageFile::expect_appends`]) reserve space ahead of the write buffer
//! in [`PREALLOCATE_STEP_BYTES`] steps with `fallocate`, growing the file with it, so that
//! writes out neither allocate blocks nor extend the file. An extending direct write cannot be
//! issued inline by io_uring (it is handed to a kernel worker thread) and makes every
//! fdatasync write the inode too; together they halve the rate of fsynced appends.
//!
//! Bytes after the logical end on disk (the reserved space, and the zero padding of the last
//! block) read as zeros; recovery treats a zero tail as padding and cuts it, and `truncate` and
//! `close` cut the file to its logical length.
//!
//! Durability is claimed only after `sync`. Unsynced appends still in the write buffers (at most
//! two times [`WRITE_OUT_BYTES`] per file) are lost if the process dies, as unsynced appends in the
//! device's cache are lost if the power fails.
//!
//! Reads return glommio's reference-counted [`ReadResult`] buffers; slicing them never copies.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;

use async_lock::Mutex;
use glommio::io::{Directory, DmaBuffer, OpenOptions, ReadResult};

use super::{OpenMode, ReadBuf, Storage, StorageFile};

/// Alignment of direct I/O: the usual file-system block. ext4 serialises and zeroes around
/// direct writes that cover part of a block, even when they honour the device's sector size.
const FILE_SYSTEM_BLOCK_BYTES: u64 = 4096;

/// Appended bytes that trigger a write out without waiting for a sync: large enough that
/// sequential appends go to the device in big writes, small enough to bound what a process
/// crash can lose of unsynced data.
pub const WRITE_OUT_BYTES: usize = 256 << 10;

/// Capacity of a write buffer: a write out's worth plus a block, so that appends up to the
/// threshold never reallocate.
const WRITE_BUFFER_BYTES: usize = WRITE_OUT_BYTES + FILE_SYSTEM_BLOCK_BYTES as usize;

/// Space reserved ahead of appends to segment files. Redpanda's `segment_fallocation_step`
/// defaults to the same 32 MiB.
pub const PREALLOCATE_STEP_BYTES: u64 = 32 << 20;

/// glommio DMA storage. Must be used inside a glommio executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaStorage;

/// A zero-copy read buffer from a DMA file.
#[derive(Debug, Clone, Default)]
pub struct DmaBuf(ReadResult);

impl std::ops::Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl ReadBuf for DmaBuf {
    fn slice(&self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.0.len(), "slice out of bounds");
        if len == 0 {
            return DmaBuf::default();
        }
        DmaBuf(ReadResult::slice(&self.0, start, len).expect("range checked above"))
    }
}

/// Appended bytes not yet written, in an aligned buffer that starts at a block boundary.
struct WriteBuffer {
    /// The buffer; its first `filled` bytes are file bytes from `start` on.
    buffer: DmaBuffer,
    /// File position of `buffer[0]`, a multiple of the alignment.
    start: u64,
    filled: usize,
    /// Whether bytes were appended since the last write out (the partial block alone, already
    /// on disk, needs no write).
    dirty: bool,
}

struct Inner {
    file: glommio::io::DmaFile,
    alignment: u64,
    /// Logical length: every byte appended, written out or not.
    len: Cell<u64>,
    /// End of the bytes written out.
    written_end: Cell<u64>,
    pending: RefCell<WriteBuffer>,
    /// Held while a write out is in flight: the next one rewrites the block this one ends in.
    write_turn: Mutex<()>,
    /// A write out started behind an append is running: the next full buffer is written out
    /// by its append itself, which bounds the memory to two buffers.
    write_behind: Cell<bool>,
    /// The first failed write, reported by every later call: after it the file's state on disk
    /// is unknown, and only recovery can tell.
    failure: RefCell<Option<(io::ErrorKind, String)>>,
    /// Whether to reserve space ahead of writes (segment files).
    preallocate: Cell<bool>,
    /// End of the space reserved with `fallocate`: the file's size on disk when it is larger
    /// than `len`.
    reserved_end: Cell<u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaFile")
            .field("len", &self.len.get())
            .field("written_end", &self.written_end.get())
            .field("alignment", &self.alignment)
            .finish_non_exhaustive()
    }
}

/// An open [`DmaStorage`] file. Clones share the file and its write buffer.
#[derive(Debug, Clone)]
pub struct DmaFile {
    inner: Rc<Inner>,
}

impl DmaFile {
    fn align_down(&self, value: u64) -> u64 {
        value - value % self.inner.alignment
    }

    fn align_up(&self, value: u64) -> u64 {
        value.div_ceil(self.inner.alignment) * self.inner.alignment
    }

    fn check_failure(&self) -> io::Result<()> {
        match &*self.inner.failure.borrow() {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, error: io::Error) -> io::Error {
        self.inner
            .failure
            .borrow_mut()
            .get_or_insert((error.kind(), error.to_string()));
        error
    }

    /// A write buffer for a file whose logical length is `len`, holding the partial last block
    /// (`tail`, the bytes from `align_down(len)` to `len`), with room for `capacity` bytes in all
    /// (rounded up to whole blocks).
    fn new_write_buffer(&self, len: u64, tail: &[u8], capacity: usize) -> WriteBuffer {
        let start = self.align_down(len);
        debug_assert_eq!(tail.len() as u64, len - start);
        let capacity = self.align_up(capacity.max(tail.len() + 1) as u64);
        let mut buffer = self.inner.file.alloc_dma_buffer(capacity as usize);
        buffer.as_bytes_mut()[..tail.len()].copy_from_slice(tail);
        WriteBuffer {
            buffer,
            start,
            filled: tail.len(),
            dirty: false,
        }
    }

    /// Reads the partial last block from disk into a fresh write buffer (after open or
    /// truncate).
    async fn reload_tail(&self) -> io::Result<()> {
        let len = self.inner.len.get();
        let block_start = self.align_down(len);
        let wanted = (len - block_start) as usize;
        let block = if wanted > 0 {
            let block = self
                .inner
                .file
                .read_at_aligned(block_start, self.inner.alignment as usize)
                .await
                .map_err(io::Error::from)?;
            if block.len() < wanted {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short read of the last block",
                ));
            }
            block[..wanted].to_vec()
        } else {
            Vec::new()
        };
        // One block: files opened for reading never need more; the first append grows it.
        *self.inner.pending.borrow_mut() = self.new_write_buffer(len, &block, 0);
        self.inner.written_end.set(len);
        Ok(())
    }

    /// Writes the write buffer out, keeping its partial last block for the next appends.
    async fn write_out(&self) -> io::Result<()> {
        let _turn = self.inner.write_turn.lock().await;
        self.check_failure()?;
        let (buffer, start, filled) = {
            let mut pending = self.inner.pending.borrow_mut();
            if !pending.dirty {
                return Ok(());
            }
            let end = pending.start + pending.filled as u64;
            let tail_start = (self.align_down(end) - pending.start) as usize;
            let tail = pending.buffer.as_bytes()[tail_start..pending.filled].to_vec();
            let next = self.new_write_buffer(end, &tail, WRITE_BUFFER_BYTES);
            let taken = std::mem::replace(&mut *pending, next);
            (taken.buffer, taken.start, taken.filled)
        };
        let mut buffer = buffer;
        let aligned = self.align_up(filled as u64) as usize;
        buffer.as_bytes_mut()[filled..aligned].fill(0);
        buffer.trim_to_size(aligned);
        let write_end = start + aligned as u64;
        if self.inner.preallocate.get() && write_end > self.inner.reserved_end.get() {
            let reserve_end = write_end.div_ceil(PREALLOCATE_STEP_BYTES) * PREALLOCATE_STEP_BYTES;
            if let Err(error) = self.inner.file.pre_allocate(reserve_end, false).await {
                return Err(self.fail(io::Error::from(error)));
            }
            self.inner.reserved_end.set(reserve_end);
        }
        match write_fully(&self.inner.file, buffer, start).await {
            Ok(()) => {
                self.inner.written_end.set(start + filled as u64);
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Writes `data` at `position` by read-modify-write of the aligned blocks around it: the
    /// general path, for writes that are not appends.
    async fn write_anywhere(&self, position: u64, data: &[u8]) -> io::Result<()> {
        self.write_out().await?;
        let _turn = self.inner.write_turn.lock().await;
        let start = self.align_down(position);
        let end = self.align_up(position + data.len() as u64);
        let mut buffer = self.inner.file.alloc_dma_buffer((end - start) as usize);
        let existing = self
            .inner
            .file
            .read_at_aligned(start, (end - start) as usize)
            .await
            .map_err(io::Error::from)?;
        let bytes = buffer.as_bytes_mut();
        bytes.fill(0);
        let logical_existing = existing
            .len()
            .min(self.inner.len.get().saturating_sub(start) as usize);
        bytes[..logical_existing].copy_from_slice(&existing[..logical_existing]);
        let offset_in_buffer = (position - start) as usize;
        bytes[offset_in_buffer..offset_in_buffer + data.len()].copy_from_slice(data);
        write_fully(&self.inner.file, buffer, start)
            .await
            .map_err(|error| self.fail(error))?;
        let new_len = self.inner.len.get().max(position + data.len() as u64);
        self.inner.len.set(new_len);
        drop(_turn);
        self.reload_tail().await
    }
}

async fn write_fully(
    file: &glommio::io::DmaFile,
    buffer: DmaBuffer,
    position: u64,
) -> io::Result<()> {
    let expected = buffer.len();
    let written = file
        .write_at(buffer, position)
        .await
        .map_err(io::Error::from)?;
    if written != expected {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short direct write: {written} of {expected} bytes"),
        ));
    }
    Ok(())
}

impl StorageFile for DmaFile {
    type Buf = DmaBuf;

    async fn read_at(&self, position: u64, len: usize) -> io::Result<DmaBuf> {
        let available = self.inner.len.get().saturating_sub(position);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(DmaBuf::default());
        }
        if position + len as u64 > self.inner.written_end.get() {
            self.write_out().await?;
        }
        let result = self
            .inner
            .file
            .read_at(position, len)
            .await
            .map_err(io::Error::from)?;
        Ok(DmaBuf(result))
    }

    async fn write_at(&self, position: u64, data: &[u8]) -> io::Result<()> {
        self.check_failure()?;
        if data.is_empty() {
            return Ok(());
        }
        if position != self.inner.len.get() {
            return self.write_anywhere(position, data).await;
        }
        let full = {
            let mut pending = self.inner.pending.borrow_mut();
            if pending.filled + data.len() > pending.buffer.len() {
                // Too big for the buffer: move the buffered bytes to a buffer that fits all.
                let end = pending.start + pending.filled as u64;
                let kept = pending.buffer.as_bytes()[..pending.filled].to_vec();
                let needed = kept.len() + data.len();
                let mut bigger =
                    self.new_write_buffer(pending.start, &[], needed.max(WRITE_BUFFER_BYTES));
                debug_assert_eq!(bigger.start, pending.start);
                bigger.buffer.as_bytes_mut()[..kept.len()].copy_from_slice(&kept);
                bigger.filled = kept.len();
                bigger.dirty = pending.dirty;
                *pending = bigger;
                debug_assert_eq!(pending.start + pending.filled as u64, end);
            }
            let filled = pending.filled;
            pending.buffer.as_bytes_mut()[filled..filled + data.len()].copy_from_slice(data);
            pending.filled += data.len();
            pending.dirty = true;
            pending.filled >= WRITE_OUT_BYTES
        };
        self.inner.len.set(position + data.len() as u64);
        if full {
            if self.inner.write_behind.replace(true) {
                // One is in flight already: wait for it and write this buffer out.
                self.write_out().await?;
            } else {
                // Write behind the append, so appends do not wait for the disk; a failure is
                // kept in `failure` and reported by the next call (a sync, at the latest).
                let file = self.clone();
                glommio::spawn_local(async move {
                    let _ = file.write_out().await;
                    file.inner.write_behind.set(false);
                })
                .detach();
            }
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.write_out().await?;
        self.inner
            .file
            .fdatasync()
            .await
            .map_err(|error| self.fail(io::Error::from(error)))
    }

    fn len(&self) -> u64 {
        self.inner.len.get()
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.write_out().await?;
        let _turn = self.inner.write_turn.lock().await;
        self.inner
            .file
            .truncate(len)
            .await
            .map_err(io::Error::from)?;
        self.inner.len.set(len);
        self.inner.reserved_end.set(len);
        drop(_turn);
        self.reload_tail().await
    }

    fn expect_appends(&self) {
        self.inner.preallocate.set(true);
    }

    async fn close(self) -> io::Result<()> {
        self.write_out().await?;
        // Drop the zero padding of the last block, so the file is exactly its logical length.
        let size = self.inner.file.file_size().await.map_err(io::Error::from)?;
        if size != self.inner.len.get() {
            self.inner
                .file
                .truncate(self.inner.len.get())
                .await
                .map_err(io::Error::from)?;
        }
        Ok(())
    }
}

thread_local! {
    /// Devices whose io_uring polling support this thread's executor has probed correctly.
    static PROBED_DEVICES: RefCell<BTreeSet<u64>> = const { RefCell::new(BTreeSet::new()) };
}

/// glommio decides, once per device and thread, whether reads go to its polled ring by reading
/// the first block of the first file it opens there. On an empty file that read succeeds on
/// any device, so every later read is sent to a polled ring the device may not support, and
/// fails with `EOPNOTSUPP` (virtio disks, for one). Opening a non-empty file first makes the
/// probe read real data and decide right.
async fn probe_device_once(dir: &Path) -> io::Result<()> {
    let device = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|probed| probed.borrow().contains(&device)) {
        return Ok(());
    }
    let probe_path = dir.join(format!(".spate-dma-probe-{}", std::process::id()));
    std::fs::write(&probe_path, [0u8; 4096])?;
    let probed = OpenOptions::new().read(true).dma_open(&probe_path).await;
    let _ = std::fs::remove_file(&probe_path);
    let file = probed.map_err(io::Error::from)?;
    file.close().await.map_err(io::Error::from)?;
    PROBED_DEVICES.with(|probed| probed.borrow_mut().insert(device));
    Ok(())
}

impl Storage for DmaStorage {
    type File = DmaFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<DmaFile> {
        let dir = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        probe_device_once(dir).await?;
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if mode == OpenMode::CreateNew {
            options.create(true).truncate(true);
        }
        let file = options.dma_open(path).await.map_err(io::Error::from)?;
        let len = file.file_size().await.map_err(io::Error::from)?;
        let alignment = file.alignment().max(FILE_SYSTEM_BLOCK_BYTES);
        let placeholder = file.alloc_dma_buffer(alignment as usize);
        let handle = DmaFile {
            inner: Rc::new(Inner {
                file,
                alignment,
                len: Cell::new(len),
                written_end: Cell::new(len),
                pending: RefCell::new(WriteBuffer {
                    buffer: placeholder,
                    start: 0,
                    filled: 0,
                    dirty: false,
                }),
                write_turn: Mutex::new(()),
                write_behind: Cell::new(false),
                failure: RefCell::new(None),
                preallocate: Cell::new(false),
                reserved_end: Cell::new(len),
            }),
        };
        handle.reload_tail().await?;
        Ok(handle)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(io::Error::from)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(io::Error::from)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        super::StdStorage.list(dir).await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // glommio opens directories relative to nothing: "./data" fails with EBADF.
        let dir = std::path::absolute(dir)?;
        let directory = Directory::open(&dir).await.map_err(io::Error::from)?;
        directory.sync().await.map_err(io::Error::from)?;
        directory.close().await.map_err(io::Error::from)
    }

    async fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
