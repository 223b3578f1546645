//! Partition replication, as Kafka does it, in sans-IO state machines.
//!
//! - [`epoch_cache`]: the leader epoch cache every replica keeps (KIP-101).
//! - [`leader`]: the leader's view of its followers: ISR, high watermark, `acks=all`,
//!   diverging-epoch answers to follower fetches.
//! - [`follower`]: what a follower fetches, and where it truncates after a leader change
//!   (KIP-101, KIP-279).
//! - [`replica`]: one replica bound to its log, carrying the leader's and follower's decisions
//!   out on any [`Storage`](crate::storage::backend::Storage), with the ordering rules that make
//!   them safe.
//! - [`wire`]: the Kafka requests a follower sends its leader, and what it takes from the
//!   answers.
//!
//! The first three do no I/O and read no clock. `replica` awaits only its log, whatever
//! runtime polls it: the broker's glommio driver and the simulation's turmoil driver run the
//! same code, and differ only in sockets, timers and tasks.

pub mod epoch_cache;
pub mod follower;
pub mod leader;
pub mod replica;
pub mod wire;

pub use epoch_cache::{EpochEnd, EpochEntry, LeaderEpochCache};
pub use follower::{FetchPosition, OutOfRangeAction, PartitionFollower};
pub use leader::{
    AcksAllError, FetchAnswer, FetchRefusal, FollowerFetch, IsrChangeError, LeaderOutput,
    PartitionLeader, PartitionState, ReplicationConfig,
};
pub use replica::{
    FetchFrom, FetchTakeError, FetchTaken, FetchedPartition, IsrChangeAsk, Replica, ReplicaFetched,
    RoleTaken,
};

/// A broker's id in the cluster (`node.id`).
pub type BrokerId = i32;

#[cfg(test)]
mod tests;
