//! Criterion benchmarks of the group coordinator state machine: a full rebalance of a large
//! group, a heartbeat and an offset commit, each driven as the broker's driver drives it (the
//! appends it asks for are acknowledged at once, so this is the coordinator's own CPU cost).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spate_engine::group::calls::{CommitRequest, JoinRequest, MemberRef, SyncRequest};
use spate_engine::group::{Call, CallId, CoordinatorConfig, GroupCoordinator, Output, Reply};

const MEMBERS: usize = 100;
const PARTITIONS: usize = 1000;

struct Driver {
    coordinator: GroupCoordinator,
    now_ms: i64,
    next_call: CallId,
    replies: Vec<(CallId, Reply)>,
}

impl Driver {
    fn new() -> Driver {
        let mut coordinator = GroupCoordinator::new(CoordinatorConfig {
            group_initial_rebalance_delay_ms: 0,
            ..CoordinatorConfig::default()
        });
        coordinator.finish_load(0);
        Driver {
            coordinator,
            now_ms: 0,
            next_call: 0,
            replies: Vec::new(),
        }
    }

    fn call(&mut self, call: Call) -> CallId {
        let id = self.next_call;
        self.next_call += 1;
        self.coordinator.handle_call(self.now_ms, id, call);
        while let Some(output) = self.coordinator.poll_output() {
            match output {
                Output::Reply(call, reply) => self.replies.push((call, reply)),
                Output::Append { id, .. } => {
                    self.coordinator.append_completed(self.now_ms, id, Ok(()))
                }
            }
        }
        // Appends complete in the loop above and may release more replies.
        while let Some(output) = self.coordinator.poll_output() {
            if let Output::Reply(call, reply) = output {
                self.replies.push((call, reply));
            }
        }
        id
    }

    /// Joins as `member_id`: the first time with no id (given this one), then with it.
    fn join(&mut self, member_id: &str) -> CallId {
        let known = self
            .coordinator
            .groups()
            .get("bench")
            .is_some_and(|group| group.members.contains_key(member_id));
        self.call(Call::Join(JoinRequest {
            group_id: "bench".into(),
            member_id: if known {
                member_id.into()
            } else {
                String::new()
            },
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from(vec![0u8; 64]))],
            client_id: "bench".into(),
            client_host: "/127.0.0.1".into(),
            require_known_member_id: false,
            new_member_id: member_id.into(),
            ..JoinRequest::default()
        }))
    }

    fn generation(&self) -> i32 {
        self.coordinator.groups()["bench"].generation_id
    }

    /// Every member rejoins, the leader assigns `PARTITIONS` partitions, all sync.
    fn rebalance(&mut self, members: &[String]) {
        for member in members {
            self.join(member);
        }
        let generation = self.generation();
        let share = Bytes::from(vec![0u8; 16 + 4 * PARTITIONS / MEMBERS]);
        let assignments: Vec<(String, Bytes)> = members
            .iter()
            .map(|member| (member.clone(), share.clone()))
            .collect();
        let leader = self.coordinator.groups()["bench"]
            .leader_id
            .clone()
            .expect("leader");
        for member in members {
            let assignments = if *member == leader {
                assignments.clone()
            } else {
                Vec::new()
            };
            self.call(Call::Sync(SyncRequest {
                member: MemberRef {
                    group_id: "bench".into(),
                    member_id: member.clone(),
                    group_instance_id: None,
                    generation_id: generation,
                },
                assignments,
                ..SyncRequest::default()
            }));
        }
        self.replies.clear();
    }
}

fn stable_group() -> (Driver, Vec<String>) {
    let mut driver = Driver::new();
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("member-{i}")).collect();
    driver.rebalance(&members);
    driver.rebalance(&members);
    (driver, members)
}

fn coordinator(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_coordinator");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function("rebalance_100_members_1000_partitions", |b| {
        let (mut driver, members) = stable_group();
        b.iter(|| driver.rebalance(&members))
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("heartbeat_in_group_of_100", |b| {
        let (mut driver, members) = stable_group();
        let generation = driver.generation();
        let mut next = 0;
        b.iter(|| {
            next = (next + 1) % MEMBERS;
            driver.call(Call::Heartbeat(MemberRef {
                group_id: "bench".into(),
                member_id: members[next].clone(),
                group_instance_id: None,
                generation_id: generation,
            }));
            driver.replies.clear();
        })
    });
    group.bench_function("commit_one_offset", |b| {
        let (mut driver, members) = stable_group();
        let generation = driver.generation();
        let mut offset = 0;
        b.iter(|| {
            offset += 1;
            driver.call(Call::Commit(CommitRequest {
                member: MemberRef {
                    group_id: "bench".into(),
                    member_id: members[0].clone(),
                    group_instance_id: None,
                    generation_id: generation,
                },
                offsets: vec![("orders".into(), 0, offset, -1, None)],
                ..CommitRequest::default()
            }));
            driver.replies.clear();
        })
    });
    group.finish();
}

criterion_group!(benches, coordinator);
criterion_main!(benches);
