//! The transaction coordinator of one `__transaction_state` partition, as a sans-IO state
//! machine (Kafka's `TransactionCoordinator` and `TransactionStateManager`).
//!
//! # Calling protocol
//!
//! The coordinator owns no socket, file or clock. Its driver:
//!
//! 1. replays the partition's records into it with [`TxnCoordinator::load`], then calls
//!    [`TxnCoordinator::finish_load`] once (transactions found preparing resume writing their
//!    markers);
//! 2. hands it each request with [`TxnCoordinator::handle_call`], with the time and a
//!    [`CallId`] of its choosing (an InitProducerId brings a fresh producer id, used only when
//!    the transactional id needs one);
//! 3. after every input drains [`TxnCoordinator::poll_output`]: [`TxnOutput::Reply`] answers a
//!    call; [`TxnOutput::Append`] asks for a record to be appended (with `acks=all`) to the
//!    partition, after which the driver reports with [`TxnCoordinator::append_completed`];
//!    [`TxnOutput::WriteMarkers`] asks for transaction markers on the transaction's
//!    partitions (WriteTxnMarkers, retried until written), after which the driver reports with
//!    [`TxnCoordinator::markers_written`];
//! 4. calls [`TxnCoordinator::tick`] now and then: transactions past their timeout are
//!    aborted (their producer fenced by an epoch bump), idle transactional ids expire.
//!
//! # Rules (Kafka's)
//! One state change per transactional id is in flight at a time: a call meeting one gets
//! CONCURRENT_TRANSACTIONS. A state change takes effect once its record is appended. An
//! InitProducerId meeting an ongoing transaction bumps the epoch (fencing the old producer),
//! aborts it and answers CONCURRENT_TRANSACTIONS, so that the retry finds it complete; an
//! exhausted epoch gets a new producer id. AddPartitionsToTxn and EndTxn check the producer
//! id (INVALID_PRODUCER_ID_MAPPING) and epoch (PRODUCER_FENCED); EndTxn answers once the
//! Prepare state is stored, retries of a completed EndTxn succeed, and the opposite outcome is
//! INVALID_TXN_STATE.
//!
//! # Transaction version 2 (KIP-890 part 2: EndTxn 5 and up)
//! Under version 1 a producer whose EndTxn went unanswered sends it again at the same epoch;
//! should the first copy arrive late, after the next transaction began, it ends that one
//! (KAFKA-17754). An EndTxn with [`TxnCall::EndTxn::bump_epoch`] ends the transaction at the
//! next epoch instead: the markers carry it, the answer gives it to the producer for its next
//! transaction, and a copy of the EndTxn arriving later carries an epoch that is now fenced.
//! A retry is told apart by its epoch, the one just before the current, while the
//! transaction it ended is still the last (Prepare or Complete with the same outcome); it
//! gets the same answer. An exhausted epoch moves the producer to a fresh producer id at the
//! end. An abort with no transaction open bumps the epoch too (a producer recovering from an
//! error).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kafka_protocol::error::ResponseError;

use super::records::TxnRecord;
use super::state::{TxnMetadata, TxnPartition, TxnState, TRANSACTION_VERSION_2};

/// Identifies a call so that its reply can be matched to it; chosen by the caller.
pub type CallId = u64;

/// Identifies an [`TxnOutput::Append`] for [`TxnCoordinator::append_completed`].
pub type AppendId = u64;

/// A Kafka error code, `None` for success.
pub type ErrorCode = Option<ResponseError>;

/// Settings, Kafka's broker settings of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnCoordinatorConfig {
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: an id idle this long (no transaction) is forgotten.
    pub transactional_id_expiration_ms: i64,
}

