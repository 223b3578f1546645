//! A transactional id's state, as the transaction coordinator keeps it (Kafka's
//! `TransactionMetadata` and `TransactionState`).

use std::collections::BTreeSet;

/// A partition a transaction wrote to: (topic, partition).
pub type TxnPartition = (String, i32);

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TxnState {
    /// No transaction (a producer id was given, or the last one completed long ago).
    Empty,
    /// Partitions were added: records may be written.
    Ongoing,
    /// EndTxn(commit) was accepted: markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing: abort markers are being written.
    PrepareAbort,
    /// The commit markers are written.
    CompleteCommit,
    /// The abort markers are written.
    CompleteAbort,
    /// The transactional id expired.
    Dead,
    /// A new producer's InitProducerId fences the ongoing transaction of the old one (the
    /// epoch bump that precedes its abort).
    PrepareEpochFence,
}

impl TxnState {
    /// Kafka's `TransactionState.id`, as stored.
    pub fn code(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    /// The state of a stored code.
    pub fn from_code(code: i8) -> Option<TxnState> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// Kafka's name for it (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// Whether Kafka allows going from `self` to `next` (`TransactionState.validPreviousStates`).
    pub fn may_become(self, next: TxnState) -> bool {
        use TxnState::*;
        let previous: &[TxnState] = match next {
            Empty => &[Empty, CompleteCommit, CompleteAbort],
            Ongoing => &[Ongoing, Empty, CompleteCommit, CompleteAbort],
            PrepareCommit => &[Ongoing],
            PrepareAbort => &[Ongoing, PrepareEpochFence],
            CompleteCommit => &[PrepareCommit],
            CompleteAbort => &[PrepareAbort],
            Dead => &[Empty, CompleteCommit, CompleteAbort],
            PrepareEpochFence => &[Ongoing],
        };
        previous.contains(&self)
    }
}

/// A transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its producer epoch (-1 before the first InitProducerId completes).
    pub producer_epoch: i16,
    /// `transaction.timeout.ms` of its producer.
    pub timeout_ms: i32,
    /// Where its transaction stands.
    pub state: TxnState,
    /// The partitions of its transaction.
    pub partitions: BTreeSet<TxnPartition>,
    /// When its transaction started (-1 when none).
    pub start_ms: i64,
    /// When the state last changed.
    pub last_update_ms: i64,
}
