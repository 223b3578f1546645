//! [`StdStorage`]: blocking `std::fs`, for tools that should run anywhere.
//!
//! `spate log dump` and other offline tools use it: they need neither io_uring nor locked
//! memory. The futures complete at once, doing the blocking call inside `poll`, which is fine for
//! a tool and wrong for the broker (which uses [`super::DmaStorage`]).

use std::cell::Cell;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;

use super::{OpenMode, Storage, StorageFile};

/// Blocking file-system storage. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdStorage;

/// An open [`StdStorage`] file.
#[derive(Debug, Clone)]
pub struct StdFile {
    file: Rc<fs::File>,
    len: Rc<Cell<u64>>,
}

impl StorageFile for StdFile {
    type Buf = Bytes;

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        let available = self.len.get().saturating_sub(position);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        let mut buffer = vec![0; len];
        let mut filled = 0;
        while filled < len {
            let read = self
                .file
                .read_at(&mut buffer[filled..], position + filled as u64)?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        buffer.truncate(filled);
        Ok(Bytes::from(buffer))
    }

    async fn write_at(&self, position: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, position)?;
        self.len
            .set(self.len.get().max(position + data.len() as u64));
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len.get()
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len.set(len);
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

impl Storage for StdStorage {
    type File = StdFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<StdFile> {
        let file = match mode {
            OpenMode::CreateNew => fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?,
            OpenMode::Existing => fs::OpenOptions::new().read(true).write(true).open(path)?,
        };
        let len = file.metadata()?.len();
        Ok(StdFile {
            file: Rc::new(file),
            len: Rc::new(Cell::new(len)),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    async fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
