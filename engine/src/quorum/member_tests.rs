//! Three [`QuorumMember`]s on an in-memory network, with their disks kept apart from their
//! memory: they elect a controller, register as brokers, create a topic asked on a follower,
//! and move the leaderships of a controller that died; a run is reproduced by its seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::eraftpb::{Entry, HardState, Snapshot};

use super::admin::{TopicAdmin, TopicToCreate};
use super::member::{
    image_from_snapshot, BrokerEndpoint, ControllerReply, ControllerRequest, MemberConfig,
    MemberInput, MemberOutput, QuorumMember,
};
use super::{ControllerConfig, DurableState, MetadataImage, MetadataRecord, NodeId, QuorumConfig};

const VOTERS: [NodeId; 3] = [1, 2, 3];

/// What a member's disk holds.
#[derive(Debug, Clone, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Disk {
    fn keep_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        self.entries.retain(|entry| entry.index > index);
        self.snapshot = Some(snapshot);
    }
}

enum Packet {
    Raft(raft::eraftpb::Message),
    Request(ControllerRequest),
    Reply(ControllerReply),
}

struct Cluster {
    seed: u64,
    members: BTreeMap<NodeId, QuorumMember<u64>>,
    disks: BTreeMap<NodeId, Disk>,
    network: VecDeque<(NodeId, Packet)>,
    answers: BTreeMap<u64, Vec<super::admin::ItemResult>>,
    down: BTreeSet<NodeId>,
    now_ms: i64,
    trace: Vec<String>,
    /// Topic requests a driver could not send are reported lost, not put on the network.
    lose_topic_requests: bool,
}

fn config(node_id: NodeId) -> MemberConfig {
    MemberConfig {
        node_id,
        voters: VOTERS.to_vec(),
        broker: Some(BrokerEndpoint {
            host: format!("node-{node_id}"),
            port: 9092,
            data_lost: false,
        }),
        quorum: QuorumConfig::default(),
        controller: ControllerConfig {
            broker_session_timeout_ms: 9_000,
            ..ControllerConfig::default()
        },
        broker_heartbeat_interval_ms: 500,
        leader_imbalance_check_interval_ms: 300_000,
        snapshot_interval_records: 20,
    }
}

impl Cluster {
    fn new(seed: u64) -> Cluster {
        let mut cluster = Cluster {
            seed,
            members: BTreeMap::new(),
            disks: BTreeMap::new(),
            network: VecDeque::new(),
            answers: BTreeMap::new(),
            down: BTreeSet::new(),
            now_ms: 0,
            trace: Vec::new(),
            lose_topic_requests: false,
        };
        for id in VOTERS {
            cluster.disks.insert(id, Disk::default());
            cluster.start(id);
        }
        cluster
    }

    fn start(&mut self, id: NodeId) {
        let disk = self.disks[&id].clone();
        let image = disk
            .snapshot
            .as_ref()
            .map_or_else(MetadataImage::new, |snapshot| {
                image_from_snapshot(&snapshot.data).expect("a snapshot this test wrote")
            });
        let durable = DurableState {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot,
            entries: disk.entries,
        };
        let seed = self.seed ^ (id << 32) ^ self.now_ms as u64;
        self.members
            .insert(id, QuorumMember::new(config(id), durable, image, seed));
        self.down.remove(&id);
    }

    fn crash(&mut self, id: NodeId) {
        self.members.remove(&id);
        self.down.insert(id);
        for survivor in VOTERS.iter().filter(|&&other| other != id) {
            if let Some(member) = self.members.get_mut(survivor) {
                member.handle(self.now_ms, MemberInput::VoterGone { voter: id });
            }
            self.drain(*survivor);
        }
    }

