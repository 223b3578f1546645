//! Idempotent producers in a cluster: producer ids from the controller are unique across
//! brokers, and the producer state is replicated with the log, so a retry sent to the new
//! leader after the old one died (SIGKILL) is recognised and not stored twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use spate_engine::client::admin::NewTopic;

use super::quorum::{quorum_of_three, wait_for_brokers};
use super::replication::{admin, start};
use crate::broker::idempotence::{init_producer_id, produce};
use crate::broker::util::Broker;

const TOPIC: &str = "idempotent";

/// The partition's leader once every replica is in sync, as `node` describes it.
fn leader_with_full_isr(node: &Broker, avoiding: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut topics) = admin(node).describe_topics(Some(&[TOPIC.to_string()])) {
            let info = topics.remove(0);
            if let Some(partition) = info.partitions.first() {
                let settled = match avoiding {
                    None => partition.isr.len() == 3,
                    Some(victim) => partition.leader != victim,
                };
                if partition.leader >= 0 && settled {
                    return partition.leader;
                }
            }
        }
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A producer id from `node`, retrying while the controller is out of reach.
fn producer_id_from(node: &Broker) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut connection = node.connect();
    loop {
        let (error, producer_id) = init_producer_id(&mut connection, None);
        if error == 0 {
            return producer_id;
        }
        assert_eq!(error, ResponseError::CoordinatorNotAvailable.code());
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produces (epoch 0) until the answer is not `NOT_LEADER_OR_FOLLOWER` (the broker has not
/// yet applied its leadership): retrying an idempotent batch is always safe.
fn produce_until_answered(
    node: &Broker,
    connection: &mut crate::broker::util::Connection,
    producer_id: i64,
    first_sequence: i32,
    count: i32,
) -> (i16, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = produce(connection, TOPIC, producer_id, 0, first_sequence, count);
        if answer.0 != ResponseError::NotLeaderOrFollower.code() {
            return answer;
        }
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn producer_ids_are_unique_and_a_retry_after_failover_is_stored_once() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }

    // Each broker takes ids from its own block of the controller's.
    let mut ids = BTreeSet::new();
    for node in &nodes {
        for _ in 0..3 {
            assert!(ids.insert(producer_id_from(node)), "{ids:?}");
        }
    }

    let results = admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: 1,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
        }])
        .unwrap();
    results[0].as_ref().unwrap();
    let leader = leader_with_full_isr(&nodes[0], None);
    let producer_id = *ids.first().unwrap();
    let node = &nodes[leader as usize - 1];
    let mut connection = node.connect();
    assert_eq!(
        produce_until_answered(node, &mut connection, producer_id, 0, 3),
        (0, 0)
    );
    assert_eq!(
        produce(&mut connection, TOPIC, producer_id, 0, 3, 3),
        (0, 3)
    );

    // The leader dies as if the answer to the second batch were lost; the producer retries
    // it on the new leader, which knows it from the replicated log.
    let mut victim = nodes.remove(leader as usize - 1);
    victim.child.take().unwrap().kill().unwrap();
    let survivor = &nodes[0];
    let new_leader = leader_with_full_isr(survivor, Some(leader));
    let node = nodes
        .iter()
        .find(|node| node.address.port() == everyone[new_leader as usize - 1].1 as u16)
        .unwrap();
    let mut connection = node.connect();
    let retried = produce_until_answered(node, &mut connection, producer_id, 3, 3);
    assert_eq!(retried, (0, 3), "{}", node.log());
    assert_eq!(
        produce(&mut connection, TOPIC, producer_id, 0, 6, 1),
        (0, 6)
    );
    let (error, _) = produce(&mut connection, TOPIC, producer_id, 0, 9, 1);
    assert_eq!(error, ResponseError::OutOfOrderSequenceNumber.code());

    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
}
