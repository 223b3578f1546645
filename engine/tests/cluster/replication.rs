//! Partition replication across real processes: a topic with three replicas and
//! min.insync.replicas=2 takes acks=all writes, loses none when its leader is killed
//! (SIGKILL), keeps serving from a new leader elected from the ISR, and the killed broker
//! catches up when it returns, so that it can lead in turn.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_engine::client::admin::{Admin, NewTopic, TopicInfo};
use spate_engine::client::config::{ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::Consumer;
use spate_engine::client::producer::{Producer, ProducerRecord};

use super::quorum::{quorum_of_three, quorum_view, start_node_with, wait_for_brokers};
use crate::broker::util::Broker;

const PARTITIONS: i32 = 3;
const TOPIC: &str = "replicated";

pub(super) fn start(work: &std::path::Path, id: i32, quorum: &str) -> Broker {
    start_node_with(
        work,
        id,
        quorum,
        &[
            "--replica-lag-time-max-ms",
            "2000",
            "--leader-imbalance-check-interval-ms",
            "500",
        ],
    )
}

pub(super) fn admin(node: &Broker) -> Admin {
    let address = node.address.to_string();
    Admin::from_properties([("bootstrap.servers", address.as_str())]).unwrap()
}

/// The topic as `node` describes it once `ready` holds.
fn describe_until(node: &Broker, ready: impl Fn(&TopicInfo) -> bool) -> TopicInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut topics) = admin(node).describe_topics(Some(&[TOPIC.to_string()])) {
            let info = topics.remove(0);
            if ready(&info) {
                return info;
            }
            assert!(Instant::now() < deadline, "{info:?}\n{}", node.log());
        }
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn every_partition_led(info: &TopicInfo) -> bool {
    info.partitions.len() == PARTITIONS as usize
        && info
            .partitions
            .iter()
            .all(|partition| partition.leader >= 0)
}

/// Sends `count` records per partition with acks=all through `node`; all must be delivered.
fn produce(node: &Broker, first: usize, count: usize) {
    let address = node.address.to_string();
    let producer = Producer::new(
        ProducerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("acks", "all"),
            ("linger.ms", "1"),
            ("retry.backoff.ms", "50"),
        ])
        .unwrap(),
    )
    .unwrap();
    let deliveries: Vec<_> = (first..first + count)
        .flat_map(|i| (0..PARTITIONS).map(move |partition| (i, partition)))
        .map(|(i, partition)| {
            producer
                .send(ProducerRecord {
                    topic: TOPIC.into(),
                    partition: Some(partition),
                    value: Some(Bytes::from(format!("p{partition}-{i:05}"))),
                    ..ProducerRecord::default()
                })
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        let result = delivery
            .wait(Some(Duration::from_secs(60)))
            .expect("answered");
        result.expect("delivered with acks=all");
    }
    producer.close();
}

/// Every record of the topic, per partition in offset order, read through `node`.
fn read_all(node: &Broker, group: &str, expected: usize) -> BTreeMap<i32, Vec<String>> {
    let address = node.address.to_string();
    let mut consumer = Consumer::new(
        ConsumerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("heartbeat.interval.ms", "200"),
            ("retry.backoff.ms", "50"),
        ])
        .unwrap(),
    )
    .unwrap();
    consumer.subscribe(&[TOPIC.to_string()]).unwrap();
    // By offset: a rebalance of the reading group (nothing is committed) re-reads records
    // already seen, which is the consumer's at-least-once, not the broker's doing. Two values
    // at one offset would be the broker's, and fail the test.
    let mut seen: BTreeMap<i32, BTreeMap<i64, String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.values().map(BTreeMap::len).sum::<usize>() < expected {
        assert!(Instant::now() < deadline, "read {seen:?}");
        for record in consumer.poll(Duration::from_millis(200)).unwrap() {
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            let offsets = seen.entry(record.partition).or_default();
            if let Some(earlier) = offsets.insert(record.offset, value.clone()) {
                assert_eq!(earlier, value, "two values at offset {}", record.offset);
            }
        }
    }
    consumer.close();
    seen.into_iter()
        .map(|(partition, offsets)| (partition, offsets.into_values().collect()))
        .collect()
}

