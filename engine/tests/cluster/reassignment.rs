//! Moving a partition's replicas onto another broker (AlterPartitionReassignments, KIP-455)
//! with a producer writing before and after: the new replica catches up, the old one is
//! dropped (its data deleted), leadership follows the target's first replica, and the new
//! replica holds every record.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::client::admin::{NewTopic, PartitionInfo};
use spate_engine::client::config::ProducerConfig;
use spate_engine::client::producer::{Producer, ProducerRecord};

use super::chaos::read_replica;
use super::quorum::wait_for_brokers;
use super::replication::{admin, read_partition, start};
use crate::broker::util::{free_port, Broker, Connection};

const TOPIC: &str = "moving";

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

fn produce(node: &Broker, range: std::ops::Range<usize>) {
    let address = node.address.to_string();
    let producer = Producer::new(
        ProducerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("acks", "all"),
            ("linger.ms", "1"),
        ])
        .unwrap(),
    )
    .unwrap();
    let deliveries: Vec<_> = range
        .map(|i| {
            producer
                .send(ProducerRecord {
                    topic: TOPIC.into(),
                    partition: Some(0),
                    value: Some(Bytes::from(format!("m{i:04}"))),
                    ..ProducerRecord::default()
                })
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery
            .wait(Some(Duration::from_secs(60)))
            .expect("answered")
            .expect("delivered");
    }
    producer.close();
}

fn describe_until(node: &Broker, ready: impl Fn(&PartitionInfo) -> bool) -> PartitionInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(topics) = admin(node).describe_topics(Some(&[TOPIC.to_string()])) {
            if let Some(partition) = topics[0].partitions.first().filter(|p| ready(p)) {
                return partition.clone();
            }
        }
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// AlterPartitionReassignments for partition 0: the partition's error code.
fn reassign(connection: &mut Connection, target: Option<&[i32]>, version: i16) -> i16 {
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![
            alter_partition_reassignments_request::ReassignableTopic::default()
                .with_name(name(TOPIC))
                .with_partitions(vec![
                    alter_partition_reassignments_request::ReassignablePartition::default()
                        .with_partition_index(0)
                        .with_replicas(
                            target.map(|ids| ids.iter().copied().map(BrokerId).collect()),
                        ),
                ]),
        ]);
    let ResponseKind::AlterPartitionReassignments(response) = connection.call(
        ApiKey::AlterPartitionReassignments,
        version,
        RequestKind::AlterPartitionReassignments(request),
    ) else {
        panic!("not an AlterPartitionReassignments response")
    };
    assert_eq!(response.error_code, 0);
    response.responses[0].partitions[0].error_code
}

/// ListPartitionReassignments for every topic: the partitions moving.
fn ongoing(connection: &mut Connection) -> Vec<(String, i32)> {
    let ResponseKind::ListPartitionReassignments(response) = connection.call(
        ApiKey::ListPartitionReassignments,
        0,
        RequestKind::ListPartitionReassignments(
            ListPartitionReassignmentsRequest::default().with_timeout_ms(30_000),
        ),
    ) else {
        panic!("not a ListPartitionReassignments response")
    };
    assert_eq!(response.error_code, 0);
    let mut moving = Vec::new();
    for topic in &response.topics {
        for partition in &topic.partitions {
            assert!(
                !partition.adding_replicas.is_empty() || !partition.removing_replicas.is_empty()
            );
            moving.push((topic.name.0.to_string(), partition.partition_index));
        }
    }
    moving
}

