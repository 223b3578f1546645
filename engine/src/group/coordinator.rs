//! The group coordinator of one `__consumer_offsets` partition, as a sans-IO state machine.
//!
//! # Calling protocol
//!
//! The coordinator owns no socket, file, clock or random source. Its driver (the glommio
//! runtime in the broker, the turmoil driver in the simulation):
//!
//! 1. replays the partition's records into it with [`GroupCoordinator::load`], then calls
//!    [`GroupCoordinator::finish_load`] once, before any call;
//! 2. hands it each request with [`GroupCoordinator::handle_call`], with the time and a
//!    [`CallId`] of its choosing (and, in a JoinGroup, the random member id to use);
//! 3. after every input, drains [`GroupCoordinator::poll_output`]: [`Output::Reply`] answers a
//!    call (at once, or later: a JoinGroup waits for the join phase, a SyncGroup for the
//!    leader's assignment, a commit for its write); [`Output::Append`] asks for records to be
//!    appended to the partition, in order, after which the driver reports the result with
//!    [`GroupCoordinator::append_completed`];
//! 4. calls [`GroupCoordinator::handle_timeout`] once the time passes
//!    [`GroupCoordinator::poll_timeout`] (member sessions, join and sync phases, offset
//!    expiry).
//!
//! Every map is ordered, so the same inputs give the same outputs: the simulation depends on
//! it. The rules follow Kafka's classic group coordinator (`GroupCoordinator.scala`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;

use super::calls::*;
use super::records::{CommittedOffset, OffsetsRecord};
use super::state::{Group, GroupState, Member};
use super::txn_offsets::{TxnBatch, TxnOffsets};

/// How long a new member waiting in its first JoinGroup is kept without a heartbeat (Kafka's
/// `NewMemberJoinTimeoutMs`): it may have gone away while it waited.
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 300_000;

/// The coordinator's settings, Kafka's broker settings of the same names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// `group.min.session.timeout.ms`.
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub group_max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long an empty group's first rebalance waits for
    /// more members, so that a starting application does not rebalance once per member.
    pub group_initial_rebalance_delay_ms: i64,
    /// `group.max.size`.
    pub group_max_size: usize,
    /// `offsets.retention.minutes`, in ms.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> CoordinatorConfig {
        CoordinatorConfig {
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 3_000,
            group_max_size: i32::MAX as usize,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// Identifies an [`Output::Append`] for [`GroupCoordinator::append_completed`].
pub type AppendId = u64;

/// What the coordinator asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Answer a call.
    Reply(CallId, Reply),
    /// Append these records to the `__consumer_offsets` partition, after every earlier append,
    /// then report with [`GroupCoordinator::append_completed`].
    Append {
        /// Passed back on completion.
        id: AppendId,
        /// The records, in order.
        records: Vec<OffsetsRecord>,
        /// For a TxnOffsetCommit: the producer's transactional batch they go in, alone.
        transaction: Option<TxnBatch>,
    },
}

/// What an append in flight is for.
#[derive(Debug)]
enum AppendPurpose {
    /// Offsets to make visible, then answer.
    Commit {
        call: CallId,
        group_id: String,
        accepted: Vec<(usize, (String, i32), CommittedOffset)>,
        results: Vec<ErrorCode>,
    },
    /// The leader's assignment of `generation_id`: on success the group becomes Stable.
    Assignment {
        group_id: String,
        generation_id: i32,
    },
    /// DeleteGroups: answer, and forget the group (Kafka forgets it even when the write
    /// fails; the log then still has it, and a restart brings it back).
    Delete { call: CallId, group_id: String },
    /// A static member's new id: answer the JoinGroup once it is stored, or put the old id
    /// back.
    StaticReplace {
        call: CallId,
        group_id: String,
        instance: String,
        old_id: String,
        new_id: String,
        response: Box<JoinResponse>,
    },
    /// TxnOffsetCommit: keep the offsets pending for the producer's transaction, answer.
    TxnCommit {
        call: CallId,
        group_id: String,
        batch: TxnBatch,
        accepted: Vec<(usize, (String, i32), CommittedOffset)>,
        results: Vec<ErrorCode>,
    },
    /// OffsetDelete: answer.
    DeleteOffsets {
        call: CallId,
        results: Vec<ErrorCode>,
    },
    /// Group metadata or expiry tombstones nobody waits for.
    Background,
}

/// The coordinator of the groups of one `__consumer_offsets` partition. See the module docs.
#[derive(Debug)]
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<String, Group>,
    outputs: VecDeque<Output>,
    appends: BTreeMap<AppendId, AppendPurpose>,
    next_append_id: AppendId,
    next_expiry_check_ms: Option<i64>,
    loaded: bool,
    txn_offsets: TxnOffsets,
}

impl GroupCoordinator {
    /// A coordinator with no groups, ready for [`GroupCoordinator::load`].
    pub fn new(config: CoordinatorConfig) -> GroupCoordinator {
        GroupCoordinator {
            config,
            groups: BTreeMap::new(),
            outputs: VecDeque::new(),
            appends: BTreeMap::new(),
            next_append_id: 0,
            next_expiry_check_ms: None,
            loaded: false,
            txn_offsets: TxnOffsets::default(),
        }
    }

