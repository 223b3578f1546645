//! Producer ids for InitProducerId, handed out by shard 0 from blocks of
//! [`PRODUCER_ID_BLOCK_SIZE`], as Kafka's brokers do.
//!
//! A single node claims a block by writing the first id after it to `producer-ids` in the data
//! directory (atomically and synced) before giving out any id of it, so a restart never hands
//! out an id twice: it starts at the next block, and the rest of the old one is skipped. In a
//! cluster the active controller gives blocks through the metadata log
//! ([`crate::quorum::MetadataRecord::AllocateProducerIds`]), so ids are unique across brokers.

use std::cell::Cell;
use std::io;
use std::path::Path;

pub use crate::quorum::records::PRODUCER_ID_BLOCK_SIZE;

/// File in the data directory holding the first producer id not yet claimed by a single node.
pub const PRODUCER_IDS_FILE_NAME: &str = "producer-ids";

/// The block being handed out, on shard 0. Refills are serialized by `turn`.
#[derive(Debug, Default)]
pub struct ProducerIdAllocator {
    /// Next id to give and the end of its block; `None` before the first block.
    block: Cell<Option<(i64, i64)>>,
    /// Held while a block is claimed, so two claims never overlap.
    pub turn: async_lock::Mutex<()>,
}

impl ProducerIdAllocator {
    /// The next id of the current block, or `None` when it is used up.
    pub fn take(&self) -> Option<i64> {
        let (next, end) = self.block.get()?;
        if next >= end {
            return None;
        }
        self.block.set(Some((next + 1, end)));
        Some(next)
    }

    /// Starts handing out the block that begins at `start`.
    ///
    /// # Errors
    /// A sentence when `start` is negative or before ids already given (a block handed out
    /// twice: the file or the metadata went back), which would give an id twice.
    pub fn refill(&self, start: i64) -> Result<(), String> {
        let given = self.block.get().map_or(0, |(next, _)| next);
        if start < given {
            return Err(format!(
                "the new producer id block starts at {start}, below ids already given ({given})"
            ));
        }
        self.block
            .set(Some((start, start + PRODUCER_ID_BLOCK_SIZE)));
        Ok(())
    }
}

/// Claims the next block of a single node: reads the first unclaimed id from
/// `producer-ids` (0 when there is none), durably records the id after the block, and returns
/// the block's first id.
///
/// # Errors
/// An I/O error, or a file that does not hold a non-negative number.
pub fn claim_local_block(data_dir: &Path) -> io::Result<i64> {
    use std::io::Write as _;
    let path = data_dir.join(PRODUCER_IDS_FILE_NAME);
    let start = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|start| *start >= 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a producer id: {text:?}", path.display()),
                )
            })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    let end = start
        .checked_add(PRODUCER_ID_BLOCK_SIZE)
        .ok_or_else(|| io::Error::other("producer ids exhausted"))?;
    let temporary = data_dir.join(format!("{PRODUCER_IDS_FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{end}")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_used_up_then_refilled() {
        let allocator = ProducerIdAllocator::default();
        assert_eq!(allocator.take(), None);
        allocator.refill(2000).unwrap();
        let ids: Vec<i64> = std::iter::from_fn(|| allocator.take()).collect();
        assert_eq!(ids, (2000..3000).collect::<Vec<_>>());
        assert!(allocator.refill(2500).is_err(), "never an id twice");
        assert!(allocator.refill(-1).is_err());
        allocator.refill(5000).unwrap();
        assert_eq!(allocator.take(), Some(5000));
    }

    #[test]
    fn a_single_node_never_claims_a_block_twice() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(claim_local_block(dir.path()).unwrap(), 0);
        assert_eq!(
            claim_local_block(dir.path()).unwrap(),
            PRODUCER_ID_BLOCK_SIZE
        );
        // A restart reads the file again: the next block, never an earlier one.
        assert_eq!(
            claim_local_block(dir.path()).unwrap(),
            2 * PRODUCER_ID_BLOCK_SIZE
        );
        std::fs::write(dir.path().join(PRODUCER_IDS_FILE_NAME), "garbage").unwrap();
        let error = claim_local_block(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