#[test]
fn a_reassigned_partition_moves_onto_a_new_broker_with_every_record() {
    let work = tempfile::tempdir().unwrap();
    let quorum = (1..=4)
        .map(|id| format!("{id}@127.0.0.1:{}", free_port()))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Broker> = (1..=4).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=4)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: 1,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let before = describe_until(&nodes[0], |p| p.leader >= 0 && p.isr.len() == 3);
    let leaving = before.replicas[0];
    let arriving = (1..=4).find(|id| !before.replicas.contains(id)).unwrap();
    let target = [arriving, before.replicas[1], before.replicas[2]];
    produce(&nodes[0], 0..200);

    let mut connection = nodes[0].connect();
    assert_eq!(
        reassign(&mut connection, Some(&[1, 1, 2]), 0),
        39,
        "INVALID_REPLICA_ASSIGNMENT"
    );
    assert_eq!(
        reassign(&mut connection, None, 0),
        85,
        "NO_REASSIGNMENT_IN_PROGRESS"
    );
    // v1 allows a change of the replication factor unless told not to; this one is replaced
    // by the next before it completes.
    assert_eq!(reassign(&mut connection, Some(&target[..2]), 1), 0);
    // Back to three replicas, onto the new broker.
    assert_eq!(reassign(&mut connection, Some(&target), 1), 0);
    let moved = describe_until(&nodes[0], |p| p.replicas == target && p.isr.len() == 3);
    assert_eq!(moved.leader, arriving, "the target's first replica leads");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ongoing(&mut connection).is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let dropped = work
        .path()
        .join(format!("node-{leaving}"))
        .join(format!("{TOPIC}-0"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while dropped.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still there",
            dropped.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The command line: nothing in progress, so nothing to cancel.
    let cli = |args: &[&str]| {
        let address = nodes[0].address.to_string();
        std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(args)
            .args(["--bootstrap-server", &address, "--output", "json"])
            .output()
            .unwrap()
    };
    let listed = cli(&["topic", "reassignments"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    let cancelled = cli(&["topic", "reassign", TOPIC, "--partition", "0", "--cancel"]);
    assert_eq!(cancelled.status.code(), Some(3), "refused");
    assert!(String::from_utf8_lossy(&cancelled.stderr).contains("NO_REASSIGNMENT_IN_PROGRESS"));

    produce(&nodes[0], 200..250);
    let expected: Vec<String> = (0..250).map(|i| format!("m{i:04}")).collect();
    assert_eq!(
        read_partition(&nodes[0], TOPIC, "after-move", 250),
        expected
    );
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
    let replica = read_replica(
        &work
            .path()
            .join(format!("node-{arriving}"))
            .join(format!("{TOPIC}-0")),
        arriving,
        0,
    );
    let values: Vec<String> = replica
        .records
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(values, expected, "the new replica holds every record");
}

#[test]
fn a_new_replica_starts_at_its_leaders_log_start() {
    // The leader's log no longer starts at 0 (DeleteRecords here, retention in production):
    // the new replica's first fetch is out of range, so it empties its log, starts at the
    // leader's start (ListOffsets with its replica id) and catches up from there.
    let work = tempfile::tempdir().unwrap();
    let quorum = super::quorum::quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: 1,
            replication_factor: 1,
            configs: Default::default(),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let before = describe_until(&nodes[0], |p| p.leader >= 0);
    let leader = before.leader;
    let arriving = (1..=3).find(|&id| id != leader).unwrap();
    produce(&nodes[0], 0..200);
    let deleted = admin(&nodes[0])
        .delete_records(&[((TOPIC.to_string(), 0), 150)].into())
        .unwrap();
    assert_eq!(deleted[&(TOPIC.to_string(), 0)].as_ref().unwrap(), &150);

    admin(&nodes[0])
        .alter_partition_reassignment(TOPIC, 0, Some(&[leader, arriving]))
        .unwrap();
    describe_until(&nodes[0], |p| {
        p.replicas == [leader, arriving] && p.isr.len() == 2
    });
    produce(&nodes[0], 200..220);
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
    let replica = read_replica(
        &work
            .path()
            .join(format!("node-{arriving}"))
            .join(format!("{TOPIC}-0")),
        arriving,
        0,
    );
    let expected: Vec<(i64, String)> = (150..220).map(|i| (i, format!("m{i:04}"))).collect();
    assert_eq!(replica.records, expected);
}