fn expected(count: usize) -> BTreeMap<i32, Vec<String>> {
    (0..PARTITIONS)
        .map(|partition| {
            (
                partition,
                (0..count).map(|i| format!("p{partition}-{i:05}")).collect(),
            )
        })
        .collect()
}

fn kill(node: &mut Broker) {
    let mut child = node.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn acknowledged_writes_survive_the_leaders_death_and_the_returning_broker_catches_up() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    let results = admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
        }])
        .unwrap();
    results[0].as_ref().unwrap();
    let layout = describe_until(&nodes[0], every_partition_led);
    for partition in &layout.partitions {
        assert_eq!(partition.replicas.len(), 3);
        assert_eq!(partition.isr.len(), 3);
    }

    produce(&nodes[0], 0, 100);
    assert_eq!(read_all(&nodes[1], "first", 300), expected(100));

    // SIGKILL the leader of partition 0; a survivor is elected from the ISR.
    let victim = layout.partitions[0].leader;
    kill(&mut nodes[victim as usize - 1]);
    let survivor = (1..=3).find(|&id| id != victim).unwrap() as usize - 1;
    let started = Instant::now();
    let after = describe_until(&nodes[survivor], |info| {
        every_partition_led(info)
            && info
                .partitions
                .iter()
                .all(|partition| partition.leader != victim)
    });
    let failover = started.elapsed();
    for partition in &after.partitions {
        assert!(!partition.isr.contains(&victim) || partition.leader != victim);
    }

    // Writes go on with two in-sync replicas, and nothing acknowledged was lost.
    produce(&nodes[survivor], 100, 100);
    assert_eq!(read_all(&nodes[survivor], "second", 600), expected(200));

    // The killed broker returns, catches up and rejoins every ISR.
    nodes[victim as usize - 1] = start(work.path(), victim, &quorum);
    describe_until(&nodes[survivor], |info| {
        every_partition_led(info)
            && info
                .partitions
                .iter()
                .all(|partition| partition.isr.len() == 3)
    });

    // Once in sync, it leads again the partitions it is the preferred replica of.
    describe_until(&nodes[survivor], |info| {
        info.partitions
            .iter()
            .all(|partition| partition.leader == partition.replicas[0])
    });

    // Now kill the broker that led partition 0 after the failover: the returned one may be
    // elected and must have everything.
    let second_victim = after.partitions[0].leader;
    kill(&mut nodes[second_victim as usize - 1]);
    let remaining = (1..=3).find(|&id| id != second_victim).unwrap() as usize - 1;
    describe_until(&nodes[remaining], |info| {
        every_partition_led(info)
            && info
                .partitions
                .iter()
                .all(|partition| partition.leader != second_victim)
    });
    produce(&nodes[remaining], 200, 50);
    assert_eq!(read_all(&nodes[remaining], "third", 750), expected(250));
    eprintln!("failover took {failover:?}");

    for node in &mut nodes {
        if node.child.is_some() {
            assert!(node.stop().success(), "{}", node.log());
        }
    }
}

/// The broker id coordinating `group`, as `node` answers FindCoordinator.
fn coordinator_of(node: &Broker, group: &str) -> Option<i32> {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, RequestKind, ResponseKind};
    use kafka_protocol::protocol::StrBytes;
    let request = FindCoordinatorRequest::default()
        .with_key_type(0)
        .with_coordinator_keys(vec![StrBytes::from_string(group.into())]);
    let ResponseKind::FindCoordinator(response) = node.connect().call(
        ApiKey::FindCoordinator,
        4,
        RequestKind::FindCoordinator(request),
    ) else {
        panic!("not a FindCoordinator response")
    };
    let coordinator = &response.coordinators[0];
    (coordinator.error_code == 0).then_some(coordinator.node_id.0)
}

