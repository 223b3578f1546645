//! Simulated consumers in one group, and the group checks (Jepsen's Kafka workload).
//!
//! [`MEMBERS`] members of group [`GROUP`] subscribe to the producers' topic. Each runs the
//! classic protocol against the coordinator the nodes run ([`super::groups`]): JoinGroup (a
//! new member first gets MEMBER_ID_REQUIRED and its id), the leader assigns with the engine's
//! `range` assignor (the client's own code), SyncGroup, OffsetFetch for where to start, then
//! polls the partition leaders, heartbeats, and commits its positions; a rebalance announced by
//! a heartbeat or a commit is joined after a last commit, as the Java client commits in
//! `onPartitionsRevoked`. During the fault phase members are also killed (some between
//! JoinGroup and SyncGroup, mid-rebalance) and restarted as new members, and stall past their
//! session timeout, after which they commit once more with their old generation as a paused
//! process would.
//!
//! Checked as the run goes ([`GroupLedger`]): at most one owner per partition per generation;
//! polls strictly increasing within one assignment of a member and never past the leader's
//! log end; an acknowledged commit never below the latest one of the same or a newer generation;
//! a committed offset read back never below the latest acknowledged commit. After healing
//! (`mod.rs`): the group Stable with every member, each partition's committed offset at its
//! log end, and every acknowledged record consumed.

use std::cell::RefCell;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use spate_engine::client::assignor::{
    assign, decode_assignment, decode_subscription, encode_assignment, encode_subscription,
    Member as AssignorMember, Subscription,
};
use spate_engine::client::config::Assignor;
use spate_engine::quorum::NodeId;

use super::groups::{GroupAnswer, GroupRequest};
use super::node::{host_name, sim_ms};
use super::producer::{PARTITIONS, TOPIC};
use super::replicas::{ConsumeAnswer, ConsumeRequest, DATA_PORT};
use super::wire;
use super::world::World;
use crate::SimRng;

/// The consumers' group.
pub(crate) const GROUP: &str = "readers";
/// Its members.
pub(crate) const MEMBERS: usize = 3;
/// `session.timeout.ms`.
const SESSION_TIMEOUT_MS: i32 = 3_000;
/// `max.poll.interval.ms`, the rebalance timeout.
const REBALANCE_TIMEOUT_MS: i32 = 6_000;
/// `heartbeat.interval.ms`.
const HEARTBEAT_INTERVAL_MS: u64 = 800;
/// `auto.commit.interval.ms`.
const COMMIT_INTERVAL_MS: u64 = 400;
/// How long a member waits for one answer (a JoinGroup waits for the whole join phase).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an answer that says to retry later.
const BACKOFF: Duration = Duration::from_millis(200);

/// Kafka error codes the members act on.
const NOT_COORDINATOR: i16 = 16;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

/// What the group did, for the checks.
#[derive(Debug, Default)]
pub(crate) struct GroupLedger {
    /// `(generation, partition)` to the member that got it.
    owners: BTreeMap<(i32, i32), String>,
    /// Per partition, the latest acknowledged commit: `(offset, generation)`.
    latest_commit: BTreeMap<i32, (i64, i32)>,
    /// Commits acknowledged.
    pub(crate) commits_acknowledged: u64,
    /// `(member, generation, partition)` to the last offset polled since the member's latest
    /// assignment.
    polled: BTreeMap<(String, i32, i32), i64>,
    /// Every value consumed.
    pub(crate) consumed: BTreeSet<String>,
    /// Generations that handed out assignments.
    pub(crate) generations: BTreeSet<i32>,
    /// After healing: the group's state, member count, and committed offset per partition.
    pub(crate) final_view: Option<FinalGroup>,
}

/// The group as the checker reads it after healing.
#[derive(Debug, Clone)]
pub(crate) struct FinalGroup {
    pub(crate) state: String,
    pub(crate) members: usize,
    pub(crate) committed: BTreeMap<i32, i64>,
}

fn assigned(world: &mut World, generation: i32, member: &str, partitions: &[i32]) {
    world.groups.generations.insert(generation);
    for &partition in partitions {
        match world.groups.owners.entry((generation, partition)) {
            Entry::Vacant(slot) => {
                slot.insert(member.to_owned());
            }
            Entry::Occupied(owner) if owner.get() != member => {
                let text = format!(
                    "{TOPIC}-{partition} has two owners in generation {generation} of {GROUP}: \
                     {} and {member}",
                    owner.get()
                );
                world.violation(text);
            }
            Entry::Occupied(_) => {}
        }
    }
}

