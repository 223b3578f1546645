//! The coordinator driven through every state and transition, as its driver would.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use proptest::prelude::*;

use super::calls::*;
use super::coordinator::{AppendId, CoordinatorConfig, GroupCoordinator, Output};
use super::records::OffsetsRecord;
use super::state::GroupState;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

/// A driver with a hand-cranked clock and a log it appends to when told.
struct Harness {
    coordinator: GroupCoordinator,
    now_ms: i64,
    next_call: CallId,
    next_member: u64,
    replies: BTreeMap<CallId, Reply>,
    pending_appends: Vec<(AppendId, Vec<OffsetsRecord>)>,
    log: Vec<OffsetsRecord>,
    auto_append: bool,
}

impl Harness {
    fn new(config: CoordinatorConfig) -> Harness {
        let mut coordinator = GroupCoordinator::new(config);
        coordinator.finish_load(0);
        Harness {
            coordinator,
            now_ms: 0,
            next_call: 0,
            next_member: 0,
            replies: BTreeMap::new(),
            pending_appends: Vec::new(),
            log: Vec::new(),
            auto_append: true,
        }
    }

    fn without_delay() -> Harness {
        Harness::new(CoordinatorConfig {
            group_initial_rebalance_delay_ms: 0,
            ..CoordinatorConfig::default()
        })
    }

    fn drain(&mut self) {
        loop {
            while let Some(output) = self.coordinator.poll_output() {
                match output {
                    Output::Reply(call, reply) => {
                        let earlier = self.replies.insert(call, reply);
                        assert!(earlier.is_none(), "call {call} answered twice");
                    }
                    Output::Append { id, records, .. } => self.pending_appends.push((id, records)),
                }
            }
            if !self.auto_append || self.pending_appends.is_empty() {
                return;
            }
            self.complete_appends(Ok(()));
        }
    }

    fn complete_appends(&mut self, result: Result<(), ResponseError>) {
        for (id, records) in std::mem::take(&mut self.pending_appends) {
            if result.is_ok() {
                self.log.extend(records);
            }
            self.coordinator.append_completed(self.now_ms, id, result);
        }
        let auto = self.auto_append;
        self.auto_append = false;
        self.drain();
        self.auto_append = auto;
    }

    fn call(&mut self, call: Call) -> CallId {
        let id = self.next_call;
        self.next_call += 1;
        self.coordinator.handle_call(self.now_ms, id, call);
        self.drain();
        id
    }

    fn advance(&mut self, ms: i64) {
        let target = self.now_ms + ms;
        while let Some(deadline) = self.coordinator.poll_timeout().filter(|d| *d <= target) {
            self.now_ms = self.now_ms.max(deadline);
            self.coordinator.handle_timeout(self.now_ms);
            self.drain();
        }
        self.now_ms = target;
    }

    fn take(&mut self, call: CallId) -> Option<Reply> {
        self.replies.remove(&call)
    }