#[test]
fn committed_offsets_survive_the_death_of_their_coordinator() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    let results = admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            replication_factor: 3,
            configs: BTreeMap::new(),
        }])
        .unwrap();
    results[0].as_ref().unwrap();
    describe_until(&nodes[0], every_partition_led);
    produce(&nodes[0], 0, 20);
    // Reading everything commits it on close (enable.auto.commit=false, so commit by hand).
    let group = "survivors";
    let address = nodes[1].address.to_string();
    let mut consumer = Consumer::new(
        ConsumerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("heartbeat.interval.ms", "200"),
            ("retry.backoff.ms", "50"),
        ])
        .unwrap(),
    )
    .unwrap();
    consumer.subscribe(&[TOPIC.to_string()]).unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < 60 {
        assert!(Instant::now() < deadline);
        read += consumer.poll(Duration::from_millis(200)).unwrap().len();
    }
    consumer.commit(None).unwrap();
    consumer.close();

    let coordinator = coordinator_of(&nodes[0], group).expect("a coordinator");
    kill(&mut nodes[coordinator as usize - 1]);
    let survivor = (1..=3).find(|&id| id != coordinator).unwrap() as usize - 1;
    // Another broker takes the group's offsets partition over and rebuilds the group from it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = loop {
        let moved = coordinator_of(&nodes[survivor], group).filter(|&id| id != coordinator);
        if moved.is_some() {
            if let Ok(lags) = admin(&nodes[survivor]).list_group_offsets(group) {
                if lags.len() == PARTITIONS as usize {
                    break lags;
                }
            }
        }
        assert!(Instant::now() < deadline, "{}", nodes[survivor].log());
        std::thread::sleep(Duration::from_millis(200));
    };
    for lag in committed {
        assert_eq!((lag.committed, lag.lag), (20, 0), "{lag:?}");
    }
    for node in &mut nodes {
        if node.child.is_some() {
            assert!(node.stop().success(), "{}", node.log());
        }
    }
}

#[test]
fn a_stopping_leader_hands_its_partitions_over_before_it_exits() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    // A long session: without a controlled shutdown, its partitions would wait this long.
    let start_slow = |id: i32| {
        start_node_with(
            work.path(),
            id,
            &quorum,
            &["--broker-session-timeout-ms", "20000"],
        )
    };
    let mut nodes: Vec<Broker> = (1..=3).map(start_slow).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    let results = admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
        }])
        .unwrap();
    results[0].as_ref().unwrap();
    let layout = describe_until(&nodes[0], |info| {
        every_partition_led(info)
            && info
                .partitions
                .iter()
                .all(|partition| partition.isr.len() == 3)
    });
    produce(&nodes[0], 0, 50);

    // SIGTERM the leader of partition 0: it exits cleanly, well within its session, and
    // only once its partitions have other leaders.
    let stopping = layout.partitions[0].leader;
    let started = Instant::now();
    let status = nodes[stopping as usize - 1].stop();
    let took = started.elapsed();
    assert!(status.success(), "{}", nodes[stopping as usize - 1].log());
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert!(
        nodes[stopping as usize - 1]
            .log()
            .contains("controlled shutdown: done"),
        "{}",
        nodes[stopping as usize - 1].log()
    );
    let survivor = (1..=3).find(|&id| id != stopping).unwrap() as usize - 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    describe_until(&nodes[survivor], |info| {
        assert!(Instant::now() < deadline, "leaders did not move: {info:?}");
        every_partition_led(info)
            && info
                .partitions
                .iter()
                .all(|partition| partition.leader != stopping && !partition.isr.contains(&stopping))
    });
    // Writes go on at once, and nothing was lost.
    produce(&nodes[survivor], 50, 50);
    assert_eq!(read_all(&nodes[survivor], "after-stop", 300), expected(100));

    // It comes back; then a broker that is not the active controller is SIGKILLed. Its
    // heartbeat connection to the controller closes with it, so its partitions get new
    // leaders long before its 20 s session would end.
    nodes[stopping as usize - 1] = start_slow(stopping);
    describe_until(&nodes[survivor], |info| {
        every_partition_led(info)
            && info
                .partitions
                .iter()
                .all(|partition| partition.isr.len() == 3)
    });
    let (controller, _) = quorum_view(&nodes[survivor]).expect("a quorum leader");
    let leaders = describe_until(&nodes[survivor], every_partition_led);
    let victim = leaders
        .partitions
        .iter()
        .map(|partition| partition.leader)
        .find(|&leader| leader != controller)
        .unwrap_or_else(|| (1..=3).find(|&id| id != controller).unwrap());
    kill(&mut nodes[victim as usize - 1]);
    let started = Instant::now();
    let observer = (1..=3).find(|&id| id != victim).unwrap() as usize - 1;
    describe_until(&nodes[observer], |info| {
        every_partition_led(info)
            && info
                .partitions
                .iter()
                .all(|partition| partition.leader != victim)
    });
    let failover = started.elapsed();
    assert!(
        failover < Duration::from_secs(8),
        "failover took {failover:?} with a 20 s session"
    );
    produce(&nodes[observer], 100, 10);
    assert_eq!(read_all(&nodes[observer], "after-kill", 330), expected(110));
    eprintln!("failover after SIGKILL: {failover:?}");
    for node in &mut nodes {
        if node.child.is_some() {
            assert!(node.stop().success(), "{}", node.log());
        }
    }
}

