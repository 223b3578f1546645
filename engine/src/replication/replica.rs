//! [`Replica`]: one partition's replica bound to its log, the part of replication both
//! drivers share.
//!
//! [`PartitionLeader`] and [`PartitionFollower`] decide; a `Replica` carries their decisions
//! out on a [`SharedLog`] over any [`Storage`], with the ordering rules that make them safe:
//! the role changes before the log is awaited, every append and truncation checks the role
//! again with the log held, a follower syncs what it appended before its next Fetch reports
//! the new log end. The broker's shards run it on glommio DMA files
//! (`runtime::shard`, `runtime::replica_fetcher`), the simulation on simulated disks
//! (`spate-sim`'s cluster nodes): the same code decides and writes in both, only the sockets,
//! timers and tasks differ.
//!
//! A `Replica` is shared by the tasks of one core (produces, follower fetches, the replica
//! fetcher, role changes), so its state sits in cells and every method takes `&self`; no
//! borrow is held across an await.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use kafka_protocol::error::ResponseError;
use tracing::info;

use super::epoch_cache::EpochEnd;
use super::follower::{OutOfRangeAction, PartitionFollower};
use super::leader::{
    FetchAnswer, FetchRefusal, FollowerFetch, IsrChangeError, LeaderOutput, PartitionLeader,
    PartitionState, ReplicationConfig,
};
use super::BrokerId;
use crate::broker::errors::KafkaError;
use crate::storage::backend::{Storage, StorageFile};

use crate::storage::{
    AppendInfo, Appended, Durability, Fetched, Marker, SharedLog, StorageError, Verification,
    VerificationGuard,
};

/// What [`Replica::take_role`] did.
#[derive(Debug)]
pub enum RoleTaken {
    /// Nothing changed but, when leading, the committed state the leader works under.
    Unchanged,
    /// Leads from now on, at the state's epoch, its log ending here.
    Leading {
        /// The log end offset the new epoch starts at.
        log_end_offset: i64,
    },
    /// Follows `leader` from now on: the driver fetches from it.
    Following {
        /// The leader to fetch from.
        leader: BrokerId,
        /// Whether it led before.
        was_leading: bool,
    },
    /// The partition has no leader: neither leads nor fetches.
    Leaderless,
    /// Should lead, but the new epoch could not be written: leads nothing.
    NotLeading(StorageError),
}

/// An ISR change the leader asks the controller for (AlterPartition); its outcome goes back
/// through [`Replica::isr_change_completed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChangeAsk {
    /// The leader's number for the request.
    pub request: u64,
    /// The leader epoch it is asked under.
    pub leader_epoch: i32,
    /// The partition epoch it is based on.
    pub partition_epoch: i32,
    /// The ISR wanted, sorted.
    pub isr: Vec<BrokerId>,
}

/// The leader's answer to a follower's Fetch.
#[derive(Debug)]
pub struct ReplicaFetched<B> {
    /// Whole batches from the fetch offset up to the log end; empty when diverging.
    pub records: Option<Fetched<B>>,
    /// The leader's high watermark.
    pub high_watermark: i64,
    /// The leader's log start offset.
    pub log_start_offset: i64,
    /// Set when the follower's log diverges: it truncates and fetches again.
    pub diverging: Option<EpochEnd>,
}

/// Where a follower's next Fetch reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchFrom {
    /// The leader epoch followed.
    pub current_leader_epoch: i32,
    /// The local log end.
    pub fetch_offset: i64,
    /// The newest epoch in the local log, or -1.
    pub last_fetched_epoch: i32,
    /// The local log start.
    pub log_start_offset: i64,
}

/// One partition's answer to a follower's Fetch, as the follower takes it.
#[derive(Debug, Clone, Default)]
pub struct FetchedPartition {
    /// The Kafka error code, 0 for none.
    pub error_code: i16,
    /// The leader's diverging epoch, when the logs diverge.
    pub diverging: Option<EpochEnd>,
    /// Whole batches, offsets and epochs as the leader wrote them.
    pub records: Bytes,
    /// The leader's log start offset.
    pub log_start_offset: i64,
    /// The leader's high watermark.
    pub high_watermark: i64,
}

/// What a follower did with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTaken {
    /// Records appended (or none came); the local log ends here.
    Appended {
        /// The local log end after the append.
        log_end_offset: i64,
    },
    /// The logs diverged: the local log was cut to this offset.
    Truncated(i64),
    /// The partition no longer follows that leader: the answer was dropped.
    Dropped,
}

/// Why a follower could not take an answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchTakeError {
    /// The leader answered an error meaning newer metadata is on its way (here or there).
    #[error("waiting for newer metadata ({0:?})")]
    StaleMetadata(ResponseError),
    /// The leader answered another error.
    #[error("the leader answered {0:?}")]
    Leader(Option<ResponseError>),
    /// The local log could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One partition's replica on this broker. See the module docs.