    fn join_call(
        &mut self,
        group: &str,
        member_id: &str,
        instance: Option<&str>,
        protocols: &[&str],
    ) -> CallId {
        self.next_member += 1;
        let request = JoinRequest {
            group_id: group.into(),
            member_id: member_id.into(),
            group_instance_id: instance.map(Into::into),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|name| (name.to_string(), Bytes::from(format!("meta-{name}"))))
                .collect(),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            require_known_member_id: instance.is_none(),
            new_member_id: format!("client-{}", self.next_member),
        };
        self.call(Call::Join(request))
    }

    fn join_answer(&mut self, call: CallId) -> JoinResponse {
        match self.take(call) {
            Some(Reply::Join(response)) => response,
            other => panic!("no JoinGroup answer: {other:?}"),
        }
    }

    /// KIP-394: a new dynamic member gets its id, then joins with it. Returns the pending call.
    fn new_member(&mut self, group: &str) -> (String, CallId) {
        let first = self.join_call(group, "", None, &["range"]);
        let answer = self.join_answer(first);
        assert_eq!(answer.error, Some(ResponseError::MemberIdRequired));
        let member_id = answer.member_id;
        let call = self.join_call(group, &member_id, None, &["range"]);
        (member_id, call)
    }

    fn member(group: &str, member_id: &str, generation_id: i32) -> MemberRef {
        MemberRef {
            group_id: group.into(),
            member_id: member_id.into(),
            group_instance_id: None,
            generation_id,
        }
    }

    fn sync_call(
        &mut self,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: &[(&str, &str)],
    ) -> CallId {
        self.call(Call::Sync(SyncRequest {
            member: Harness::member(group, member_id, generation),
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments: assignments
                .iter()
                .map(|(member, assignment)| {
                    (member.to_string(), Bytes::from(assignment.to_string()))
                })
                .collect(),
        }))
    }

    fn heartbeat(&mut self, group: &str, member_id: &str, generation: i32) -> ErrorCode {
        let call = self.call(Call::Heartbeat(Harness::member(
            group, member_id, generation,
        )));
        match self.take(call) {
            Some(Reply::Heartbeat(result)) => result,
            other => panic!("{other:?}"),
        }
    }

    fn state(&self, group: &str) -> Option<GroupState> {
        self.coordinator
            .groups()
            .get(group)
            .map(|group| group.state)
    }

    fn commit(&mut self, who: MemberRef, offsets: &[(&str, i32, i64)]) -> Vec<ErrorCode> {
        let call = self.call(Call::Commit(CommitRequest {
            member: who,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| {
                    (topic.to_string(), *partition, *offset, -1, None)
                })
                .collect(),
            ..CommitRequest::default()
        }));
        match self.take(call) {
            Some(Reply::Commit(results)) => results,
            other => panic!("{other:?}"),
        }
    }

    fn fetch(&mut self, group: &str) -> Vec<(String, i32, i64)> {
        let call = self.call(Call::FetchOffsets {
            group_id: group.into(),
            partitions: None,
        });
        match self.take(call) {
            Some(Reply::FetchOffsets(None, offsets)) => offsets
                .into_iter()
                .map(|offset| (offset.topic, offset.partition, offset.offset))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    /// One member joins an empty group and syncs: the group is Stable at generation 1.
    fn stable_group_of_one(&mut self, group: &str) -> String {
        let (member_id, call) = self.new_member(group);
        let answer = self.join_answer(call);
        assert_eq!(answer.error, None);
        assert_eq!(answer.leader, member_id);
        let sync = self.sync_call(
            group,
            &member_id,
            answer.generation_id,
            &[(&member_id, "all")],
        );
        assert!(matches!(
            self.take(sync),
            Some(Reply::Sync(SyncResponse { error: None, .. }))
        ));
        member_id
    }
}

#[test]
fn one_member_goes_from_empty_to_stable() {
    let mut h = Harness::without_delay();
    let (member_id, call) = h.new_member("g");
    assert!(h.coordinator.groups()["g"].pending_members.is_empty());
    // Delay 0: the only member joined, so the join phase ends at once.
    let answer = h.join_answer(call);
    assert_eq!(answer.error, None);
    assert_eq!(answer.generation_id, 1);
    assert_eq!(answer.protocol_name.as_deref(), Some("range"));
    assert_eq!(answer.members.len(), 1);
    assert_eq!(answer.members[0].metadata, Bytes::from("meta-range"));
    assert_eq!(h.state("g"), Some(GroupState::CompletingRebalance));
    // The assignment is written before anyone gets it.
    h.auto_append = false;
    let sync = h.sync_call("g", &member_id, 1, &[(&member_id, "p0,p1")]);
    assert_eq!(h.take(sync), None);
    assert_eq!(h.pending_appends.len(), 1);
    h.complete_appends(Ok(()));
    let Some(Reply::Sync(sync)) = h.take(sync) else {
        panic!()
    };
    assert_eq!(sync.assignment, Bytes::from("p0,p1"));
    assert_eq!(h.state("g"), Some(GroupState::Stable));
    assert!(matches!(
        h.log.last(),
        Some(OffsetsRecord::Group { value: Some(_), .. })
    ));
}

#[test]
fn a_second_member_rebalances_and_the_follower_waits_for_the_leader() {
    let mut h = Harness::without_delay();
    let first = h.stable_group_of_one("g");
    let (second, second_join) = h.new_member("g");
    assert_eq!(h.state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        h.take(second_join),
        None,
        "waits for the first member to rejoin"
    );
    assert_eq!(
        h.heartbeat("g", &first, 1),
        Some(ResponseError::RebalanceInProgress)
    );
    let first_join = h.join_call("g", &first, None, &["range"]);
    let leader = h.join_answer(first_join);
    let follower = h.join_answer(second_join);
    assert_eq!(leader.generation_id, 2);
    assert_eq!(leader.leader, first);
    assert_eq!(leader.members.len(), 2);
    assert!(follower.members.is_empty());
    assert_eq!(h.state("g"), Some(GroupState::CompletingRebalance));
    assert_eq!(h.heartbeat("g", &second, 2), None);
    let follower_sync = h.sync_call("g", &second, 2, &[]);
    assert_eq!(h.take(follower_sync), None);
    let leader_sync = h.sync_call("g", &first, 2, &[(&first, "a"), (&second, "b")]);
    let Some(Reply::Sync(mine)) = h.take(leader_sync) else {
        panic!()
    };
    let Some(Reply::Sync(theirs)) = h.take(follower_sync) else {
        panic!()
    };
    assert_eq!(
        (mine.assignment, theirs.assignment),
        (Bytes::from("a"), Bytes::from("b"))
    );
    assert_eq!(h.state("g"), Some(GroupState::Stable));
    // Old generations are refused.
    assert_eq!(
        h.heartbeat("g", &first, 1),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        h.heartbeat("g", "stranger", 2),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        h.heartbeat("nope", &first, 2),
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn a_silent_member_is_evicted_after_its_session_and_the_last_leaves_an_empty_group() {
    let mut h = Harness::without_delay();
    let first = h.stable_group_of_one("g");
    let (second, second_join) = h.new_member("g");
    let first_join = h.join_call("g", &first, None, &["range"]);
    h.join_answer(first_join);
    h.join_answer(second_join);
    let sync = h.sync_call("g", &first, 2, &[(&first, "a"), (&second, "b")]);
    h.take(sync).unwrap();
    let sync = h.sync_call("g", &second, 2, &[]);
    h.take(sync).unwrap();
    // The second member goes silent; the first keeps heartbeating.
    for _ in 0..4 {
        h.advance(i64::from(SESSION_MS) / 3);
        let result = h.heartbeat("g", &first, h.coordinator.groups()["g"].generation_id);
        if result == Some(ResponseError::RebalanceInProgress) {
            break;
        }
    }
    assert!(!h.coordinator.groups()["g"].members.contains_key(&second));
    assert_eq!(h.state("g"), Some(GroupState::PreparingRebalance));
    let rejoin = h.join_call("g", &first, None, &["range"]);
    let answer = h.join_answer(rejoin);
    assert_eq!((answer.generation_id, answer.members.len()), (3, 1));
    let sync = h.sync_call("g", &first, 3, &[(&first, "all")]);
    h.take(sync).unwrap();
    // The last member goes silent too: Stable -> PreparingRebalance -> Empty.
    h.advance(i64::from(SESSION_MS) + 1);
    assert_eq!(h.state("g"), Some(GroupState::Empty));
    assert_eq!(h.coordinator.groups()["g"].generation_id, 4);
    assert!(matches!(
        h.log.last(),
        Some(OffsetsRecord::Group { value: Some(stored), .. }) if stored.members.is_empty()
    ));
}

#[test]
fn a_member_that_does_not_rejoin_is_dropped_when_the_rebalance_times_out() {
    let mut h = Harness::without_delay();
    let first = h.stable_group_of_one("g");
    let (_, second_join) = h.new_member("g");
    // The first member keeps heartbeating but never rejoins.
    for _ in 0..(REBALANCE_MS / 5_000 + 1) {
        h.advance(5_000);
        h.heartbeat("g", &first, 1);
    }
    let answer = h.join_answer(second_join);
    assert_eq!(answer.error, None);
    assert_eq!(answer.members.len(), 1, "only the member that rejoined");
    assert!(!h.coordinator.groups()["g"].members.contains_key(&first));
}

#[test]
fn a_member_that_never_syncs_is_dropped_after_the_rebalance_timeout() {
    let mut h = Harness::without_delay();
    let first = h.stable_group_of_one("g");
    let (second, second_join) = h.new_member("g");
    let first_join = h.join_call("g", &first, None, &["range"]);
    h.join_answer(first_join);
    h.join_answer(second_join);
    let sync = h.sync_call("g", &first, 2, &[(&first, "a"), (&second, "b")]);
    h.take(sync).unwrap();
    assert_eq!(h.state("g"), Some(GroupState::Stable));
    for _ in 0..(REBALANCE_MS / 5_000 + 1) {
        h.advance(5_000);
        h.heartbeat("g", &first, h.coordinator.groups()["g"].generation_id);
        h.heartbeat("g", &second, 2);
    }
    assert!(!h.coordinator.groups()["g"].members.contains_key(&second));
}

#[test]
fn a_join_during_completing_rebalance_sends_waiting_members_back_to_rejoin() {
    let mut h = Harness::without_delay();
    let first = h.stable_group_of_one("g");
    let (second, second_join) = h.new_member("g");
    let first_join = h.join_call("g", &first, None, &["range"]);
    h.join_answer(first_join);
    h.join_answer(second_join);
    assert_eq!(h.state("g"), Some(GroupState::CompletingRebalance));
    // The follower waits for the leader's assignment; a third member arrives first.
    let waiting_sync = h.sync_call("g", &second, 2, &[]);
    assert_eq!(h.take(waiting_sync), None);
    let (_, third_join) = h.new_member("g");
    assert_eq!(h.state("g"), Some(GroupState::PreparingRebalance));
    let Some(Reply::Sync(answer)) = h.take(waiting_sync) else {
        panic!()
    };
    assert_eq!(answer.error, Some(ResponseError::RebalanceInProgress));
    // A stale sync is refused while the group prepares the next generation.
    let stale = h.sync_call("g", &first, 2, &[(&first, "a")]);
    let Some(Reply::Sync(answer)) = h.take(stale) else {
        panic!()
    };
    assert_eq!(answer.error, Some(ResponseError::RebalanceInProgress));
    let rejoins = [
        h.join_call("g", &first, None, &["range"]),
        h.join_call("g", &second, None, &["range"]),
    ];
    for call in rejoins.into_iter().chain([third_join]) {
        assert_eq!(h.join_answer(call).generation_id, 3);
    }
}

#[test]
fn a_member_id_handed_out_but_never_used_expires() {
    let mut h = Harness::without_delay();
    let first = h.stable_group_of_one("g");
    // A new member gets its id (KIP-394) and never comes back with it.
    let call = h.join_call("g", "", None, &["range"]);
    assert_eq!(
        h.join_answer(call).error,
        Some(ResponseError::MemberIdRequired)
    );
    assert_eq!(h.coordinator.groups()["g"].pending_members.len(), 1);
    // Still Stable: a pending id does not start a rebalance.
    assert_eq!(h.state("g"), Some(GroupState::Stable));
    for _ in 0..3 {
        h.advance(i64::from(SESSION_MS) / 2);
        h.heartbeat("g", &first, 1);
    }
    assert!(h.coordinator.groups()["g"].pending_members.is_empty());
    assert_eq!(h.state("g"), Some(GroupState::Stable));
}

#[test]
fn the_initial_delay_gathers_members_into_one_generation() {
    let mut h = Harness::new(CoordinatorConfig::default());
    let joins: Vec<(String, CallId)> = (0..3)
        .map(|_| {
            let joined = h.new_member("g");
            h.advance(1_000);
            joined
        })
        .collect();
    assert!(joins.iter().all(|(_, call)| !h.replies.contains_key(call)));
    h.advance(3_000);
    let answers: Vec<JoinResponse> = joins.iter().map(|(_, call)| h.join_answer(*call)).collect();
    assert!(answers.iter().all(|answer| answer.generation_id == 1));
    assert_eq!(
        answers
            .iter()
            .map(|answer| answer.members.len())
            .sum::<usize>(),
        3
    );
}

#[test]
fn leaving_rebalances_the_rest_and_then_the_group_can_be_deleted() {
    let mut h = Harness::without_delay();
    let member_id = h.stable_group_of_one("g");
    assert_eq!(
        h.commit(Harness::member("g", &member_id, 1), &[("orders", 0, 10)]),
        vec![None]
    );
    let delete = h.call(Call::Delete {
        group_id: "g".into(),
    });
    assert_eq!(
        h.take(delete),
        Some(Reply::Delete(Some(ResponseError::NonEmptyGroup)))
    );
    let leave = h.call(Call::Leave {
        group_id: "g".into(),
        members: vec![(member_id.clone(), None), ("stranger".into(), None)],
    });
    assert_eq!(
        h.take(leave),
        Some(Reply::Leave(
            None,
            vec![None, Some(ResponseError::UnknownMemberId)]
        ))
    );
    assert_eq!(h.state("g"), Some(GroupState::Empty));
    let list = h.call(Call::List {
        states: vec!["empty".into()],
    });
    let Some(Reply::List(None, listed)) = h.take(list) else {
        panic!()
    };
    assert_eq!(listed.len(), 1);
    let list = h.call(Call::List {
        states: vec!["Stable".into()],
    });
    assert_eq!(h.take(list), Some(Reply::List(None, Vec::new())));
    let delete = h.call(Call::Delete {
        group_id: "g".into(),
    });
    assert_eq!(h.take(delete), Some(Reply::Delete(None)));
    assert_eq!(h.state("g"), None);
    assert!(h.log.iter().rev().take(2).all(|record| match record {
        OffsetsRecord::Offset { value, .. } => value.is_none(),
        OffsetsRecord::Group { value, .. } => value.is_none(),
    }));
    let delete = h.call(Call::Delete {
        group_id: "g".into(),
    });
    assert_eq!(
        h.take(delete),
        Some(Reply::Delete(Some(ResponseError::GroupIdNotFound)))
    );
}

#[test]
fn join_errors_follow_kafka() {
    let mut h = Harness::without_delay();
    let mut request = JoinRequest {
        group_id: "g".into(),
        session_timeout_ms: 10,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::new())],
        new_member_id: "m".into(),
        ..JoinRequest::default()
    };
    let call = h.call(Call::Join(request.clone()));
    assert_eq!(
        h.join_answer(call).error,
        Some(ResponseError::InvalidSessionTimeout)
    );
    request.session_timeout_ms = SESSION_MS;
    request.member_id = "made-up".into();
    let call = h.call(Call::Join(request.clone()));
    assert_eq!(
        h.join_answer(call).error,
        Some(ResponseError::UnknownMemberId)
    );
    request.group_id = String::new();
    let call = h.call(Call::Join(request.clone()));
    assert_eq!(
        h.join_answer(call).error,
        Some(ResponseError::InvalidGroupId)
    );
    h.stable_group_of_one("g");
    let call = h.join_call("g", "", None, &["roundrobin"]);
    assert_eq!(
        h.join_answer(call).error,
        Some(ResponseError::InconsistentGroupProtocol)
    );
    // Flexible versions carry strings longer than a record of __consumer_offsets can hold.
    let long = "x".repeat(40_000);
    let call = h.join_call(&long, "", None, &["range"]);
    assert_eq!(
        h.join_answer(call).error,
        Some(ResponseError::InvalidGroupId)
    );
    let call = h.join_call("g2", "", Some(&long), &["range"]);
    assert_eq!(
        h.join_answer(call).error,
        Some(ResponseError::InvalidRequest)
    );
    assert_eq!(
        h.commit(Harness::member(&long, "", -1), &[("t", 0, 1)]),
        vec![Some(ResponseError::InvalidGroupId)]
    );
}

#[test]
fn the_most_voted_common_protocol_is_selected() {
    let mut h = Harness::without_delay();
    let first = h.join_call("g", "", Some("a"), &["cooperative-sticky", "range"]);
    let answer = h.join_answer(first);
    assert_eq!(answer.protocol_name.as_deref(), Some("cooperative-sticky"));
    let leader = answer.member_id;
    let sync = h.call(Call::Sync(SyncRequest {
        member: Harness::member("g", &leader, 1),
        assignments: vec![(leader.clone(), Bytes::new())],
        ..SyncRequest::default()
    }));
    h.take(sync).unwrap();
    // A member that only knows range: range is the only common protocol.
    let second = h.join_call("g", "", Some("b"), &["range"]);
    let rejoin = h.join_call("g", &leader, Some("a"), &["cooperative-sticky", "range"]);
    assert_eq!(
        h.join_answer(rejoin).protocol_name.as_deref(),
        Some("range")
    );
    assert_eq!(
        h.join_answer(second).protocol_name.as_deref(),
        Some("range")
    );
}

#[test]
fn a_restarted_static_member_keeps_its_assignment_without_a_rebalance() {
    let mut h = Harness::without_delay();
    let first = h.join_call("g", "", Some("host-a"), &["range"]);
    let answer = h.join_answer(first);
    let old_id = answer.member_id.clone();
    let sync = h.call(Call::Sync(SyncRequest {
        member: MemberRef {
            group_instance_id: Some("host-a".into()),
            ..Harness::member("g", &old_id, 1)
        },
        assignments: vec![(old_id.clone(), Bytes::from("p0"))],
        ..SyncRequest::default()
    }));
    h.take(sync).unwrap();
    // The process restarts: it joins with no member id but the same instance id.
    let rejoin = h.join_call("g", "", Some("host-a"), &["range"]);
    let answer = h.join_answer(rejoin);
    assert_eq!(answer.error, None);
    assert_eq!(answer.generation_id, 1, "no rebalance");
    assert!(
        answer.skip_assignment,
        "the leader keeps the assignment it made"
    );
    assert_ne!(answer.member_id, old_id);
    assert_eq!(h.state("g"), Some(GroupState::Stable));
    let sync = h.call(Call::Sync(SyncRequest {
        member: MemberRef {
            group_instance_id: Some("host-a".into()),
            ..Harness::member("g", &answer.member_id, 1)
        },
        ..SyncRequest::default()
    }));
    let Some(Reply::Sync(synced)) = h.take(sync) else {
        panic!()
    };
    assert_eq!(synced.assignment, Bytes::from("p0"));
    // The old incarnation is fenced.
    let heartbeat = h.call(Call::Heartbeat(MemberRef {
        group_instance_id: Some("host-a".into()),
        ..Harness::member("g", &old_id, 1)
    }));
    assert_eq!(
        h.take(heartbeat),
        Some(Reply::Heartbeat(Some(ResponseError::FencedInstanceId)))
    );
}

#[test]
fn commit_rules_follow_kafka() {
    let mut h = Harness::without_delay();
    // A consumer without a group (assign) commits with generation -1.
    let standalone = Harness::member("solo", "", -1);
    assert_eq!(
        h.commit(standalone.clone(), &[("t", 0, 5), ("t", 1, 7)]),
        vec![None, None]
    );
    assert_eq!(
        h.fetch("solo"),
        vec![("t".into(), 0, 5), ("t".into(), 1, 7)]
    );
    // A commit naming a generation for an unknown group is from a stale member.
    assert_eq!(
        h.commit(Harness::member("ghost", "m", 3), &[("t", 0, 1)]),
        vec![Some(ResponseError::IllegalGeneration)]
    );
    let member_id = h.stable_group_of_one("g");
    assert_eq!(
        h.commit(Harness::member("g", &member_id, 0), &[("t", 0, 1)]),
        vec![Some(ResponseError::IllegalGeneration)]
    );
    assert_eq!(
        h.commit(Harness::member("g", "other", 1), &[("t", 0, 1)]),
        vec![Some(ResponseError::UnknownMemberId)]
    );
    assert_eq!(
        h.commit(Harness::member("g", "", -1), &[("t", 0, 1)]),
        vec![Some(ResponseError::UnknownMemberId)],
        "no commits without a generation while the group is active"
    );
    // During CompletingRebalance commits wait for the new generation.
    let (_, second_join) = h.new_member("g");
    let rejoin = h.join_call("g", &member_id, None, &["range"]);
    h.join_answer(rejoin);
    h.join_answer(second_join);
    assert_eq!(
        h.commit(Harness::member("g", &member_id, 2), &[("t", 0, 1)]),
        vec![Some(ResponseError::RebalanceInProgress)]
    );
    // Too much metadata.
    let call = h.call(Call::Commit(CommitRequest {
        member: standalone,
        offsets: vec![("t".into(), 0, 9, -1, Some("x".repeat(5000)))],
        ..CommitRequest::default()
    }));
    assert_eq!(
        h.take(call),
        Some(Reply::Commit(vec![Some(
            ResponseError::OffsetMetadataTooLarge
        )]))
    );
    // A failed write is an error, and the offset is not visible.
    h.auto_append = false;
    let call = h.call(Call::Commit(CommitRequest {
        member: Harness::member("solo", "", -1),
        offsets: vec![("t".into(), 0, 99, -1, None)],
        ..CommitRequest::default()
    }));
    h.complete_appends(Err(ResponseError::KafkaStorageError));
    assert_eq!(
        h.take(call),
        Some(Reply::Commit(vec![Some(ResponseError::NotCoordinator)]))
    );
    assert_eq!(h.fetch("solo")[0].2, 5);
}

#[test]
fn offset_delete_refuses_subscribed_topics() {
    let mut h = Harness::without_delay();
    let subscription = {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let mut bytes = bytes::BytesMut::new();
        bytes.extend_from_slice(&1i16.to_be_bytes());
        ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("orders")])
            .encode(&mut bytes, 1)
            .unwrap();
        bytes.freeze()
    };
    let call = h.call(Call::Join(JoinRequest {
        group_id: "g".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), subscription)],
        new_member_id: "m".into(),
        ..JoinRequest::default()
    }));
    h.join_answer(call);
    let sync = h.sync_call("g", "m", 1, &[("m", "")]);
    h.take(sync).unwrap();
    h.commit(
        Harness::member("g", "m", 1),
        &[("orders", 0, 1), ("old", 0, 2)],
    );
    let call = h.call(Call::DeleteOffsets {
        group_id: "g".into(),
        partitions: vec![("orders".into(), 0), ("old".into(), 0)],
    });
    assert_eq!(
        h.take(call),
        Some(Reply::DeleteOffsets(
            None,
            vec![Some(ResponseError::GroupSubscribedToTopic), None]
        ))
    );
    assert_eq!(h.fetch("g"), vec![("orders".into(), 0, 1)]);
    let call = h.call(Call::DeleteOffsets {
        group_id: "none".into(),
        partitions: vec![],
    });
    assert_eq!(
        h.take(call),
        Some(Reply::DeleteOffsets(
            Some(ResponseError::GroupIdNotFound),
            vec![]
        ))
    );
}