    /// The groups, by id.
    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    /// Replays one record of the partition, oldest first.
    pub fn load(&mut self, record: OffsetsRecord) {
        assert!(!self.loaded, "records are replayed before the first call");
        match record {
            OffsetsRecord::Offset {
                group_id,
                topic,
                partition,
                value,
            } => match value {
                Some(value) => {
                    let key = (topic, partition);
                    self.txn_offsets.overtaken(&group_id, &key);
                    self.groups
                        .entry(group_id.clone())
                        .or_insert_with(|| Group::new(&group_id, value.commit_timestamp_ms))
                        .offsets
                        .insert(key, value);
                }
                None => {
                    if let Some(group) = self.groups.get_mut(&group_id) {
                        group.offsets.remove(&(topic, partition));
                    }
                }
            },
            OffsetsRecord::Group { group_id, value } => match value {
                Some(stored) => self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(&group_id, stored.state_timestamp_ms))
                    .restore(stored),
                None => {
                    // The group's membership is gone; offsets go only with their own
                    // tombstones (Kafka loads them independently).
                    if let Some(group) = self.groups.get_mut(&group_id) {
                        if group.offsets.is_empty() {
                            self.groups.remove(&group_id);
                        } else {
                            let offsets = std::mem::take(&mut group.offsets);
                            let mut fresh = Group::new(&group_id, group.state_timestamp_ms);
                            fresh.offsets = offsets;
                            *group = fresh;
                        }
                    }
                }
            },
        }
    }

    /// Ends loading: groups with members are Stable and their sessions start now.
    pub fn finish_load(&mut self, now_ms: i64) {
        assert!(!self.loaded);
        self.loaded = true;
        for group in self.groups.values_mut() {
            if group.members.is_empty() {
                group.state = GroupState::Empty;
                group.leader_id = None;
            } else {
                group.state = GroupState::Stable;
                for member in group.members.values_mut() {
                    member.last_heartbeat_ms = now_ms;
                }
            }
        }
        self.next_expiry_check_ms = Some(now_ms + self.config.offsets_retention_check_interval_ms);
    }

    /// Takes the next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Handles one call; its [`Reply`] comes out of [`GroupCoordinator::poll_output`], now or
    /// after later inputs.
    pub fn handle_call(&mut self, now_ms: i64, call_id: CallId, call: Call) {
        assert!(self.loaded, "finish_load before the first call");
        match call {
            Call::Join(request) => self.join(now_ms, call_id, request),
            Call::Sync(request) => self.sync(now_ms, call_id, request),
            Call::Heartbeat(member) => {
                let result = self.heartbeat(now_ms, &member);
                self.reply(call_id, Reply::Heartbeat(result));
            }
            Call::Leave { group_id, members } => self.leave(now_ms, call_id, &group_id, members),
            Call::Commit(request) => self.commit(now_ms, call_id, request),
            Call::TxnCommit(request) => self.txn_commit(now_ms, call_id, request),
            Call::TxnCompleted {
                producer_id,
                commit,
            } => {
                self.txn_completed(producer_id, commit);
                self.reply(call_id, Reply::TxnCompleted(None));
            }
            Call::FetchOffsets {
                group_id,
                partitions,
            } => {
                let reply = self.fetch_offsets(&group_id, partitions);
                self.reply(call_id, reply);
            }
            Call::Describe { group_id } => {
                let description = self.describe(&group_id);
                self.reply(call_id, Reply::Describe(description));
            }
            Call::List { states } => {
                let listing = self.list(&states);
                self.reply(call_id, Reply::List(None, listing));
            }
            Call::Delete { group_id } => self.delete(call_id, &group_id),
            Call::DeleteOffsets {
                group_id,
                partitions,
            } => self.delete_offsets(call_id, &group_id, partitions),
        }
    }

    /// Reports the result of an [`Output::Append`].
    pub fn append_completed(
        &mut self,
        now_ms: i64,
        id: AppendId,
        result: Result<(), ResponseError>,
    ) {
        let purpose = self
            .appends
            .remove(&id)
            .expect("append_completed for an append the coordinator asked for");
        match purpose {
            AppendPurpose::Commit {
                call,
                group_id,
                accepted,
                mut results,
            } => {
                let mut group = self.groups.get_mut(&group_id);
                for (index, key, value) in accepted {
                    // Still pending unless the offset or the group was deleted meanwhile: then
                    // the deletion's tombstone follows this commit in the log, and memory
                    // must not bring the offset back.
                    let still_pending = group.as_deref_mut().is_some_and(|group| {
                        let pending = group.pending_commits.get_mut(&key);
                        let found = pending.is_some_and(|ids| ids.remove(&id));
                        if group
                            .pending_commits
                            .get(&key)
                            .is_some_and(BTreeSet::is_empty)
                        {
                            group.pending_commits.remove(&key);
                        }
                        found
                    });
                    if result.is_ok() {
                        // Written after any transactional offset of the key pending now,
                        // deleted since or not (a replay of the log sees the record too).
                        self.txn_offsets.overtaken(&group_id, &key);
                    }
                    match result {
                        Ok(()) if still_pending => {
                            if let Some(group) = group.as_deref_mut() {
                                group.offsets.insert(key, value);
                            }
                        }
                        Ok(()) => {}
                        Err(error) => results[index] = Some(commit_error(error)),
                    }
                }
                self.reply(call, Reply::Commit(results));
            }
            AppendPurpose::TxnCommit {
                call,
                group_id,
                batch,
                accepted,
                mut results,
            } => {
                let producer_id = batch.producer_id;
                if result.is_err_and(refused_before_append) {
                    self.txn_offsets.unwritten(batch, accepted.len());
                }
                for (index, key, value) in accepted {
                    match result {
                        Ok(()) => self.txn_offsets.add(producer_id, &group_id, key, value),
                        Err(error) => results[index] = Some(txn_commit_error(error)),
                    }
                }
                self.reply(call, Reply::Commit(results));
            }
            AppendPurpose::Assignment {
                group_id,
                generation_id,
            } => {
                let Some(group) = self.groups.get_mut(&group_id) else {
                    return;
                };
                if group.generation_id != generation_id
                    || !group.is(GroupState::CompletingRebalance)
                {
                    return;
                }
                group.assignment_in_flight = false;
                match result {
                    Ok(()) => {
                        group.transition(GroupState::Stable, now_ms);
                        let ready: Vec<(CallId, SyncResponse)> = group
                            .members
                            .values_mut()
                            .filter_map(|member| {
                                let call = member.awaiting_sync.take()?;
                                Some((
                                    call,
                                    sync_answer(&group.protocol_type, &group.protocol_name, member),
                                ))
                            })
                            .collect();
                        for (call, response) in ready {
                            self.reply(call, Reply::Sync(response));
                        }
                    }
                    Err(error) => {
                        self.reset_assignments(&group_id, store_error(error));
                        self.prepare_rebalance(&group_id, now_ms);
                    }
                }
            }
            AppendPurpose::Delete { call, group_id } => {
                if self
                    .groups
                    .get(&group_id)
                    .is_some_and(|group| group.is(GroupState::Dead))
                {
                    self.groups.remove(&group_id);
                }
                let error = result.err().map(commit_error);
                self.reply(call, Reply::Delete(error));
            }
            AppendPurpose::StaticReplace {
                call,
                group_id,
                instance,
                old_id,
                new_id,
                response,
            } => match result {
                Ok(()) => self.reply(call, Reply::Join(*response)),
                Err(error) => {
                    // Kafka's revert: the old incarnation keeps the instance, the caller retries.
                    if let Some(group) = self.groups.get_mut(&group_id) {
                        if group.static_member_id(&instance) == Some(&new_id) {
                            if let Some(mut member) = group.members.remove(&new_id) {
                                member.member_id = old_id.clone();
                                group.members.insert(old_id.clone(), member);
                            }
                            group.static_members.insert(instance, old_id.clone());
                            if group.leader_id.as_deref() == Some(new_id.as_str()) {
                                group.leader_id = Some(old_id.clone());
                            }
                            if group.pending_sync.remove(&new_id) {
                                group.pending_sync.insert(old_id);
                            }
                        }
                    }
                    let error = store_error(error);
                    self.reply(call, Reply::Join(join_error(error, &new_id)));
                }
            },
            AppendPurpose::DeleteOffsets { call, mut results } => {
                if let Err(error) = result {
                    for result in results.iter_mut().filter(|result| result.is_none()) {
                        *result = Some(commit_error(error));
                    }
                }
                self.reply(call, Reply::DeleteOffsets(None, results));
            }
            AppendPurpose::Background => {}
        }
    }

    /// The earliest time at which [`GroupCoordinator::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<i64> {
        let mut earliest = self.next_expiry_check_ms;
        let mut consider = |deadline: i64| {
            earliest = Some(earliest.map_or(deadline, |current| current.min(deadline)));
        };
        for group in self.groups.values() {
            if let Some(deadline) = group.join_deadline_ms {
                consider(deadline);
            }
            if let (Some(deadline), false) = (group.sync_deadline_ms, group.pending_sync.is_empty())
            {
                consider(deadline);
            }
            for deadline in group.pending_members.values() {
                consider(*deadline);
            }
            for member in group.members.values() {
                if let Some(deadline) = session_deadline(member) {
                    consider(deadline);
                }
            }
        }
        earliest
    }

    /// Acts on every deadline that has passed: evicts silent members, ends join and sync
    /// phases, expires offsets.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for group_id in ids {
            let Some(group) = self.groups.get_mut(&group_id) else {
                continue;
            };
            let expired_pending: Vec<String> = group
                .pending_members
                .iter()
                .filter(|(_, deadline)| **deadline <= now_ms)
                .map(|(member_id, _)| member_id.clone())
                .collect();
            for member_id in &expired_pending {
                group.pending_members.remove(member_id);
            }
            let silent: Vec<String> = group
                .members
                .values()
                .filter(|member| {
                    session_deadline(member).is_some_and(|deadline| deadline <= now_ms)
                })
                .map(|member| member.member_id.clone())
                .collect();
            let sync_expired: Vec<String> = match group.sync_deadline_ms {
                Some(deadline)
                    if deadline <= now_ms
                        && (group.is(GroupState::CompletingRebalance)
                            || group.is(GroupState::Stable)) =>
                {
                    group.sync_deadline_ms = None;
                    std::mem::take(&mut group.pending_sync)
                        .into_iter()
                        .collect()
                }
                _ => Vec::new(),
            };
            for member_id in silent.iter().chain(&sync_expired) {
                self.remove_member(&group_id, member_id, now_ms);
            }
            let group = &self.groups[&group_id];
            let join_over = group.is(GroupState::PreparingRebalance)
                && group
                    .join_deadline_ms
                    .is_some_and(|deadline| deadline <= now_ms);
            if join_over {
                self.complete_join(&group_id, now_ms);
            } else if !expired_pending.is_empty() {
                self.maybe_complete_join(&group_id, now_ms);
            }
        }
        if self
            .next_expiry_check_ms
            .is_some_and(|check| check <= now_ms)
        {
            self.expire_offsets(now_ms);
            self.next_expiry_check_ms =
                Some(now_ms + self.config.offsets_retention_check_interval_ms);
        }
    }

    fn reply(&mut self, call: CallId, reply: Reply) {
        self.outputs.push_back(Output::Reply(call, reply));
    }

    fn append(&mut self, records: Vec<OffsetsRecord>, purpose: AppendPurpose) -> AppendId {
        assert!(!records.is_empty());
        let id = self.next_append_id;
        self.next_append_id += 1;
        self.appends.insert(id, purpose);
        self.outputs.push_back(Output::Append {
            id,
            records,
            transaction: None,
        });
        id
    }

    fn store_group(&mut self, group_id: &str, purpose: AppendPurpose) {
        let group = &self.groups[group_id];
        let record = OffsetsRecord::Group {
            group_id: group_id.to_owned(),
            value: Some(group.stored()),
        };
        self.append(vec![record], purpose);
    }

    // ---- JoinGroup ----

    fn join(&mut self, now_ms: i64, call: CallId, request: JoinRequest) {
        let fail = |this: &mut Self, error| {
            this.reply(call, Reply::Join(join_error(error, &request.member_id)));
        };
        if request.group_id.is_empty() || !fits_a_record(&request.group_id) {
            return fail(self, ResponseError::InvalidGroupId);
        }
        let strings = [&request.protocol_type]
            .into_iter()
            .chain(request.group_instance_id.as_ref())
            .chain(request.protocols.iter().map(|(name, _)| name));
        if !strings.into_iter().all(|text| fits_a_record(text)) {
            return fail(self, ResponseError::InvalidRequest);
        }
        if request.session_timeout_ms < self.config.group_min_session_timeout_ms
            || request.session_timeout_ms > self.config.group_max_session_timeout_ms
        {
            return fail(self, ResponseError::InvalidSessionTimeout);
        }
        if !self.groups.contains_key(&request.group_id) {
            if !request.member_id.is_empty() {
                return fail(self, ResponseError::UnknownMemberId);
            }
            if request.protocol_type.is_empty() || request.protocols.is_empty() {
                return fail(self, ResponseError::InconsistentGroupProtocol);
            }
            self.groups.insert(
                request.group_id.clone(),
                Group::new(&request.group_id, now_ms),
            );
        }
        let group = &self.groups[&request.group_id];
        if group.is(GroupState::Dead) {
            return fail(self, ResponseError::CoordinatorNotAvailable);
        }
        if !group.supports(
            &request.protocol_type,
            &request.protocols,
            &request.member_id,
        ) {
            return fail(self, ResponseError::InconsistentGroupProtocol);
        }
        let is_new_member =
            request.member_id.is_empty() || group.pending_members.contains_key(&request.member_id);
        let replaces_static = request
            .group_instance_id
            .as_deref()
            .is_some_and(|instance| group.static_member_id(instance).is_some());
        if is_new_member && !replaces_static && group.members.len() >= self.config.group_max_size {
            return fail(self, ResponseError::GroupMaxSizeReached);
        }
        if request.member_id.is_empty() {
            self.join_unknown_member(now_ms, call, request);
        } else {
            self.join_known_member(now_ms, call, request);
        }
    }

    fn join_unknown_member(&mut self, now_ms: i64, call: CallId, request: JoinRequest) {
        let member_id = request.new_member_id.clone();
        assert!(!member_id.is_empty(), "the driver supplies a new member id");
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        if let Some(instance) = &request.group_instance_id {
            if let Some(old_id) = group.static_member_id(instance).cloned() {
                return self.replace_static_member(now_ms, call, request, old_id, member_id);
            }
        } else if request.require_known_member_id {
            let deadline = now_ms + i64::from(request.session_timeout_ms);
            group.pending_members.insert(member_id.clone(), deadline);
            return self.reply(
                call,
                Reply::Join(join_error(ResponseError::MemberIdRequired, &member_id)),
            );
        }
        self.add_member_and_rebalance(now_ms, call, &request, member_id);
    }

    fn join_known_member(&mut self, now_ms: i64, call: CallId, request: JoinRequest) {
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        let member_id = request.member_id.clone();
        if group.pending_members.remove(&member_id).is_some() {
            return self.add_member_and_rebalance(now_ms, call, &request, member_id);
        }
        if group.is_fenced(&member_id, request.group_instance_id.as_deref()) {
            return self.reply(
                call,
                Reply::Join(join_error(ResponseError::FencedInstanceId, &member_id)),
            );
        }
        let instance_unknown = request
            .group_instance_id
            .as_deref()
            .is_some_and(|instance| group.static_member_id(instance).is_none());
        let member = group.members.get(&member_id).filter(|_| !instance_unknown);
        let Some(member) = member else {
            return self.reply(
                call,
                Reply::Join(join_error(ResponseError::UnknownMemberId, &member_id)),
            );
        };
        let same_metadata = member.protocols == request.protocols;
        let is_leader = group.leader_id.as_deref() == Some(member_id.as_str());
        match group.state {
            GroupState::PreparingRebalance => {
                self.update_member(now_ms, call, &request);
                self.maybe_complete_join(&request.group_id, now_ms);
            }
            GroupState::CompletingRebalance if same_metadata => {
                // It lost the JoinGroup answer: give it again.
                let response = current_generation(group, &member_id, is_leader);
                self.reply(call, Reply::Join(response));
            }
            GroupState::Stable if same_metadata && !is_leader => {
                let response = current_generation(group, &member_id, false);
                self.reply(call, Reply::Join(response));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member(now_ms, call, &request);
                self.prepare_rebalance(&request.group_id, now_ms);
            }
            GroupState::Empty => self.reply(
                call,
                Reply::Join(join_error(ResponseError::UnknownMemberId, &member_id)),
            ),
            GroupState::Dead => self.reply(
                call,
                Reply::Join(join_error(
                    ResponseError::CoordinatorNotAvailable,
                    &member_id,
                )),
            ),
        }
    }

    fn update_member(&mut self, now_ms: i64, call: CallId, request: &JoinRequest) {
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        let member = group.members.get_mut(&request.member_id).expect("checked");
        member.protocols = request.protocols.clone();
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.last_heartbeat_ms = now_ms;
        let replaced = member.awaiting_join.replace(call);
        if let Some(replaced) = replaced {
            let member_id = request.member_id.clone();
            self.reply(
                replaced,
                Reply::Join(join_error(ResponseError::RebalanceInProgress, &member_id)),
            );
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        now_ms: i64,
        call: CallId,
        request: &JoinRequest,
        member_id: String,
    ) {
        let delay = self.config.group_initial_rebalance_delay_ms;
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        if group.members.is_empty() {
            group.protocol_type = Some(request.protocol_type.clone());
        }
        if let Some(instance) = &request.group_instance_id {
            group
                .static_members
                .insert(instance.clone(), member_id.clone());
        }
        if group.leader_id.is_none() {
            group.leader_id = Some(member_id.clone());
        }
        group.members.insert(
            member_id.clone(),
            Member {
                member_id,
                group_instance_id: request.group_instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                session_timeout_ms: request.session_timeout_ms,
                protocol_type: request.protocol_type.clone(),
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                awaiting_join: Some(call),
                awaiting_sync: None,
                last_heartbeat_ms: now_ms,
                is_new: true,
            },
        );
        if group.is(GroupState::PreparingRebalance) {
            if let Some(limit) = group.initial_join_limit_ms {
                // A member joined during the initial delay: wait a little longer for more.
                group.join_deadline_ms = Some((now_ms + delay).min(limit));
            }
            self.maybe_complete_join(&request.group_id, now_ms);
        } else {
            self.prepare_rebalance(&request.group_id, now_ms);
        }
    }

    fn replace_static_member(
        &mut self,
        now_ms: i64,
        call: CallId,
        request: JoinRequest,
        old_id: String,
        new_id: String,
    ) {
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        let previous_leader = group.leader_id.clone().unwrap_or_default();
        let mut member = group
            .members
            .remove(&old_id)
            .expect("static members are members");
        let mut fenced = Vec::new();
        fenced.extend(member.awaiting_join.take().map(|call| {
            (
                call,
                Reply::Join(join_error(ResponseError::FencedInstanceId, &old_id)),
            )
        }));
        fenced.extend(member.awaiting_sync.take().map(|call| {
            (
                call,
                Reply::Sync(SyncResponse {
                    error: Some(ResponseError::FencedInstanceId),
                    ..SyncResponse::default()
                }),
            )
        }));
        member.member_id = new_id.clone();
        member.protocols = request.protocols.clone();
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.last_heartbeat_ms = now_ms;
        group.members.insert(new_id.clone(), member);
        let instance = request.group_instance_id.clone().expect("static");
        group.static_members.insert(instance, new_id.clone());
        if group.leader_id.as_deref() == Some(old_id.as_str()) {
            group.leader_id = Some(new_id.clone());
        }
        if group.pending_sync.remove(&old_id) {
            group.pending_sync.insert(new_id.clone());
        }
        for (call, reply) in fenced {
            self.reply(call, reply);
        }
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        match group.state {
            GroupState::Stable if group.select_protocol() == group.protocol_name => {
                // Same assignor: the restarted member keeps its partitions, no rebalance. As
                // Kafka, the answer names the previous leader id, so that a restarted leader
                // does not take itself for the leader and compute an assignment a Stable group
                // would not pass on (JoinGroup v9 says so with skip_assignment).
                let is_leader = group.leader_id.as_deref() == Some(new_id.as_str());
                let mut response = current_generation(group, &new_id, is_leader);
                response.skip_assignment = is_leader;
                response.leader = previous_leader;
                let purpose = AppendPurpose::StaticReplace {
                    call,
                    group_id: request.group_id.clone(),
                    instance: request.group_instance_id.clone().expect("static"),
                    old_id,
                    new_id,
                    response: Box::new(response),
                };
                self.store_group(&request.group_id, purpose);
            }
            GroupState::PreparingRebalance => {
                group
                    .members
                    .get_mut(&new_id)
                    .expect("inserted")
                    .awaiting_join = Some(call);
                self.maybe_complete_join(&request.group_id, now_ms);
            }
            GroupState::Stable | GroupState::CompletingRebalance => {
                group
                    .members
                    .get_mut(&new_id)
                    .expect("inserted")
                    .awaiting_join = Some(call);
                self.prepare_rebalance(&request.group_id, now_ms);
            }
            GroupState::Empty | GroupState::Dead => {
                unreachable!("a group with a static member is neither Empty nor Dead")
            }
        }
    }

    fn prepare_rebalance(&mut self, group_id: &str, now_ms: i64) {
        if self.groups[group_id].is(GroupState::CompletingRebalance) {
            self.reset_assignments(group_id, ResponseError::RebalanceInProgress);
        }
        let delay = self.config.group_initial_rebalance_delay_ms;
        let group = self.groups.get_mut(group_id).expect("exists");
        let timeout = group.rebalance_timeout_ms();
        if group.is(GroupState::Empty) && delay > 0 {
            group.initial_join_limit_ms = Some(now_ms + timeout.max(delay));
            group.join_deadline_ms = Some(now_ms + delay);
        } else {
            group.initial_join_limit_ms = None;
            group.join_deadline_ms = Some(now_ms + timeout);
        }
        group.pending_sync.clear();
        group.sync_deadline_ms = None;
        group.transition(GroupState::PreparingRebalance, now_ms);
        self.maybe_complete_join(group_id, now_ms);
    }

    /// Answers every SyncGroup waiting in CompletingRebalance with `error` and forgets the
    /// assignments.
    fn reset_assignments(&mut self, group_id: &str, error: ResponseError) {
        let group = self.groups.get_mut(group_id).expect("exists");
        group.assignment_in_flight = false;
        let mut waiting = Vec::new();
        for member in group.members.values_mut() {
            member.assignment = Bytes::new();
            if let Some(call) = member.awaiting_sync.take() {
                waiting.push(call);
            }
        }
        for call in waiting {
            self.reply(
                call,
                Reply::Sync(SyncResponse {
                    error: Some(error),
                    ..SyncResponse::default()
                }),
            );
        }
    }

    fn maybe_complete_join(&mut self, group_id: &str, now_ms: i64) {
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        if group.is(GroupState::PreparingRebalance)
            && group.initial_join_limit_ms.is_none()
            && group.all_members_joined()
        {
            self.complete_join(group_id, now_ms);
        }
    }

    /// Ends the join phase: drops dynamic members that did not rejoin, starts the next
    /// generation and answers every waiting JoinGroup.
    fn complete_join(&mut self, group_id: &str, now_ms: i64) {
        let group = self.groups.get_mut(group_id).expect("exists");
        assert!(group.is(GroupState::PreparingRebalance));
        group.join_deadline_ms = None;
        group.initial_join_limit_ms = None;
        let gone: Vec<String> = group
            .members
            .values()
            .filter(|member| member.awaiting_join.is_none() && member.group_instance_id.is_none())
            .map(|member| member.member_id.clone())
            .collect();
        for member_id in &gone {
            group.members.remove(member_id);
        }
        let group = self.groups.get_mut(group_id).expect("exists");
        let leader_rejoined = group
            .leader_id
            .as_ref()
            .and_then(|leader| group.members.get(leader))
            .is_some_and(|leader| leader.awaiting_join.is_some());
        if !leader_rejoined {
            group.leader_id = group
                .members
                .values()
                .find(|member| member.awaiting_join.is_some())
                .map(|member| member.member_id.clone());
        }
        if group.leader_id.is_none() && !group.members.is_empty() {
            // Only static members that have not rejoined are left: wait for them, or for
            // their sessions to end.
            group.join_deadline_ms = Some(now_ms + group.rebalance_timeout_ms());
            return;
        }
        group.generation_id += 1;
        if group.members.is_empty() {
            group.protocol_name = None;
            group.transition(GroupState::Empty, now_ms);
            self.store_group(group_id, AppendPurpose::Background);
            return;
        }
        group.protocol_name = group.select_protocol();
        group.transition(GroupState::CompletingRebalance, now_ms);
        let leader = group.leader_id.clone().expect("elected");
        let members = group.joined_members();
        let mut answers = Vec::new();
        for member in group.members.values_mut() {
            member.is_new = false;
            member.last_heartbeat_ms = now_ms;
            if let Some(call) = member.awaiting_join.take() {
                let is_leader = member.member_id == leader;
                answers.push((
                    call,
                    JoinResponse {
                        error: None,
                        generation_id: group.generation_id,
                        protocol_type: group.protocol_type.clone(),
                        protocol_name: group.protocol_name.clone(),
                        leader: leader.clone(),
                        skip_assignment: false,
                        member_id: member.member_id.clone(),
                        members: if is_leader {
                            members.clone()
                        } else {
                            Vec::new()
                        },
                    },
                ));
            }
        }
        group.pending_sync = group.members.keys().cloned().collect();
        group.sync_deadline_ms = Some(now_ms + group.rebalance_timeout_ms());
        for (call, response) in answers {
            self.reply(call, Reply::Join(response));
        }
    }

    /// Removes a member (left, evicted or never synced) and rebalances the rest.
    fn remove_member(&mut self, group_id: &str, member_id: &str, now_ms: i64) {
        let group = self.groups.get_mut(group_id).expect("exists");
        let Some(member) = group.members.remove(member_id) else {
            return;
        };
        if let Some(instance) = &member.group_instance_id {
            if group.static_member_id(instance).map(String::as_str) == Some(member_id) {
                group.static_members.remove(instance);
            }
        }
        group.pending_sync.remove(member_id);
        if group.leader_id.as_deref() == Some(member_id) {
            group.leader_id = group.members.keys().next().cloned();
        }
        if let Some(call) = member.awaiting_join {
            self.reply(
                call,
                Reply::Join(join_error(ResponseError::UnknownMemberId, member_id)),
            );
        }
        if let Some(call) = member.awaiting_sync {
            self.reply(
                call,
                Reply::Sync(SyncResponse {
                    error: Some(ResponseError::UnknownMemberId),
                    ..SyncResponse::default()
                }),
            );
        }
        match self.groups[group_id].state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(group_id, now_ms)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(group_id, now_ms),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    // ---- SyncGroup, Heartbeat, LeaveGroup ----

    /// The member a request names, after the checks every member request goes through.
    fn check_member(&self, who: &MemberRef) -> Result<&Group, ResponseError> {
        let group = self
            .groups
            .get(&who.group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if group.is(GroupState::Dead) {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if group.is_fenced(&who.member_id, who.group_instance_id.as_deref()) {
            return Err(ResponseError::FencedInstanceId);
        }
        if !group.members.contains_key(&who.member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if who.generation_id != group.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(group)
    }

    fn sync(&mut self, now_ms: i64, call: CallId, request: SyncRequest) {
        let who = &request.member;
        let checked = self.check_member(who).and_then(|group| {
            let mismatch = |given: &Option<String>, current: &Option<String>| {
                given.is_some() && given != current
            };
            if mismatch(&request.protocol_type, &group.protocol_type)
                || mismatch(&request.protocol_name, &group.protocol_name)
            {
                return Err(ResponseError::InconsistentGroupProtocol);
            }
            match group.state {
                GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
                GroupState::Empty => Err(ResponseError::UnknownMemberId),
                GroupState::Dead => Err(ResponseError::CoordinatorNotAvailable),
                GroupState::CompletingRebalance | GroupState::Stable => Ok(group.state),
            }
        });
        let state = match checked {
            Ok(state) => state,
            Err(error) => {
                return self.reply(
                    call,
                    Reply::Sync(SyncResponse {
                        error: Some(error),
                        ..SyncResponse::default()
                    }),
                )
            }
        };
        let group = self.groups.get_mut(&who.group_id).expect("checked");
        group.pending_sync.remove(&who.member_id);
        if group.pending_sync.is_empty() {
            group.sync_deadline_ms = None;
        }
        let member = group.members.get_mut(&who.member_id).expect("checked");
        member.last_heartbeat_ms = now_ms;
        if state == GroupState::Stable {
            let response = sync_answer(&group.protocol_type, &group.protocol_name, member);
            return self.reply(call, Reply::Sync(response));
        }
        if let Some(replaced) = member.awaiting_sync.replace(call) {
            self.reply(
                replaced,
                Reply::Sync(SyncResponse {
                    error: Some(ResponseError::RebalanceInProgress),
                    ..SyncResponse::default()
                }),
            );
        }
        let group = self.groups.get_mut(&who.group_id).expect("checked");
        let is_leader = group.leader_id.as_deref() == Some(who.member_id.as_str());
        if is_leader && !group.assignment_in_flight {
            let assignments: BTreeMap<&String, &Bytes> = request
                .assignments
                .iter()
                .map(|(member_id, assignment)| (member_id, assignment))
                .collect();
            for member in group.members.values_mut() {
                member.assignment = assignments
                    .get(&member.member_id)
                    .map(|assignment| (*assignment).clone())
                    .unwrap_or_default();
            }
            group.assignment_in_flight = true;
            let purpose = AppendPurpose::Assignment {
                group_id: who.group_id.clone(),
                generation_id: group.generation_id,
            };
            self.store_group(&who.group_id.clone(), purpose);
        }
    }

    fn heartbeat(&mut self, now_ms: i64, who: &MemberRef) -> ErrorCode {
        let state = match self.check_member(who) {
            Ok(group) => group.state,
            Err(error) => return Some(error),
        };
        let group = self.groups.get_mut(&who.group_id).expect("checked");
        group
            .members
            .get_mut(&who.member_id)
            .expect("checked")
            .last_heartbeat_ms = now_ms;
        match state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => None,
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            GroupState::Dead => Some(ResponseError::CoordinatorNotAvailable),
        }
    }

    fn leave(
        &mut self,
        now_ms: i64,
        call: CallId,
        group_id: &str,
        members: Vec<(String, Option<String>)>,
    ) {
        let Some(group) = self.groups.get(group_id) else {
            let errors = vec![Some(ResponseError::UnknownMemberId); members.len()];
            return self.reply(call, Reply::Leave(None, errors));
        };
        if group.is(GroupState::Dead) {
            return self.reply(
                call,
                Reply::Leave(Some(ResponseError::CoordinatorNotAvailable), Vec::new()),
            );
        }
        let mut errors = Vec::with_capacity(members.len());
        for (member_id, instance) in members {
            // Kafka's rules (GroupCoordinator.handleLeaveGroup): a known member id that is not
            // the instance's registered one is fenced; otherwise the instance's registered
            // member leaves, or else the member named.
            let group = self.groups.get_mut(group_id).expect("exists");
            let registered = instance
                .as_deref()
                .and_then(|instance| group.static_member_id(instance))
                .cloned();
            let error = if !member_id.is_empty() && group.is_fenced(&member_id, instance.as_deref())
            {
                Some(ResponseError::FencedInstanceId)
            } else if group.pending_members.remove(&member_id).is_some() {
                self.maybe_complete_join(group_id, now_ms);
                None
            } else if let Some(leaving) = registered.or_else(|| {
                group
                    .members
                    .contains_key(&member_id)
                    .then(|| member_id.clone())
            }) {
                self.remove_member(group_id, &leaving, now_ms);
                None
            } else {
                Some(ResponseError::UnknownMemberId)
            };
            errors.push(error);
        }
        self.reply(call, Reply::Leave(None, errors));
    }

    // ---- Offsets ----

    fn commit(&mut self, now_ms: i64, call: CallId, request: CommitRequest) {
        let who = &request.member;
        let count = request.offsets.len();
        if let Err(error) = self.check_commit(who, now_ms, false) {
            return self.reply(call, Reply::Commit(vec![Some(error); count]));
        }
        let mut results = vec![None; count];
        let mut accepted = Vec::new();
        let mut records = Vec::new();
        for (index, (topic, partition, offset, leader_epoch, metadata)) in
            request.offsets.into_iter().enumerate()
        {
            let metadata = metadata.unwrap_or_default();
            if metadata.len() > self.config.offset_metadata_max_bytes {
                results[index] = Some(ResponseError::OffsetMetadataTooLarge);
                continue;
            }
            let value = CommittedOffset {
                offset,
                leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
                // OffsetCommit v2-v4 may give a retention of their own (KIP-211 kept it).
                expire_timestamp_ms: (request.retention_ms >= 0)
                    .then(|| now_ms.saturating_add(request.retention_ms)),
            };
            records.push(OffsetsRecord::Offset {
                group_id: who.group_id.clone(),
                topic: topic.clone(),
                partition,
                value: Some(value.clone()),
            });
            accepted.push((index, (topic, partition), value));
        }
        if records.is_empty() {
            return self.reply(call, Reply::Commit(results));
        }
        let id = self.next_append_id;
        let group = self.groups.get_mut(&who.group_id).expect("checked");
        for (_, key, _) in &accepted {
            group
                .pending_commits
                .entry(key.clone())
                .or_default()
                .insert(id);
        }
        let purpose = AppendPurpose::Commit {
            call,
            group_id: who.group_id.clone(),
            accepted,
            results,
        };
        let appended = self.append(records, purpose);
        assert_eq!(appended, id);
    }

    /// TxnOffsetCommit: the member is checked as for OffsetCommit, and the offsets go to the
    /// partition in a transactional batch of the producer (which the partition refuses from
    /// a fenced epoch); they stay pending until the transaction's marker.
    fn txn_commit(&mut self, now_ms: i64, call: CallId, request: TxnCommitRequest) {
        let who = &request.member;
        let count = request.offsets.len();
        if let Err(error) = self.check_commit(who, now_ms, true) {
            return self.reply(call, Reply::Commit(vec![Some(error); count]));
        }
        let mut results = vec![None; count];
        let mut accepted = Vec::new();
        let mut records = Vec::new();
        for (index, (topic, partition, offset, leader_epoch, metadata)) in
            request.offsets.into_iter().enumerate()
        {
            let metadata = metadata.unwrap_or_default();
            if metadata.len() > self.config.offset_metadata_max_bytes {
                results[index] = Some(ResponseError::OffsetMetadataTooLarge);
                continue;
            }
            let value = CommittedOffset {
                offset,
                leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
                expire_timestamp_ms: None,
            };
            records.push(OffsetsRecord::Offset {
                group_id: who.group_id.clone(),
                topic: topic.clone(),
                partition,
                value: Some(value.clone()),
            });
            accepted.push((index, (topic, partition), value));
        }
        if records.is_empty() {
            return self.reply(call, Reply::Commit(results));
        }
        let transaction =
            self.txn_offsets
                .next_batch(request.producer_id, request.producer_epoch, records.len());
        debug_assert_eq!(records.len(), accepted.len());
        let id = self.next_append_id;
        self.next_append_id += 1;
        self.appends.insert(
            id,
            AppendPurpose::TxnCommit {
                call,
                group_id: who.group_id.clone(),
                batch: transaction,
                accepted,
                results,
            },
        );
        self.outputs.push_back(Output::Append {
            id,
            records,
            transaction: Some(transaction),
        });
    }

    /// A marker of `producer_id` reached the partition: its pending offsets become committed,
    /// or are dropped.
    fn txn_completed(&mut self, producer_id: i64, commit: bool) {
        let completed = self.txn_offsets.complete(producer_id);
        if !commit {
            return;
        }
        for (group_id, offsets) in completed {
            let Some(group) = self.groups.get_mut(&group_id) else {
                continue;
            };
            if group.is(GroupState::Dead) {
                continue;
            }
            group.offsets.extend(offsets);
        }
    }

    /// Replays a transactional batch of offsets (TxnOffsetCommit's), pending until the
    /// producer's marker: `records` are its records, `batch` its producer fields, and
    /// `offsets_spanned` the offsets (and so sequences) it took when written, which
    /// compaction may since have thinned to fewer records.
    pub fn load_transactional(
        &mut self,
        batch: TxnBatch,
        offsets_spanned: usize,
        records: Vec<OffsetsRecord>,
    ) {
        assert!(!self.loaded, "records are replayed before the first call");
        self.txn_offsets.load_batch(batch, offsets_spanned);
        for record in records {
            if let OffsetsRecord::Offset {
                group_id,
                topic,
                partition,
                value: Some(value),
            } = record
            {
                self.groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(&group_id, value.commit_timestamp_ms));
                self.txn_offsets
                    .add(batch.producer_id, &group_id, (topic, partition), value);
            }
        }
    }

    /// Replays a transaction marker of `producer_id`.
    pub fn load_marker(&mut self, producer_id: i64, commit: bool) {
        assert!(!self.loaded, "records are replayed before the first call");
        self.txn_completed(producer_id, commit);
    }

    /// Kafka's rules for who may commit; creates the group for a consumer without one. A
    /// transactional commit without member and generation (before KIP-447) is accepted
    /// whatever the group's state, as Kafka accepts it.
    fn check_commit(
        &mut self,
        who: &MemberRef,
        now_ms: i64,
        transactional: bool,
    ) -> Result<(), ResponseError> {
        let managed =
            who.generation_id >= 0 || !who.member_id.is_empty() || who.group_instance_id.is_some();
        let Some(group) = self.groups.get(&who.group_id) else {
            // Kafka: a commit naming a generation for a group that does not exist comes from
            // an older generation; one naming a member of it, from a member it does not know.
            if who.generation_id >= 0 {
                return Err(ResponseError::IllegalGeneration);
            }
            if managed {
                return Err(ResponseError::UnknownMemberId);
            }
            // An empty group id is allowed for commits, as in Kafka.
            if !fits_a_record(&who.group_id) {
                return Err(ResponseError::InvalidGroupId);
            }
            self.groups
                .insert(who.group_id.clone(), Group::new(&who.group_id, now_ms));
            return Ok(());
        };
        if group.is(GroupState::Dead) {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if managed {
            if !mutated!(StaleGenerationCommit) {
                self.check_member(who)?;
            }
        } else if !group.is(GroupState::Empty) && !transactional {
            // A consumer without a group may commit only while no group uses the id.
            return Err(ResponseError::UnknownMemberId);
        }
        let group = self.groups.get_mut(&who.group_id).expect("exists");
        if group.is(GroupState::CompletingRebalance) {
            return Err(ResponseError::RebalanceInProgress);
        }
        if let Some(member) = group.members.get_mut(&who.member_id) {
            member.last_heartbeat_ms = now_ms;
        }
        Ok(())
    }

    fn fetch_offsets(&self, group_id: &str, partitions: Option<Vec<(String, i32)>>) -> Reply {
        let group = self
            .groups
            .get(group_id)
            .filter(|group| !group.is(GroupState::Dead));
        let fetched = |(topic, partition): (String, i32)| {
            let stored = group.and_then(|group| group.offsets.get(&(topic.clone(), partition)));
            let pending_transaction = self
                .txn_offsets
                .is_pending(group_id, &(topic.clone(), partition));
            FetchedOffset {
                offset: stored.map_or(-1, |stored| stored.offset),
                leader_epoch: stored.map_or(-1, |stored| stored.leader_epoch),
                metadata: stored
                    .map(|stored| stored.metadata.clone())
                    .unwrap_or_default(),
                topic,
                partition,
                pending_transaction,
            }
        };
        let offsets = match partitions {
            Some(partitions) => partitions.into_iter().map(fetched).collect(),
            None => group
                .map(|group| group.offsets.keys().cloned().map(fetched).collect())
                .unwrap_or_default(),
        };
        Reply::FetchOffsets(None, offsets)
    }

    // ---- DescribeGroups, ListGroups, DeleteGroups, OffsetDelete ----

    fn describe(&self, group_id: &str) -> GroupDescription {
        let Some(group) = self.groups.get(group_id) else {
            return GroupDescription {
                error: None,
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            };
        };
        let stable = group.is(GroupState::Stable);
        let protocol = group.protocol_name.clone().unwrap_or_default();
        GroupDescription {
            error: None,
            state: group.state.name(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol_name: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: group
                .members
                .values()
                .map(|member| DescribedMember {
                    member_id: member.member_id.clone(),
                    group_instance_id: member.group_instance_id.clone(),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    metadata: if stable {
                        member.metadata(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        member.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }

    fn list(&self, states: &[String]) -> Vec<GroupListing> {
        self.groups
            .values()
            .filter(|group| !group.is(GroupState::Dead))
            .filter(|group| {
                states.is_empty()
                    || states
                        .iter()
                        .any(|state| state.eq_ignore_ascii_case(group.state.name()))
            })
            .map(|group| GroupListing {
                group_id: group.group_id.clone(),
                protocol_type: group.protocol_type.clone().unwrap_or_default(),
                state: group.state.name(),
            })
            .collect()
    }

    fn delete(&mut self, call: CallId, group_id: &str) {
        let error = match self.groups.get(group_id) {
            None => Some(ResponseError::GroupIdNotFound),
            Some(group) if group.is(GroupState::Dead) => Some(ResponseError::GroupIdNotFound),
            Some(group) if !group.is(GroupState::Empty) => Some(ResponseError::NonEmptyGroup),
            Some(_) => None,
        };
        if error.is_some() {
            return self.reply(call, Reply::Delete(error));
        }
        let group = self.groups.get_mut(group_id).expect("exists");
        // Offsets, and commits still being written (their tombstone follows them in the log).
        let keys: BTreeSet<(String, i32)> = group
            .offsets
            .keys()
            .chain(group.pending_commits.keys())
            .cloned()
            .collect();
        let mut records: Vec<OffsetsRecord> = keys
            .into_iter()
            .map(|(topic, partition)| OffsetsRecord::Offset {
                group_id: group_id.to_owned(),
                topic,
                partition,
                value: None,
            })
            .collect();
        records.push(OffsetsRecord::Group {
            group_id: group_id.to_owned(),
            value: None,
        });
        group.offsets.clear();
        group.pending_commits.clear();
        group.transition(GroupState::Dead, group.state_timestamp_ms);
        let purpose = AppendPurpose::Delete {
            call,
            group_id: group_id.to_owned(),
        };
        self.append(records, purpose);
    }

    fn delete_offsets(&mut self, call: CallId, group_id: &str, partitions: Vec<(String, i32)>) {
        let Some(group) = self
            .groups
            .get_mut(group_id)
            .filter(|group| !group.is(GroupState::Dead))
        else {
            return self.reply(
                call,
                Reply::DeleteOffsets(Some(ResponseError::GroupIdNotFound), Vec::new()),
            );
        };
        let is_consumer_group = group.protocol_type.as_deref() == Some("consumer");
        if !group.is(GroupState::Empty) && !is_consumer_group {
            return self.reply(
                call,
                Reply::DeleteOffsets(Some(ResponseError::NonEmptyGroup), Vec::new()),
            );
        }
        // `None`: a subscription that cannot be read, taken as every topic (as Kafka).
        let subscribed = if group.is(GroupState::Empty) {
            Some(BTreeSet::new())
        } else {
            subscribed_topics(group)
        };
        let mut results = Vec::with_capacity(partitions.len());
        let mut records = Vec::new();
        for (topic, partition) in partitions {
            if subscribed
                .as_ref()
                .is_none_or(|subscribed| subscribed.contains(&topic))
            {
                results.push(Some(ResponseError::GroupSubscribedToTopic));
                continue;
            }
            results.push(None);
            let key = (topic.clone(), partition);
            let pending = group.pending_commits.remove(&key).is_some();
            if group.offsets.remove(&key).is_some() || pending {
                records.push(OffsetsRecord::Offset {
                    group_id: group_id.to_owned(),
                    topic,
                    partition,
                    value: None,
                });
            }
        }
        if records.is_empty() {
            return self.reply(call, Reply::DeleteOffsets(None, results));
        }
        self.append(records, AppendPurpose::DeleteOffsets { call, results });
    }

    /// Drops offsets past `offsets.retention.ms` (Kafka's rules: an empty group's offsets once
    /// it has been empty that long; a group without members' offsets by commit time; a stable
    /// consumer group's offsets of topics it no longer reads), and the groups left with nothing.
    fn expire_offsets(&mut self, now_ms: i64) {
        let retention = self.config.offsets_retention_ms;
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for group in self.groups.values_mut() {
            // Kafka's GroupMetadata.removeExpiredOffsets: the time an offset's retention runs
            // from, and the topics whose offsets are kept whatever their age.
            // `(base, kept)`: retention runs from `base` (the commit time when `None`), and
            // the offsets of the `kept` topics stay whatever their age.
            let state_timestamp =
                (group.state_timestamp_ms >= 0).then_some(group.state_timestamp_ms);
            let rule: Option<(Option<i64>, BTreeSet<String>)> = match group.protocol_type.as_deref()
            {
                None => Some((None, BTreeSet::new())),
                Some(_) if group.is(GroupState::Empty) => Some((state_timestamp, BTreeSet::new())),
                Some("consumer") if group.is(GroupState::Stable) => {
                    subscribed_topics(group).map(|topics| (None, topics))
                }
                Some(_) => None,
            };
            let Some((base, kept_topics)) = rule else {
                continue;
            };
            let base = |offset: &CommittedOffset| base.unwrap_or(offset.commit_timestamp_ms);
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|((topic, _), _)| !kept_topics.contains(topic))
                .filter(|(key, _)| !group.pending_commits.contains_key(*key))
                .filter(|(_, offset)| match offset.expire_timestamp_ms {
                    Some(expire) => now_ms >= expire,
                    None => now_ms - base(offset) >= retention,
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                group.offsets.remove(&key);
                records.push(OffsetsRecord::Offset {
                    group_id: group.group_id.clone(),
                    topic: key.0,
                    partition: key.1,
                    value: None,
                });
            }
            if group.is(GroupState::Empty)
                && group.offsets.is_empty()
                && group.pending_commits.is_empty()
                && now_ms - group.state_timestamp_ms.max(0) >= retention
            {
                group.transition(GroupState::Dead, now_ms);
                dead.push(group.group_id.clone());
                records.push(OffsetsRecord::Group {
                    group_id: group.group_id.clone(),
                    value: None,
                });
            }
        }
        for group_id in dead {
            self.groups.remove(&group_id);
        }
        if !records.is_empty() {
            self.append(records, AppendPurpose::Background);
        }
    }
}

/// Whether `text` fits a string of a `__consumer_offsets` record (an `i16` length): flexible
/// request versions carry longer strings than the records can hold.
fn fits_a_record(text: &str) -> bool {
    text.len() <= i16::MAX as usize
}

/// When a member's session ends unless it heartbeats, or `None` while it is kept alive
/// (waiting in JoinGroup or SyncGroup).
fn session_deadline(member: &Member) -> Option<i64> {
    if member.awaiting_join.is_some() {
        return member
            .is_new
            .then_some(member.last_heartbeat_ms + NEW_MEMBER_JOIN_TIMEOUT_MS);
    }
    if member.awaiting_sync.is_some() {
        return None;
    }
    Some(member.last_heartbeat_ms + i64::from(member.session_timeout_ms))
}

/// The JoinGroup answer for the current generation, to a member that need not rebalance.
fn current_generation(group: &Group, member_id: &str, is_leader: bool) -> JoinResponse {
    JoinResponse {
        error: None,
        generation_id: group.generation_id,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        leader: group.leader_id.clone().unwrap_or_default(),
        skip_assignment: false,
        member_id: member_id.to_owned(),
        members: if is_leader {
            group.joined_members()
        } else {
            Vec::new()
        },
    }
}

fn sync_answer(
    protocol_type: &Option<String>,
    protocol_name: &Option<String>,
    member: &Member,
) -> SyncResponse {
    SyncResponse {
        error: None,
        protocol_type: protocol_type.clone(),
        protocol_name: protocol_name.clone(),
        assignment: member.assignment.clone(),
    }
}

/// The topics a consumer group's members subscribe to, from their consumer protocol metadata;
/// `None` when a subscription cannot be read (Kafka then treats the group as subscribed to
/// every topic: nothing of it is deleted or expired by topic).
fn subscribed_topics(group: &Group) -> Option<BTreeSet<String>> {
    let protocol = group.protocol_name.clone().unwrap_or_default();
    let mut topics = BTreeSet::new();
    for member in group.members.values() {
        let metadata = member.metadata(&protocol);
        // The subscription starts with its version and the topic array's count: a count the
        // bytes cannot hold (each topic takes at least two) is refused before the decoder
        // allocates for it.
        if metadata.len() < 6 {
            return None;
        }
        let version = i16::from_be_bytes([metadata[0], metadata[1]]);
        let count = i32::from_be_bytes([metadata[2], metadata[3], metadata[4], metadata[5]]);
        if !(0..=3).contains(&version) || count < 0 || count as usize > (metadata.len() - 6) / 2 {
            return None;
        }
        let mut body = metadata.slice(2..);
        let subscription = ConsumerProtocolSubscription::decode(&mut body, version).ok()?;
        topics.extend(subscription.topics.iter().map(|topic| topic.to_string()));
    }
    Some(topics)
}

/// The error a committer gets when its commit's write fails (Kafka's mapping in
/// GroupMetadataManager.storeOffsets).
/// Whether an append failed with `error` before anything was written (a refusal, not a
/// timeout or an I/O error after the write).
fn refused_before_append(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotLeaderOrFollower
            | ResponseError::NotEnoughReplicas
            | ResponseError::MessageTooLarge
            | ResponseError::RecordListTooLarge
            | ResponseError::InvalidRecord
            | ResponseError::CorruptMessage
            | ResponseError::InvalidProducerEpoch
            | ResponseError::ProducerFenced
            | ResponseError::InvalidTxnState
            | ResponseError::OutOfOrderSequenceNumber
    )
}

/// TxnOffsetCommit's error for a failed write: as OffsetCommit's, and a refusal of the
/// producer's epoch fences it.
fn txn_commit_error(error: ResponseError) -> ResponseError {
    match error {
        ResponseError::InvalidProducerEpoch => ResponseError::ProducerFenced,
        other => commit_error(other),
    }
}

fn commit_error(error: ResponseError) -> ResponseError {
    match error {
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend => ResponseError::CoordinatorNotAvailable,
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        ResponseError::MessageTooLarge
        | ResponseError::RecordListTooLarge
        | ResponseError::InvalidFetchSize => ResponseError::InvalidCommitOffsetSize,
        other => other,
    }
}

/// The error members get when the group's own record cannot be written (Kafka's mapping in
/// GroupMetadataManager.storeGroup).
fn store_error(error: ResponseError) -> ResponseError {
    match error {
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend => ResponseError::CoordinatorNotAvailable,
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        ResponseError::RequestTimedOut => ResponseError::RebalanceInProgress,
        _ => ResponseError::UnknownServerError,
    }
}
