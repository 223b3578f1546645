//! Controller-only and broker-only nodes (`--process-roles`): three controllers that hold no
//! partitions and three brokers that are no voters and fetch the metadata from them. The
//! brokers register and serve a replicated topic; with two of its three brokers dead, acks=all
//! is refused with NOT_ENOUGH_REPLICAS while acks=1 works, nothing acknowledged is lost, and
//! service returns when one comes back; the active controller can die meanwhile.

use std::time::{Duration, Instant};

use spate_engine::client::admin::{NewTopic, PartitionInfo};

use super::quorum::{quorum_of_three, quorum_view, start_node_with, wait_for_brokers};
use super::replication::{admin, raw, read_partition};
use crate::broker::util::Broker;

const TOPIC: &str = "on-brokers";

fn start(work: &std::path::Path, id: i32, quorum: &str) -> Broker {
    let roles: &[&str] = if id <= 3 {
        &["--process-roles", "controller"]
    } else {
        &[]
    };
    let mut extra = vec!["--replica-lag-time-max-ms", "2000"];
    extra.extend_from_slice(roles);
    start_node_with(work, id, quorum, &extra)
}

fn describe_until(node: &Broker, ready: impl Fn(&PartitionInfo) -> bool) -> PartitionInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = admin(node).describe_topics(Some(&[TOPIC.to_string()]));
        if let Ok(topics) = &described {
            if let Some(partition) = topics[0].partitions.first().filter(|p| ready(p)) {
                return partition.clone();
            }
        }
        assert!(Instant::now() < deadline, "{described:?}\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produces `value` with `acks` to the partition's leader as `node` sees it, retrying while
/// leadership moves: the error code and offset of the last attempt.
fn produce(node: &Broker, nodes: &[Broker], acks: i16, value: &str) -> (i16, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = describe_until(node, |p| p.leader > 0).leader;
        let mut connection = nodes[leader as usize - 1].connect();
        let answer = raw::produce(&mut connection, TOPIC, acks, &[value]);
        // NOT_LEADER_OR_FOLLOWER, or UNKNOWN_TOPIC_OR_PARTITION from a leader that has not
        // applied the topic yet: the metadata was behind; ask again.
        if ![3, 6].contains(&answer.0) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn controller_only_and_broker_only_nodes_form_a_cluster() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=6).map(|id| start(work.path(), id, &quorum)).collect();
    let brokers: Vec<(i32, i32)> = (4..=6)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    // Every node, controllers included, lists the three brokers and only them.
    for node in &nodes {
        wait_for_brokers(node, &brokers);
    }
    admin(&nodes[3])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: 1,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let placed = describe_until(&nodes[4], |p| p.leader > 0 && p.isr.len() == 3);
    let mut sorted = placed.replicas.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [4, 5, 6], "partitions live on the brokers only");
    // The controllers hold no partition data.
    for id in 1..=3 {
        assert!(!work
            .path()
            .join(format!("node-{id}"))
            .join(format!("{TOPIC}-0"))
            .exists());
    }
    let mut values = Vec::new();
    for i in 0..20 {
        let value = format!("v{i:02}");
        assert_eq!(produce(&nodes[3], &nodes, -1, &value), (0, i));
        values.push(value);
    }

    // The active controller dies: another takes over, the brokers carry on.
    let (active, _) = quorum_view(&nodes[0]).expect("a quorum leader");
    let mut child = nodes[active as usize - 1].child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let survivor = (1..=3).find(|&id| id != active).unwrap() as usize - 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while quorum_view(&nodes[survivor]).is_none_or(|(leader, _)| leader == active) {
        assert!(Instant::now() < deadline, "{}", nodes[survivor].log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two of the three brokers die, the leader among them.
    let leader = placed.leader;
    let alive = *placed.replicas.iter().find(|&&id| id != leader).unwrap();
    for &dead in placed.replicas.iter().filter(|&&id| id != alive) {
        let mut child = nodes[dead as usize - 1].child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let alone = describe_until(&nodes[alive as usize - 1], |p| {
        p.leader == alive && p.isr == [alive]
    });
    assert_eq!(alone.leader, alive);
    let refused = produce(&nodes[alive as usize - 1], &nodes, -1, "refused");
    assert_eq!(refused.0, 19, "NOT_ENOUGH_REPLICAS: {refused:?}");
    assert_eq!(
        produce(&nodes[alive as usize - 1], &nodes, 1, "v20"),
        (0, 20)
    );
    values.push("v20".into());
    // Not committed while the ISR is below min.insync.replicas (KIP-966): the replicas fenced
    // out of it could be elected again without it.
    let mut connection = nodes[alive as usize - 1].connect();
    let (_, high_watermark, _) = super::replication::raw::fetch(&mut connection, TOPIC, 0);
    assert!(high_watermark <= 20, "{high_watermark}");

    // One comes back: acks=all works again.
    let returning = *placed.replicas.iter().find(|&&id| id != alive).unwrap();
    nodes[returning as usize - 1] = start(work.path(), returning, &quorum);
    describe_until(&nodes[alive as usize - 1], |p| p.isr.len() == 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match produce(&nodes[alive as usize - 1], &nodes, -1, "v21") {
            (0, offset) => {
                assert_eq!(offset, 21);
                break;
            }
            (code, _) => assert!(Instant::now() < deadline, "acks=all refused: {code}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    values.push("v21".into());
    assert_eq!(
        read_partition(&nodes[alive as usize - 1], TOPIC, "after", 22),
        values
    );
    for node in &mut nodes {
        if node.child.is_some() {
            assert!(node.stop().success(), "{}", node.log());
        }
    }
}
