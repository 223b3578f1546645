//! Consumer group load against a live broker, with real protocol clients on threads.
//!
//! `group-bench stable`: MEMBERS members (one thread and connection each) join one group over a
//! topic of PARTITIONS partitions, each running the classic protocol as a consumer does
//! (JoinGroup with the KIP-394 round trip, range assignment by the leader, SyncGroup, a
//! heartbeat every HEARTBEAT_MS, rejoin on REBALANCE_IN_PROGRESS). Prints, as JSON, how long
//! after the last member's first JoinGroup the group was Stable with every member synced.
//!
//! `group-bench heartbeats`: the same group, then RATE heartbeats per second in total for
//! SECONDS seconds; prints the heartbeats achieved per second and their latency percentiles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, Subcommand};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use spate_benches::kafka::Connection;

#[derive(Parser)]
#[command(about = "Consumer group load against a live broker")]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Members in the group.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Partitions of the topic the group reads.
    #[arg(long, default_value_t = 1000)]
    partitions: i32,
    /// Each member's heartbeat interval while it waits.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time from the last member's join to a Stable group.
    Stable,
    /// Heartbeats at a fixed total rate from a Stable group.
    Heartbeats {
        /// Heartbeats per second, all members together.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// How long.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

const ERROR_MEMBER_ID_REQUIRED: i16 = 79;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// What the members report to the main thread.
#[derive(Default)]
struct Progress {
    first_join_sent: Vec<Option<Instant>>,
    /// Per member: the generation it last synced and when.
    synced: Vec<Option<(i32, Instant)>>,
    /// Per generation: how many members its leader assigned.
    group_size: std::collections::BTreeMap<i32, usize>,
    heartbeat_latencies_us: Vec<u64>,
    heartbeat_errors: u64,
}

struct Shared {
    progress: Mutex<Progress>,
    stop: AtomicBool,
    /// Per-member heartbeat interval in µs; changed by the heartbeats phase.
    heartbeat_interval_us: std::sync::atomic::AtomicU64,
    measure_heartbeats: AtomicBool,
}

fn subscription(topic: &str) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(0);
    ConsumerProtocolSubscription::default()
        .with_topics(vec![text(topic)])
        .encode(&mut out, 0)
        .expect("encodes");
    out.freeze()
}

fn assignment(topic: &str, partitions: Vec<i32>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(0);
    ConsumerProtocolAssignment::default()
        .with_assigned_partitions(vec![consumer_protocol_assignment::TopicPartition::default(
        )
        .with_topic(TopicName(text(topic)))
        .with_partitions(partitions)])
        .encode(&mut out, 0)
        .expect("encodes");
    out.freeze()
}

/// The range assignor: contiguous runs of partitions to members sorted by id.
fn range_assign(
    topic: &str,
    partitions: i32,
    members: &[join_group_response::JoinGroupResponseMember],
) -> Vec<sync_group_request::SyncGroupRequestAssignment> {
    let mut ids: Vec<&StrBytes> = members.iter().map(|member| &member.member_id).collect();
    ids.sort();
    let count = ids.len() as i32;
    let (share, extra) = (partitions / count, partitions % count);
    let mut next = 0;
    ids.into_iter()
        .enumerate()
        .map(|(index, id)| {
            let take = share + i32::from((index as i32) < extra);
            let owned: Vec<i32> = (next..next + take).collect();
            next += take;
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(id.clone())
                .with_assignment(assignment(topic, owned))
        })
        .collect()
}

fn run_member(index: usize, args: Arc<(String, String, String, i32)>, shared: Arc<Shared>) {
    let (bootstrap, group, topic, partitions) = &*args;
    let mut connection = Connection::open(bootstrap, &format!("member-{index}")).expect("connects");
    let mut member_id = StrBytes::default();
    let protocols = vec![join_group_request::JoinGroupRequestProtocol::default()
        .with_name(text("range"))
        .with_metadata(subscription(topic))];
    'rejoin: while !shared.stop.load(Ordering::Relaxed) {
        {
            let mut progress = shared.progress.lock().unwrap();
            progress.first_join_sent[index].get_or_insert_with(Instant::now);
        }
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(60_000)
            .with_member_id(member_id.clone())
            .with_protocol_type(text("consumer"))
            .with_protocols(protocols.clone());
        let ResponseKind::JoinGroup(joined) = connection
            .call(ApiKey::JoinGroup, 7, RequestKind::JoinGroup(request))
            .expect("JoinGroup")
        else {
            unreachable!()
        };
        if joined.error_code == ERROR_MEMBER_ID_REQUIRED {
            member_id = joined.member_id;
            continue;
        }
        if joined.error_code != 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        member_id = joined.member_id.clone();
        let generation = joined.generation_id;
        let assignments = if joined.leader == member_id {
            shared
                .progress
                .lock()
                .unwrap()
                .group_size
                .insert(generation, joined.members.len());
            range_assign(topic, *partitions, &joined.members)
        } else {
            Vec::new()
        };
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id(generation)
            .with_member_id(member_id.clone())
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")))
            .with_assignments(assignments);
        let ResponseKind::SyncGroup(synced) = connection
            .call(ApiKey::SyncGroup, 5, RequestKind::SyncGroup(sync))
            .expect("SyncGroup")
        else {
            unreachable!()
        };
        if synced.error_code != 0 {
            continue;
        }
        shared.progress.lock().unwrap().synced[index] = Some((generation, Instant::now()));
        let mut next_beat = Instant::now();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                break 'rejoin;
            }
            let interval =
                Duration::from_micros(shared.heartbeat_interval_us.load(Ordering::Relaxed));
            next_beat += interval;
            let now = Instant::now();
            if next_beat > now {
                std::thread::sleep(next_beat - now);
            } else if now - next_beat > interval * 100 {
                next_beat = now; // far behind: do not burst to catch up
            }
            let heartbeat = HeartbeatRequest::default()
                .with_group_id(GroupId(text(group)))
                .with_generation_id(generation)
                .with_member_id(member_id.clone());
            let sent = Instant::now();
            let ResponseKind::Heartbeat(beat) = connection
                .call(ApiKey::Heartbeat, 4, RequestKind::Heartbeat(heartbeat))
                .expect("Heartbeat")
            else {
                unreachable!()
            };
            if shared.measure_heartbeats.load(Ordering::Relaxed) {
                let mut progress = shared.progress.lock().unwrap();
                progress
                    .heartbeat_latencies_us
                    .push(sent.elapsed().as_micros() as u64);
                if beat.error_code != 0 {
                    progress.heartbeat_errors += 1;
                }
            }
            if beat.error_code != 0 {
                continue 'rejoin;
            }
        }
    }
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_members(vec![
            leave_group_request::MemberIdentity::default().with_member_id(member_id)
        ]);
    let _ = connection.call(ApiKey::LeaveGroup, 5, RequestKind::LeaveGroup(leave));
}