    fn handle(&mut self, id: NodeId, input: MemberInput<u64>) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.handle(self.now_ms, input);
        self.drain(id);
    }

    fn drain(&mut self, id: NodeId) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let disk = self.disks.get_mut(&id).expect("every member has a disk");
        while let Some(output) = member.poll_output() {
            match output {
                MemberOutput::Request {
                    request: ControllerRequest::Topics { request_id, .. },
                    ..
                } if self.lose_topic_requests => {
                    member.handle(self.now_ms, MemberInput::RequestLost { request_id });
                }
                MemberOutput::Raft(message) => {
                    self.network.push_back((message.to, Packet::Raft(message)))
                }
                MemberOutput::Request { to, request } => {
                    self.network.push_back((to, Packet::Request(request)))
                }
                MemberOutput::Reply { to, reply } => {
                    self.network.push_back((to, Packet::Reply(reply)))
                }
                MemberOutput::Persist {
                    entries,
                    hard_state,
                    snapshot,
                } => {
                    if let Some(snapshot) = snapshot {
                        disk.keep_snapshot(snapshot);
                    }
                    if let Some(first) = entries.first() {
                        let first = first.index;
                        disk.entries.retain(|entry| entry.index < first);
                        disk.entries.extend(entries);
                    }
                    if let Some(hard_state) = hard_state {
                        disk.hard_state = hard_state;
                    }
                }
                MemberOutput::Compact(snapshot) => disk.keep_snapshot(snapshot),
                MemberOutput::Answer { reply, results, .. } => {
                    self.answers.insert(reply, results);
                }
                MemberOutput::Failed(reason) => panic!("member {id} failed: {reason}"),
            }
        }
        let member = &self.members[&id];
        self.trace.push(format!(
            "{} {id} leader={:?} term={} applied={}",
            self.now_ms,
            member.node().leader(),
            member.node().term(),
            member.image().last_applied_index()
        ));
    }

    /// Runs `ms` of time: ticks every 10 ms, every packet delivered within the tick.
    fn run_ms(&mut self, ms: i64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.now_ms += 10;
            for id in VOTERS {
                self.handle(id, MemberInput::Tick);
            }
            while let Some((to, packet)) = self.network.pop_front() {
                if self.down.contains(&to) {
                    continue;
                }
                let input = match packet {
                    Packet::Raft(message) => MemberInput::Raft(message),
                    Packet::Request(request) => MemberInput::Request(request),
                    Packet::Reply(reply) => MemberInput::Reply(reply),
                };
                self.handle(to, input);
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let leaders: BTreeSet<NodeId> = self
            .members
            .values()
            .filter(|member| member.node().is_leader())
            .map(|member| member.node().id())
            .collect();
        assert!(leaders.len() <= 1, "two leaders in one run: {leaders:?}");
        leaders.into_iter().next()
    }

    fn unfenced_brokers(&self, id: NodeId) -> BTreeSet<i32> {
        self.members[&id]
            .image()
            .brokers()
            .values()
            .filter(|broker| !broker.fenced)
            .map(|broker| broker.broker_id)
            .collect()
    }
}

fn create(name: &str, partitions: i32) -> TopicAdmin {
    TopicAdmin::Create(vec![TopicToCreate {
        name: name.to_owned(),
        partitions,
        replication_factor: 3,
        configs: BTreeMap::new(),
    }])
}