#[derive(Debug)]
pub struct Replica<S: Storage> {
    node_id: BrokerId,
    config: Cell<ReplicationConfig>,
    /// The topic's name, for logs.
    topic: String,
    /// The partition's index, for logs.
    index: i32,
    /// The log.
    pub log: SharedLog<S>,
    /// Notified after every append, high watermark move and change of role, for long-polling
    /// fetches and `acks=all` produces.
    pub data_arrived: Event,
    /// In a cluster, consumers read only below the high watermark; a single node has no other
    /// replica to wait for, and they read up to the log end.
    in_cluster: bool,
    leader_epoch: Cell<i32>,
    leading: Cell<bool>,
    high_watermark: Cell<i64>,
    leader: RefCell<Option<PartitionLeader>>,
    follower: RefCell<Option<PartitionFollower>>,
    isr_asks: RefCell<VecDeque<IsrChangeAsk>>,
}

impl<S: Storage> Replica<S> {
    /// The only replica of a single-node broker's partition: it leads at `leader_epoch`
    /// (already open in `log`) and consumers read up to the log end.
    pub fn single_node(
        topic: String,
        index: i32,
        log: SharedLog<S>,
        node_id: BrokerId,
        leader_epoch: i32,
    ) -> Replica<S> {
        Replica::new(
            topic,
            index,
            log,
            node_id,
            ReplicationConfig::default(),
            false,
            leader_epoch,
            true,
        )
    }

