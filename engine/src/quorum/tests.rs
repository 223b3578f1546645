//! Three quorum nodes on an in-memory network with durable state kept apart from memory:
//! election, replication of proposals in one order, a leader crash and restart, and runs
//! reproduced exactly by their seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::eraftpb::{Entry, HardState, Message};

use super::node::{NodeId, ProposeError, QuorumConfig, QuorumNode, QuorumOutput};

const VOTERS: [NodeId; 3] = [1, 2, 3];

/// What a node's disk holds.
#[derive(Debug, Clone, Default)]
struct Disk {
    hard_state: HardState,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Cluster {
    seed: u64,
    nodes: BTreeMap<NodeId, QuorumNode>,
    disks: BTreeMap<NodeId, Disk>,
    applied: BTreeMap<NodeId, Vec<(u64, Vec<u8>)>>,
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
        let node = QuorumNode::new(
            id,
            &VOTERS,
            disk.hard_state,
            &disk.entries,
            QuorumConfig::default(),
            self.seed.wrapping_mul(31).wrapping_add(id),
        );
        self.nodes.insert(id, node);
        self.applied.insert(id, Vec::new());
        self.down.remove(&id);
        self.drain(id);
    }

    fn crash(&mut self, id: NodeId) {
        self.down.insert(id);
        self.nodes.remove(&id);
    }

    /// Carries out a node's outputs in order.
    fn drain(&mut self, id: NodeId) {
        while let Some(output) = self.nodes.get_mut(&id).and_then(QuorumNode::poll_output) {
            match output {
                QuorumOutput::Send(message) => self.network.push_back(message),
                QuorumOutput::Persist {
                    entries,
                    hard_state,
                    snapshot,
                } => {
                    assert!(snapshot.is_none(), "no snapshots in these tests");
                    let disk = self.disks.get_mut(&id).unwrap();
                    if let Some(first) = entries.first() {
                        disk.entries.retain(|entry| entry.index < first.index);
                        disk.entries.extend(entries);
                    }
                    if let Some(hard_state) = hard_state {
                        disk.hard_state = hard_state;
                    }
                }
                QuorumOutput::Apply { index, data } => {
                    let applied = self.applied.get_mut(&id).unwrap();
                    assert!(
                        applied.last().is_none_or(|(last, _)| *last < index),
                        "applied in log order"
                    );
                    applied.push((index, data));
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
        self.applied[&id]
            .iter()
            .map(|(_, data)| data.clone())
            .collect()
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