#[test]
fn offsets_of_an_empty_group_expire_after_retention() {
    let config = CoordinatorConfig {
        group_initial_rebalance_delay_ms: 0,
        offsets_retention_ms: 60_000,
        offsets_retention_check_interval_ms: 1_000,
        ..CoordinatorConfig::default()
    };
    let mut h = Harness::new(config);
    let member_id = h.stable_group_of_one("g");
    h.commit(Harness::member("g", &member_id, 1), &[("t", 0, 3)]);
    let leave = h.call(Call::Leave {
        group_id: "g".into(),
        members: vec![(member_id, None)],
    });
    h.take(leave).unwrap();
    h.advance(30_000);
    assert_eq!(h.fetch("g").len(), 1);
    h.advance(31_000);
    assert_eq!(h.state("g"), None, "expired and removed");
    assert_eq!(h.fetch("g"), Vec::new());
    let tombstones = h.log.iter().rev().take(2).filter(|record| match record {
        OffsetsRecord::Offset { value, .. } => value.is_none(),
        OffsetsRecord::Group { value, .. } => value.is_none(),
    });
    assert_eq!(tombstones.count(), 2);
}

#[test]
fn replaying_the_log_restores_offsets_and_membership() {
    let mut h = Harness::without_delay();
    let member_id = h.stable_group_of_one("g");
    h.commit(Harness::member("g", &member_id, 1), &[("t", 0, 42)]);
    h.commit(Harness::member("solo", "", -1), &[("t", 1, 7)]);
    let mut restarted = GroupCoordinator::new(CoordinatorConfig::default());
    for record in h.log.clone() {
        // Through the bytes, as a restart reads them.
        let decoded =
            OffsetsRecord::decode(Some(&record.key()), record.value().as_deref()).unwrap();
        restarted.load(decoded);
    }
    restarted.finish_load(1_000);
    let group = &restarted.groups()["g"];
    assert_eq!(group.state, GroupState::Stable);
    assert_eq!(group.generation_id, 1);
    assert_eq!(group.members[&member_id].assignment, Bytes::from("all"));
    assert_eq!(group.offsets[&("t".to_string(), 0)].offset, 42);
    assert_eq!(restarted.groups()["solo"].state, GroupState::Empty);
    // The member carries on with its generation.
    h.coordinator = restarted;
    h.now_ms = 1_000;
    assert_eq!(h.heartbeat("g", &member_id, 1), None);
}

