//! Topics in a cluster: created and deleted through the active controller from any node,
//! spread over the brokers, the same on every node; Spate's client produces to and consumes
//! from each partition's leader; a broker that does not lead a partition refuses it with
//! NOT_LEADER_OR_FOLLOWER; a restarted node serves its partitions again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{
    list_offsets_request, ApiKey, BrokerId, ListOffsetsRequest, RequestKind, ResponseKind,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_engine::broker::quotas::{EntityName, QuotaEntity};
use spate_engine::client::admin::{Admin, NewTopic, TopicInfo};
use spate_engine::client::config::{ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::Consumer;
use spate_engine::client::error::ClientError;
use spate_engine::client::producer::{Producer, ProducerRecord};

use super::quorum::{quorum_of_three, start_node, start_node_with, wait_for_brokers};
use crate::broker::util::Broker;

const INVALID_REPLICATION_FACTOR: i16 = 38;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

fn admin(node: &Broker) -> Admin {
    let address = node.address.to_string();
    Admin::from_properties([("bootstrap.servers", address.as_str())]).unwrap()
}

fn new_topic(name: &str, partitions: i32, replication_factor: i16) -> NewTopic {
    NewTopic {
        name: name.into(),
        partitions,
        replication_factor,
        configs: BTreeMap::new(),
    }
}

fn kafka_code(result: &Result<(), ClientError>) -> Option<i16> {
    match result {
        Err(ClientError::Kafka { code, .. }) => Some(*code),
        _ => None,
    }
}

/// The topic as `node` describes it, once every partition has a leader.
fn describe(node: &Broker, topic: &str) -> TopicInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = admin(node).describe_topics(Some(&[topic.to_string()]));
        if let Ok(mut topics) = described {
            let info = topics.remove(0);
            if info
                .partitions
                .iter()
                .all(|partition| partition.leader >= 0)
            {
                return info;
            }
        }
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ListOffsets (latest) for one partition, asked of `node`: the offset, or the error code.
fn latest_offset(node: &Broker, topic: &str, partition: i32) -> Result<i64, i16> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(-1),
            ])]);
    let ResponseKind::ListOffsets(response) =
        node.connect()
            .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
    else {
        panic!("not a ListOffsets response")
    };
    let answer = &response.topics[0].partitions[0];
    if answer.error_code == 0 {
        Ok(answer.offset)
    } else {
        Err(answer.error_code)
    }
}

fn consume_all(node: &Broker, topic: &str, group: &str, expected: usize) -> BTreeSet<String> {
    let address = node.address.to_string();
    let mut consumer = Consumer::new(
        ConsumerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("heartbeat.interval.ms", "200"),
            ("retry.backoff.ms", "20"),
        ])
        .unwrap(),
    )
    .unwrap();
    consumer.subscribe(&[topic.to_string()]).unwrap();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected}",
            seen.len()
        );
        for record in consumer.poll(Duration::from_millis(200)).unwrap() {
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            assert!(
                value.starts_with(&format!("p{}-", record.partition)),
                "{value} read from partition {}",
                record.partition
            );
            seen.insert(value);
        }
    }
    consumer.close();
    seen
}

