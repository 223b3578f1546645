//! The durable partition log: segment files of Kafka v2 record batches, sparse indexes,
//! recovery, retention and group commit.
//!
//! - [`batch`]: the record batch header, validation and in-place patching.
//! - [`backend`]: the storage trait and its glommio DMA, `std::fs` and simulated implementations.
//! - [`PartitionLog`]: one partition's segments; append, read, sync, roll, retention.
//! - [`SharedLog`]: the same, shared by many tasks of a core, with group commit.
//! - [`compaction`]: log compaction (the cleaner).
//! - [`dump`]: what `spate log dump` prints.
//!
//! The on-disk format is drawn byte by byte in `docs/FORMAT.md`.

pub mod backend;
pub mod batch;
mod checkpoint;
pub mod compaction;
mod config;
pub mod dump;
mod epochs;
mod error;
pub mod index;
mod log;
mod open;
mod producer_snapshots;
pub mod producers;
mod read;
mod recovery;
mod roll_finish;
pub mod segment;
mod shared;
mod tail_cache;
mod verification;

pub use checkpoint::{Checkpoint, CHECKPOINT_FILE_NAME};
pub use config::{CleanupPolicy, LogConfig, Ratio};
pub use error::{StorageError, StorageResult};
pub use log::{AppendInfo, Chunk, Fetched, OpenReport, PartitionLog, SyncTicket, Truncation};
pub use roll_finish::{Installed, RollFinish};
pub use shared::{Appended, Durability, Marker, SharedLog, ROLL_FINISH_ATTEMPTS};
pub use tail_cache::TailCache;
pub use verification::{Verification, VerificationGuard, VERIFICATION_GUARD_MAX_AGE_MS};