#[test]
fn describe_shows_members_and_assignments_when_stable() {
    let mut h = Harness::without_delay();
    let member_id = h.stable_group_of_one("g");
    let call = h.call(Call::Describe {
        group_id: "g".into(),
    });
    let Some(Reply::Describe(description)) = h.take(call) else {
        panic!()
    };
    assert_eq!(description.state, "Stable");
    assert_eq!(description.protocol_name, "range");
    assert_eq!(description.members[0].member_id, member_id);
    assert_eq!(description.members[0].assignment, Bytes::from("all"));
    let call = h.call(Call::Describe {
        group_id: "unknown".into(),
    });
    let Some(Reply::Describe(description)) = h.take(call) else {
        panic!()
    };
    assert_eq!((description.error, description.state), (None, "Dead"));
}

#[derive(Debug, Clone)]
enum Step {
    Join(usize),
    Sync(usize),
    Heartbeat(usize),
    Leave(usize),
    Commit(usize),
    Advance(u16),
    FailNextAppends,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..4usize).prop_map(Step::Join),
        (0..4usize).prop_map(Step::Sync),
        (0..4usize).prop_map(Step::Heartbeat),
        (0..4usize).prop_map(Step::Leave),
        (0..4usize).prop_map(Step::Commit),
        any::<u16>().prop_map(Step::Advance),
        Just(Step::FailNextAppends),
    ]
}