#[test]
fn members_elect_register_and_create_a_topic_asked_on_a_follower() {
    let mut cluster = Cluster::new(7);
    cluster.run_ms(3_000);
    let leader = cluster.leader().expect("a controller within 3 s");
    for id in VOTERS {
        assert_eq!(cluster.unfenced_brokers(id), BTreeSet::from([1, 2, 3]));
        assert!(cluster.members[&id].broker_epoch().is_some());
        let member = cluster.members.get_mut(&id).unwrap();
        let (_, _, layout) = member
            .layout_update()
            .expect("registered: the shards get metadata");
        assert_eq!(layout.controller_id, leader as i32);
        assert!(member.layout_update().is_none(), "no change, no update");
    }
    let follower = VOTERS.into_iter().find(|&id| id != leader).unwrap();
    cluster.handle(
        follower,
        MemberInput::Admin {
            admin: create("orders", 3),
            reply: 1,
        },
    );
    cluster.run_ms(500);
    assert_eq!(cluster.answers.get(&1), Some(&vec![Ok(())]));
    for id in VOTERS {
        let image = cluster.members[&id].image();
        let topic_id = image.topic_id("orders").expect("applied everywhere");
        assert_eq!(image.topics()[&topic_id].partitions.len(), 3);
        // The topic and its partitions are one log entry: they commit together, so a new
        // controller can never find the topic without its partitions.
        let entry = cluster.disks[&id]
            .entries
            .iter()
            .filter_map(|entry| MetadataRecord::decode_entry(&entry.data).ok())
            .find(|records| {
                records.iter().any(|record| {
                    matches!(record, MetadataRecord::Topic { name, .. } if name == "orders")
                })
            })
            .expect("the creation's entry");
        let partitions = entry
            .iter()
            .filter(|record| matches!(record, MetadataRecord::Partition { .. }))
            .count();
        assert_eq!(partitions, 3, "{entry:?}");
    }
    // The same name again: refused by the controller, answered on the follower.
    cluster.handle(
        follower,
        MemberInput::Admin {
            admin: create("orders", 1),
            reply: 2,
        },
    );
    cluster.run_ms(500);
    let refused = &cluster.answers[&2];
    assert!(matches!(refused.as_slice(), [Err(_)]), "{refused:?}");
}

#[test]
fn a_dead_controller_is_fenced_at_once_and_its_leaderships_move() {
    let mut cluster = Cluster::new(11);
    cluster.run_ms(3_000);
    let leader = cluster.leader().expect("a controller");
    cluster.handle(
        leader,
        MemberInput::Admin {
            admin: create("orders", 6),
            reply: 1,
        },
    );
    cluster.run_ms(500);
    assert_eq!(cluster.answers.get(&1), Some(&vec![Ok(())]));
    cluster.crash(leader);
    // An election (0.5 to 1 s) and the new controller's first entry; far less than a broker
    // session (9 s): the raft connection from the dead leader closed.
    cluster.run_ms(2_000);
    let new_leader = cluster.leader().expect("a new controller");
    assert_ne!(new_leader, leader);
    let image = cluster.members[&new_leader].image();
    assert!(image.broker(leader as i32).unwrap().fenced);
    for topic in image.topics().values() {
        for state in topic.partitions.values() {
            assert_ne!(state.leader, leader as i32, "{state:?}");
            assert!(!state.isr.contains(&(leader as i32)), "{state:?}");
        }
    }
    // It comes back with its disk: registers again, unfenced, and catches up.
    cluster.start(leader);
    cluster.run_ms(3_000);
    assert_eq!(
        cluster.unfenced_brokers(new_leader),
        BTreeSet::from([1, 2, 3])
    );
    assert_eq!(
        cluster.members[&leader].image().last_applied_index(),
        cluster.members[&new_leader].image().last_applied_index()
    );
}

#[test]
fn a_run_is_reproduced_by_its_seed() {
    let run = |seed| {
        let mut cluster = Cluster::new(seed);
        cluster.run_ms(2_000);
        let leader = cluster.leader().unwrap();
        cluster.crash(leader);
        cluster.run_ms(2_000);
        cluster.trace
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn a_topic_request_that_cannot_be_forwarded_is_answered_at_once() {
    let mut cluster = Cluster::new(3);
    cluster.run_ms(3_000);
    let leader = cluster.leader().expect("a controller");
    let follower = VOTERS.into_iter().find(|&id| id != leader).unwrap();
    cluster.lose_topic_requests = true;
    cluster.handle(
        follower,
        MemberInput::Admin {
            admin: create("orders", 1),
            reply: 1,
        },
    );
    let not_controller = kafka_protocol::error::ResponseError::NotController.code();
    let answer = &cluster.answers[&1];
    assert!(
        matches!(answer.as_slice(), [Err((code, _))] if *code == not_controller),
        "{answer:?}"
    );
    cluster.lose_topic_requests = false;
    cluster.run_ms(500);
    assert!(cluster.members[&leader]
        .image()
        .topic_id("orders")
        .is_none());
}