/// When every member has synced one generation whose leader assigned all of them.
fn stable_at(progress: &Progress, members: usize) -> Option<Instant> {
    let (generation, _) = progress.synced.first()?.as_ref()?;
    let all_synced = progress
        .synced
        .iter()
        .all(|synced| synced.is_some_and(|(g, _)| g == *generation));
    if !all_synced || progress.group_size.get(generation) != Some(&members) {
        return None;
    }
    progress.synced.iter().flatten().map(|(_, at)| *at).max()
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    let topic = format!("group-bench-{}", std::process::id());
    let group = format!("group-bench-{}", std::process::id());
    let mut admin = Connection::open(&args.bootstrap, "group-bench").expect("connects");
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(TopicName(text(&topic)))
            .with_num_partitions(args.partitions)
            .with_replication_factor(1)]);
    let ResponseKind::CreateTopics(created) = admin
        .call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(create))
        .expect("CreateTopics")
    else {
        unreachable!()
    };
    assert_eq!(created.topics[0].error_code, 0, "creating {topic}");
    let find = FindCoordinatorRequest::default().with_key(text(&group));
    admin
        .call(
            ApiKey::FindCoordinator,
            3,
            RequestKind::FindCoordinator(find),
        )
        .expect("FindCoordinator");

    let shared = Arc::new(Shared {
        progress: Mutex::new(Progress {
            first_join_sent: vec![None; args.members],
            synced: vec![None; args.members],
            ..Progress::default()
        }),
        stop: AtomicBool::new(false),
        heartbeat_interval_us: (args.heartbeat_ms * 1000).into(),
        measure_heartbeats: AtomicBool::new(false),
    });
    let member_args = Arc::new((args.bootstrap.clone(), group, topic, args.partitions));
    let threads: Vec<_> = (0..args.members)
        .map(|index| {
            let (member_args, shared) = (Arc::clone(&member_args), Arc::clone(&shared));
            std::thread::spawn(move || run_member(index, member_args, shared))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (stable, last_join) = loop {
        assert!(Instant::now() < deadline, "the group never became stable");
        std::thread::sleep(Duration::from_millis(5));
        let progress = shared.progress.lock().unwrap();
        if let Some(stable) = stable_at(&progress, args.members) {
            let last_join = progress.first_join_sent.iter().flatten().max().copied();
            break (stable, last_join.expect("members joined"));
        }
    };
    let stable_ms = stable.saturating_duration_since(last_join).as_secs_f64() * 1000.0;
    match args.command {
        Command::Stable => {
            println!(
                "{{\"members\": {}, \"partitions\": {}, \"heartbeat_ms\": {}, \"stable_after_last_join_ms\": {stable_ms:.1}}}",
                args.members, args.partitions, args.heartbeat_ms
            );
        }
        Command::Heartbeats { rate, seconds } => {
            let interval_us = (args.members as u64 * 1_000_000 / rate.max(1)).max(1);
            shared
                .heartbeat_interval_us
                .store(interval_us, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(500));
            shared.measure_heartbeats.store(true, Ordering::Relaxed);
            let started = Instant::now();
            std::thread::sleep(Duration::from_secs(seconds));
            shared.measure_heartbeats.store(false, Ordering::Relaxed);
            let elapsed = started.elapsed().as_secs_f64();
            let mut progress = shared.progress.lock().unwrap();
            let errors = progress.heartbeat_errors;
            let latencies = &mut progress.heartbeat_latencies_us;
            latencies.sort_unstable();
            println!(
                "{{\"target_per_s\": {rate}, \"heartbeats_per_s\": {:.0}, \"errors\": {errors}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}}}",
                latencies.len() as f64 / elapsed,
                percentile(latencies, 0.5),
                percentile(latencies, 0.99),
                percentile(latencies, 0.999),
            );
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
}