proptest! {
    /// Any sequence of member actions: no panic, no call answered twice, every call answered
    /// once every member has left and the timeouts have run, and generations only grow.
    #[test]
    fn random_member_actions_keep_the_invariants(steps in proptest::collection::vec(step(), 1..80)) {
        let mut h = Harness::without_delay();
        let mut ids: Vec<String> = vec![String::new(); 4];
        let mut generations = [-1; 4];
        let mut last_generation = 0;
        let mut calls = Vec::new();
        for step in steps {
            match step {
                Step::Join(who) => {
                    let call = h.join_call("g", &ids[who].clone(), None, &["range"]);
                    calls.push(call);
                    if let Some(Reply::Join(answer)) = h.replies.get(&call) {
                        if !answer.member_id.is_empty() { ids[who] = answer.member_id.clone(); }
                        if answer.error.is_none() { generations[who] = answer.generation_id; }
                    }
                }
                Step::Sync(who) => {
                    let assignments: Vec<(String, Bytes)> = ids.iter().map(|id| (id.clone(), Bytes::from("x"))).collect();
                    let call = h.call(Call::Sync(SyncRequest {
                        member: Harness::member("g", &ids[who], generations[who]),
                        assignments,
                        ..SyncRequest::default()
                    }));
                    calls.push(call);
                }
                Step::Heartbeat(who) => { h.heartbeat("g", &ids[who].clone(), generations[who]); }
                Step::Leave(who) => {
                    calls.push(h.call(Call::Leave { group_id: "g".into(), members: vec![(ids[who].clone(), None)] }));
                }
                Step::Commit(who) => {
                    calls.push(h.call(Call::Commit(CommitRequest {
                        member: Harness::member("g", &ids[who], generations[who]),
                        offsets: vec![("t".into(), 0, 1, -1, None)],
                        ..CommitRequest::default()
                    })));
                }
                Step::Advance(ms) => h.advance(i64::from(ms)),
                Step::FailNextAppends => {
                    h.auto_append = false;
                    h.drain();
                    h.complete_appends(Err(ResponseError::KafkaStorageError));
                    h.auto_append = true;
                }
            }
            if let Some(group) = h.coordinator.groups().get("g") {
                prop_assert!(group.generation_id >= last_generation);
                last_generation = group.generation_id;
                if group.state == GroupState::Stable || group.state == GroupState::CompletingRebalance {
                    prop_assert!(group.leader_id.as_ref().is_some_and(|leader| group.members.contains_key(leader)));
                }
            }
        }
        h.complete_appends(Ok(()));
        h.advance(i64::from(REBALANCE_MS) * 3 + super::coordinator::NEW_MEMBER_JOIN_TIMEOUT_MS);
        for call in calls {
            // Answers are taken as they come, so a missing one must have been answered before
            // or still be owed: the latter is the bug this looks for.
            let owed = h.coordinator.groups().values().any(|group| group.members.values().any(|member| {
                member.awaiting_join == Some(call) || member.awaiting_sync == Some(call)
            }));
            prop_assert!(!owed, "call {} never answered", call);
        }
        if let Some(group) = h.coordinator.groups().get("g") {
            prop_assert!(group.members.is_empty(), "silent members are evicted");
            prop_assert_eq!(group.state, GroupState::Empty);
        }
    }
}