fn commit_acknowledged(world: &mut World, generation: i32, offsets: &[(i32, i64)]) {
    world.groups.commits_acknowledged += 1;
    for &(partition, offset) in offsets {
        if let Some(&(latest, latest_generation)) = world.groups.latest_commit.get(&partition) {
            // A newer generation may restart below an older one's last commit (a commit of
            // a member that left can still land after the new owner read the offset), never
            // the same or an older one.
            if offset < latest && generation <= latest_generation {
                world.violation(format!(
                    "committed offset of {TOPIC}-{partition} went back from {latest} (generation \
                     {latest_generation}) to {offset} (generation {generation})"
                ));
            }
        }
        world
            .groups
            .latest_commit
            .insert(partition, (offset, generation));
    }
}

/// A client's connections to the nodes, and which node it believes coordinates the group.
struct Link {
    rng: SimRng,
    nodes: Vec<NodeId>,
    coordinator: Option<NodeId>,
    connections: BTreeMap<NodeId, turmoil::net::TcpStream>,
}

/// A consumer group member. See the module docs.
struct Member {
    index: usize,
    rng: SimRng,
    link: Link,
    world: Rc<RefCell<World>>,
    fault_end_ms: u64,
    member_id: String,
    /// -1 outside a generation.
    generation: i32,
    /// Partition to the next offset to read.
    positions: BTreeMap<i32, i64>,
    leaders: BTreeMap<i32, NodeId>,
    next_heartbeat_ms: u64,
    next_commit_ms: u64,
}

/// The members and, after healing, the group's final state, as tasks of one client host.
pub(crate) async fn run_all(
    nodes: Vec<NodeId>,
    world: Rc<RefCell<World>>,
    seed: u64,
    fault_end_ms: u64,
    collect_at_ms: u64,
) -> turmoil::Result {
    let mut rng = SimRng::new(seed);
    let mut tasks = Vec::new();
    for index in 0..MEMBERS {
        let mut rng = SimRng::new(seed ^ (0xc0_0000 + index as u64));
        let member = Member {
            index,
            link: Link::new(nodes.clone(), rng.next_u64()),
            rng,
            world: Rc::clone(&world),
            fault_end_ms,
            member_id: String::new(),
            generation: -1,
            positions: BTreeMap::new(),
            leaders: BTreeMap::new(),
            next_heartbeat_ms: 0,
            next_commit_ms: 0,
        };
        tasks.push(tokio::task::spawn_local(member.run(collect_at_ms + 1_000)));
    }
    tokio::time::sleep(Duration::from_millis(
        collect_at_ms.saturating_sub(sim_ms()),
    ))
    .await;
    let final_view = read_final(Link::new(nodes, rng.next_u64())).await;
    world.borrow_mut().groups.final_view = final_view;
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// The group's state and committed offsets, asked of each node in turn until the
/// coordinator answers.
async fn read_final(mut checker: Link) -> Option<FinalGroup> {
    for _ in 0..10 {
        let described = checker
            .call(GroupRequest::Describe {
                group: GROUP.to_owned(),
            })
            .await;
        let Some(described) = described.filter(|answer| answer.error == 0) else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let fetched = checker
            .call(GroupRequest::FetchOffsets {
                group: GROUP.to_owned(),
                partitions: (0..i32::from(PARTITIONS))
                    .map(|partition| (TOPIC.to_owned(), partition))
                    .collect(),
            })
            .await;
        let Some(fetched) = fetched.filter(|answer| answer.error == 0) else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        return Some(FinalGroup {
            state: described.state,
            members: described.members.len(),
            committed: fetched
                .offsets
                .iter()
                .map(|(_, partition, offset)| (*partition, *offset))
                .collect(),
        });
    }
    None
}

impl Link {
    fn new(nodes: Vec<NodeId>, seed: u64) -> Link {
        Link {
            rng: SimRng::new(seed),
            nodes,
            coordinator: None,
            connections: BTreeMap::new(),
        }
    }

    fn any_node(&mut self) -> NodeId {
        self.nodes[self.rng.below(self.nodes.len() as u64) as usize]
    }

    /// Sends `request` to the coordinator it knows (or a random node), following the answer's
    /// hint when that node does not coordinate the group; `None` when no answer came.
    async fn call(&mut self, request: GroupRequest) -> Option<GroupAnswer> {
        let node = match self.coordinator {
            Some(node) => node,
            None => self.any_node(),
        };
        let body = serde_json::to_vec(&request).ok()?;
        let answer =
            tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(node, wire::GROUP_CALL, &body))
                .await;
        let answer: Option<GroupAnswer> = match answer {
            Ok(Some((wire::GROUP_ANSWER, payload))) => serde_json::from_slice(&payload).ok(),
            _ => None,
        };
        let Some(answer) = answer else {
            self.connections.remove(&node);
            self.coordinator = None;
            return None;
        };
        if matches!(
            answer.error,
            NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS
        ) {
            self.coordinator = (answer.coordinator_hint >= 0
                && answer.coordinator_hint as NodeId != node)
                .then_some(answer.coordinator_hint as NodeId);
            tokio::time::sleep(BACKOFF).await;
        } else {
            self.coordinator = Some(node);
        }
        Some(answer)
    }

    /// One frame to `node` and its answer, over the member's connection to it.
    async fn exchange(&mut self, node: NodeId, kind: u8, body: &[u8]) -> Option<(u8, Vec<u8>)> {
        let stream = match self.connections.entry(node) {
            Entry::Occupied(connection) => connection.into_mut(),
            Entry::Vacant(missing) => missing.insert(
                turmoil::net::TcpStream::connect((host_name(node), DATA_PORT))
                    .await
                    .ok()?,
            ),
        };
        wire::write_frame(stream, kind, body).await.ok()?;
        wire::read_frame(stream).await
    }
}

