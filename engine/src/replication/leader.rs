//! [`PartitionLeader`]: the leader side of one partition's replication, as a sans-IO state
//! machine.
//!
//! # Calling protocol
//! The leader owns no socket, file or clock. Its driver (the glommio runtime, or the turmoil
//! driver in the simulation):
//!
//! 1. creates it with [`PartitionLeader::new`] when the metadata makes this broker the leader
//!    at a new leader epoch, after adding `(leader_epoch, log_end_offset)` to the log's leader
//!    epoch cache;
//! 2. reports each local append with [`PartitionLeader::appended`], and each sync of the local
//!    log with [`PartitionLeader::synced`]; when [`PartitionLeader::sync_wanted`] names an
//!    offset, syncing the log up to it lets the high watermark advance;
//! 3. hands it each follower Fetch with [`PartitionLeader::follower_fetch`], which says whether
//!    to read records for it (from its fetch offset up to the log end) or to answer with a
//!    diverging epoch;
//! 4. calls [`PartitionLeader::tick`] now and then (every `replica_lag_time_max_ms / 2` is
//!    enough) so that lagging followers leave the ISR;
//! 5. after every call, drains [`PartitionLeader::poll_output`]: [`LeaderOutput::AlterIsr`]
//!    asks the controller for an ISR change, whose outcome comes back, with the request's
//!    number, through [`PartitionLeader::isr_change_completed`]; [`LeaderOutput::HighWatermark`]
//!    says the high watermark moved, so fetches and `acks=all` produces waiting on it can be
//!    answered;
//! 6. passes newer committed partition states from the metadata (same leader epoch) to
//!    [`PartitionLeader::partition_changed`]; a new leader epoch means a new `PartitionLeader`.
//!
//! # Rules (Kafka's `Partition.scala`)
//! - The high watermark is the lowest log end offset over the *maximal* ISR: the committed ISR
//!   plus a replica whose addition is in flight (KIP-497), so the ISR the controller commits
//!   never holds a replica missing data below the high watermark. It never moves back.
//! - The leader's own part of that minimum is its *durable* offset, not its log end: Spate's
//!   crashes lose what was not synced (its writes bypass the page cache Kafka relies on), and
//!   a leader left alone in its ISR that lost acknowledged records in a crash would be elected
//!   again without them (found by the simulation: seed 1). Followers sync before they report
//!   their log end, so everything below the high watermark is on disk in every ISR member. An
//!   addition whose fate is unknown (the controller moved or the answer was lost) stays in the
//!   maximal ISR until newer committed state says what became of it; an accepted change stays
//!   pending until that state arrives, and an answer to an older request is ignored.
//! - The high watermark stands still while the committed ISR is smaller than the topic's
//!   `min.insync.replicas` (KIP-966): a replica that left an ISR already below it has every
//!   committed record, so the controller may elect it (eligible leader replicas) when the
//!   ISR's last members are lost.
//! - A follower joins the ISR once its log end offset reaches both the high watermark and the
//!   start of the current leader epoch; it leaves when it has not caught up with the leader's
//!   log end for `replica_lag_time_max_ms`. One ISR change is in flight at a time, and it takes
//!   effect only once the controller commits it.
//!
//! # Invariants (asserted)
//! `high_watermark <= log_end_offset`, `durable_offset <= log_end_offset`; the leader is in
//! its ISR; the high watermark never decreases.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kafka_protocol::error::ResponseError;

use super::epoch_cache::{EpochEnd, LeaderEpochCache};
use super::BrokerId;

/// Settings, Kafka's broker settings of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `replica.lag.time.max.ms`: how long a follower may go without catching up with the
    /// leader's log end before it leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// The topic's `min.insync.replicas`: the high watermark advances only while the ISR
    /// holds at least this many replicas (or all of them, when there are fewer), as KIP-966
    /// has it. So a replica that left an ISR already below it holds every committed record,
    /// and the controller may elect it (an eligible leader replica).
    pub min_insync_replicas: usize,
}

impl Default for ReplicationConfig {
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            replica_lag_time_max_ms: 30_000,
            min_insync_replicas: 1,
        }
    }
}

