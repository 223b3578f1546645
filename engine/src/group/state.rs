//! One group's state: its members, generation and committed offsets.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::calls::{CallId, JoinedMember};
use super::records::{CommittedOffset, StoredGroup, StoredMember};

/// Kafka's group states (the classic protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    /// No members; may hold committed offsets.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted or expired; about to disappear.
    Dead,
}

impl GroupState {
    /// The name Kafka gives the state in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    /// Whether Kafka allows moving from `self` to `next`.
    pub fn may_become(self, next: GroupState) -> bool {
        use GroupState::*;
        match next {
            Empty => matches!(self, PreparingRebalance),
            PreparingRebalance => matches!(self, Stable | CompletingRebalance | Empty),
            CompletingRebalance => matches!(self, PreparingRebalance),
            Stable => matches!(self, CompletingRebalance),
            Dead => matches!(
                self,
                Stable | PreparingRebalance | CompletingRebalance | Empty | Dead
            ),
        }
    }
}

/// One member of a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// `client.id`.
    pub client_id: String,
    /// Address.
    pub client_host: String,
    /// `max.poll.interval.ms`: how long a rebalance waits for this member to rejoin.
    pub rebalance_timeout_ms: i32,
    /// `session.timeout.ms`: how long without a heartbeat before it is evicted.
    pub session_timeout_ms: i32,
    /// Protocol type it joined with.
    pub protocol_type: String,
    /// Assignors it supports with its metadata for each, in preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// Its current assignment.
    pub assignment: Bytes,
    /// A JoinGroup waiting for the join phase to end.
    pub awaiting_join: Option<CallId>,
    /// A SyncGroup waiting for the leader's assignment.
    pub awaiting_sync: Option<CallId>,
    /// Last heartbeat (or other sign of life).
    pub last_heartbeat_ms: i64,
    /// Joined in the current rebalance and has not had a JoinGroup answer yet.
    pub is_new: bool,
}

impl Member {
    /// Its metadata for `protocol`, empty when it does not support it.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// Whether it supports `protocol`.
    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    /// Its first preference among `candidates`.
    fn vote<'a>(&self, candidates: &'a BTreeSet<String>) -> Option<&'a String> {
        self.protocols
            .iter()
            .find_map(|(name, _)| candidates.get(name))
    }
}

/// One group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Group id.
    pub group_id: String,
    /// State.
    pub state: GroupState,
    /// When it entered `state`.
    pub state_timestamp_ms: i64,
    /// Generation: incremented by every completed join phase.
    pub generation_id: i32,
    /// Protocol type of its members (`None` for a group that only commits offsets).
    pub protocol_type: Option<String>,
    /// The assignor selected for the current generation.
    pub protocol_name: Option<String>,
    /// Leader member id.
    pub leader_id: Option<String>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, with the time they expire unused.
    pub pending_members: BTreeMap<String, i64>,
    /// Static members: group instance id to member id.
    pub static_members: BTreeMap<String, String>,
    /// Members that have not sent SyncGroup in CompletingRebalance.
    pub pending_sync: BTreeSet<String>,
    /// End of the join phase, in PreparingRebalance.
    pub join_deadline_ms: Option<i64>,
    /// During the initial delayed join of an empty group: the latest the delay may extend to.
    pub initial_join_limit_ms: Option<i64>,
    /// End of the sync phase, in CompletingRebalance.
    pub sync_deadline_ms: Option<i64>,
    /// The leader's assignment is being written; SyncGroups wait for it.
    pub assignment_in_flight: bool,
    /// Committed offsets by `(topic, partition)`.
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Commits being written, per partition, by append id: a delete of the offset (or the
    /// group) removes them, so that their completion does not bring the offset back.
    pub pending_commits: BTreeMap<(String, i32), BTreeSet<u64>>,
}

impl Group {
    /// A new, empty group.
    pub fn new(group_id: &str, now_ms: i64) -> Group {
        Group {
            group_id: group_id.to_owned(),
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            join_deadline_ms: None,
            initial_join_limit_ms: None,
            sync_deadline_ms: None,
            assignment_in_flight: false,
            offsets: BTreeMap::new(),
            pending_commits: BTreeMap::new(),
        }
    }

    /// Moves to `next`, asserting Kafka's transition rules.
    pub fn transition(&mut self, next: GroupState, now_ms: i64) {
        assert!(
            self.state.may_become(next),
            "group {:?}: {:?} cannot become {next:?}",
            self.group_id,
            self.state
        );
        self.state = next;
        self.state_timestamp_ms = now_ms;
    }