impl Default for TxnCoordinatorConfig {
    fn default() -> TxnCoordinatorConfig {
        TxnCoordinatorConfig {
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

/// A request to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnCall {
    /// InitProducerId with a transactional id.
    InitProducerId {
        /// The transactional id.
        transactional_id: String,
        /// The producer's `transaction.timeout.ms`.
        timeout_ms: i32,
        /// An unused producer id, for an id that has none or exhausted its epochs.
        fresh_producer_id: i64,
        /// The producer id and epoch the producer has (InitProducerId 3 and up, KIP-360: a
        /// producer bumping its own epoch to recover from an error), if it sent them.
        expected: Option<(i64, i16)>,
    },
    /// AddPartitionsToTxn (and AddOffsetsToTxn, as the group's `__consumer_offsets`
    /// partition).
    AddPartitions {
        /// The transactional id.
        transactional_id: String,
        /// Its producer id.
        producer_id: i64,
        /// Its epoch.
        producer_epoch: i16,
        /// The partitions to add.
        partitions: Vec<TxnPartition>,
    },
    /// A partition leader's check, before it appends a transactional batch, that the
    /// partitions are in the producer's ongoing transaction (KIP-890's verification, as
    /// AddPartitionsToTxn v4's `verify_only`): a batch of a transaction that ended, or for a
    /// partition never added, would otherwise hold the partition's last stable offset back
    /// for good. Changes nothing.
    Verify {
        /// The transactional id.
        transactional_id: String,
        /// Its producer id.
        producer_id: i64,
        /// Its epoch.
        producer_epoch: i16,
        /// The partitions the batches go to.
        partitions: Vec<TxnPartition>,
    },
    /// EndTxn.
    EndTxn {
        /// The transactional id.
        transactional_id: String,
        /// Its producer id.
        producer_id: i64,
        /// Its epoch.
        producer_epoch: i16,
        /// Commit (else abort).
        commit: bool,
        /// EndTxn 5 and up (transaction version 2, see the module docs): end the transaction
        /// at the next epoch and answer with [`TxnReply::ProducerId`].
        bump_epoch: bool,
        /// With `bump_epoch`, an unused producer id for when the epoch is exhausted (the
        /// caller gives one when the request's epoch is `i16::MAX - 1` or more).
        fresh_producer_id: Option<i64>,
    },
}

/// An answer to a [`TxnCall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnReply {
    /// InitProducerId's, and EndTxn's with `bump_epoch`: the producer id and epoch to use.
    ProducerId {
        /// Error, `None` for success.
        error: ErrorCode,
        /// The producer id (-1 on error).
        producer_id: i64,
        /// Its epoch (-1 on error).
        producer_epoch: i16,
    },
    /// AddPartitionsToTxn's (for every partition) and EndTxn's.
    Done(ErrorCode),
}

/// What the coordinator asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutput {
    /// Answer a call.
    Reply(CallId, TxnReply),
    /// Append this record to the partition, after every earlier append, then report.
    Append {
        /// Passed back with [`TxnCoordinator::append_completed`].
        id: AppendId,
        /// The record.
        record: TxnRecord,
    },
    /// Write a transaction marker to each partition (the leaders' `append_marker`), retrying
    /// until each is written, then report with [`TxnCoordinator::markers_written`].
    WriteMarkers {
        /// The transactional id.
        transactional_id: String,
        /// The producer whose transaction ends.
        producer_id: i64,
        /// Its epoch, as the markers carry it.
        producer_epoch: i16,
        /// Commit (else abort).
        commit: bool,
        /// This coordinator's epoch (the partition's leader epoch).
        coordinator_epoch: i32,
        /// The partitions.
        partitions: Vec<TxnPartition>,
    },
}

/// A state change waiting for its record to be appended.
#[derive(Debug, Clone)]
struct Pending {
    append: AppendId,
    target: Option<TxnMetadata>,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// InitProducerId: answer with the new id and epoch.
    Init(CallId),
    /// An ongoing transaction aborted for a new producer (InitProducerId), which is told to
    /// retry, or for a timeout (no call).
    FenceAndAbort(Option<CallId>),
    /// AddPartitionsToTxn.
    AddPartitions(CallId),
    /// EndTxn: answer, then write the markers.
    Prepare(CallId),
    /// EndTxn with `bump_epoch`: answer with the producer's next id and epoch, then write
    /// the markers.
    PrepareBumped(CallId),
    /// The markers are written.
    Complete,
    /// An idle id forgotten.
    Expire,
}

/// The coordinator of the transactional ids of one `__transaction_state` partition.
#[derive(Debug)]
pub struct TxnCoordinator {
    config: TxnCoordinatorConfig,
    coordinator_epoch: i32,
    txns: BTreeMap<String, TxnMetadata>,
    pending: BTreeMap<String, Pending>,
    appends: BTreeMap<AppendId, String>,
    next_append: AppendId,
    outputs: VecDeque<TxnOutput>,
    loaded: bool,
    /// Transactional ids whose markers are being written.
    writing_markers: BTreeSet<String>,
    /// Per transactional id, AddPartitionsToTxn calls of its producer that came while its
    /// last transaction was completing, in arrival order: handled once it has completed
    /// (see [`COMPLETION_WAIT_MS`]).
    deferred: BTreeMap<String, VecDeque<Deferred>>,
    /// Per transactional id, the producer id and epoch its last KIP-360 bump came from, so
    /// that a retry of that bump (its answer lost) gets the same answer rather than
    /// PRODUCER_FENCED. Not stored: after a failover such a retry is fenced, as in Kafka.
    bumped_from: BTreeMap<String, (i64, i16)>,
}

