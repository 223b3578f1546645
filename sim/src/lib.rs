//! # Spate simulation
//!
//! Runs the real engine against simulated faults, every choice drawn from one seed, so that any
//! failure replays exactly from the seed it prints (TigerBeetle's VOPR is the model).
//!
//! Today it drives the partition log over [`SimulatedStorage`]: a random workload of appends,
//! syncs, reads, rolls, retention and `delete_records`, interleaved with crashes that lose
//! unsynced bytes or keep a torn prefix of them, and media corruption that the CRC must catch.
//! The configuration itself is drawn from the seed (swarm testing). Invariants are checked after
//! every step. Replication, the metadata quorum and consumer groups join under turmoil as they
//! land.

mod cluster;
mod rng;
mod storage_sim;

pub use cluster::{run_cluster_simulation, ClusterFailure, ClusterOptions, ClusterSummary};

pub use rng::SimRng;
pub use storage_sim::{
    run_storage_simulation, run_storage_simulation_traced, SimFailure, SimSummary,
};
