//! Log compaction (`cleanup.policy=compact`): keeping only the latest record of each key.
//!
//! As Kafka's log cleaner: a pass builds a map from key to the offset of its latest record
//! over the dirty part of the log (closed segments not cleaned yet, below the last stable
//! offset), then rewrites the closed segments from the log start with only the records the
//! map does not supersede (reading again only the dirty batches that keep something). Offsets are preserved: a cleaned batch keeps its base offset and
//! offset span, with fewer records; a run of batches emptied entirely becomes one record-less
//! *filler* batch covering their offsets, so batches in a segment still follow each other
//! with no gap (every check of the log's density holds), and a consumer skips the gap as it
//! skips any batch. Tombstones get a delete horizon when first cleaned and go once it has
//! passed (`delete.retention.ms`, KIP-534); records of aborted transactions go; a commit
//! marker whose transaction has no batch left goes the same way, after a delete horizon
//! (abort markers stay). The active segment is never cleaned.
//!
//! - [`records`]: the records of a stored batch, decompressed.
//! - [`filter`]: one batch cleaned.
//! - [`offset_map`]: key to latest offset, bounded in bytes.
//! - [`checkpoint`]: what the cleaner keeps between passes.
//! - [`clean`]: a pass over a [`PartitionLog`](super::PartitionLog), and crash recovery.

pub(crate) mod checkpoint;
pub(crate) mod clean;
pub(crate) mod filter;
pub(crate) mod offset_map;
pub(crate) mod records;

pub use clean::{
    CleanOutput, CleanPlan, CleanReport, CleanRequest, Dirtiness, Pacer, Unpaced,
    CLEANER_CHECKPOINT_FILE_NAME,
};