/// How long an AddPartitionsToTxn (AddOffsetsToTxn) of a producer whose last transaction is
/// still completing (its markers being written) waits for it to complete before it is
/// answered CONCURRENT_TRANSACTIONS. Kafka answers at once, and clients retry after a backoff
/// (librdkafka and the Java client from 20 ms on), which is most of what a producer
/// committing transactions back to back waits; held here, the call goes on as soon as the
/// completion's record is appended. Checked at the coordinator's tick, so a call waits at
/// most about a tick longer than this.
pub const COMPLETION_WAIT_MS: i64 = 1_000;

/// A call held until its transactional id's last transaction completes.
#[derive(Debug)]
struct Deferred {
    call_id: CallId,
    call: TxnCall,
    /// When it is answered CONCURRENT_TRANSACTIONS if the transaction has not completed.
    deadline_ms: i64,
}

/// An InitProducerId's fields.
struct InitRequest {
    transactional_id: String,
    timeout_ms: i32,
    fresh_producer_id: i64,
    expected: Option<(i64, i16)>,
}

fn producer_id_reply(error: ResponseError) -> TxnReply {
    TxnReply::ProducerId {
        error: Some(error),
        producer_id: -1,
        producer_epoch: -1,
    }
}

impl TxnCoordinator {
    /// A coordinator for a partition led at `coordinator_epoch`.
    pub fn new(config: TxnCoordinatorConfig, coordinator_epoch: i32) -> TxnCoordinator {
        TxnCoordinator {
            config,
            coordinator_epoch,
            txns: BTreeMap::new(),
            pending: BTreeMap::new(),
            appends: BTreeMap::new(),
            next_append: 0,
            outputs: VecDeque::new(),
            loaded: false,
            writing_markers: BTreeSet::new(),
            deferred: BTreeMap::new(),
            bumped_from: BTreeMap::new(),
        }
    }

    /// A record of the partition, in log order, before [`TxnCoordinator::finish_load`].
    pub fn load(&mut self, record: TxnRecord) {
        assert!(!self.loaded, "records are loaded before any call");
        match record.metadata {
            Some(metadata) => {
                self.txns.insert(record.transactional_id, metadata);
            }
            None => {
                self.txns.remove(&record.transactional_id);
            }
        }
    }

    /// The load is over: transactions that were preparing write their markers again.
    pub fn finish_load(&mut self) {
        self.loaded = true;
        let preparing: Vec<TxnMetadata> = self
            .txns
            .values()
            .filter(|txn| matches!(txn.state, TxnState::PrepareCommit | TxnState::PrepareAbort))
            .cloned()
            .collect();
        for txn in preparing {
            self.write_markers(&txn);
        }
    }

