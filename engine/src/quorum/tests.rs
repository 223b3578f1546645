//! Three quorum nodes on an in-memory network with durable state kept apart from memory:
//! election, replication of proposals in one order, a leader crash and restart, snapshots and
//! log compaction (a member far behind catches up from the leader's snapshot), and runs
//! reproduced exactly by their seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::eraftpb::{Entry, HardState, Message, Snapshot};

use super::node::{DurableState, NodeId, ProposeError, QuorumConfig, QuorumNode, QuorumOutput};

const VOTERS: [NodeId; 3] = [1, 2, 3];

/// What a node's disk holds.
#[derive(Debug, Clone, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

/// The replicated state machine of these tests: the records applied, in order.
#[derive(Debug, Clone, Default)]
struct Applied {
    index: u64,
    records: Vec<Vec<u8>>,
}

impl Applied {
    fn from_snapshot(index: u64, data: &[u8]) -> Applied {
        Applied {
            index,
            records: serde_json::from_slice(data).expect("a snapshot of the records"),
        }
    }
}

#[derive(Debug)]
struct Cluster {
    seed: u64,
    nodes: BTreeMap<NodeId, QuorumNode>,
    disks: BTreeMap<NodeId, Disk>,
    applied: BTreeMap<NodeId, Applied>,
    /// Records applied between snapshots, if nodes take them.
    snapshot_interval_records: Option<u64>,
    network: VecDeque<Message>,
    down: BTreeSet<NodeId>,
    now_ms: i64,
    messages_delivered: u64,
}

impl Cluster {
    fn new(seed: u64) -> Cluster {
        let mut cluster = Cluster {
            seed,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            applied: BTreeMap::new(),
            snapshot_interval_records: None,
            network: VecDeque::new(),
            down: BTreeSet::new(),
            now_ms: 0,
            messages_delivered: 0,
        };
        for id in VOTERS {
            cluster.disks.insert(id, Disk::default());
            cluster.start(id);
        }
        cluster
    }

    /// Starts (or restarts) `id` from its disk, forgetting what it applied.
    fn start(&mut self, id: NodeId) {
        let disk = self.disks[&id].clone();
        let applied = disk
            .snapshot
            .as_ref()
            .map_or_else(Applied::default, |snapshot| {
                Applied::from_snapshot(snapshot.get_metadata().index, &snapshot.data)
            });
        let node = QuorumNode::new(
            id,
            &VOTERS,
            DurableState {
                hard_state: disk.hard_state,
                snapshot: disk.snapshot,
                entries: disk.entries,
            },
            QuorumConfig::default(),
            self.seed.wrapping_mul(31).wrapping_add(id),
        );
        self.nodes.insert(id, node);
        self.applied.insert(id, applied);
        self.down.remove(&id);
        self.drain(id);
    }

    fn crash(&mut self, id: NodeId) {
        self.down.insert(id);
        self.nodes.remove(&id);
    }

    /// Carries out a node's outputs in order.
    fn drain(&mut self, id: NodeId) {
        loop {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let Some(output) = node.poll_output() else {
                let applied = &self.applied[&id];
                match self.snapshot_interval_records {
                    Some(interval) if applied.index >= node.snapshot_index() + interval => {
                        let data = serde_json::to_vec(&applied.records).unwrap();
                        node.compact(applied.index, data);
                        continue;
                    }
                    _ => return,
                }
            };
            match output {
                QuorumOutput::Send(message) => self.network.push_back(message),
                QuorumOutput::Persist {
                    entries,
                    hard_state,
                    snapshot,
                } => {
                    let disk = self.disks.get_mut(&id).unwrap();
                    if let Some(snapshot) = snapshot {
                        disk.snapshot = Some(snapshot);
                        disk.entries.clear();
                    }
                    if let Some(first) = entries.first() {
                        disk.entries.retain(|entry| entry.index < first.index);
                        disk.entries.extend(entries);
                    }
                    if let Some(hard_state) = hard_state {
                        disk.hard_state = hard_state;
                    }
                }
                QuorumOutput::Compact(snapshot) => {
                    let disk = self.disks.get_mut(&id).unwrap();
                    let index = snapshot.get_metadata().index;
                    disk.entries.retain(|entry| entry.index > index);
                    disk.snapshot = Some(snapshot);
                }
                QuorumOutput::Install { index, data } => {
                    let applied = self.applied.get_mut(&id).unwrap();
                    assert!(
                        applied.index < index,
                        "a snapshot ahead of the applied state"
                    );
                    *applied = Applied::from_snapshot(index, &data);
                }
                QuorumOutput::Apply { index, data } => {
                    let applied = self.applied.get_mut(&id).unwrap();
                    assert!(applied.index < index, "applied in log order");
                    applied.index = index;
                    applied.records.push(data);
                }
            }
        }
    }

    /// Runs for `duration_ms`: ticks every node, delivers every message sent.
    fn run(&mut self, duration_ms: i64) {
        let end = self.now_ms + duration_ms;
        while self.now_ms < end {
            self.now_ms += 10;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.nodes.get_mut(&id).unwrap().tick(self.now_ms);
                self.drain(id);
            }
            while let Some(message) = self.network.pop_front() {
                let to = message.to;
                if self.down.contains(&to) || self.down.contains(&message.from) {
                    continue;
                }
                self.messages_delivered += 1;
                self.nodes.get_mut(&to).unwrap().step(message);
                self.drain(to);
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|node| node.is_leader())
            .map(QuorumNode::id)
            .collect();
        let top_term = self.nodes.values().map(QuorumNode::term).max()?;
        leaders
            .into_iter()
            .find(|&id| self.nodes[&id].term() == top_term)
    }

