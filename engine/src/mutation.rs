//! Deliberately injected bugs, for proving that the simulation catches them (the `mutations`
//! cargo feature; absent from every normal build).
//!
//! A mutation is switched on for the whole process with [`enable`]; the code it breaks asks
//! [`is_enabled`]. The simulation's mutation test switches each on in turn and counts the
//! seeds the checker needs to notice.

use std::sync::atomic::{AtomicU32, Ordering};

static ENABLED: AtomicU32 = AtomicU32::new(0);

/// The injectable bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Mutation {
    /// The metadata log reports raft entries durable without syncing them (an fsync reported
    /// before it completed): a crash can lose entries the node acknowledged.
    QuorumAppendNotSynced = 1,
    /// The controller plans on the applied image alone, ignoring its own records in flight:
    /// a decision taken before the previous one applied undoes it.
    PlanOnAppliedImage = 2,
    /// A partition leader counts its own log as synced without syncing it (an fsync reported
    /// before it completed): a leader left alone in its ISR loses acknowledged records in a
    /// crash, and is elected again without them.
    LeaderSyncSkipped = 3,
    /// The high watermark advances on the leader's log alone, before the in-sync replicas
    /// have the records.
    HighWatermarkBeforeIsr = 4,
    /// A follower fetches without its last fetched epoch, so the leader never tells it where
    /// its log diverges from the new leader's and it skips the truncation.
    FollowerSkipsTruncation = 5,
    /// A leader's ISR shrink takes effect in the leader before the controller commits it.
    IsrShrinkBeforeCommit = 6,
    /// The group coordinator accepts an offset commit without checking its member and
    /// generation: a member that lost its partitions in a rebalance still commits them.
    StaleGenerationCommit = 7,
    /// The partition log does not recognise an idempotent producer's retry of a batch it
    /// holds, and appends it again.
    ProducerRetryAppended = 8,
    /// The high watermark advances while the ISR is below `min.insync.replicas`, so records
    /// get committed without the eligible leader replicas the controller may elect.
    HighWatermarkUnderMinIsr = 9,
    /// The transaction coordinator takes AddPartitionsToTxn and EndTxn from any epoch of the
    /// producer id: a zombie producer, fenced by a newer instance's InitProducerId, still
    /// commits (or aborts) whatever transaction the id has open.
    TxnEpochFenceRemoved = 10,
    /// Under transaction version 2 (EndTxn 5 and up) the coordinator ends a transaction
    /// without bumping the producer's epoch: an EndTxn arriving late (the first copy of one
    /// the producer sent again) ends the producer's next transaction (KAFKA-17754).
    TxnEndEpochBumpSkipped = 11,
}

impl Mutation {
    /// Every mutation, for tests that try them all.
    pub const ALL: &'static [Mutation] = &[
        Mutation::QuorumAppendNotSynced,
        Mutation::PlanOnAppliedImage,
        Mutation::LeaderSyncSkipped,
        Mutation::HighWatermarkBeforeIsr,
        Mutation::FollowerSkipsTruncation,
        Mutation::IsrShrinkBeforeCommit,
        Mutation::StaleGenerationCommit,
        Mutation::ProducerRetryAppended,
        Mutation::HighWatermarkUnderMinIsr,
        Mutation::TxnEpochFenceRemoved,
        Mutation::TxnEndEpochBumpSkipped,
    ];
}

/// Switches `mutation` on (and every other off), or all off with `None`.
pub fn enable(mutation: Option<Mutation>) {
    ENABLED.store(
        mutation.map_or(0, |mutation| mutation as u32),
        Ordering::SeqCst,
    );
}

/// Whether `mutation` is on.
pub fn is_enabled(mutation: Mutation) -> bool {
    ENABLED.load(Ordering::SeqCst) == mutation as u32
}