#[test]
fn a_commit_being_written_does_not_outlive_a_delete_of_its_offset_or_group() {
    let mut h = Harness::without_delay();
    h.commit(Harness::member("g", "", -1), &[("t", 0, 1)]);
    // A commit is in flight when OffsetDelete removes the partition's offset.
    h.auto_append = false;
    let commit = h.call(Call::Commit(CommitRequest {
        member: Harness::member("g", "", -1),
        offsets: vec![("t".into(), 0, 2, -1, None)],
        ..CommitRequest::default()
    }));
    let delete = h.call(Call::DeleteOffsets {
        group_id: "g".into(),
        partitions: vec![("t".into(), 0)],
    });
    h.complete_appends(Ok(()));
    assert_eq!(h.take(commit), Some(Reply::Commit(vec![None])));
    assert_eq!(h.take(delete), Some(Reply::DeleteOffsets(None, vec![None])));
    assert_eq!(h.fetch("g"), Vec::new(), "the commit is not resurrected");
    assert!(matches!(
        h.log.last(),
        Some(OffsetsRecord::Offset { value: None, .. })
    ));
    // The same with DeleteGroups, and the group stays gone.
    h.auto_append = false;
    let commit = h.call(Call::Commit(CommitRequest {
        member: Harness::member("g", "", -1),
        offsets: vec![("t".into(), 1, 5, -1, None)],
        ..CommitRequest::default()
    }));
    let delete = h.call(Call::Delete {
        group_id: "g".into(),
    });
    h.complete_appends(Ok(()));
    assert_eq!(h.take(commit), Some(Reply::Commit(vec![None])));
    assert_eq!(h.take(delete), Some(Reply::Delete(None)));
    assert_eq!(h.state("g"), None);
    // Replaying the log agrees with memory.
    let mut restarted = GroupCoordinator::new(CoordinatorConfig::default());
    for record in h.log.clone() {
        restarted.load(record);
    }
    restarted.finish_load(0);
    assert!(restarted
        .groups()
        .get("g")
        .is_none_or(|group| group.offsets.is_empty()));
}

#[test]
fn a_static_member_replacement_is_answered_once_stored_and_reverted_if_the_write_fails() {
    let mut h = Harness::without_delay();
    let first = h.join_call("g", "", Some("host-a"), &["range"]);
    let old_id = h.join_answer(first).member_id;
    let sync = h.call(Call::Sync(SyncRequest {
        member: MemberRef {
            group_instance_id: Some("host-a".into()),
            ..Harness::member("g", &old_id, 1)
        },
        assignments: vec![(old_id.clone(), Bytes::from("p0"))],
        ..SyncRequest::default()
    }));
    h.take(sync).unwrap();
    h.auto_append = false;
    let rejoin = h.join_call("g", "", Some("host-a"), &["range"]);
    assert_eq!(h.take(rejoin), None, "answered only once stored");
    h.complete_appends(Err(ResponseError::KafkaStorageError));
    let answer = h.join_answer(rejoin);
    assert_eq!(answer.error, Some(ResponseError::NotCoordinator));
    let group = &h.coordinator.groups()["g"];
    assert_eq!(group.static_members["host-a"], old_id, "the old id is back");
    assert!(group.members.contains_key(&old_id));
    assert_eq!(group.leader_id.as_deref(), Some(old_id.as_str()));
    // Stored this time: the answer names the previous leader id, so the restarted leader
    // does not compute an assignment (JoinGroup v9 also says skip_assignment).
    h.auto_append = true;
    let rejoin = h.join_call("g", "", Some("host-a"), &["range"]);
    let answer = h.join_answer(rejoin);
    assert_eq!(answer.error, None);
    assert_eq!(answer.leader, old_id);
    assert!(answer.skip_assignment);
}