/// A partition's state as the controller committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// The leader, or -1 when there is none.
    pub leader: BrokerId,
    /// Bumped by the controller at every leader change.
    pub leader_epoch: i32,
    /// Bumped by the controller at every change of this state (KIP-497's partition epoch).
    pub partition_epoch: i32,
    /// The assigned replicas, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// The in-sync replicas.
    pub isr: Vec<BrokerId>,
    /// During a reassignment (KIP-455): replicas being added, which `replicas` includes.
    pub adding_replicas: Vec<BrokerId>,
    /// During a reassignment: replicas to be removed once the new ones are in sync.
    pub removing_replicas: Vec<BrokerId>,
}

/// A follower's Fetch, as the leader needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerFetch {
    /// The follower's broker id (the request's replica id).
    pub replica: BrokerId,
    /// Where it wants to read from: its log end offset.
    pub fetch_offset: i64,
    /// The epoch of the last batch in its log (Fetch v12+), if it sent one.
    pub last_fetched_epoch: Option<i32>,
    /// The leader epoch it believes current (Fetch v9+, KIP-320), if it sent one.
    pub current_leader_epoch: Option<i32>,
}

/// How to answer a follower's Fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchAnswer {
    /// Read records from the fetch offset (up to the log end, not the high watermark) and send
    /// them with this high watermark.
    Read {
        /// The high watermark after this fetch counted.
        high_watermark: i64,
    },
    /// The follower's log diverges from the leader's: send no records but this epoch and end
    /// offset, so that it truncates (Fetch v12+'s `DivergingEpoch`).
    Diverging(EpochEnd),
}

/// Why a follower's Fetch is refused; the broker maps each to its Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRefusal {
    /// The follower's leader epoch is older: `FENCED_LEADER_EPOCH`.
    FencedLeaderEpoch,
    /// The follower's leader epoch is newer than this leader knows: `UNKNOWN_LEADER_EPOCH`.
    UnknownLeaderEpoch,
    /// The sender is not a replica of the partition: `NOT_LEADER_OR_FOLLOWER`.
    NotAReplica,
    /// The fetch offset is outside the log: `OFFSET_OUT_OF_RANGE`.
    OffsetOutOfRange,
}

/// Why an `acks=all` produce fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcksAllError {
    /// Too few in-sync replicas to accept the write: `NOT_ENOUGH_REPLICAS`.
    NotEnoughReplicas,
    /// The write is in the log, but the ISR shrank below `min.insync.replicas` before it was
    /// replicated: `NOT_ENOUGH_REPLICAS_AFTER_APPEND`.
    NotEnoughReplicasAfterAppend,
}

/// Why the controller did not commit an ISR change, or whether it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsrChangeError {
    /// The request's partition or leader epoch is stale (`INVALID_UPDATE_VERSION`,
    /// `FENCED_LEADER_EPOCH`): newer metadata is on its way. Not committed.
    Stale,
    /// The controller refused it for another reason (`INELIGIBLE_REPLICA`, ...): the leader
    /// tries again at the next fetch or tick. Not committed.
    Refused,
    /// No answer (the controller moved, the request timed out): it may have been committed.
    /// The leader tries again, and counts a replica it asked to add as in sync until newer
    /// committed state shows whether it was.
    Unknown,
}

impl IsrChangeError {
    /// What the controller's answer to an ISR change means for the leader: a stale request,
    /// a refusal (neither committed), or no answer at all (the controller moved, the request
    /// timed out: it may have been committed).
    pub fn from_controller_error(code: ResponseError) -> IsrChangeError {
        match code {
            ResponseError::InvalidUpdateVersion | ResponseError::FencedLeaderEpoch => {
                IsrChangeError::Stale
            }
            ResponseError::IneligibleReplica
            | ResponseError::InvalidRequest
            | ResponseError::NotLeaderOrFollower
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::StaleBrokerEpoch => IsrChangeError::Refused,
            _ => IsrChangeError::Unknown,
        }
    }
}

/// What the leader asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderOutput {
    /// Ask the controller to set the ISR (AlterPartition), then report the outcome with
    /// [`PartitionLeader::isr_change_completed`].
    AlterIsr {
        /// This leader's number for the request, given back with its outcome.
        request: u64,
        /// The leader epoch the request is made under.
        leader_epoch: i32,
        /// The partition epoch the change is based on.
        partition_epoch: i32,
        /// The ISR wanted, sorted.
        isr: Vec<BrokerId>,
    },
    /// The high watermark moved to this offset.
    HighWatermark(i64),
}

