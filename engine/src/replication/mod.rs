//! Partition replication, as Kafka does it, in sans-IO state machines.
//!
//! - [`epoch_cache`]: the leader epoch cache every replica keeps (KIP-101).
//! - [`leader`]: the leader's view of its followers: ISR, high watermark, `acks=all`,
//!   diverging-epoch answers to follower fetches.
//! - [`follower`]: what a follower fetches, and where it truncates after a leader change
//!   (KIP-101, KIP-279).
//!
//! None of them does I/O or reads a clock: the broker's glommio driver and the simulation's
//! turmoil driver feed them the same inputs and carry out the same outputs.

pub mod epoch_cache;
pub mod follower;
pub mod leader;

pub use epoch_cache::{EpochEnd, EpochEntry, LeaderEpochCache};
pub use follower::{FetchPosition, OutOfRangeAction, PartitionFollower};
pub use leader::{
    AcksAllError, FetchAnswer, FetchRefusal, FollowerFetch, IsrChangeError, LeaderOutput,
    PartitionLeader, PartitionState, ReplicationConfig,
};

/// A broker's id in the cluster (`node.id`).
pub type BrokerId = i32;

#[cfg(test)]
mod tests;