#[test]
fn replay_keeps_offsets_that_have_no_tombstone_of_their_own() {
    let mut coordinator = GroupCoordinator::new(CoordinatorConfig::default());
    let offset = |partition, value| OffsetsRecord::Offset {
        group_id: "g".into(),
        topic: "t".into(),
        partition,
        value,
    };
    let committed = super::records::CommittedOffset {
        offset: 9,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: 1,
        expire_timestamp_ms: None,
    };
    coordinator.load(offset(0, Some(committed.clone())));
    coordinator.load(offset(1, Some(committed)));
    coordinator.load(offset(0, None));
    coordinator.load(OffsetsRecord::Group {
        group_id: "g".into(),
        value: None,
    });
    coordinator.finish_load(2);
    let group = &coordinator.groups()["g"];
    assert_eq!(group.offsets.len(), 1);
    assert_eq!(group.offsets[&("t".to_string(), 1)].offset, 9);
}

#[test]
fn a_commit_with_its_own_retention_expires_then() {
    let config = CoordinatorConfig {
        group_initial_rebalance_delay_ms: 0,
        offsets_retention_check_interval_ms: 1_000,
        ..CoordinatorConfig::default()
    };
    let mut h = Harness::new(config);
    let call = h.call(Call::Commit(CommitRequest {
        member: Harness::member("g", "", -1),
        offsets: vec![("t".into(), 0, 4, -1, None)],
        retention_ms: 5_000,
    }));
    h.take(call).unwrap();
    h.advance(3_000);
    assert_eq!(h.fetch("g").len(), 1);
    h.advance(3_000);
    assert_eq!(h.fetch("g"), Vec::new(), "expired after its own 5 s");
}

#[test]
fn an_unreadable_subscription_keeps_every_topic_of_a_stable_group() {
    let config = CoordinatorConfig {
        group_initial_rebalance_delay_ms: 0,
        offsets_retention_ms: 1_000,
        offsets_retention_check_interval_ms: 500,
        ..CoordinatorConfig::default()
    };
    let mut h = Harness::new(config);
    // The harness's metadata ("meta-range") is not a consumer subscription; a hostile count
    // must not make the decoder allocate either.
    let call = h.call(Call::Join(JoinRequest {
        group_id: "g".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: vec![(
            "range".into(),
            Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff]),
        )],
        new_member_id: "m".into(),
        ..JoinRequest::default()
    }));
    h.join_answer(call);
    let sync = h.sync_call("g", "m", 1, &[("m", "")]);
    h.take(sync).unwrap();
    h.commit(Harness::member("g", "m", 1), &[("old", 0, 2)]);
    let call = h.call(Call::DeleteOffsets {
        group_id: "g".into(),
        partitions: vec![("old".into(), 0)],
    });
    assert_eq!(
        h.take(call),
        Some(Reply::DeleteOffsets(
            None,
            vec![Some(ResponseError::GroupSubscribedToTopic)]
        ))
    );
    for _ in 0..5 {
        h.advance(1_000);
        assert_eq!(h.heartbeat("g", "m", 1), None);
    }
    assert_eq!(h.fetch("g").len(), 1, "not expired: it may be read");
}

#[test]
fn leave_group_follows_kafkas_rules_for_instance_ids() {
    let mut h = Harness::without_delay();
    let member_id = h.stable_group_of_one("g");
    // An instance id the group does not know, with a member id it does: the member leaves.
    let leave = h.call(Call::Leave {
        group_id: "g".into(),
        members: vec![(member_id, Some("unknown-instance".into()))],
    });
    assert_eq!(h.take(leave), Some(Reply::Leave(None, vec![None])));
    assert_eq!(h.state("g"), Some(GroupState::Empty));
}

#[test]
fn a_failed_assignment_write_sends_the_group_back_to_rebalance() {
    let mut h = Harness::without_delay();
    let (member_id, call) = h.new_member("g");
    h.join_answer(call);
    h.auto_append = false;
    let sync = h.sync_call("g", &member_id, 1, &[(&member_id, "a")]);
    h.complete_appends(Err(ResponseError::RequestTimedOut));
    let Some(Reply::Sync(answer)) = h.take(sync) else {
        panic!()
    };
    assert_eq!(answer.error, Some(ResponseError::RebalanceInProgress));
    assert_eq!(h.state("g"), Some(GroupState::PreparingRebalance));
}

fn txn_commit_call(
    who: MemberRef,
    producer_id: i64,
    epoch: i16,
    offsets: &[(&str, i32, i64)],
) -> Call {
    Call::TxnCommit(TxnCommitRequest {
        member: who,
        producer_id,
        producer_epoch: epoch,
        offsets: offsets
            .iter()
            .map(|(topic, partition, offset)| (topic.to_string(), *partition, *offset, -1, None))
            .collect(),
    })
}