/// An ISR change sent to the controller and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingIsrChange {
    request: u64,
    isr: BTreeSet<BrokerId>,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FollowerProgress {
    /// Its log end offset, from its last fetch; -1 until it fetches from this leader.
    log_end_offset: i64,
    /// When it last had everything the leader had (Kafka's `lastCaughtUpTimeMs`).
    last_caught_up_ms: Option<i64>,
    /// The leader's log end offset at its previous fetch.
    last_fetch_leader_log_end_offset: i64,
    /// When it last fetched.
    last_fetch_ms: i64,
}

/// The leader of one partition. See the module docs.
#[derive(Debug, Clone)]
pub struct PartitionLeader {
    local: BrokerId,
    config: ReplicationConfig,
    state: PartitionState,
    pending: Option<PendingIsrChange>,
    /// Replicas whose addition may have been committed (its answer was lost): counted in the
    /// maximal ISR until a newer committed state arrives, or the controller refuses the
    /// change again at the same partition epoch (which shows it was not committed).
    maybe_added: BTreeSet<BrokerId>,
    /// An ISR change whose answer was lost, to ask again at the next tick.
    retry: Option<Vec<BrokerId>>,
    /// The number of the next [`LeaderOutput::AlterIsr`].
    next_request: u64,
    followers: BTreeMap<BrokerId, FollowerProgress>,
    ineligible: BTreeSet<BrokerId>,
    log_end_offset: i64,
    /// How far the local log is synced.
    durable_offset: i64,
    high_watermark: i64,
    epoch_start_offset: i64,
    outputs: VecDeque<LeaderOutput>,
}

impl PartitionLeader {
    /// Becomes the leader of a partition whose committed state is `state` (naming `local` as
    /// leader), with the local log ending at `log_end_offset`, synced up to `durable_offset`,
    /// and its high watermark (as known from the previous leader) at `high_watermark`.
    ///
    /// # Panics
    /// When `state` does not name `local` as leader in its ISR, or the offsets disagree.
    pub fn new(
        local: BrokerId,
        state: PartitionState,
        log_end_offset: i64,
        durable_offset: i64,
        high_watermark: i64,
        now_ms: i64,
        config: ReplicationConfig,
    ) -> PartitionLeader {
        assert_eq!(state.leader, local, "only the leader leads");
        assert!(
            state.isr.contains(&local),
            "the leader is in its ISR: {state:?}"
        );
        assert!(
            0 <= high_watermark && high_watermark <= log_end_offset,
            "high watermark {high_watermark} within the log end {log_end_offset}"
        );
        assert!(
            durable_offset <= log_end_offset,
            "durable offset {durable_offset} within the log end {log_end_offset}"
        );
        let followers = state
            .replicas
            .iter()
            .filter(|&&replica| replica != local)
            .map(|&replica| {
                let progress = FollowerProgress {
                    log_end_offset: -1,
                    // An ISR member keeps its place for a lag time while it finds the new
                    // leader, as Kafka's `resetReplicaState`.
                    last_caught_up_ms: state.isr.contains(&replica).then_some(now_ms),
                    last_fetch_leader_log_end_offset: -1,
                    last_fetch_ms: now_ms,
                };
                (replica, progress)
            })
            .collect();
        let mut leader = PartitionLeader {
            local,
            config,
            state,
            pending: None,
            maybe_added: BTreeSet::new(),
            retry: None,
            next_request: 0,
            followers,
            ineligible: BTreeSet::new(),
            log_end_offset,
            durable_offset,
            high_watermark,
            epoch_start_offset: log_end_offset,
            outputs: VecDeque::new(),
        };
        leader.maybe_advance_high_watermark();
        leader
    }

    /// The committed state this leader works under.
    pub fn state(&self) -> &PartitionState {
        &self.state
    }

