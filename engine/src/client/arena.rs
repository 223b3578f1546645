//! [`CopyArena`]: where bindings copy the keys and values their callers lend them.

use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

/// Size of the chunks a [`CopyArena`] copies into.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Copies byte strings into slices of shared 1 MiB chunks instead of an allocation each.
///
/// A binding whose caller keeps its buffers (C, Python) must copy each key and value it
/// sends. An allocation per record costs more than the copy: the producer frees records on
/// its network thread, and glibc's allocator pays dearly for blocks freed on another thread
/// than the one that made them. A chunk is freed when the last slice of it is dropped, that
/// is when the last record copied into it is delivered.
#[derive(Debug, Default)]
pub struct CopyArena {
    chunk: Mutex<BytesMut>,
}

impl CopyArena {
    /// A copy of `bytes`, sharing a chunk with the copies before it when it fits.
    pub fn copy(&self, bytes: &[u8]) -> Bytes {
        let mut chunk = self.chunk.lock().unwrap_or_else(PoisonError::into_inner);
        if chunk.capacity() - chunk.len() < bytes.len() {
            *chunk = BytesMut::with_capacity(CHUNK_BYTES.max(bytes.len()));
        }
        chunk.extend_from_slice(bytes);
        chunk.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_equal_and_independent_of_the_source() {
        let arena = CopyArena::default();
        let mut source = vec![7_u8; 100];
        let first = arena.copy(&source);
        source.fill(9);
        let second = arena.copy(&source);
        let large = arena.copy(&vec![1_u8; CHUNK_BYTES + 5]);
        assert_eq!(first, vec![7_u8; 100]);
        assert_eq!(second, vec![9_u8; 100]);
        assert_eq!(large.len(), CHUNK_BYTES + 5);
        assert!(arena.copy(&[]).is_empty());
    }
}