#[test]
fn topics_live_in_the_cluster_metadata_and_clients_follow_their_leaders() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3)
        .map(|id| start_node(work.path(), id, &quorum))
        .collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }

    // Made at node 2, whatever node leads the quorum; refused as Kafka refuses.
    let results = admin(&nodes[1])
        .create_topics(&[new_topic("spread", 6, 1)])
        .unwrap();
    results[0].as_ref().unwrap();
    let results = admin(&nodes[2])
        .create_topics(&[new_topic("spread", 2, 1), new_topic("quadruple", 1, 4)])
        .unwrap();
    assert_eq!(kafka_code(&results[0]), Some(TOPIC_ALREADY_EXISTS));
    assert_eq!(
        kafka_code(&results[1]),
        Some(INVALID_REPLICATION_FACTOR),
        "more replicas than brokers"
    );

    // Every node tells the same layout, spread over the three brokers.
    let layout = describe(&nodes[0], "spread");
    assert_eq!(layout.partitions.len(), 6);
    let leaders: BTreeSet<i32> = layout.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(leaders, [1, 2, 3].into());
    for partition in &layout.partitions {
        assert_eq!(partition.replicas, [partition.leader]);
    }
    for node in &nodes[1..] {
        assert_eq!(describe(node, "spread"), layout);
    }

    // Spate's client writes to each partition's leader, from a bootstrap on node 1.
    let address = nodes[0].address.to_string();
    let producer = Producer::new(
        ProducerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("linger.ms", "1"),
        ])
        .unwrap(),
    )
    .unwrap();
    let deliveries: Vec<_> = (0..60)
        .map(|i| {
            let partition = i % 6;
            producer
                .send(ProducerRecord {
                    topic: "spread".into(),
                    partition: Some(partition),
                    value: Some(Bytes::from(format!("p{partition}-{i}"))),
                    ..ProducerRecord::default()
                })
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery
            .wait(Some(Duration::from_secs(30)))
            .unwrap()
            .unwrap();
    }
    producer.close();

    // A broker answers only for what it leads.
    for partition in &layout.partitions {
        for (index, node) in nodes.iter().enumerate() {
            let answer = latest_offset(node, "spread", partition.partition);
            if index as i32 + 1 == partition.leader {
                assert_eq!(answer, Ok(10));
            } else {
                assert_eq!(answer, Err(NOT_LEADER_OR_FOLLOWER));
            }
        }
    }

    // A consumer group, bootstrapped on node 3, reads every record from the leaders.
    assert_eq!(consume_all(&nodes[2], "spread", "readers", 60).len(), 60);

    // A restarted node serves its partitions again, from its disk.
    assert!(nodes[0].stop().success(), "{}", nodes[0].log());
    nodes[0] = start_node(work.path(), 1, &quorum);
    let led_by_1: Vec<i32> = layout
        .partitions
        .iter()
        .filter(|partition| partition.leader == 1)
        .map(|partition| partition.partition)
        .collect();
    for partition in led_by_1 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while latest_offset(&nodes[0], "spread", partition) != Ok(10) {
            assert!(Instant::now() < deadline, "{}", nodes[0].log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Deleted at node 3: gone everywhere.
    let results = admin(&nodes[2])
        .delete_topics(&["spread".to_string()])
        .unwrap();
    results[0].as_ref().unwrap();
    assert!(
        admin(&nodes[2])
            .describe_topics(Some(&["spread".to_string()]))
            .is_err(),
        "gone at once on the node that was asked"
    );
    // The others learn it from the metadata log, promptly.
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin(node)
            .describe_topics(Some(&["spread".to_string()]))
            .is_ok()
        {
            assert!(Instant::now() < deadline, "{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
}

/// A topic config override as `node` describes it (DescribeConfigs).
fn topic_config(node: &Broker, topic: &str, key: &str) -> Option<String> {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::DescribeConfigsRequest;
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.into()))
            .with_configuration_keys(Some(vec![StrBytes::from_string(key.into())]))]);
    let ResponseKind::DescribeConfigs(response) = node.connect().call(
        ApiKey::DescribeConfigs,
        4,
        RequestKind::DescribeConfigs(request),
    ) else {
        panic!("not a DescribeConfigs response")
    };
    let result = &response.results[0];
    assert_eq!(result.error_code, 0, "{result:?}");
    result
        .configs
        .iter()
        .find(|config| config.name.as_str() == key && config.config_source == 1)
        .and_then(|config| config.value.as_ref().map(ToString::to_string))
}