impl Member {
    fn event(&self, text: String) {
        self.world
            .borrow_mut()
            .event(format!("consumer {}: {text}", self.index));
    }

    fn faulty(&self) -> bool {
        sim_ms() < self.fault_end_ms
    }

    async fn run(mut self, stop_ms: u64) {
        while sim_ms() < stop_ms {
            if self.generation < 0 {
                self.join().await;
                continue;
            }
            if self.faulty() && self.rng.chance(1) {
                self.crash().await;
                continue;
            }
            if self.faulty() && self.rng.chance(1) {
                self.stall().await;
                continue;
            }
            let now_ms = sim_ms();
            if now_ms >= self.next_heartbeat_ms {
                self.next_heartbeat_ms = now_ms + HEARTBEAT_INTERVAL_MS;
                self.heartbeat().await;
                continue;
            }
            self.poll().await;
            if self.generation >= 0 && sim_ms() >= self.next_commit_ms {
                self.next_commit_ms = sim_ms() + COMMIT_INTERVAL_MS;
                self.commit().await;
            }
            tokio::time::sleep(Duration::from_millis(20 + self.rng.below(60))).await;
        }
    }

    /// The member's process dies: it never leaves, its session expires at the coordinator.
    async fn crash(&mut self) {
        self.event(format!(
            "crashes as {} in generation {}",
            self.member_id, self.generation
        ));
        self.member_id.clear();
        self.generation = -1;
        self.positions.clear();
        self.link.connections.clear();
        tokio::time::sleep(Duration::from_millis(500 + self.rng.below(4_000))).await;
    }

    /// The member's process pauses past its session timeout, then commits its positions
    /// with its old generation, as a consumer's auto-commit would after a long pause.
    async fn stall(&mut self) {
        let pause_ms = SESSION_TIMEOUT_MS as u64 + 500 + self.rng.below(2_000);
        self.event(format!(
            "stalls {pause_ms} ms in generation {}",
            self.generation
        ));
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        self.commit().await;
    }