fn fetched_with_pending(h: &mut Harness, group: &str) -> Vec<(i32, i64, bool)> {
    let call = h.call(Call::FetchOffsets {
        group_id: group.into(),
        partitions: Some(vec![("t".into(), 0), ("t".into(), 1)]),
    });
    match h.take(call) {
        Some(Reply::FetchOffsets(None, offsets)) => offsets
            .into_iter()
            .map(|offset| (offset.partition, offset.offset, offset.pending_transaction))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// A marker of `producer_id` reached the partition.
fn complete_txn(h: &mut Harness, producer_id: i64, commit: bool) {
    let done = h.call(Call::TxnCompleted {
        producer_id,
        commit,
    });
    assert_eq!(h.take(done), Some(Reply::TxnCompleted(None)));
}

#[test]
fn transactional_offsets_wait_for_their_marker_and_an_abort_drops_them() {
    let mut h = Harness::without_delay();
    let member_id = h.stable_group_of_one("g");
    let who = Harness::member("g", &member_id, 1);
    assert_eq!(h.commit(who.clone(), &[("t", 0, 5)]), vec![None]);

    // The records go in transactional batches of the producer, numbered per producer.
    let mut transactions = Vec::new();
    for offsets in [[("t", 0, 10)], [("t", 1, 3)]] {
        h.auto_append = false;
        let call = h.call(txn_commit_call(who.clone(), 7, 2, &offsets));
        assert_eq!(h.pending_appends.len(), 1);
        transactions.push(call);
        h.auto_append = true;
        h.complete_appends(Ok(()));
        assert_eq!(h.take(call), Some(Reply::Commit(vec![None])));
    }
    // Pending: the committed offset stays, flagged.
    assert_eq!(
        fetched_with_pending(&mut h, "g"),
        vec![(0, 5, true), (1, -1, true)]
    );
    complete_txn(&mut h, 7, true);
    assert_eq!(
        fetched_with_pending(&mut h, "g"),
        vec![(0, 10, false), (1, 3, false)]
    );

    // An aborted transaction's offsets never show.
    let call = h.call(txn_commit_call(who.clone(), 7, 2, &[("t", 0, 99)]));
    assert_eq!(h.take(call), Some(Reply::Commit(vec![None])));
    h.call(Call::TxnCompleted {
        producer_id: 7,
        commit: false,
    });
    assert_eq!(
        fetched_with_pending(&mut h, "g"),
        vec![(0, 10, false), (1, 3, false)]
    );

    // A write refused for the producer's epoch fences it; a stale generation is refused as
    // for OffsetCommit.
    h.auto_append = false;
    let fenced = h.call(txn_commit_call(who.clone(), 7, 1, &[("t", 0, 11)]));
    h.auto_append = true;
    h.complete_appends(Err(ResponseError::InvalidProducerEpoch));
    assert_eq!(
        h.take(fenced),
        Some(Reply::Commit(vec![Some(ResponseError::ProducerFenced)]))
    );
    let stale = h.call(txn_commit_call(
        Harness::member("g", &member_id, 0),
        7,
        2,
        &[("t", 0, 12)],
    ));
    assert_eq!(
        h.take(stale),
        Some(Reply::Commit(vec![Some(ResponseError::IllegalGeneration)]))
    );
}

/// The record of an offset committed by group "solo" for partition 0 of "t".
fn solo_offset(offset: i64) -> OffsetsRecord {
    OffsetsRecord::Offset {
        group_id: "solo".into(),
        topic: "t".into(),
        partition: 0,
        value: Some(super::records::CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
            expire_timestamp_ms: None,
        }),
    }
}

#[test]
fn replaying_transactional_offsets_and_markers_restores_them_and_their_sequences() {
    use super::txn_offsets::TxnBatch;
    let mut h = Harness::without_delay();
    let who = Harness::member("solo", "", -1);
    let offsets = solo_offset;
    let mut restarted = GroupCoordinator::new(CoordinatorConfig::default());
    let batch = |base_sequence| TxnBatch {
        producer_id: 9,
        producer_epoch: 0,
        base_sequence,
    };
    // A committed transaction, an aborted one, and one still open.
    restarted.load_transactional(batch(0), 1, vec![offsets(4)]);
    restarted.load_marker(9, true);
    restarted.load_transactional(batch(1), 1, vec![offsets(8)]);
    restarted.load_marker(9, false);
    restarted.load_transactional(batch(2), 1, vec![offsets(12)]);
    restarted.finish_load(0);
    h.coordinator = restarted;
    assert_eq!(fetched_with_pending(&mut h, "solo")[0], (0, 4, true));

    // The next batch of the producer follows the loaded ones.
    h.auto_append = false;
    h.coordinator
        .handle_call(0, 100, txn_commit_call(who, 9, 0, &[("t", 0, 13)]));
    let mut transaction = None;
    while let Some(output) = h.coordinator.poll_output() {
        if let Output::Append {
            transaction: found, ..
        } = output
        {
            transaction = found;
        }
    }
    assert_eq!(transaction, Some(batch(3)));
}

#[test]
fn a_plain_commit_written_after_transactional_offsets_wins_when_the_transaction_commits() {
    let mut h = Harness::without_delay();
    let member_id = h.stable_group_of_one("g");
    let who = Harness::member("g", &member_id, 1);
    // Partition 0: the transaction's offset, then a plain commit. Partition 1: a plain
    // commit, then the transaction's offset.
    assert_eq!(h.commit(who.clone(), &[("t", 1, 3)]), vec![None]);
    let call = h.call(txn_commit_call(
        who.clone(),
        7,
        0,
        &[("t", 0, 10), ("t", 1, 30)],
    ));
    assert_eq!(h.take(call), Some(Reply::Commit(vec![None, None])));
    assert_eq!(h.commit(who.clone(), &[("t", 0, 20)]), vec![None]);
    // Still pending until the marker, as Kafka has it.
    assert_eq!(
        fetched_with_pending(&mut h, "g"),
        vec![(0, 20, true), (1, 3, true)]
    );
    complete_txn(&mut h, 7, true);
    // The later record of each partition wins.
    assert_eq!(
        fetched_with_pending(&mut h, "g"),
        vec![(0, 20, false), (1, 30, false)]
    );
}

#[test]
fn replaying_a_plain_commit_after_transactional_offsets_keeps_the_later_record() {
    use super::txn_offsets::TxnBatch;
    let offsets = solo_offset;
    let batch = TxnBatch {
        producer_id: 9,
        producer_epoch: 0,
        base_sequence: 0,
    };
    let mut restarted = GroupCoordinator::new(CoordinatorConfig::default());
    restarted.load_transactional(batch, 1, vec![offsets(4)]);
    restarted.load(offsets(6));
    restarted.load_marker(9, true);
    restarted.finish_load(0);
    let mut h = Harness::without_delay();
    h.coordinator = restarted;
    assert_eq!(fetched_with_pending(&mut h, "solo")[0], (0, 6, false));
}