    /// A replica in a cluster: neither leader nor follower until [`Replica::take_role`].
    pub fn in_cluster(
        topic: String,
        index: i32,
        log: SharedLog<S>,
        node_id: BrokerId,
        config: ReplicationConfig,
    ) -> Replica<S> {
        Replica::new(topic, index, log, node_id, config, true, -1, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        topic: String,
        index: i32,
        log: SharedLog<S>,
        node_id: BrokerId,
        config: ReplicationConfig,
        in_cluster: bool,
        leader_epoch: i32,
        leading: bool,
    ) -> Replica<S> {
        Replica {
            node_id,
            config: Cell::new(config),
            topic,
            index,
            log,
            data_arrived: Event::new(),
            in_cluster,
            leader_epoch: Cell::new(leader_epoch),
            leading: Cell::new(leading),
            high_watermark: Cell::new(0),
            leader: RefCell::new(None),
            follower: RefCell::new(None),
            isr_asks: RefCell::new(VecDeque::new()),
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's index.
    pub fn index(&self) -> i32 {
        self.index
    }

    /// The partition's leader epoch as this broker last learned it.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    /// Whether this broker leads the partition (always, on a single node).
    pub fn is_leading(&self) -> bool {
        self.leading.get()
    }

    /// In a cluster: the high watermark as the leader computed it, or as a follower last
    /// learned it from its leader.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.get()
    }

    /// The offset consumers may read up to: the high watermark in a cluster, else the log end.
    pub fn readable_end(&self, log_end_offset: i64) -> i64 {
        if self.in_cluster {
            self.high_watermark.get().min(log_end_offset)
        } else {
            log_end_offset
        }
    }

    /// The leader followed, if following.
    pub fn followed_leader(&self) -> Option<BrokerId> {
        self.follower
            .borrow()
            .as_ref()
            .map(PartitionFollower::leader)
    }

    /// Whether this replica still follows `leader` (the follower is dropped the moment the
    /// replica is to lead, before its new epoch opens).
    pub fn follows(&self, leader: BrokerId) -> bool {
        self.followed_leader() == Some(leader)
    }

    /// Brings the replica to its part in the committed `state`: leader at a new epoch (the
    /// epoch opens in its log, and a fresh [`PartitionLeader`] takes over), follower of a new
    /// leader or epoch, a newer state at the same epoch (passed to the leader), or nothing
    /// while the partition has no leader. Waiting fetches and produces are woken to check.
    pub async fn take_role(&self, state: &PartitionState, now_ms: i64) -> RoleTaken {
        let taken = self.change_role(state, now_ms).await;
        self.drain_leader_outputs();
        self.data_arrived.notify(usize::MAX);
        taken
    }

    /// This broker is no longer a replica of the partition (moved away by a reassignment, or
    /// its topic deleted): it stops leading and following, and an `acks=all` produce still
    /// waiting is answered NOT_LEADER_OR_FOLLOWER at once, as Kafka completes the requests
    /// waiting on a partition it loses.
    pub fn retire(&self) {
        *self.follower.borrow_mut() = None;
        *self.leader.borrow_mut() = None;
        self.leading.set(false);
        self.data_arrived.notify(usize::MAX);
    }

    async fn change_role(&self, state: &PartitionState, now_ms: i64) -> RoleTaken {
        if state.leader == self.node_id {
            if self.leading.get() && self.leader_epoch.get() == state.leader_epoch {
                if let Some(leader) = self.leader.borrow_mut().as_mut() {
                    leader.partition_changed(state.clone(), now_ms);
                }
                return RoleTaken::Unchanged;
            }
            // Out of the old role before the log is awaited: a replica fetcher's answer in
            // flight must not append once the new epoch opened (its check runs with the log
            // held), and a produce must not append at the old epoch.
            *self.follower.borrow_mut() = None;
            *self.leader.borrow_mut() = None;
            self.leading.set(false);
            // The epoch opens and the leader takes over with the log held, so that the
            // leader's log end is the log's and the first produce stamps the new epoch.
            let opened = self
                .log
                .with_log(async |log| {
                    log.open_leader_epoch(state.leader_epoch).await?;
                    let log_end_offset = log.log_end_offset();
                    let high_watermark = self.high_watermark.get().clamp(0, log_end_offset);
                    let leader = PartitionLeader::new(
                        self.node_id,
                        state.clone(),
                        log_end_offset,
                        log.durable_offset(),
                        high_watermark,
                        now_ms,
                        self.config.get(),
                    );
                    *self.leader.borrow_mut() = Some(leader);
                    self.leader_epoch.set(state.leader_epoch);
                    self.leading.set(true);
                    Ok::<_, StorageError>(log_end_offset)
                })
                .await;
            return match opened {
                Ok(log_end_offset) => RoleTaken::Leading { log_end_offset },
                Err(error) => RoleTaken::NotLeading(error),
            };
        }
        let was_leading = self.leading.replace(false);
        *self.leader.borrow_mut() = None;
        self.leader_epoch.set(state.leader_epoch);
        if state.leader < 0 {
            *self.follower.borrow_mut() = None;
            return RoleTaken::Leaderless;
        }
        let following = self
            .follower
            .borrow()
            .as_ref()
            .map(|follower| (follower.leader(), follower.leader_epoch()));
        if following == Some((state.leader, state.leader_epoch)) {
            return RoleTaken::Unchanged;
        }
        let follower =
            PartitionFollower::new(state.leader, state.leader_epoch, self.high_watermark.get());
        *self.follower.borrow_mut() = Some(follower);
        RoleTaken::Following {
            leader: state.leader,
            was_leading,
        }
    }

    /// The topic's `min.insync.replicas`, for this replica's leaders from now on and the
    /// current one: the high watermark stands still while the ISR is smaller. Set it before
    /// [`Replica::take_role`], so that a new leader starts with it.
    pub fn set_min_insync_replicas(&self, min_insync_replicas: usize) {
        let mut config = self.config.get();
        if config.min_insync_replicas == min_insync_replicas {
            return;
        }
        config.min_insync_replicas = min_insync_replicas;
        self.config.set(config);
        if let Some(leader) = self.leader.borrow_mut().as_mut() {
            leader.set_min_insync_replicas(min_insync_replicas);
        }
        self.drain_leader_outputs();
    }

    /// Brokers the metadata says must not join the ISR (fenced, or shutting down): while
    /// leading, followers among them are not asked into it (the controller would refuse).
    pub fn set_ineligible(&self, brokers: BTreeSet<BrokerId>) {
        if let Some(leader) = self.leader.borrow_mut().as_mut() {
            leader.set_ineligible(brokers);
        }
    }

    /// The next ISR change the leader asks for, to send to the controller.
    pub fn next_isr_change(&self) -> Option<IsrChangeAsk> {
        self.isr_asks.borrow_mut().pop_front()
    }

    /// Takes the leader's outputs: a high watermark move wakes waiting fetches and produces;
    /// an ISR change is queued for [`Replica::next_isr_change`].
    fn drain_leader_outputs(&self) {
        loop {
            let output = self
                .leader
                .borrow_mut()
                .as_mut()
                .and_then(PartitionLeader::poll_output);
            match output {
                None => return,
                Some(LeaderOutput::HighWatermark(high_watermark)) => {
                    self.high_watermark.set(high_watermark);
                    self.data_arrived.notify(usize::MAX);
                }
                Some(LeaderOutput::AlterIsr {
                    request,
                    leader_epoch,
                    partition_epoch,
                    isr,
                }) => self.isr_asks.borrow_mut().push_back(IsrChangeAsk {
                    request,
                    leader_epoch,
                    partition_epoch,
                    isr,
                }),
            }
        }
    }

    /// The controller's answer to an ISR change asked under `leader_epoch`; ignored once the
    /// replica no longer leads at that epoch.
    pub fn isr_change_completed(
        &self,
        ask: &IsrChangeAsk,
        outcome: Result<(), IsrChangeError>,
        now_ms: i64,
    ) {
        if let Some(leader) = self
            .leader
            .borrow_mut()
            .as_mut()
            .filter(|leader| leader.leader_epoch() == ask.leader_epoch)
        {
            leader.isr_change_completed(ask.request, outcome, now_ms);
        }
        self.drain_leader_outputs();
    }

    /// Time passed: while leading, lagging followers leave the ISR and lost ISR changes are
    /// asked again.
    pub fn tick(&self, now_ms: i64) {
        if let Some(leader) = self.leader.borrow_mut().as_mut() {
            leader.tick(now_ms);
        }
        self.drain_leader_outputs();
    }

    /// Whether an `acks=all` produce may be appended: this replica leads and the ISR holds at
    /// least `min_insync_replicas` replicas.
    ///
    /// # Errors
    /// `NOT_LEADER_OR_FOLLOWER` or `NOT_ENOUGH_REPLICAS`.
    pub fn check_acks_all(&self, min_insync_replicas: usize) -> Result<(), KafkaError> {
        match self
            .leader
            .borrow()
            .as_ref()
            .map(|leader| leader.check_acks_all(min_insync_replicas))
        {
            None => Err(KafkaError::new(ResponseError::NotLeaderOrFollower)),
            Some(Err(_)) => Err(KafkaError::with_message(
                ResponseError::NotEnoughReplicas,
                format!("fewer in-sync replicas than min.insync.replicas ({min_insync_replicas})"),
            )),
            Some(Ok(())) => Ok(()),
        }
    }

    /// Appends a producer's batches while leading. Leadership is checked, and the leader told
    /// of the append, while the log is held: a change of role cannot slip between.
    ///
    /// # Errors
    /// `NOT_LEADER_OR_FOLLOWER` when this replica does not lead; the log's errors.
    pub async fn append_as_leader(
        &self,
        records: BytesMut,
        now_ms: i64,
    ) -> Result<AppendInfo, KafkaError> {
        self.append_verified_as_leader(records, now_ms, Verification::Unchecked)
            .await
    }

    /// As [`Replica::append_as_leader`], checking KIP-890 verification: a transactional batch
    /// that would open a transaction needs the guard [`Replica::start_verification`] gave
    /// before the coordinator was asked, not voided by a marker since.
    ///
    /// # Errors
    /// As [`Replica::append_as_leader`]; INVALID_TXN_STATE for a batch whose verification a
    /// marker overtook.
    pub async fn append_verified_as_leader(
        &self,
        records: BytesMut,
        now_ms: i64,
        verification: Verification,
    ) -> Result<AppendInfo, KafkaError> {
        self.append_leading(Appended::Records(records, verification), now_ms, None)
            .await
    }

    /// As [`Replica::append_as_leader`], only while leading at `leader_epoch`: a coordinator
    /// loaded at one epoch (and being stopped) never appends into the log of a later one,
    /// which its successor loaded without that record.
    ///
    /// # Errors
    /// As [`Replica::append_as_leader`]; NOT_LEADER_OR_FOLLOWER once the partition is led at
    /// another epoch.
    pub async fn append_as_leader_at_epoch(
        &self,
        records: BytesMut,
        now_ms: i64,
        leader_epoch: i32,
    ) -> Result<AppendInfo, KafkaError> {
        self.append_leading(
            Appended::Records(records, Verification::Unchecked),
            now_ms,
            Some(leader_epoch),
        )
        .await
    }

    /// Starts verifying a transactional batch of `producer_id` at `producer_epoch` (see
    /// `storage::verification`): the guard to append with once the coordinator says the
    /// partition is in the producer's ongoing transaction, or `None` when that transaction is
    /// open here already and the coordinator need not be asked.
    pub async fn start_verification(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) -> Option<VerificationGuard> {
        self.log
            .with_log(async |log| log.start_verification(producer_id, producer_epoch, now_ms))
            .await
    }

    /// Appends a transaction marker for the producer's transaction coordinator while
    /// leading, as [`Replica::append_as_leader`] appends batches.
    ///
    /// # Errors
    /// As [`Replica::append_as_leader`]; the producer state's refusals of the marker
    /// (INVALID_PRODUCER_EPOCH, TRANSACTION_COORDINATOR_FENCED).
    pub async fn append_marker_as_leader(
        &self,
        marker: Marker,
        now_ms: i64,
    ) -> Result<AppendInfo, KafkaError> {
        self.append_leading(Appended::Marker(marker), now_ms, None)
            .await
    }

    async fn append_leading(
        &self,
        appended: Appended,
        now_ms: i64,
        required_epoch: Option<i32>,
    ) -> Result<AppendInfo, KafkaError> {
        let appended = self
            .log
            .append_if(
                appended,
                now_ms,
                Durability::Written,
                || {
                    let epoch = self.leader_epoch.get();
                    (self.leading.get() && required_epoch.is_none_or(|required| required == epoch))
                        .then_some(epoch)
                },
                |info| {
                    // A producer's retry of a batch already in the log wrote nothing.
                    if info.duplicate {
                        return;
                    }
                    if let Some(leader) = self.leader.borrow_mut().as_mut() {
                        leader.appended(info.last_offset + 1);
                    }
                },
            )
            .await?;
        let Some(info) = appended else {
            return Err(KafkaError::with_message(
                ResponseError::NotLeaderOrFollower,
                "this broker no longer leads the partition",
            ));
        };
        self.drain_leader_outputs();
        self.data_arrived.notify(usize::MAX);
        // Alone in its ISR, the leader's own sync is all the high watermark waits for.
        self.sync_for_high_watermark(now_ms).await?;
        Ok(info)
    }

    /// Syncs the log as far as the leader wants it synced for its high watermark to advance
    /// ([`PartitionLeader::sync_wanted`]), sharing the fsync with other waiters.
    async fn sync_for_high_watermark(&self, now_ms: i64) -> Result<(), StorageError> {
        let wanted = self
            .leader
            .borrow()
            .as_ref()
            .and_then(PartitionLeader::sync_wanted);
        let Some(offset) = wanted else {
            return Ok(());
        };
        let skip_sync = mutated!(LeaderSyncSkipped);
        if !skip_sync {
            self.log.wait_durable(offset, now_ms).await?;
        }
        let durable_offset = self.log.with_log(async |log| log.durable_offset()).await;
        if let Some(leader) = self.leader.borrow_mut().as_mut() {
            let durable_offset = if skip_sync {
                offset.min(leader.log_end_offset())
            } else {
                durable_offset.min(leader.log_end_offset())
            };
            leader.synced(durable_offset);
        }
        self.drain_leader_outputs();
        Ok(())
    }

    /// Whether an `acks=all` produce whose records end before `required_offset` is done:
    /// `None` while the in-sync replicas lack some of them.
    ///
    /// # Errors
    /// `NOT_LEADER_OR_FOLLOWER` once leadership moved, `NOT_ENOUGH_REPLICAS_AFTER_APPEND` once
    /// the ISR shrank below `min_insync_replicas` before the replicas had the records.
    pub fn acks_all_outcome(
        &self,
        required_offset: i64,
        min_insync_replicas: usize,
    ) -> Option<Result<(), KafkaError>> {
        let outcome = self
            .leader
            .borrow()
            .as_ref()
            .map(|leader| leader.acks_all_outcome(required_offset, min_insync_replicas));
        match outcome {
            None => Some(Err(KafkaError::with_message(
                ResponseError::NotLeaderOrFollower,
                "leadership moved before the replicas had the records",
            ))),
            Some(Some(Ok(()))) => Some(Ok(())),
            Some(Some(Err(_))) => Some(Err(KafkaError::with_message(
                ResponseError::NotEnoughReplicasAfterAppend,
                "the records are written, but the in-sync replicas fell below \
                 min.insync.replicas before they had them",
            ))),
            Some(None) => None,
        }
    }

    /// A follower's Fetch on the leader: its progress counts toward the high watermark and the
    /// ISR, and it gets the records from its log end, or where its log diverges.
    ///
    /// # Errors
    /// The Kafka error to answer (`Ok`), or the log's (`Err`).
    pub async fn answer_replica_fetch(
        &self,
        fetch: FollowerFetch,
        max_bytes: usize,
        now_ms: i64,
    ) -> Result<ReplicaFetched<<S::File as StorageFile>::Buf>, Result<KafkaError, StorageError>>
    {
        let (epochs, log_start_offset, log_end_offset) = self
            .log
            .with_log(async |log| {
                (
                    log.leader_epochs().clone(),
                    log.log_start_offset(),
                    log.log_end_offset(),
                )
            })
            .await;
        let answer = {
            let mut leader = self.leader.borrow_mut();
            let Some(leader) = leader.as_mut() else {
                return Err(Ok(KafkaError::new(ResponseError::NotLeaderOrFollower)));
            };
            leader.follower_fetch(fetch, &epochs, log_start_offset, now_ms)
        };
        self.drain_leader_outputs();
        if answer.is_ok() {
            // What the followers now have counts toward the high watermark once the leader
            // has it on disk too.
            self.sync_for_high_watermark(now_ms).await.map_err(Err)?;
        }
        let high_watermark = self.high_watermark.get();
        match answer {
            Err(refusal) => {
                let code = match refusal {
                    FetchRefusal::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
                    FetchRefusal::UnknownLeaderEpoch => ResponseError::UnknownLeaderEpoch,
                    FetchRefusal::NotAReplica => ResponseError::NotLeaderOrFollower,
                    FetchRefusal::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
                };
                Err(Ok(KafkaError::new(code)))
            }
            Ok(FetchAnswer::Diverging(end)) => Ok(ReplicaFetched {
                records: None,
                high_watermark,
                log_start_offset,
                diverging: Some(end),
            }),
            Ok(FetchAnswer::Read { .. }) => {
                let records = if fetch.fetch_offset < log_end_offset {
                    Some(
                        self.log
                            .read(fetch.fetch_offset, max_bytes, Some(log_end_offset))
                            .await
                            .map_err(Err)?,
                    )
                } else {
                    None
                };
                Ok(ReplicaFetched {
                    records,
                    high_watermark,
                    log_start_offset,
                    diverging: None,
                })
            }
        }
    }

    /// Where the next Fetch from the followed leader reads from; `None` when not following,
    /// or when the log is poisoned (a sync failed): its log end may hold records that are not
    /// on disk, and the leader would count them toward `acks=all`, so the replica stops
    /// fetching and drops out of the ISR instead.
    pub async fn fetch_from(&self) -> Option<FetchFrom> {
        self.follower.borrow().as_ref()?;
        let (fetch_offset, log_start_offset, last_epoch) = self
            .log
            .with_log(async |log| {
                (!log.is_poisoned()).then(|| {
                    (
                        log.log_end_offset(),
                        log.log_start_offset(),
                        log.leader_epochs().latest_epoch(),
                    )
                })
            })
            .await?;
        Some(FetchFrom {
            current_leader_epoch: self.leader_epoch.get(),
            fetch_offset,
            // Without the epoch the leader cannot tell the logs diverge (the injected bug).
            last_fetched_epoch: if mutated!(FollowerSkipsTruncation) {
                -1
            } else {
                last_epoch.unwrap_or(-1)
            },
            log_start_offset,
        })
    }

    /// Takes `leader`'s answer to a Fetch (other than OFFSET_OUT_OF_RANGE, which goes to
    /// [`Replica::recover_out_of_range`]): appends its batches unchanged and syncs them, or
    /// truncates where the logs diverge, and takes its high watermark, capped at the local log
    /// end. An answer for a leader no longer followed is dropped.
    ///
    /// # Errors
    /// [`FetchTakeError`]: a leader's error, or the local log's.
    pub async fn take_fetched(
        &self,
        leader: BrokerId,
        answer: FetchedPartition,
        now_ms: i64,
    ) -> Result<FetchTaken, FetchTakeError> {
        // The replica may have changed role while the fetch was out. Checked again with the
        // log held before anything is written: the role changes (take_role) while this awaits.
        if !self.follows(leader) {
            return Ok(FetchTaken::Dropped);
        }
        match ResponseError::try_from_code(answer.error_code) {
            None if answer.error_code == 0 => {}
            None => return Err(FetchTakeError::Leader(None)),
            Some(
                code @ (ResponseError::NotLeaderOrFollower
                | ResponseError::FencedLeaderEpoch
                | ResponseError::UnknownLeaderEpoch),
            ) => return Err(FetchTakeError::StaleMetadata(code)),
            Some(code) => return Err(FetchTakeError::Leader(Some(code))),
        }
        if let Some(diverging) = answer.diverging {
            return self.truncate_diverging(leader, diverging, now_ms).await;
        }
        let records = answer.records;
        let leader_log_start_offset = answer.log_start_offset;
        let log_end_offset = if records.is_empty() {
            self.log
                .with_log(async |log| {
                    if !self.follows(leader) {
                        return Ok(None);
                    }
                    // The leader's log start moves on without new records too (DeleteRecords,
                    // retention), as Kafka's follower takes it from every answer.
                    let leader_log_start = leader_log_start_offset.min(log.log_end_offset());
                    if leader_log_start > log.log_start_offset() {
                        log.delete_records(leader_log_start).await?;
                    }
                    Ok::<_, StorageError>(Some(log.log_end_offset()))
                })
                .await?
        } else {
            self.log
                .with_log(async |log| {
                    if !self.follows(leader) {
                        return Ok(None);
                    }
                    // The leader's log start can fall inside a batch (DeleteRecords), so the
                    // first batch an emptied log receives may start below it: the log then
                    // starts at that batch, as Kafka's follower does.
                    let first = crate::storage::batch::peek_base_offset_and_size(&records)
                        .map(|(base_offset, _)| base_offset);
                    if let Ok(first) = first {
                        let empty = log.log_start_offset() == log.log_end_offset();
                        if empty && first < log.log_end_offset() && first >= 0 {
                            log.reset_to(first, now_ms).await?;
                        }
                    }
                    log.append_replicated(BytesMut::from(records), now_ms)
                        .await?;
                    // Records the leader deleted (DeleteRecords, retention) go here too.
                    let leader_log_start = leader_log_start_offset.min(log.log_end_offset());
                    if leader_log_start > log.log_start_offset() {
                        log.delete_records(leader_log_start).await?;
                    }
                    // Synced before the next Fetch reports the new log end: the leader counts
                    // it toward `acks=all`.
                    log.flush(now_ms).await?;
                    Ok::<_, StorageError>(Some(log.log_end_offset()))
                })
                .await?
        };
        let Some(log_end_offset) = log_end_offset else {
            return Ok(FetchTaken::Dropped);
        };
        let high_watermark = self
            .follower
            .borrow_mut()
            .as_mut()
            .filter(|follower| follower.leader() == leader)
            .map(|follower| follower.records_appended(log_end_offset, answer.high_watermark));
        if let Some(high_watermark) = high_watermark {
            self.high_watermark.set(high_watermark);
        }
        self.data_arrived.notify(usize::MAX);
        Ok(FetchTaken::Appended { log_end_offset })
    }

    async fn truncate_diverging(
        &self,
        leader: BrokerId,
        diverging: EpochEnd,
        now_ms: i64,
    ) -> Result<FetchTaken, FetchTakeError> {
        let truncated = self
            .log
            .with_log(async |log| {
                let offset = {
                    let mut follower = self.follower.borrow_mut();
                    let Some(follower) = follower.as_mut().filter(|f| f.leader() == leader) else {
                        return Ok(None);
                    };
                    follower.diverged(diverging, log.leader_epochs(), log.log_end_offset())
                };
                log.truncate_to(offset, now_ms).await.map(Some)
            })
            .await?;
        let Some(truncated) = truncated else {
            return Ok(FetchTaken::Dropped);
        };
        info!(topic = %self.topic, partition = self.index, leader, offset = truncated, "truncated to the leader's log");
        self.high_watermark
            .set(self.high_watermark.get().min(truncated));
        Ok(FetchTaken::Truncated(truncated))
    }

    /// The leader refused the fetch offset as out of range and said its log spans
    /// `leader_log_start_offset..leader_log_end_offset`: cuts, empties or keeps the local log
    /// as [`PartitionFollower::out_of_range`] decides. `None` when nothing was done.
    ///
    /// # Errors
    /// The local log's.
    pub async fn recover_out_of_range(
        &self,
        leader: BrokerId,
        leader_log_start_offset: i64,
        leader_log_end_offset: i64,
        now_ms: i64,
    ) -> Result<Option<OutOfRangeAction>, StorageError> {
        let done = self
            .log
            .with_log(async |log| {
                let action = self
                    .follower
                    .borrow_mut()
                    .as_mut()
                    .filter(|follower| follower.leader() == leader)
                    .map(|follower| {
                        follower.out_of_range(
                            log.log_end_offset(),
                            leader_log_start_offset,
                            leader_log_end_offset,
                        )
                    });
                match action {
                    Some(OutOfRangeAction::TruncateTo(offset)) => {
                        log.truncate_to(offset, now_ms).await?;
                        Ok(action)
                    }
                    Some(OutOfRangeAction::StartAt(offset)) => {
                        log.reset_to(offset, now_ms).await?;
                        Ok(action)
                    }
                    Some(OutOfRangeAction::Retry) | None => Ok(None),
                }
            })
            .await?;
        if done.is_some() {
            let high_watermark = self
                .follower
                .borrow()
                .as_ref()
                .map(PartitionFollower::high_watermark);
            if let Some(high_watermark) = high_watermark {
                self.high_watermark.set(high_watermark);
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::SimulatedStorage;
    use crate::storage::batch::build::{batch, NewRecord};
    use crate::storage::batch::set_partition_leader_epoch;
    use crate::storage::{LogConfig, PartitionLog};

    fn state(leader: BrokerId, leader_epoch: i32) -> PartitionState {
        PartitionState {
            leader,
            leader_epoch,
            partition_epoch: leader_epoch,
            replicas: vec![1, 2],
            isr: vec![1, 2],
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    async fn replica_on(storage: &SimulatedStorage) -> Replica<SimulatedStorage> {
        let (log, _) = PartitionLog::open(storage.clone(), "/data/t-0", LogConfig::default(), 0)
            .await
            .expect("opens");
        Replica::in_cluster(
            "t".into(),
            0,
            SharedLog::new(log),
            1,
            ReplicationConfig::default(),
        )
    }

    #[test]
    fn the_leaders_high_watermark_moves_only_once_its_own_log_is_synced() {
        futures_lite::future::block_on(async {
            let storage = SimulatedStorage::new();
            let replica = replica_on(&storage).await;
            assert!(matches!(
                replica.take_role(&state(1, 0), 0).await,
                RoleTaken::Leading { log_end_offset: 0 }
            ));
            replica
                .append_as_leader(batch(&[NewRecord::value("a", 0)]), 0)
                .await
                .expect("appends");
            assert_eq!(replica.high_watermark(), 0, "the follower has nothing yet");
            let syncs = storage.sync_count();
            let fetch = FollowerFetch {
                replica: 2,
                fetch_offset: 1,
                last_fetched_epoch: Some(0),
                current_leader_epoch: Some(0),
            };
            let answer = replica
                .answer_replica_fetch(fetch, 1 << 20, 1)
                .await
                .expect("answers");
            assert!(storage.sync_count() > syncs, "the leader synced first");
            assert_eq!(answer.high_watermark, 1);
            assert_eq!(replica.high_watermark(), 1);
            let segment = std::path::Path::new("/data/t-0/00000000000000000000.log");
            assert!(
                storage.durable_len(segment).is_some_and(|len| len > 0),
                "the record is on disk"
            );
        });
    }

    #[test]
    fn a_retired_leader_answers_waiting_acks_all_produces_at_once() {
        futures_lite::future::block_on(async {
            let storage = SimulatedStorage::new();
            let replica = replica_on(&storage).await;
            replica.take_role(&state(1, 0), 0).await;
            let appended = replica
                .append_as_leader(batch(&[NewRecord::value("a", 0)]), 0)
                .await
                .expect("appends");
            let required = appended.last_offset + 1;
            assert!(
                replica.acks_all_outcome(required, 2).is_none(),
                "waits for the follower"
            );
            let woken = replica.data_arrived.listen();
            replica.retire();
            woken.await;
            let outcome = replica.acks_all_outcome(required, 2);
            assert!(
                matches!(&outcome, Some(Err(error)) if error.code == ResponseError::NotLeaderOrFollower),
                "{outcome:?}"
            );
            assert!(!replica.is_leading());
            assert!(replica
                .append_as_leader(batch(&[NewRecord::value("b", 0)]), 0)
                .await
                .is_err());
        });
    }

    #[test]
    fn an_append_for_one_leader_epoch_is_refused_once_the_partition_is_led_at_another() {
        futures_lite::future::block_on(async {
            let storage = SimulatedStorage::new();
            let replica = replica_on(&storage).await;
            replica.take_role(&state(1, 3), 0).await;
            replica
                .append_as_leader_at_epoch(batch(&[NewRecord::value("a", 0)]), 0, 3)
                .await
                .expect("appends at its own epoch");
            // The same broker leads again, at a later epoch: a coordinator loaded at epoch 3
            // (and being stopped) must not write into epoch 4's log.
            replica.take_role(&state(1, 4), 0).await;
            let refused = replica
                .append_as_leader_at_epoch(batch(&[NewRecord::value("b", 0)]), 0, 3)
                .await
                .expect_err("refused at the old epoch");
            assert_eq!(refused.code, ResponseError::NotLeaderOrFollower);
            let appended = replica
                .append_as_leader_at_epoch(batch(&[NewRecord::value("c", 0)]), 0, 4)
                .await
                .expect("appends at the new epoch");
            assert_eq!(
                appended.base_offset, 1,
                "nothing of the refused append is in the log"
            );
        });
    }

    #[test]
    fn a_follower_takes_the_leaders_log_start_from_an_answer_without_records() {
        futures_lite::future::block_on(async {
            let storage = SimulatedStorage::new();
            let replica = replica_on(&storage).await;
            replica.take_role(&state(2, 3), 0).await;
            let mut records = batch(&[
                NewRecord::value("a", 0),
                NewRecord::value("b", 0),
                NewRecord::value("c", 0),
            ]);
            set_partition_leader_epoch(&mut records, 3);
            let appended = FetchedPartition {
                records: records.freeze(),
                log_start_offset: 0,
                high_watermark: 3,
                ..FetchedPartition::default()
            };
            assert_eq!(
                replica.take_fetched(2, appended, 0).await.expect("appends"),
                FetchTaken::Appended { log_end_offset: 3 }
            );
            let moved_start = FetchedPartition {
                log_start_offset: 2,
                high_watermark: 3,
                ..FetchedPartition::default()
            };
            replica
                .take_fetched(2, moved_start, 1)
                .await
                .expect("takes it");
            let start = replica
                .log
                .with_log(async |log| log.log_start_offset())
                .await;
            assert_eq!(start, 2, "DeleteRecords on the leader reached the follower");
        });
    }

    #[test]
    fn a_leader_does_not_ask_an_ineligible_follower_into_the_isr() {
        futures_lite::future::block_on(async {
            let storage = SimulatedStorage::new();
            let replica = replica_on(&storage).await;
            let mut alone = state(1, 0);
            alone.isr = vec![1];
            replica.take_role(&alone, 0).await;
            replica.set_ineligible(BTreeSet::from([2]));
            let fetch = FollowerFetch {
                replica: 2,
                fetch_offset: 0,
                last_fetched_epoch: None,
                current_leader_epoch: Some(0),
            };
            replica
                .answer_replica_fetch(fetch, 1 << 20, 1)
                .await
                .expect("answers");
            assert_eq!(replica.next_isr_change(), None, "broker 2 is fenced");
            replica.set_ineligible(BTreeSet::new());
            replica
                .answer_replica_fetch(fetch, 1 << 20, 2)
                .await
                .expect("answers");
            assert_eq!(
                replica.next_isr_change().map(|ask| ask.isr),
                Some(vec![1, 2])
            );
        });
    }

    #[test]
    fn a_follower_whose_sync_failed_stops_fetching() {
        futures_lite::future::block_on(async {
            let storage = SimulatedStorage::new();
            let replica = replica_on(&storage).await;
            assert!(matches!(
                replica.take_role(&state(2, 3), 0).await,
                RoleTaken::Following { leader: 2, .. }
            ));
            assert_eq!(
                replica.fetch_from().await.map(|from| from.fetch_offset),
                Some(0)
            );
            let mut records = batch(&[NewRecord::value("a", 0)]);
            set_partition_leader_epoch(&mut records, 3);
            storage.set_fail_syncs(true);
            let answer = FetchedPartition {
                records: records.freeze(),
                log_start_offset: 0,
                high_watermark: 1,
                ..FetchedPartition::default()
            };
            assert!(matches!(
                replica.take_fetched(2, answer, 0).await,
                Err(FetchTakeError::Storage(_))
            ));
            // Its log end holds a record that is not on disk: reporting it would count it
            // toward acks=all.
            assert_eq!(replica.fetch_from().await, None);
        });
    }
}