/// ListOffsets' latest offset (the high watermark) of `partition` from its leader `node`,
/// or the error code when `node` does not lead it (any more).
pub(super) fn latest_offset(node: &Broker, topic: &str, partition: i32) -> Result<i64, i16> {
    raw::try_latest_offset(&mut node.connect(), topic, partition)
}

/// A raw acks=1 produce, ListOffsets (latest) and Fetch against the partition's leader.
pub(super) mod raw {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use spate_engine::storage::batch::build::{batch, NewRecord};

    use crate::broker::util::Connection;

    fn name(text: &str) -> TopicName {
        TopicName(StrBytes::from_string(text.to_owned()))
    }

    /// Error code and base offset of a produce with `acks` (v9).
    pub fn produce(
        connection: &mut Connection,
        topic: &str,
        acks: i16,
        values: &[&str],
    ) -> (i16, i64) {
        let records: Vec<NewRecord> = values
            .iter()
            .map(|value| NewRecord::value(value.to_string(), 1_000))
            .collect();
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch(&records).freeze())),
                ])]);
        let ResponseKind::Produce(response) =
            connection.call(ApiKey::Produce, 9, RequestKind::Produce(request))
        else {
            panic!("not a produce response")
        };
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }

    /// [`produce`], again while the broker answers NOT_LEADER_OR_FOLLOWER: its metadata may
    /// name it leader a moment before its partition has taken the role (a client retries the
    /// same way). Nothing is appended by a refused produce.
    pub fn produce_to_new_leader(
        connection: &mut Connection,
        topic: &str,
        acks: i16,
        values: &[&str],
    ) -> (i16, i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let answer = produce(connection, topic, acks, values);
            if answer.0 != 6 || std::time::Instant::now() >= deadline {
                return answer;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn produce_acks_one(connection: &mut Connection, topic: &str, values: &[&str]) -> i64 {
        let (error_code, base_offset) = produce(connection, topic, 1, values);
        assert_eq!(error_code, 0);
        base_offset
    }

    pub fn latest_offset(connection: &mut Connection, topic: &str) -> i64 {
        latest_offset_of(connection, topic, 0)
    }

    pub fn latest_offset_of(connection: &mut Connection, topic: &str, partition: i32) -> i64 {
        try_latest_offset(connection, topic, partition).unwrap()
    }

    pub fn try_latest_offset(
        connection: &mut Connection,
        topic: &str,
        partition: i32,
    ) -> Result<i64, i16> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(-1),
                ])]);
        let ResponseKind::ListOffsets(response) =
            connection.call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
        else {
            panic!("not a list offsets response")
        };
        let partition = &response.topics[0].partitions[0];
        match partition.error_code {
            0 => Ok(partition.offset),
            code => Err(code),
        }
    }

    /// Error code, high watermark and record bytes of a Fetch v12 at `offset`.
    pub fn fetch(connection: &mut Connection, topic: &str, offset: i64) -> (i16, i64, usize) {
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]);
        let ResponseKind::Fetch(response) =
            connection.call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
        else {
            panic!("not a fetch response")
        };
        let partition = &response.responses[0].partitions[0];
        (
            partition.error_code,
            partition.high_watermark,
            partition
                .records
                .as_ref()
                .map_or(0, |records| records.len()),
        )
    }
}

