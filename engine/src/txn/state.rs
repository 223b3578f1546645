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
            // From no transaction: transaction version 2's abort, which bumps the epoch.
            PrepareAbort => &[
                Ongoing,
                PrepareEpochFence,
                Empty,
                CompleteCommit,
                CompleteAbort,
            ],
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
    /// The producer id this one replaced when a transaction version 2 transaction ended with
    /// its epoch exhausted (-1 if none): a retry of that EndTxn comes with it.
    pub previous_producer_id: i64,
    /// While a transaction version 2 transaction of an exhausted epoch ends: the producer id
    /// it moves to (at epoch 0) once complete, as EndTxn answered (-1 if none).
    pub next_producer_id: i64,
    /// [`TRANSACTION_VERSION_2`] when the transaction was ended by EndTxn 5 or later
    /// (KIP-890 part 2: the epoch is bumped at every end), else 0.
    pub client_transaction_version: i16,
}

/// KIP-890's transaction version 2: every EndTxn bumps the producer's epoch, and answers the
/// new one, so that an EndTxn arriving late can never end a later transaction.
pub const TRANSACTION_VERSION_2: i16 = 2;

impl TxnMetadata {
    /// A transactional id's state with the fields of transaction version 2 at their
    /// defaults.
    pub fn new(
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        timeout_ms: i32,
        state: TxnState,
    ) -> TxnMetadata {
        TxnMetadata {
            transactional_id,
            producer_id,
            producer_epoch,
            timeout_ms,
            state,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: -1,
            previous_producer_id: -1,
            next_producer_id: -1,
            client_transaction_version: 0,
        }
    }
}
