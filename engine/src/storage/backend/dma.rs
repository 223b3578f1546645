//! [`DmaStorage`]: glommio DMA files, the production backend.
//!
//! Files are opened with O_DIRECT and driven through io_uring by the glommio executor of the
//! core that owns them. Direct I/O needs positions and lengths aligned to the device block
//! (usually 512 bytes or 4 KiB), while the log appends batches of any size, so each file keeps
//! its last partial block in memory: an append copies that block's prefix and the new bytes into
//! one aligned DMA buffer (the single copy on the write path) and rewrites the block. Bytes after
//! the logical end on disk are zero padding; recovery treats a zero tail as padding and cuts it,
//! and `close` truncates the file to its logical length.
//!
//! Reads return glommio's reference-counted [`ReadResult`] buffers; slicing them never copies.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{Directory, OpenOptions, ReadResult};

use super::{OpenMode, ReadBuf, Storage, StorageFile};

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

#[derive(Debug)]
struct Inner {
    file: glommio::io::DmaFile,
    alignment: u64,
    /// Logical length: the end of the last completed write.
    len: Cell<u64>,
    /// Bytes from `align_down(len)` to `len`: the partial last block, as on disk.
    tail: RefCell<Vec<u8>>,
}

/// An open [`DmaStorage`] file. Clones share the file.
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

    async fn load_tail(&self) -> io::Result<()> {
        let len = self.inner.len.get();
        let block_start = self.align_down(len);
        let wanted = (len - block_start) as usize;
        let mut tail = Vec::with_capacity(self.inner.alignment as usize);
        if wanted > 0 {
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
            tail.extend_from_slice(&block[..wanted]);
        }
        *self.inner.tail.borrow_mut() = tail;
        Ok(())
    }

    /// Writes `data` at `position` by read-modify-write of the aligned blocks around it; the
    /// general path, for writes that are not appends.
    async fn write_anywhere(&self, position: u64, data: &[u8]) -> io::Result<()> {
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
        self.write_buffer(buffer, start).await?;
        let new_len = self.inner.len.get().max(position + data.len() as u64);
        self.inner.len.set(new_len);
        self.load_tail().await
    }

    async fn write_buffer(&self, buffer: glommio::io::DmaBuffer, position: u64) -> io::Result<()> {
        let expected = buffer.len();
        let written = self
            .inner
            .file
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
}

impl StorageFile for DmaFile {
    type Buf = DmaBuf;

    async fn read_at(&self, position: u64, len: usize) -> io::Result<DmaBuf> {
        let available = self.inner.len.get().saturating_sub(position);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(DmaBuf::default());
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
        if data.is_empty() {
            return Ok(());
        }
        let len = self.inner.len.get();
        if position != len {
            return self.write_anywhere(position, data).await;
        }
        // Append: the partial last block, then the new bytes, in one aligned buffer.
        let block_start = self.align_down(len);
        let end = position + data.len() as u64;
        let mut buffer = self
            .inner
            .file
            .alloc_dma_buffer((self.align_up(end) - block_start) as usize);
        let new_tail = {
            let tail = self.inner.tail.borrow();
            debug_assert_eq!(tail.len() as u64, len - block_start);
            let bytes = buffer.as_bytes_mut();
            bytes[..tail.len()].copy_from_slice(&tail);
            bytes[tail.len()..tail.len() + data.len()].copy_from_slice(data);
            bytes[tail.len() + data.len()..].fill(0);
            let new_block_start = (self.align_down(end) - block_start) as usize;
            bytes[new_block_start..tail.len() + data.len()].to_vec()
        };
        self.write_buffer(buffer, block_start).await?;
        self.inner.len.set(end);
        *self.inner.tail.borrow_mut() = new_tail;
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.inner.file.fdatasync().await.map_err(io::Error::from)
    }

    fn len(&self) -> u64 {
        self.inner.len.get()
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner
            .file
            .truncate(len)
            .await
            .map_err(io::Error::from)?;
        self.inner.len.set(len);
        self.load_tail().await
    }

    async fn close(self) -> io::Result<()> {
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
        let alignment = file.alignment().max(512);
        let handle = DmaFile {
            inner: Rc::new(Inner {
                file,
                alignment,
                len: Cell::new(len),
                tail: RefCell::new(Vec::new()),
            }),
        };
        handle.load_tail().await?;
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
        let directory = Directory::open(dir).await.map_err(io::Error::from)?;
        directory.sync().await.map_err(io::Error::from)?;
        directory.close().await.map_err(io::Error::from)
    }

    async fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