#[test]
fn partitions_are_added_and_topic_configs_and_quotas_changed_through_the_controller() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    // 100 replicas a broker: room for this test's topics and `__consumer_offsets`.
    let nodes: Vec<Broker> = (1..=3)
        .map(|id| {
            start_node_with(
                work.path(),
                id,
                &quorum,
                &["--max-partitions-per-broker", "100"],
            )
        })
        .collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    admin(&nodes[0])
        .create_topics(&[new_topic("growing", 2, 3)])
        .unwrap()
        .remove(0)
        .unwrap();
    // Asked of one node, seen by every node.
    admin(&nodes[1]).create_partitions("growing", 4).unwrap();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        let info = loop {
            let info = describe(node, "growing");
            if info.partitions.len() == 4 {
                break info;
            }
            assert!(Instant::now() < deadline, "{info:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        for partition in &info.partitions {
            assert_eq!(partition.replicas.len(), 3);
            assert!(partition.leader > 0);
        }
    }
    // A topic that would put a broker over its limit is refused, and so is growing one past
    // it; the controller checks every broker.
    let too_many = admin(&nodes[1])
        .create_topics(&[new_topic("too-many", 300, 1)])
        .unwrap()
        .remove(0);
    let refused = too_many.unwrap_err();
    assert_eq!(refused.code(), Some(37), "INVALID_PARTITIONS: {refused}");
    assert!(
        refused.to_string().contains("max_partitions_per_broker"),
        "{refused}"
    );
    let grown = admin(&nodes[2]).create_partitions("growing", 200);
    assert_eq!(
        kafka_code(&grown),
        Some(37),
        "INVALID_PARTITIONS: {grown:?}"
    );
    let shrink = admin(&nodes[0]).create_partitions("growing", 3);
    assert_eq!(
        kafka_code(&shrink),
        Some(37),
        "INVALID_PARTITIONS: {shrink:?}"
    );
    // The new partitions take records.
    let address = nodes[2].address.to_string();
    let producer = Producer::new(
        ProducerConfig::from_properties([("bootstrap.servers", address.as_str()), ("acks", "all")])
            .unwrap(),
    )
    .unwrap();
    for partition in 0..4 {
        producer
            .send(ProducerRecord {
                topic: "growing".into(),
                partition: Some(partition),
                value: Some(Bytes::from(format!("p{partition}-0"))),
                ..ProducerRecord::default()
            })
            .unwrap()
            .wait(Some(Duration::from_secs(30)))
            .unwrap()
            .unwrap();
    }
    producer.close();
    assert_eq!(consume_all(&nodes[0], "growing", "grown", 4).len(), 4);

    // Topic configs: set on one node, seen on every node, removed again.
    admin(&nodes[2])
        .alter_topic_configs("growing", &[("retention.ms".into(), "3600000".into())], &[])
        .unwrap();
    for node in &nodes {
        // The node asked has it at once; the others as soon as they apply the records.
        let deadline = Instant::now() + Duration::from_secs(10);
        while topic_config(node, "growing", "retention.ms").as_deref() != Some("3600000") {
            assert!(Instant::now() < deadline, "{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let refused = admin(&nodes[0]).alter_topic_configs(
        "growing",
        &[("retention.ms".into(), "soon".into())],
        &[],
    );
    assert!(refused.is_err(), "a bad value is refused: {refused:?}");
    admin(&nodes[0])
        .alter_topic_configs("growing", &[], &["retention.ms".into()])
        .unwrap();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while topic_config(node, "growing", "retention.ms").is_some() {
            assert!(Instant::now() < deadline, "{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Client quotas: cluster metadata too, set on one node and held by every broker.
    let entity = QuotaEntity {
        user: None,
        client_id: Some(EntityName::Named("metered".into())),
    };
    admin(&nodes[1])
        .alter_client_quota(&entity, &[("producer_byte_rate".into(), Some(65536.0))])
        .unwrap();
    let quota_on = |node: &Broker| {
        admin(node)
            .describe_client_quotas()
            .unwrap()
            .into_iter()
            .find(|(described, _)| *described == entity)
            .and_then(|(_, values)| values.get("producer_byte_rate").copied())
    };
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while quota_on(node) != Some(65536.0) {
            assert!(Instant::now() < deadline, "{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let refused =
        admin(&nodes[0]).alter_client_quota(&entity, &[("producer_byte_rate".into(), Some(-1.0))]);
    assert!(refused.is_err(), "a bad value is refused: {refused:?}");
    admin(&nodes[2])
        .alter_client_quota(&entity, &[("producer_byte_rate".into(), None)])
        .unwrap();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while quota_on(node).is_some() {
            assert!(Instant::now() < deadline, "{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