    fn propose(&mut self, data: &[u8]) {
        let leader = self.leader().expect("a leader");
        self.nodes
            .get_mut(&leader)
            .unwrap()
            .propose(data.to_vec())
            .unwrap();
        self.drain(leader);
    }

    fn applied_data(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.applied[&id].records.clone()
    }
}

#[test]
fn three_nodes_elect_one_leader_and_apply_proposals_in_one_order() {
    let mut cluster = Cluster::new(7);
    cluster.run(2_000);
    let leader = cluster.leader().expect("a leader within 2 s");
    for id in VOTERS {
        assert_eq!(cluster.nodes[&id].leader(), Some(leader), "node {id}");
    }
    let follower = VOTERS.into_iter().find(|&id| id != leader).unwrap();
    assert_eq!(
        cluster
            .nodes
            .get_mut(&follower)
            .unwrap()
            .propose(b"x".to_vec()),
        Err(ProposeError::NotLeader(Some(leader)))
    );
    for n in 0..20 {
        cluster.propose(format!("record-{n}").as_bytes());
        cluster.run(30);
    }
    cluster.run(500);
    let expected: Vec<Vec<u8>> = (0..20)
        .map(|n| format!("record-{n}").into_bytes())
        .collect();
    for id in VOTERS {
        assert_eq!(cluster.applied_data(id), expected, "node {id}");
    }
}

#[test]
fn a_crashed_leader_is_replaced_and_catches_up_from_its_disk_when_it_returns() {
    let mut cluster = Cluster::new(11);
    cluster.run(2_000);
    let first_leader = cluster.leader().unwrap();
    cluster.propose(b"before");
    cluster.run(200);
    cluster.crash(first_leader);
    cluster.run(3_000);
    let second_leader = cluster.leader().expect("the survivors elect a leader");
    assert_ne!(second_leader, first_leader);
    cluster.propose(b"after");
    cluster.run(200);
    for id in VOTERS.into_iter().filter(|&id| id != first_leader) {
        assert_eq!(
            cluster.applied_data(id),
            [b"before".to_vec(), b"after".to_vec()]
        );
    }
    cluster.start(first_leader);
    cluster.run(2_000);
    assert_eq!(
        cluster.applied_data(first_leader),
        [b"before".to_vec(), b"after".to_vec()],
        "replayed from its disk and the new leader"
    );
    assert_eq!(
        cluster.leader(),
        Some(second_leader),
        "pre-vote: no disruption"
    );
}

#[test]
fn a_minority_cannot_commit() {
    let mut cluster = Cluster::new(3);
    cluster.run(2_000);
    let leader = cluster.leader().unwrap();
    for id in VOTERS.into_iter().filter(|&id| id != leader) {
        cluster.crash(id);
    }
    cluster.propose(b"lonely");
    cluster.run(300);
    assert!(cluster.applied_data(leader).is_empty());
    cluster.run(3_000);
    assert_eq!(cluster.leader(), None, "check-quorum: it steps down");
}

#[test]
fn a_run_is_reproduced_by_its_seed() {
    let trace = |seed| {
        let mut cluster = Cluster::new(seed);
        cluster.run(1_500);
        let first = cluster.leader();
        if let Some(leader) = first {
            cluster.crash(leader);
        }
        cluster.run(2_000);
        (
            first,
            cluster.leader(),
            cluster
                .nodes
                .values()
                .map(QuorumNode::term)
                .collect::<Vec<_>>(),
            cluster.messages_delivered,
        )
    };
    for seed in [1, 2, 3] {
        assert_eq!(trace(seed), trace(seed), "seed {seed}");
    }
}

#[test]
fn a_member_far_behind_catches_up_from_the_leaders_snapshot() {
    let mut cluster = Cluster::new(5);
    cluster.snapshot_interval_records = Some(10);
    cluster.run(2_000);
    let leader = cluster.leader().unwrap();
    let behind = VOTERS.into_iter().find(|&id| id != leader).unwrap();
    cluster.propose(b"record-0");
    cluster.run(200);
    cluster.crash(behind);
    for n in 1..45 {
        cluster.propose(format!("record-{n}").as_bytes());
        cluster.run(20);
    }
    cluster.run(500);
    let expected: Vec<Vec<u8>> = (0..45)
        .map(|n| format!("record-{n}").into_bytes())
        .collect();
    assert_eq!(cluster.applied_data(leader), expected);
    let snapshot_index = cluster.nodes[&leader].snapshot_index();
    assert!(snapshot_index >= 40, "snapshot at {snapshot_index}");
    assert!(
        cluster.disks[&leader]
            .entries
            .first()
            .is_none_or(|entry| entry.index > snapshot_index),
        "the leader's log is truncated at its snapshot"
    );
    let behind_last_index = cluster.disks[&behind].entries.last().unwrap().index;
    assert!(
        behind_last_index < snapshot_index,
        "the lagging member needs entries the leader no longer has"
    );

    cluster.start(behind);
    cluster.run(2_000);
    assert_eq!(
        cluster.applied_data(behind),
        expected,
        "caught up through the snapshot"
    );
    assert!(cluster.disks[&behind].snapshot.is_some());
    // And it restarts from its own snapshot and log.
    cluster.crash(behind);
    cluster.start(behind);
    cluster.propose(b"record-45");
    cluster.run(1_000);
    let mut expected = expected;
    expected.push(b"record-45".to_vec());
    for id in VOTERS {
        assert_eq!(cluster.applied_data(id), expected, "node {id}");
    }
}