    /// JoinGroup, then SyncGroup (computing the assignment when leader), then where to start.
    async fn join(&mut self) {
        let subscription = Subscription {
            topics: vec![TOPIC.to_owned()],
            owned: Vec::new(),
            generation: -1,
        };
        let request = GroupRequest::Join {
            group: GROUP.to_owned(),
            member_id: self.member_id.clone(),
            session_timeout_ms: SESSION_TIMEOUT_MS,
            rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
            metadata: encode_subscription(&subscription).to_vec(),
        };
        let Some(joined) = self.link.call(request).await else {
            tokio::time::sleep(BACKOFF).await;
            return;
        };
        match joined.error {
            0 => {}
            MEMBER_ID_REQUIRED => {
                self.member_id = joined.member_id;
                return;
            }
            UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                return;
            }
            _ => {
                tokio::time::sleep(BACKOFF).await;
                return;
            }
        }
        self.member_id = joined.member_id.clone();
        let generation = joined.generation;
        if self.faulty() && self.rng.chance(10) {
            self.event(format!("killed after joining generation {generation}"));
            self.crash().await;
            return;
        }
        let mut assignments = Vec::new();
        if joined.leader == joined.member_id {
            let members: Vec<AssignorMember> = joined
                .members
                .iter()
                .filter_map(|(member_id, metadata)| {
                    let subscription = decode_subscription(&metadata.clone().into()).ok()?;
                    Some(AssignorMember {
                        member_id: member_id.clone(),
                        group_instance_id: None,
                        subscription,
                    })
                })
                .collect();
            let counts = BTreeMap::from([(TOPIC.to_owned(), i32::from(PARTITIONS))]);
            for (member_id, partitions) in assign(Assignor::Range, &members, &counts) {
                assignments.push((member_id, encode_assignment(&partitions).to_vec()));
            }
        }
        let synced = self
            .link
            .call(GroupRequest::Sync {
                group: GROUP.to_owned(),
                member_id: self.member_id.clone(),
                generation,
                assignments,
            })
            .await;
        let Some(synced) = synced else {
            return;
        };
        if synced.error != 0 {
            if synced.error == UNKNOWN_MEMBER_ID {
                self.member_id.clear();
            }
            return;
        }
        let Ok(partitions) = decode_assignment(&synced.assignment.into()) else {
            self.world
                .borrow_mut()
                .violation(format!("consumer {}: unreadable assignment", self.index));
            return;
        };
        let partitions: Vec<i32> = partitions
            .into_iter()
            .filter(|(topic, _)| topic == TOPIC)
            .map(|(_, partition)| partition)
            .collect();
        self.event(format!(
            "{} owns {partitions:?} in generation {generation}",
            self.member_id
        ));
        {
            let mut world = self.world.borrow_mut();
            assigned(&mut world, generation, &self.member_id, &partitions);
            // A new assignment restarts from the committed offsets, even in the same
            // generation (a known member rejoining a Stable group gets it back unchanged).
            let member_id = &self.member_id;
            world
                .groups
                .polled
                .retain(|(member, _, _), _| member != member_id);
        }
        let Some(positions) = self.committed(&partitions).await else {
            return;
        };
        self.positions = positions;
        self.generation = generation;
        self.next_heartbeat_ms = sim_ms() + HEARTBEAT_INTERVAL_MS;
        self.next_commit_ms = sim_ms() + COMMIT_INTERVAL_MS;
    }

    /// Where to start reading each partition: its committed offset, or the log start.
    async fn committed(&mut self, partitions: &[i32]) -> Option<BTreeMap<i32, i64>> {
        let (floors, acks_before) = {
            let world = self.world.borrow();
            let floors: BTreeMap<i32, i64> = partitions
                .iter()
                .filter_map(|partition| {
                    let latest = world.groups.latest_commit.get(partition)?;
                    Some((*partition, latest.0))
                })
                .collect();
            (floors, world.groups.commits_acknowledged)
        };
        let answer = self
            .link
            .call(GroupRequest::FetchOffsets {
                group: GROUP.to_owned(),
                partitions: partitions
                    .iter()
                    .map(|&partition| (TOPIC.to_owned(), partition))
                    .collect(),
            })
            .await?;
        if answer.error != 0 {
            return None;
        }
        let mut positions = BTreeMap::new();
        let mut world = self.world.borrow_mut();
        // A commit acknowledged while the fetch was out may be a new generation's, lower.
        let comparable = world.groups.commits_acknowledged == acks_before;
        for (_, partition, offset) in answer.offsets {
            let floor = floors.get(&partition).copied().unwrap_or(-1);
            if comparable && offset < floor {
                world.violation(format!(
                    "{GROUP} read back committed offset {offset} for {TOPIC}-{partition}, below \
                     the acknowledged {floor}"
                ));
            }
            positions.insert(partition, offset.max(0));
        }
        Some(positions)
    }

    fn rejoin(&mut self, error: i16, after: &str) {
        self.event(format!(
            "{after} in generation {}: error {error}, rejoins",
            self.generation
        ));
        if error == UNKNOWN_MEMBER_ID {
            self.member_id.clear();
        }
        self.generation = -1;
        self.positions.clear();
    }

    async fn heartbeat(&mut self) {
        let answer = self
            .link
            .call(GroupRequest::Heartbeat {
                group: GROUP.to_owned(),
                member_id: self.member_id.clone(),
                generation: self.generation,
            })
            .await;
        let Some(answer) = answer else {
            return;
        };
        match answer.error {
            0 | NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS => {}
            REBALANCE_IN_PROGRESS => {
                // The Java client commits in onPartitionsRevoked before it rejoins.
                self.commit().await;
                if self.generation >= 0 {
                    self.rejoin(REBALANCE_IN_PROGRESS, "heartbeat");
                }
            }
            error => self.rejoin(error, "heartbeat"),
        }
    }

    /// Commits the positions with the member's generation.
    async fn commit(&mut self) {
        if self.positions.is_empty() {
            return;
        }
        let offsets: Vec<(i32, i64)> = self
            .positions
            .iter()
            .map(|(&partition, &offset)| (partition, offset))
            .collect();
        let generation = self.generation;
        let answer = self
            .link
            .call(GroupRequest::Commit {
                group: GROUP.to_owned(),
                member_id: self.member_id.clone(),
                generation,
                offsets: offsets
                    .iter()
                    .map(|&(partition, offset)| (TOPIC.to_owned(), partition, offset))
                    .collect(),
            })
            .await;
        let Some(answer) = answer else {
            return;
        };
        match answer.error {
            0 => {
                self.event(format!("committed {offsets:?} in generation {generation}"));
                commit_acknowledged(&mut self.world.borrow_mut(), generation, &offsets);
            }
            NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS => {}
            // A commit while the group rebalances is accepted; this one is left for the
            // next generation's owner.
            REBALANCE_IN_PROGRESS => {}
            error => self.rejoin(error, "commit"),
        }
    }

    /// Reads each owned partition once from its leader.
    async fn poll(&mut self) {
        let partitions: Vec<(i32, i64)> = self
            .positions
            .iter()
            .map(|(&partition, &offset)| (partition, offset))
            .collect();
        for (partition, offset) in partitions {
            let node = match self.leaders.get(&partition) {
                Some(&node) => node,
                None => self.link.any_node(),
            };
            let request = ConsumeRequest {
                topic: TOPIC.to_owned(),
                partition,
                offset,
                read_committed: false,
            };
            let Ok(body) = serde_json::to_vec(&request) else {
                continue;
            };
            let answer = tokio::time::timeout(
                ANSWER_TIMEOUT,
                self.link.exchange(node, wire::CONSUME, &body),
            )
            .await;
            let answer: Option<ConsumeAnswer> = match answer {
                Ok(Some((wire::CONSUME_ANSWER, payload))) => serde_json::from_slice(&payload).ok(),
                _ => None,
            };
            let Some(answer) = answer else {
                self.link.connections.remove(&node);
                self.leaders.remove(&partition);
                continue;
            };
            if answer.error_code != 0 {
                match u64::try_from(answer.leader_hint) {
                    Ok(leader) if leader != node => self.leaders.insert(partition, leader),
                    _ => self.leaders.remove(&partition),
                };
                // Only the partition's newest leader speaks for it: a deposed one not yet told
                // (isolated from the quorum) answers from its older log, as Kafka's would to a
                // consumer without leader epochs (KIP-320 fences those; this one sends none).
                let mut world = self.world.borrow_mut();
                if answer.error_code == ResponseError::OffsetOutOfRange.code()
                    && world.leads_newest_epoch(TOPIC, partition, node as i32)
                {
                    world.violation(format!(
                        "consumer {} at offset {offset} of {TOPIC}-{partition} is out of the \
                         range of its leader {node}: records it read or committed are gone",
                        self.index
                    ));
                }
                continue;
            }
            self.leaders.insert(partition, node);
            self.take(partition, answer.records);
        }
    }

    /// Records polled from `partition`: checked, consumed, and the position moved past them.
    fn take(&mut self, partition: i32, records: Vec<(i64, String)>) {
        let Some(last) = records.last().map(|(offset, _)| *offset) else {
            return;
        };
        let mut world = self.world.borrow_mut();
        let key = (self.member_id.clone(), self.generation, partition);
        let mut previous = world.groups.polled.get(&key).copied();
        for (offset, value) in records {
            if previous.is_some_and(|previous| offset <= previous) {
                let text = format!(
                    "consumer {} polled offset {offset} of {TOPIC}-{partition} after {} in \
                     generation {}",
                    self.index,
                    previous.unwrap_or(-1),
                    self.generation
                );
                world.violation(text);
            }
            previous = Some(offset);
            world.groups.consumed.insert(value);
        }
        world.groups.polled.insert(key, last);
        self.positions.insert(partition, last + 1);
    }
}
