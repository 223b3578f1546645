//! A node's disk: [`SimulatedStorage`] whose syncs take simulated time, as fsyncs do.
//!
//! Without it every write and its sync would complete within one turmoil step, and a crash,
//! which the simulation injects between steps, would never find unsynced bytes to lose or
//! tear. With it a crash can land after a write and before its sync completes.

use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use spate_engine::storage::backend::{
    OpenMode, SimulatedFile, SimulatedStorage, Storage, StorageFile,
};

/// Simulated storage with a sync latency.
#[derive(Debug, Clone)]
pub(crate) struct SimDisk {
    inner: SimulatedStorage,
    sync_latency: Duration,
}

impl SimDisk {
    pub(crate) fn new(inner: SimulatedStorage, sync_latency: Duration) -> SimDisk {
        SimDisk {
            inner,
            sync_latency,
        }
    }

    /// Whether any file lies under `root`, in subdirectories too.
    pub(crate) fn holds_files_under(&self, root: &Path) -> bool {
        self.inner.holds_files_under(root)
    }
}

/// A file of a [`SimDisk`].
#[derive(Debug, Clone)]
pub(crate) struct SimDiskFile {
    inner: SimulatedFile,
    sync_latency: Duration,
}

impl StorageFile for SimDiskFile {
    type Buf = Bytes;

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        self.inner.read_at(position, len).await
    }

    async fn write_at(&self, position: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(position, data).await
    }

    async fn sync(&self) -> io::Result<()> {
        tokio::time::sleep(self.sync_latency).await;
        self.inner.sync().await
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len).await
    }

    async fn close(self) -> io::Result<()> {
        self.inner.close().await
    }

    fn expect_appends(&self) {
        self.inner.expect_appends();
    }
}

impl Storage for SimDisk {
    type File = SimDiskFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<SimDiskFile> {
        Ok(SimDiskFile {
            inner: self.inner.open(path, mode).await?,
            sync_latency: self.sync_latency,
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir).await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        tokio::time::sleep(self.sync_latency).await;
        self.inner.sync_dir(dir).await
    }

    async fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path).await
    }
}