    /// Whether it is in `state`.
    pub fn is(&self, state: GroupState) -> bool {
        self.state == state
    }

    /// The member id of a static member.
    pub fn static_member_id(&self, instance_id: &str) -> Option<&String> {
        self.static_members.get(instance_id)
    }

    /// Whether `member_id` with `instance_id` is fenced: the instance is registered to another
    /// member id.
    pub fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|instance| self.static_member_id(instance))
            .is_some_and(|registered| registered != member_id)
    }

    /// Whether a member with `protocol_type` and `protocols` may join.
    pub fn supports(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
        member_id: &str,
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self
            .members
            .values()
            .filter(|member| member.member_id != member_id)
            .collect();
        if others.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols
            .iter()
            .any(|(name, _)| others.iter().all(|member| member.supports(name)))
    }

    /// The protocol every member supports with the most first-preference votes (ties go to
    /// the alphabetically first, so the choice is deterministic).
    pub fn select_protocol(&self) -> Option<String> {
        let mut members = self.members.values();
        let first = members.next()?;
        let mut candidates: BTreeSet<String> = first
            .protocols
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        for member in members {
            candidates.retain(|name| member.supports(name));
        }
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some(choice) = member.vote(&candidates) {
                *votes.entry(choice.clone()).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        votes
            .into_iter()
            .find(|(_, count)| *count == most)
            .map(|(name, _)| name)
    }

    /// Whether every member has rejoined and no KIP-394 member id is outstanding.
    pub fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty()
            && self
                .members
                .values()
                .all(|member| member.awaiting_join.is_some())
    }

    /// The longest rebalance timeout of the members: how long a join phase may last.
    pub fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|member| i64::from(member.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// The member list the leader gets in its JoinGroup answer.
    pub fn joined_members(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|member| JoinedMember {
                member_id: member.member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                metadata: member.metadata(&protocol),
            })
            .collect()
    }

    /// The group as written to `__consumer_offsets`.
    pub fn stored(&self) -> StoredGroup {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        StoredGroup {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation_id: self.generation_id,
            protocol_name: self.protocol_name.clone(),
            leader_id: self.leader_id.clone(),
            state_timestamp_ms: self.state_timestamp_ms,
            members: self
                .members
                .values()
                .map(|member| StoredMember {
                    member_id: member.member_id.clone(),
                    group_instance_id: member.group_instance_id.clone(),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    rebalance_timeout_ms: member.rebalance_timeout_ms,
                    session_timeout_ms: member.session_timeout_ms,
                    subscription: member.metadata(&protocol),
                    assignment: member.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Restores membership from a stored record (offsets are restored separately).
    pub fn restore(&mut self, stored: StoredGroup) {
        self.protocol_type = Some(stored.protocol_type).filter(|kind| !kind.is_empty());
        self.generation_id = stored.generation_id;
        self.protocol_name = stored.protocol_name;
        self.leader_id = stored.leader_id;
        self.state_timestamp_ms = stored.state_timestamp_ms;
        self.members.clear();
        self.static_members.clear();
        let protocol = self.protocol_name.clone().unwrap_or_default();
        for member in stored.members {
            if let Some(instance) = &member.group_instance_id {
                self.static_members
                    .insert(instance.clone(), member.member_id.clone());
            }
            self.members.insert(
                member.member_id.clone(),
                Member {
                    member_id: member.member_id,
                    group_instance_id: member.group_instance_id,
                    client_id: member.client_id,
                    client_host: member.client_host,
                    rebalance_timeout_ms: member.rebalance_timeout_ms,
                    session_timeout_ms: member.session_timeout_ms,
                    protocol_type: self.protocol_type.clone().unwrap_or_default(),
                    protocols: vec![(protocol.clone(), member.subscription)],
                    assignment: member.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    last_heartbeat_ms: 0,
                    is_new: false,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_kafka() {
        use GroupState::*;
        let all = [Empty, PreparingRebalance, CompletingRebalance, Stable, Dead];
        let allowed: Vec<(GroupState, GroupState)> = all
            .iter()
            .flat_map(|from| all.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.may_become(*to))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Empty, PreparingRebalance),
                (Empty, Dead),
                (PreparingRebalance, Empty),
                (PreparingRebalance, CompletingRebalance),
                (PreparingRebalance, Dead),
                (CompletingRebalance, PreparingRebalance),
                (CompletingRebalance, Stable),
                (CompletingRebalance, Dead),
                (Stable, PreparingRebalance),
                (Stable, Dead),
                (Dead, Dead),
            ]
        );
    }
}