    /// A transactional id's state.
    pub fn transaction(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    /// Every transactional id's state.
    pub fn transactions(&self) -> impl Iterator<Item = &TxnMetadata> {
        self.txns.values()
    }

    /// The next thing for the driver to do, until `None`.
    pub fn poll_output(&mut self) -> Option<TxnOutput> {
        self.outputs.pop_front()
    }

    /// A request.
    pub fn handle_call(&mut self, call_id: CallId, call: TxnCall, now_ms: i64) {
        assert!(self.loaded, "calls come after the load");
        if let TxnCall::AddPartitions {
            transactional_id,
            producer_id,
            producer_epoch,
            ..
        } = &call
        {
            // Held while the last transaction completes, and behind calls held before it
            // (in arrival order).
            if self.completing_for(transactional_id, *producer_id, *producer_epoch)
                || self.deferred.contains_key(transactional_id)
            {
                let transactional_id = transactional_id.clone();
                self.deferred
                    .entry(transactional_id)
                    .or_default()
                    .push_back(Deferred {
                        call_id,
                        call,
                        deadline_ms: now_ms.saturating_add(COMPLETION_WAIT_MS),
                    });
                return;
            }
        }
        match call {
            TxnCall::InitProducerId {
                transactional_id,
                timeout_ms,
                fresh_producer_id,
                expected,
            } => self.init_producer_id(
                call_id,
                InitRequest {
                    transactional_id,
                    timeout_ms,
                    fresh_producer_id,
                    expected,
                },
                now_ms,
            ),
            TxnCall::AddPartitions {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            } => self.add_partitions(
                call_id,
                &transactional_id,
                producer_id,
                producer_epoch,
                partitions,
                now_ms,
            ),
            TxnCall::Verify {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            } => {
                let error =
                    self.verify(&transactional_id, producer_id, producer_epoch, &partitions);
                self.reply(call_id, TxnReply::Done(error));
            }
            TxnCall::EndTxn {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
                bump_epoch: true,
                fresh_producer_id,
            } => self.end_txn_bumping(
                call_id,
                &transactional_id,
                (producer_id, producer_epoch),
                commit,
                fresh_producer_id,
                now_ms,
            ),
            TxnCall::EndTxn {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
                bump_epoch: false,
                ..
            } => self.end_txn(
                call_id,
                &transactional_id,
                producer_id,
                producer_epoch,
                commit,
                now_ms,
            ),
        }
    }

    fn reply(&mut self, call_id: CallId, reply: TxnReply) {
        self.outputs.push_back(TxnOutput::Reply(call_id, reply));
    }

    /// Asks for the record of `target` (a tombstone for `None`) and keeps the change pending.
    fn propose(&mut self, transactional_id: &str, target: Option<TxnMetadata>, purpose: Purpose) {
        let from = self.txns.get(transactional_id).map(|txn| txn.state);
        let to = target.as_ref().map_or(TxnState::Dead, |txn| txn.state);
        assert!(
            from.map_or(to == TxnState::Empty, |from| from.may_become(to)),
            "{transactional_id}: no transition from {from:?} to {to:?}"
        );
        assert!(
            !self.pending.contains_key(transactional_id),
            "{transactional_id}: one change in flight at a time"
        );
        let append = self.next_append;
        self.next_append += 1;
        self.appends.insert(append, transactional_id.to_owned());
        self.pending.insert(
            transactional_id.to_owned(),
            Pending {
                append,
                target: target.clone(),
                purpose,
            },
        );
        self.outputs.push_back(TxnOutput::Append {
            id: append,
            record: TxnRecord {
                transactional_id: transactional_id.to_owned(),
                metadata: target,
            },
        });
    }

    fn write_markers(&mut self, txn: &TxnMetadata) {
        self.writing_markers.insert(txn.transactional_id.clone());
        self.outputs.push_back(TxnOutput::WriteMarkers {
            transactional_id: txn.transactional_id.clone(),
            producer_id: txn.producer_id,
            producer_epoch: txn.producer_epoch,
            commit: txn.state == TxnState::PrepareCommit,
            coordinator_epoch: self.coordinator_epoch,
            partitions: txn.partitions.iter().cloned().collect(),
        });
    }

    fn init_producer_id(&mut self, call_id: CallId, request: InitRequest, now_ms: i64) {
        let InitRequest {
            transactional_id,
            timeout_ms,
            fresh_producer_id,
            expected,
        } = request;
        if timeout_ms <= 0 || timeout_ms > self.config.transaction_max_timeout_ms {
            self.reply(
                call_id,
                producer_id_reply(ResponseError::InvalidTransactionTimeout),
            );
            return;
        }
        if self.pending.contains_key(&transactional_id) {
            self.reply(
                call_id,
                producer_id_reply(ResponseError::ConcurrentTransactions),
            );
            return;
        }
        let current = self.txns.get(&transactional_id).cloned();
        let Some(current) = current else {
            let mut target = TxnMetadata::new(
                transactional_id.clone(),
                fresh_producer_id,
                0,
                timeout_ms,
                TxnState::Empty,
            );
            target.last_update_ms = now_ms;
            self.propose(&transactional_id, Some(target), Purpose::Init(call_id));
            return;
        };
        if let Some(expected) = expected {
            // KIP-360: only the current producer may bump its epoch; a retry of a bump it
            // made gets that bump's answer; anyone else is fenced.
            let current_ids = (current.producer_id, current.producer_epoch);
            if expected != current_ids {
                let retry = self.bumped_from.get(&transactional_id) == Some(&expected)
                    && matches!(
                        current.state,
                        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    );
                let reply = if retry {
                    TxnReply::ProducerId {
                        error: None,
                        producer_id: current.producer_id,
                        producer_epoch: current.producer_epoch,
                    }
                } else {
                    producer_id_reply(ResponseError::ProducerFenced)
                };
                self.reply(call_id, reply);
                return;
            }
        }
        match current.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                self.reply(
                    call_id,
                    producer_id_reply(ResponseError::ConcurrentTransactions),
                );
            }
            TxnState::Ongoing => {
                self.fence_and_abort(current, Some(call_id), now_ms);
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut target = current;
                if target.producer_epoch >= i16::MAX - 1 {
                    target.producer_id = fresh_producer_id;
                    target.producer_epoch = 0;
                } else {
                    target.producer_epoch += 1;
                }
                target.timeout_ms = timeout_ms;
                target.state = TxnState::Empty;
                target.partitions.clear();
                target.start_ms = -1;
                target.last_update_ms = now_ms;
                target.client_transaction_version = 0;
                target.previous_producer_id = -1;
                match expected {
                    Some(from) => self.bumped_from.insert(transactional_id.clone(), from),
                    None => self.bumped_from.remove(&transactional_id),
                };
                self.propose(&transactional_id, Some(target), Purpose::Init(call_id));
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                // Never stored: a Dead id is a tombstone, and the fence is part of an abort.
                self.reply(
                    call_id,
                    producer_id_reply(ResponseError::UnknownServerError),
                );
            }
        }
    }

    /// Bumps the epoch of `current`'s ongoing transaction (fencing its producer) and aborts
    /// it at the new epoch.
    fn fence_and_abort(&mut self, current: TxnMetadata, call: Option<CallId>, now_ms: i64) {
        let mut target = current;
        // Kafka bumps even the last epoch; the producer's next InitProducerId then gets a new
        // producer id.
        target.producer_epoch = target.producer_epoch.saturating_add(1);
        target.state = TxnState::PrepareAbort;
        target.last_update_ms = now_ms;
        // Not an EndTxn's end: no EndTxn is a retry of it.
        target.client_transaction_version = 0;
        let transactional_id = target.transactional_id.clone();
        self.propose(
            &transactional_id,
            Some(target),
            Purpose::FenceAndAbort(call),
        );
    }

    /// The producer id and epoch checks of AddPartitionsToTxn and EndTxn, and the pending
    /// check: the metadata when they pass.
    fn checked(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<TxnMetadata, ResponseError> {
        let Some(current) = self.txns.get(transactional_id) else {
            return Err(ResponseError::InvalidProducerIdMapping);
        };
        if current.next_producer_id >= 0
            && (producer_id, producer_epoch) == (current.next_producer_id, 0)
        {
            // The producer id EndTxn gave, before the transaction it ended completes.
            return Err(ResponseError::ConcurrentTransactions);
        }
        if current.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if current.producer_epoch != producer_epoch && !mutated!(TxnEpochFenceRemoved) {
            return Err(ResponseError::ProducerFenced);
        }
        if self.pending.contains_key(transactional_id) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(current.clone())
    }

    /// See [`TxnCall::Verify`]: INVALID_PRODUCER_ID_MAPPING, INVALID_PRODUCER_EPOCH (a
    /// fenced producer), INVALID_TXN_STATE (no ongoing transaction holding the partitions).
    fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TxnPartition],
    ) -> ErrorCode {
        let Some(current) = self.txns.get(transactional_id) else {
            return Some(ResponseError::InvalidProducerIdMapping);
        };
        if current.producer_id != producer_id {
            return Some(ResponseError::InvalidProducerIdMapping);
        }
        if current.producer_epoch != producer_epoch {
            return Some(ResponseError::InvalidProducerEpoch);
        }
        let ongoing = current.state == TxnState::Ongoing
            && partitions
                .iter()
                .all(|partition| current.partitions.contains(partition));
        (!ongoing).then_some(ResponseError::InvalidTxnState)
    }

    fn add_partitions(
        &mut self,
        call_id: CallId,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<TxnPartition>,
        now_ms: i64,
    ) {
        let current = match self.checked(transactional_id, producer_id, producer_epoch) {
            Ok(current) => current,
            Err(error) => return self.reply(call_id, TxnReply::Done(Some(error))),
        };
        match current.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                self.reply(
                    call_id,
                    TxnReply::Done(Some(ResponseError::ConcurrentTransactions)),
                );
            }
            TxnState::Ongoing
                if partitions
                    .iter()
                    .all(|partition| current.partitions.contains(partition)) =>
            {
                self.reply(call_id, TxnReply::Done(None));
            }
            TxnState::Empty
            | TxnState::Ongoing
            | TxnState::CompleteCommit
            | TxnState::CompleteAbort => {
                let mut target = current;
                if target.state != TxnState::Ongoing {
                    target.start_ms = now_ms;
                    target.partitions.clear();
                }
                target.state = TxnState::Ongoing;
                target.partitions.extend(partitions);
                target.last_update_ms = now_ms;
                self.propose(
                    transactional_id,
                    Some(target),
                    Purpose::AddPartitions(call_id),
                );
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                self.reply(
                    call_id,
                    TxnReply::Done(Some(ResponseError::UnknownServerError)),
                );
            }
        }
    }

    fn end_txn(
        &mut self,
        call_id: CallId,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) {
        let current = match self.checked(transactional_id, producer_id, producer_epoch) {
            Ok(current) => current,
            Err(error) => return self.reply(call_id, TxnReply::Done(Some(error))),
        };
        let same = |state: TxnState| {
            matches!(
                (state, commit),
                (TxnState::CompleteCommit | TxnState::PrepareCommit, true)
                    | (TxnState::CompleteAbort | TxnState::PrepareAbort, false)
            )
        };
        match current.state {
            TxnState::Ongoing => {
                let mut target = current;
                target.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                target.last_update_ms = now_ms;
                target.client_transaction_version = 0;
                self.propose(transactional_id, Some(target), Purpose::Prepare(call_id));
            }
            // A retry of an EndTxn that completed.
            state @ (TxnState::CompleteCommit | TxnState::CompleteAbort) if same(state) => {
                self.reply(call_id, TxnReply::Done(None));
            }
            // A retry while the markers are written.
            state @ (TxnState::PrepareCommit | TxnState::PrepareAbort) if same(state) => {
                self.reply(
                    call_id,
                    TxnReply::Done(Some(ResponseError::ConcurrentTransactions)),
                );
            }
            _ => self.reply(
                call_id,
                TxnReply::Done(Some(ResponseError::InvalidTxnState)),
            ),
        }
    }

    /// EndTxn 5 and up: see the module docs, "Transaction version 2".
    fn end_txn_bumping(
        &mut self,
        call_id: CallId,
        transactional_id: &str,
        (producer_id, producer_epoch): (i64, i16),
        commit: bool,
        fresh_producer_id: Option<i64>,
        now_ms: i64,
    ) {
        let Some(current) = self.txns.get(transactional_id).cloned() else {
            return self.reply(
                call_id,
                producer_id_reply(ResponseError::InvalidProducerIdMapping),
            );
        };
        let fresh_id_too_soon = current.next_producer_id >= 0
            && (producer_id, producer_epoch) == (current.next_producer_id, 0);
        if self.pending.contains_key(transactional_id) || fresh_id_too_soon {
            // A change in flight, or the producer id the last end gave, before that end
            // completes.
            return self.reply(
                call_id,
                producer_id_reply(ResponseError::ConcurrentTransactions),
            );
        }
        let outcome = |commit: bool| {
            if commit {
                (TxnState::PrepareCommit, TxnState::CompleteCommit)
            } else {
                (TxnState::PrepareAbort, TxnState::CompleteAbort)
            }
        };
        let (prepare, complete) = outcome(commit);
        if Self::ended_at_previous_epoch(&current, producer_id, producer_epoch) {
            // A retry of the EndTxn that ended the last transaction.
            let reply = if current.state == complete {
                TxnReply::ProducerId {
                    error: None,
                    producer_id: current.producer_id,
                    producer_epoch: current.producer_epoch,
                }
            } else if current.state == prepare {
                producer_id_reply(ResponseError::ConcurrentTransactions)
            } else {
                producer_id_reply(ResponseError::InvalidTxnState)
            };
            return self.reply(call_id, reply);
        }
        if current.producer_id != producer_id {
            return self.reply(
                call_id,
                producer_id_reply(ResponseError::InvalidProducerIdMapping),
            );
        }
        if current.producer_epoch != producer_epoch && !mutated!(TxnEpochFenceRemoved) {
            return self.reply(call_id, producer_id_reply(ResponseError::ProducerFenced));
        }
        let ends = match current.state {
            TxnState::Ongoing => true,
            // A producer recovering from an error aborts with nothing open: its epoch is
            // bumped all the same.
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => !commit,
            _ => false,
        };
        if !ends {
            let error = if matches!(
                current.state,
                TxnState::PrepareCommit | TxnState::PrepareAbort
            ) {
                ResponseError::ConcurrentTransactions
            } else {
                ResponseError::InvalidTxnState
            };
            return self.reply(call_id, producer_id_reply(error));
        }
        let mut target = current;
        if target.state != TxnState::Ongoing {
            target.partitions.clear();
            target.start_ms = now_ms;
        }
        if target.producer_epoch >= i16::MAX - 1 {
            // The epoch is exhausted: the markers carry the last one, and the producer goes on
            // with a fresh producer id once the transaction completes.
            let Some(fresh_producer_id) = fresh_producer_id else {
                return self.reply(
                    call_id,
                    producer_id_reply(ResponseError::UnknownServerError),
                );
            };
            target.producer_epoch = i16::MAX;
            target.next_producer_id = fresh_producer_id;
        } else if !mutated!(TxnEndEpochBumpSkipped) {
            target.producer_epoch += 1;
        }
        target.state = prepare;
        target.last_update_ms = now_ms;
        target.client_transaction_version = TRANSACTION_VERSION_2;
        self.propose(
            transactional_id,
            Some(target),
            Purpose::PrepareBumped(call_id),
        );
    }

    /// Whether an EndTxn with `producer_id` at `producer_epoch` is the one that ended
    /// `current`'s last transaction under transaction version 2 (its epoch the one the end
    /// bumped from).
    fn ended_at_previous_epoch(
        current: &TxnMetadata,
        producer_id: i64,
        producer_epoch: i16,
    ) -> bool {
        if current.client_transaction_version < TRANSACTION_VERSION_2 {
            return false;
        }
        match current.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                (producer_id, producer_epoch)
                    == (current.producer_id, current.producer_epoch.wrapping_sub(1))
            }
            TxnState::CompleteCommit | TxnState::CompleteAbort => {
                if current.previous_producer_id >= 0 && current.producer_epoch == 0 {
                    // Completed on a fresh producer id: the EndTxn came with the old one.
                    (producer_id, producer_epoch) == (current.previous_producer_id, i16::MAX - 1)
                } else {
                    (producer_id, producer_epoch)
                        == (current.producer_id, current.producer_epoch.wrapping_sub(1))
                }
            }
            _ => false,
        }
    }

    /// Whether `transactional_id`'s last transaction, of this producer (`producer_id` at
    /// `producer_epoch`, or the fresh producer id transaction version 2 gave it), is
    /// completing: prepared, its markers being written or its completion being appended.
    fn completing_for(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> bool {
        let Some(current) = self.txns.get(transactional_id) else {
            return false;
        };
        let producer = (producer_id, producer_epoch);
        matches!(
            current.state,
            TxnState::PrepareCommit | TxnState::PrepareAbort
        ) && (producer == (current.producer_id, current.producer_epoch)
            || (current.next_producer_id >= 0 && producer == (current.next_producer_id, 0)))
    }

    /// Handles the calls held for `transactional_id`, in order, while its transaction is
    /// neither completing nor changing (one state change at a time: a call behind one that
    /// proposed a change waits for it), and answers those whose wait is over
    /// CONCURRENT_TRANSACTIONS (as Kafka would have at once). The rest wait on, in order.
    fn run_deferred(&mut self, transactional_id: &str, now_ms: i64) {
        let Some(held) = self.deferred.remove(transactional_id) else {
            return;
        };
        let mut waiting = VecDeque::new();
        for deferred in held {
            let TxnCall::AddPartitions {
                producer_id,
                producer_epoch,
                ..
            } = &deferred.call
            else {
                unreachable!("only AddPartitions calls are held");
            };
            let ready = waiting.is_empty()
                && !self.pending.contains_key(transactional_id)
                && !self.completing_for(transactional_id, *producer_id, *producer_epoch);
            if ready {
                self.handle_call(deferred.call_id, deferred.call, now_ms);
            } else if now_ms >= deferred.deadline_ms {
                self.reply(
                    deferred.call_id,
                    TxnReply::Done(Some(ResponseError::ConcurrentTransactions)),
                );
            } else {
                waiting.push_back(deferred);
            }
        }
        if !waiting.is_empty() {
            // A call handled above is not held again: handling it ended the completing.
            debug_assert!(!self.deferred.contains_key(transactional_id));
            self.deferred.insert(transactional_id.to_owned(), waiting);
        }
    }

    /// The outcome of the [`TxnOutput::Append`] `id`: the state change takes effect (and is
    /// answered), or is dropped (answered NOT_COORDINATOR, as Kafka answers a failed write).
    /// Calls held for the transaction's completion go on once it has completed.
    pub fn append_completed(&mut self, now_ms: i64, id: AppendId, result: Result<(), ()>) {
        let Some(transactional_id) = self.appends.get(&id).cloned() else {
            return;
        };
        self.apply_append(id, result);
        self.run_deferred(&transactional_id, now_ms);
    }

    fn apply_append(&mut self, id: AppendId, result: Result<(), ()>) {
        let Some(transactional_id) = self.appends.remove(&id) else {
            return;
        };
        let Some(pending) = self.pending.remove(&transactional_id) else {
            return;
        };
        debug_assert_eq!(pending.append, id);
        if result.is_err() {
            match pending.purpose {
                Purpose::Init(call) => {
                    self.reply(call, producer_id_reply(ResponseError::NotCoordinator));
                }
                Purpose::FenceAndAbort(Some(call)) | Purpose::PrepareBumped(call) => {
                    self.reply(call, producer_id_reply(ResponseError::NotCoordinator));
                }
                Purpose::AddPartitions(call) | Purpose::Prepare(call) => {
                    self.reply(call, TxnReply::Done(Some(ResponseError::NotCoordinator)));
                }
                // Tried again at the next tick.
                Purpose::FenceAndAbort(None) | Purpose::Complete | Purpose::Expire => {}
            }
            return;
        }
        match pending.target {
            Some(target) => {
                self.txns.insert(transactional_id, target.clone());
                match pending.purpose {
                    Purpose::Init(call) => self.reply(
                        call,
                        TxnReply::ProducerId {
                            error: None,
                            producer_id: target.producer_id,
                            producer_epoch: target.producer_epoch,
                        },
                    ),
                    Purpose::FenceAndAbort(call) => {
                        if let Some(call) = call {
                            self.reply(
                                call,
                                producer_id_reply(ResponseError::ConcurrentTransactions),
                            );
                        }
                        self.write_markers(&target);
                    }
                    Purpose::AddPartitions(call) => self.reply(call, TxnReply::Done(None)),
                    Purpose::Prepare(call) => {
                        self.reply(call, TxnReply::Done(None));
                        self.write_markers(&target);
                    }
                    Purpose::PrepareBumped(call) => {
                        let (producer_id, producer_epoch) = if target.next_producer_id >= 0 {
                            (target.next_producer_id, 0)
                        } else {
                            (target.producer_id, target.producer_epoch)
                        };
                        self.reply(
                            call,
                            TxnReply::ProducerId {
                                error: None,
                                producer_id,
                                producer_epoch,
                            },
                        );
                        self.write_markers(&target);
                    }
                    Purpose::Complete | Purpose::Expire => {}
                }
            }
            None => {
                self.txns.remove(&transactional_id);
            }
        }
    }

    /// The markers of `transactional_id`'s transaction at `producer_epoch` are written: it
    /// completes (its record is appended).
    pub fn markers_written(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) {
        self.writing_markers.remove(transactional_id);
        self.complete(transactional_id, producer_id, producer_epoch, now_ms);
    }

    /// Proposes the completion of `transactional_id`'s transaction at `producer_epoch`, whose
    /// markers are written.
    fn complete(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) {
        if self.pending.contains_key(transactional_id) {
            return;
        }
        let Some(current) = self.txns.get(transactional_id).cloned() else {
            return;
        };
        let complete = match current.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return,
        };
        if (current.producer_id, current.producer_epoch) != (producer_id, producer_epoch) {
            return;
        }
        let mut target = current;
        target.state = complete;
        target.partitions.clear();
        target.start_ms = -1;
        target.last_update_ms = now_ms;
        if target.next_producer_id >= 0 {
            // Transaction version 2 with an exhausted epoch: on to the fresh producer id.
            target.previous_producer_id = target.producer_id;
            target.producer_id = target.next_producer_id;
            target.producer_epoch = 0;
            target.next_producer_id = -1;
        }
        self.propose(transactional_id, Some(target), Purpose::Complete);
    }

    /// Time passed: ongoing transactions past their timeout are aborted (their producer
    /// fenced); completions whose record failed are tried again; ids idle past
    /// `transactional.id.expiration.ms` are forgotten.
    pub fn tick(&mut self, now_ms: i64) {
        let held: Vec<String> = self.deferred.keys().cloned().collect();
        for transactional_id in held {
            self.run_deferred(&transactional_id, now_ms);
        }
        let idle: Vec<TxnMetadata> = self
            .txns
            .values()
            .filter(|txn| !self.pending.contains_key(&txn.transactional_id))
            .cloned()
            .collect();
        for txn in idle {
            match txn.state {
                // Markers written but the completion's record failed: propose it again.
                TxnState::PrepareCommit | TxnState::PrepareAbort
                    if !self.writing_markers.contains(&txn.transactional_id) =>
                {
                    self.complete(
                        &txn.transactional_id,
                        txn.producer_id,
                        txn.producer_epoch,
                        now_ms,
                    );
                }
                TxnState::Ongoing
                    if now_ms.saturating_sub(txn.start_ms) > i64::from(txn.timeout_ms) =>
                {
                    self.fence_and_abort(txn, None, now_ms);
                }
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    if now_ms.saturating_sub(txn.last_update_ms)
                        >= self.config.transactional_id_expiration_ms =>
                {
                    let transactional_id = txn.transactional_id.clone();
                    self.propose(&transactional_id, None, Purpose::Expire);
                }
                _ => {}
            }
        }
    }
}
