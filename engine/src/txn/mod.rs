//! Transactions: the transaction coordinator and the records of `__transaction_state`.
//!
//! [`coordinator::TxnCoordinator`] is a sans-IO state machine, one per partition of
//! `__transaction_state`, like the group coordinator: it takes time as an input and asks for
//! appends and transaction markers as outputs. A transactional id lives on the partition
//! [`transaction_partition_for`] picks, as in Kafka.
//!
//! [`host`] drives one over its partition for any runtime; the broker runs one per
//! `__transaction_state` partition it leads (`runtime::txns`), and answers InitProducerId
//! with a transactional id, AddPartitionsToTxn, AddOffsetsToTxn and EndTxn through it.

pub mod coordinator;
pub mod host;
pub mod records;
pub mod state;

#[cfg(test)]
mod coordinator_tests;

pub use coordinator::{TxnCall, TxnCoordinator, TxnCoordinatorConfig, TxnOutput, TxnReply};

/// Kafka's `transaction.state.log.num.partitions` default.
pub const TRANSACTION_TOPIC_PARTITIONS_DEFAULT: i32 = 50;

/// The internal topic holding transactional ids' state.
pub const TRANSACTION_TOPIC: &str = "__transaction_state";

/// The `__transaction_state` partition of a transactional id: as a group's
/// `__consumer_offsets` partition, Java's `String.hashCode`, as Kafka computes it.
pub fn transaction_partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::offsets_partition_for(transactional_id, partitions)
}