    /// The leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.state.leader_epoch
    }

    /// The high watermark: consumers see records below it.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The local log end offset, as last reported.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    /// The committed ISR plus a replica whose addition is in flight or of unknown fate.
    pub fn maximal_isr(&self) -> BTreeSet<BrokerId> {
        let mut isr: BTreeSet<BrokerId> = self.state.isr.iter().copied().collect();
        if let Some(pending) = &self.pending {
            isr.extend(pending.isr.iter().copied());
        }
        isr.extend(self.maybe_added.iter().copied());
        isr
    }

    /// Whether an ISR change is waiting for the controller.
    pub fn has_pending_isr_change(&self) -> bool {
        self.pending.is_some()
    }

    /// The next thing for the driver to do, until `None`.
    pub fn poll_output(&mut self) -> Option<LeaderOutput> {
        self.outputs.pop_front()
    }

    /// The topic's `min.insync.replicas` changed (see [`ReplicationConfig`]).
    pub fn set_min_insync_replicas(&mut self, min_insync_replicas: usize) {
        self.config.min_insync_replicas = min_insync_replicas;
        self.maybe_advance_high_watermark();
    }

    /// Whether the committed ISR is too small for the high watermark to advance: below
    /// `min.insync.replicas`, capped at the number of replicas not being added (Kafka's
    /// `isUnderMinIsr` with its `effectiveMinIsr`).
    pub fn is_under_min_isr(&self) -> bool {
        // Replicas being added by a reassignment do not count: as Kafka, the cap is the
        // partition's replication factor before the move.
        let replicas = self
            .state
            .replicas
            .iter()
            .filter(|replica| !self.state.adding_replicas.contains(replica))
            .count()
            .max(1);
        let effective = self.config.min_insync_replicas.min(replicas);
        self.state.isr.len() < effective
    }

    /// Brokers that must not join the ISR (fenced, or shutting down), as the metadata says.
    pub fn set_ineligible(&mut self, brokers: BTreeSet<BrokerId>) {
        self.ineligible = brokers;
    }

    /// The local log grew to `log_end_offset` (an append).
    ///
    /// # Panics
    /// When the log end moves back: a leader's log never shrinks.
    pub fn appended(&mut self, log_end_offset: i64) {
        assert!(
            log_end_offset >= self.log_end_offset,
            "a leader's log end moved back from {} to {log_end_offset}",
            self.log_end_offset
        );
        self.log_end_offset = log_end_offset;
        self.maybe_advance_high_watermark();
    }

    /// The local log is synced up to `durable_offset`.
    ///
    /// # Panics
    /// When `durable_offset` is beyond the log end.
    pub fn synced(&mut self, durable_offset: i64) {
        assert!(
            durable_offset <= self.log_end_offset,
            "synced to {durable_offset}, beyond the log end {}",
            self.log_end_offset
        );
        self.durable_offset = self.durable_offset.max(durable_offset);
        self.maybe_advance_high_watermark();
    }

    /// The offset to sync the local log up to so that the high watermark can advance: the
    /// in-sync replicas have everything below it, but the leader has not synced it. `None`
    /// when a sync would not move the high watermark.
    pub fn sync_wanted(&self) -> Option<i64> {
        let target = self.lowest_isr_log_end_offset();
        (target > self.durable_offset && target > self.high_watermark).then_some(target)
    }

    /// Whether an `acks=all` produce may be appended now: the ISR must hold at least
    /// `min_insync_replicas` replicas.
    ///
    /// # Errors
    /// [`AcksAllError::NotEnoughReplicas`] otherwise.
    pub fn check_acks_all(&self, min_insync_replicas: usize) -> Result<(), AcksAllError> {
        if self.state.isr.len() < min_insync_replicas {
            return Err(AcksAllError::NotEnoughReplicas);
        }
        Ok(())
    }

    /// Whether an `acks=all` produce whose records end before `required_offset` (its last
    /// offset + 1) is done: `None` while the high watermark is below it; then `Ok`, or
    /// [`AcksAllError::NotEnoughReplicasAfterAppend`] when the ISR shrank below
    /// `min_insync_replicas` meanwhile.
    pub fn acks_all_outcome(
        &self,
        required_offset: i64,
        min_insync_replicas: usize,
    ) -> Option<Result<(), AcksAllError>> {
        if self.high_watermark < required_offset {
            return None;
        }
        if self.state.isr.len() < min_insync_replicas {
            return Some(Err(AcksAllError::NotEnoughReplicasAfterAppend));
        }
        Some(Ok(()))
    }

    /// A follower's Fetch. `epochs` is the local log's leader epoch cache and
    /// `log_start_offset` its start.
    ///
    /// # Errors
    /// [`FetchRefusal`] when the fetch cannot be served; the follower's state is unchanged.
    pub fn follower_fetch(
        &mut self,
        fetch: FollowerFetch,
        epochs: &LeaderEpochCache,
        log_start_offset: i64,
        now_ms: i64,
    ) -> Result<FetchAnswer, FetchRefusal> {
        match fetch.current_leader_epoch {
            Some(epoch) if epoch < self.state.leader_epoch => {
                return Err(FetchRefusal::FencedLeaderEpoch)
            }
            Some(epoch) if epoch > self.state.leader_epoch => {
                return Err(FetchRefusal::UnknownLeaderEpoch)
            }
            _ => {}
        }
        if !self.followers.contains_key(&fetch.replica) {
            return Err(FetchRefusal::NotAReplica);
        }
        if let Some(last_fetched_epoch) = fetch.last_fetched_epoch.filter(|&epoch| epoch >= 0) {
            let end = epochs.end_offset_for(last_fetched_epoch, self.log_end_offset);
            if end.epoch < last_fetched_epoch || end.end_offset < fetch.fetch_offset {
                return Ok(FetchAnswer::Diverging(end));
            }
        }
        if fetch.fetch_offset > self.log_end_offset || fetch.fetch_offset < log_start_offset {
            return Err(FetchRefusal::OffsetOutOfRange);
        }
        let leader_log_end_offset = self.log_end_offset;
        let progress = self
            .followers
            .get_mut(&fetch.replica)
            .expect("checked above");
        if fetch.fetch_offset >= leader_log_end_offset {
            progress.last_caught_up_ms =
                Some(progress.last_caught_up_ms.unwrap_or(now_ms).max(now_ms));
        } else if fetch.fetch_offset >= progress.last_fetch_leader_log_end_offset
            && progress.last_fetch_leader_log_end_offset >= 0
        {
            // It now has what the leader had at its previous fetch: it was caught up then.
            let then = progress.last_fetch_ms;
            progress.last_caught_up_ms = Some(progress.last_caught_up_ms.unwrap_or(then).max(then));
        }
        progress.log_end_offset = fetch.fetch_offset;
        progress.last_fetch_leader_log_end_offset = leader_log_end_offset;
        progress.last_fetch_ms = now_ms;
        self.maybe_expand_isr(fetch.replica);
        self.maybe_advance_high_watermark();
        Ok(FetchAnswer::Read {
            high_watermark: self.high_watermark,
        })
    }

    /// Time passed: an ISR change whose answer was lost is asked again; followers that fell
    /// behind leave the ISR.
    pub fn tick(&mut self, now_ms: i64) {
        if self.pending.is_some() {
            return;
        }
        if let Some(isr) = self.retry.take() {
            self.propose(isr);
            return;
        }
        let out_of_sync: BTreeSet<BrokerId> = self
            .state
            .isr
            .iter()
            .copied()
            .filter(|&replica| replica != self.local)
            .filter(|replica| match self.followers.get(replica) {
                Some(progress) => !self.is_caught_up(progress, now_ms),
                None => true,
            })
            .collect();
        if out_of_sync.is_empty() {
            return;
        }
        let isr = self
            .state
            .isr
            .iter()
            .copied()
            .filter(|replica| !out_of_sync.contains(replica))
            .collect();
        self.propose(isr);
    }

    /// The controller's answer to the [`LeaderOutput::AlterIsr`] numbered `request`: `Ok`
    /// when it committed the change, whose state then comes through
    /// [`PartitionLeader::partition_changed`] (the change stays pending until it does), or
    /// why not. An answer to any request but the pending one is ignored.
    pub fn isr_change_completed(
        &mut self,
        request: u64,
        outcome: Result<(), IsrChangeError>,
        now_ms: i64,
    ) {
        let Some(pending) = self.pending.take_if(|pending| pending.request == request) else {
            return;
        };
        match outcome {
            Ok(()) => {
                let committed: BTreeSet<BrokerId> = self.state.isr.iter().copied().collect();
                if pending.isr != committed {
                    // Committed, and the state saying so is on its way.
                    self.pending = Some(pending);
                    return;
                }
                self.maybe_advance_high_watermark();
                self.tick(now_ms);
                return;
            }
            // Not asked again at once: the controller would answer the same until newer
            // metadata arrives, and asking in a loop starves everything else (the simulation
            // froze its clock on it, seed 1270). The next tick, fetch or state asks again.
            Err(IsrChangeError::Stale) => {}
            Err(IsrChangeError::Refused) => {
                // Refused at this very partition epoch: nothing asked at it was committed.
                self.maybe_added.clear();
            }
            Err(IsrChangeError::Unknown) => {
                let committed: BTreeSet<BrokerId> = self.state.isr.iter().copied().collect();
                self.maybe_added
                    .extend(pending.isr.difference(&committed).copied());
                // Asked again at the next tick, until an answer says what became of it.
                self.retry = Some(pending.isr.iter().copied().collect());
                self.maybe_advance_high_watermark();
                return;
            }
        }
        self.maybe_advance_high_watermark();
    }

    /// Newer committed state from the metadata, under the same leader epoch (the controller
    /// changed the ISR or the replicas). Older or equal partition epochs are ignored.
    ///
    /// # Panics
    /// When `state` has another leader or leader epoch: that needs a new [`PartitionLeader`].
    pub fn partition_changed(&mut self, state: PartitionState, now_ms: i64) {
        assert!(
            state.leader == self.local && state.leader_epoch == self.state.leader_epoch,
            "a leader change needs a new PartitionLeader: {state:?}"
        );
        if state.partition_epoch <= self.state.partition_epoch {
            return;
        }
        self.followers
            .retain(|replica, _| state.replicas.contains(replica));
        for &replica in &state.replicas {
            if replica != self.local {
                self.followers.entry(replica).or_insert(FollowerProgress {
                    log_end_offset: -1,
                    last_caught_up_ms: None,
                    last_fetch_leader_log_end_offset: -1,
                    last_fetch_ms: now_ms,
                });
            }
        }
        self.state = state;
        // Whatever was asked is now committed or will be refused as stale.
        self.pending = None;
        self.maybe_added.clear();
        self.retry = None;
        self.check_invariants();
        self.maybe_advance_high_watermark();
    }

    /// Kafka's `isCaughtUp`: at the leader's log end, or caught up within the lag time.
    fn is_caught_up(&self, progress: &FollowerProgress, now_ms: i64) -> bool {
        progress.log_end_offset == self.log_end_offset
            || progress
                .last_caught_up_ms
                .is_some_and(|caught_up| now_ms - caught_up <= self.config.replica_lag_time_max_ms)
    }

    fn maybe_expand_isr(&mut self, replica: BrokerId) {
        if self.pending.is_some()
            || self.state.isr.contains(&replica)
            || self.ineligible.contains(&replica)
        {
            return;
        }
        let progress = self.followers[&replica];
        if progress.log_end_offset >= self.high_watermark
            && progress.log_end_offset >= self.epoch_start_offset
        {
            let mut isr: Vec<BrokerId> = self.state.isr.clone();
            isr.push(replica);
            self.propose(isr);
        }
    }

    fn propose(&mut self, isr: Vec<BrokerId>) {
        let isr: BTreeSet<BrokerId> = isr.into_iter().collect();
        assert!(isr.contains(&self.local), "the leader stays in its ISR");
        let request = self.next_request;
        self.next_request += 1;
        self.outputs.push_back(LeaderOutput::AlterIsr {
            request,
            leader_epoch: self.state.leader_epoch,
            partition_epoch: self.state.partition_epoch,
            isr: isr.iter().copied().collect(),
        });
        if mutated!(IsrShrinkBeforeCommit) && isr.len() < self.state.isr.len() {
            self.state.isr = isr.iter().copied().collect();
        }
        self.pending = Some(PendingIsrChange { request, isr });
    }

    /// The lowest log end offset over the maximal ISR, the leader's own included.
    fn lowest_isr_log_end_offset(&self) -> i64 {
        self.maximal_isr()
            .iter()
            .filter(|&&replica| replica != self.local)
            .map(|replica| self.followers.get(replica).map_or(-1, |p| p.log_end_offset))
            .fold(self.log_end_offset, i64::min)
    }

    fn maybe_advance_high_watermark(&mut self) {
        if self.is_under_min_isr() && !mutated!(HighWatermarkUnderMinIsr) {
            // Replicas fenced out of this ISR may be elected from the ELR: nothing may be
            // committed without them.
            self.check_invariants();
            return;
        }
        let lowest = if mutated!(HighWatermarkBeforeIsr) {
            self.durable_offset
        } else {
            self.lowest_isr_log_end_offset().min(self.durable_offset)
        };
        if lowest > self.high_watermark {
            self.high_watermark = lowest;
            self.outputs
                .push_back(LeaderOutput::HighWatermark(self.high_watermark));
        }
        self.check_invariants();
    }

    fn check_invariants(&self) {
        assert!(
            self.durable_offset <= self.log_end_offset,
            "durable offset {} above the log end {}",
            self.durable_offset,
            self.log_end_offset
        );
        assert!(
            self.high_watermark <= self.log_end_offset,
            "high watermark {} above the log end {}",
            self.high_watermark,
            self.log_end_offset
        );
        assert!(
            self.state.isr.contains(&self.local),
            "the leader left its own ISR: {:?}",
            self.state
        );
    }
}