#[test]
fn records_above_the_high_watermark_are_in_the_log_but_not_yet_readable() {
    // Kafka's rules for consumers: a fetch between the high watermark and the log end gets no
    // records (not OFFSET_OUT_OF_RANGE), ListOffsets' latest offset is the high watermark.
    const TAIL: &str = "unreplicated-tail";
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TAIL.into(),
            partitions: 1,
            replication_factor: 3,
            configs: BTreeMap::new(),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let partition = loop {
        let topics = admin(&nodes[0]).describe_topics(Some(&[TAIL.to_string()]));
        if let Ok(topics) = topics {
            let partition = &topics[0].partitions;
            if partition.len() == 1 && partition[0].leader >= 0 && partition[0].isr.len() == 3 {
                break partition[0].clone();
            }
        }
        assert!(Instant::now() < deadline, "{}", nodes[0].log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let leader = partition.leader as usize - 1;
    let stopped = partition
        .replicas
        .iter()
        .map(|&id| id as usize - 1)
        .find(|&index| index != leader)
        .unwrap();
    let mut connection = nodes[leader].connect();
    // The leader may not have taken its role yet when another node describes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match raw::produce(&mut connection, TAIL, 1, &["x"]) {
            (0, offset) => {
                assert_eq!(offset, 0);
                break;
            }
            (code, _) => assert!(Instant::now() < deadline, "produce refused: {code}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Wait until every replica fetches from the leader at this epoch (the ISR was just set).
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw::latest_offset(&mut connection, TAIL) < 1 {
        assert!(Instant::now() < deadline, "{}", nodes[leader].log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // One follower stops answering (still in the ISR for replica.lag.time.max.ms): three
    // more records are in the leader's log, not below the high watermark.
    let pid = nodes[stopped].child.as_ref().unwrap().id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    assert_eq!(
        raw::produce_acks_one(&mut connection, TAIL, &["a", "b", "c"]),
        1
    );
    assert_eq!(raw::latest_offset(&mut connection, TAIL), 1);
    assert_eq!(raw::fetch(&mut connection, TAIL, 1), (0, 1, 0));
    assert_eq!(raw::fetch(&mut connection, TAIL, 3), (0, 1, 0));
    assert_eq!(
        raw::fetch(&mut connection, TAIL, 4),
        (0, 1, 0),
        "at the log end"
    );
    assert_eq!(
        raw::fetch(&mut connection, TAIL, 5).0,
        1,
        "past the log end: OFFSET_OUT_OF_RANGE"
    );

    // The silent follower leaves the ISR; the records become readable.
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw::latest_offset(&mut connection, TAIL) < 4 {
        assert!(Instant::now() < deadline, "{}", nodes[leader].log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (error, high_watermark, bytes) = raw::fetch(&mut connection, TAIL, 1);
    assert_eq!((error, high_watermark), (0, 4));
    assert!(bytes > 0);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
}

/// Every value of partition 0 of `topic`, in offset order, read through `node`.
pub(super) fn read_partition(
    node: &Broker,
    topic: &str,
    group: &str,
    expected: usize,
) -> Vec<String> {
    let address = node.address.to_string();
    let mut consumer = Consumer::new(
        ConsumerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("heartbeat.interval.ms", "200"),
            ("retry.backoff.ms", "50"),
        ])
        .unwrap(),
    )
    .unwrap();
    consumer.subscribe(&[topic.to_string()]).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < expected {
        assert!(Instant::now() < deadline, "read {seen:?}\n{}", node.log());
        for record in consumer.poll(Duration::from_millis(200)).unwrap() {
            seen.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
        }
    }
    consumer.close();
    seen
}

#[test]
fn with_two_of_three_replicas_dead_acks_all_is_refused_and_nothing_acknowledged_is_lost() {
    // Five nodes, so that the metadata quorum outlives two deaths (three controllers in
    // combined mode would lose it with them); the topic's three replicas are on three of them.
    const TOPIC_2: &str = "two-down";
    let work = tempfile::tempdir().unwrap();
    let quorum = (1..=5)
        .map(|id| format!("{id}@127.0.0.1:{}", crate::broker::util::free_port()))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Broker> = (1..=5).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=5)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC_2.into(),
            partitions: 1,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let describe =
        |node: &Broker, ready: &dyn Fn(&spate_engine::client::admin::PartitionInfo) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(topics) = admin(node).describe_topics(Some(&[TOPIC_2.to_string()])) {
                    if let Some(partition) = topics[0].partitions.first() {
                        if ready(partition) {
                            return partition.clone();
                        }
                    }
                }
                assert!(Instant::now() < deadline, "{}", node.log());
                std::thread::sleep(Duration::from_millis(100));
            }
        };
    let before = describe(&nodes[0], &|partition| {
        partition.leader >= 0 && partition.isr.len() == 3
    });

    // 50 acknowledged acks=all records.
    let address = nodes[before.leader as usize - 1].address.to_string();
    let producer = Producer::new(
        ProducerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("acks", "all"),
            ("linger.ms", "1"),
        ])
        .unwrap(),
    )
    .unwrap();
    let deliveries: Vec<_> = (0..50)
        .map(|i| {
            producer
                .send(ProducerRecord {
                    topic: TOPIC_2.into(),
                    partition: Some(0),
                    value: Some(Bytes::from(format!("r{i:03}"))),
                    ..ProducerRecord::default()
                })
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery
            .wait(Some(Duration::from_secs(60)))
            .expect("answered")
            .expect("delivered with acks=all");
    }
    producer.close();

    // The leader and one follower die; the third replica is left alone in the ISR.
    let survivor = *before
        .replicas
        .iter()
        .find(|&&id| id != before.leader)
        .unwrap();
    for &dead in before.replicas.iter().filter(|&&id| id != survivor) {
        kill(&mut nodes[dead as usize - 1]);
    }
    let alone = describe(&nodes[survivor as usize - 1], &|partition| {
        partition.leader == survivor && partition.isr == [survivor]
    });
    assert_eq!(alone.replicas, before.replicas);

    // acks=all is refused before the append; acks=1 is appended (after the 50 acknowledged
    // records, all in the survivor's log) but not committed: with the ISR below
    // min.insync.replicas the high watermark stands (KIP-966), since the replicas fenced out
    // of it may be elected again and do not have the record. (It may stand below 50 too: the
    // survivor learned the old leader's high watermark only at its last fetch.)
    let mut connection = nodes[survivor as usize - 1].connect();
    let refused = raw::produce_to_new_leader(&mut connection, TOPIC_2, -1, &["refused"]);
    assert_eq!(refused.0, 19, "NOT_ENOUGH_REPLICAS: {refused:?}");
    assert_eq!(
        raw::produce(&mut connection, TOPIC_2, 1, &["r050"]),
        (0, 50)
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, high_watermark, _) = raw::fetch(&mut connection, TOPIC_2, 0);
    assert!(
        high_watermark <= 50,
        "the high watermark stands below min.insync.replicas: {high_watermark}"
    );
    // DeleteRecords may not go past the high watermark (records the fenced replicas lack).
    let deleted = admin(&nodes[survivor as usize - 1])
        .delete_records(&[((TOPIC_2.to_string(), 0), 51)].into())
        .unwrap();
    assert!(
        deleted[&(TOPIC_2.to_string(), 0)].is_err(),
        "above the high watermark: {deleted:?}"
    );
    let mut values: Vec<String> = (0..=50).map(|i| format!("r{i:03}")).collect();

    // One comes back, catches up and rejoins the ISR: acks=all works again.
    let returning = *before.replicas.iter().find(|&&id| id != survivor).unwrap();
    nodes[returning as usize - 1] = start(work.path(), returning, &quorum);
    let rejoined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        describe(&nodes[survivor as usize - 1], &|partition| {
            partition.isr.len() == 2 && partition.isr.contains(&returning)
        })
    }));
    // The survivor's log is in the panic; the returning replica's says why it did not rejoin.
    assert!(
        rejoined.is_ok(),
        "replica {returning} did not rejoin the ISR; its log:\n{}",
        nodes[returning as usize - 1].log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The leader may have moved to the returning (preferred) replica meanwhile.
        let leader = describe(&nodes[survivor as usize - 1], &|partition| {
            partition.leader >= 0
        })
        .leader;
        let mut connection = nodes[leader as usize - 1].connect();
        match raw::produce(&mut connection, TOPIC_2, -1, &["r051"]) {
            (0, offset) => {
                assert_eq!(offset, 51);
                break;
            }
            (code, _) => assert!(Instant::now() < deadline, "acks=all refused: {code}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    values.push("r051".into());
    assert_eq!(
        read_partition(&nodes[survivor as usize - 1], TOPIC_2, "after", 52),
        values,
        "nothing acknowledged is lost"
    );
    for node in &mut nodes {
        if node.child.is_some() {
            assert!(node.stop().success(), "{}", node.log());
        }
    }
}
