//! Consumer groups: the group coordinator and the records of `__consumer_offsets`.
//!
//! [`coordinator::GroupCoordinator`] is a sans-IO state machine (Kafka's classic group
//! protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, offset commits), one per partition of
//! `__consumer_offsets`. It takes time and randomness as inputs and asks for appends as
//! outputs; [`host`] runs it over an [`host::OffsetsPartition`], which the broker implements
//! with glommio (`runtime::groups`) and the simulation with turmoil.
//! A group lives on the partition [`offsets_partition_for`] picks, as in Kafka, so that any
//! Kafka client's idea of its coordinator holds.

pub mod calls;
pub mod coordinator;
pub mod host;
pub mod records;
pub mod state;
pub mod txn_offsets;

#[cfg(test)]
mod coordinator_tests;

pub use calls::{Call, CallId, Reply};
pub use coordinator::{CoordinatorConfig, GroupCoordinator, Output};

/// Kafka's `offsets.topic.num.partitions` default.
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: i32 = 50;

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The `__consumer_offsets` partition of a group: `abs(group_id.hashCode()) % partitions`, with
/// Java's `String.hashCode` over UTF-16 code units, exactly as Kafka computes it.
pub fn offsets_partition_for(group_id: &str, partitions: i32) -> i32 {
    assert!(partitions > 0);
    let hash = group_id.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's `Utils.abs`: `Integer.MIN_VALUE` maps to 0.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_matches_kafka() {
        // Values computed with Java: Math.abs("...".hashCode()) % 50.
        assert_eq!(offsets_partition_for("", 50), 0);
        assert_eq!(offsets_partition_for("a", 50), 97 % 50);
        // "test-group".hashCode() = 627841412; "my-group".hashCode() = -1906497762.
        assert_eq!(offsets_partition_for("test-group", 50), 12);
        assert_eq!(offsets_partition_for("my-group", 50), 12);
        // "é" is one UTF-16 unit, 233.
        assert_eq!(offsets_partition_for("é", 50), 233 % 50);
        for partitions in [1, 7, 50] {
            let partition = offsets_partition_for("any group", partitions);
            assert!((0..partitions).contains(&partition));
        }
    }
}
