//! The metadata quorum across real processes: three nodes agree on one leader, the survivors
//! elect another when it is killed (SIGKILL), and it rejoins from its disk when restarted;
//! brokers register and are fenced; snapshots truncate the metadata log, a member that missed
//! records the leader compacted away is sent a snapshot, and every member restarts from its
//! own.

use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    describe_quorum_request, ApiKey, DescribeClusterRequest, DescribeQuorumRequest, RequestKind,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::util::{free_port, Broker};

/// (leader id, epoch) as `broker` reports them, if it knows a leader.
pub(super) fn quorum_view(broker: &Broker) -> Option<(i32, i32)> {
    let mut connection = broker.connect();
    let request = DescribeQuorumRequest::default().with_topics(vec![
        describe_quorum_request::TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![
                describe_quorum_request::PartitionData::default().with_partition_index(0)
            ]),
    ]);
    let ResponseKind::DescribeQuorum(response) = connection.call(
        ApiKey::DescribeQuorum,
        1,
        RequestKind::DescribeQuorum(request),
    ) else {
        panic!("not a DescribeQuorum response")
    };
    if response.error_code != 0 {
        // The quorum member publishes its view a moment after the broker is ready.
        return None;
    }
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.current_voters.len(), 3);
    (partition.leader_id.0 > 0).then_some((partition.leader_id.0, partition.leader_epoch))
}

/// Waits until every broker in `brokers` reports the same leader, other than `not`, and
/// returns it.
fn agreed_leader(brokers: &[&Broker], not: Option<i32>) -> (i32, i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<Option<(i32, i32)>> = brokers.iter().map(|b| quorum_view(b)).collect();
        if let Some(Some(first)) = views.first() {
            if views.iter().all(|view| *view == Some(*first)) && Some(first.0) != not {
                return *first;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader: {views:?}\n{}",
            brokers
                .iter()
                .map(|b| b.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn start_node(work: &Path, node_id: i32, quorum: &str) -> Broker {
    start_node_with(work, node_id, quorum, &[])
}

pub(super) fn start_node_with(work: &Path, node_id: i32, quorum: &str, extra: &[&str]) -> Broker {
    let node_id_text = node_id.to_string();
    let mut args = vec![
        "--node-id",
        &node_id_text,
        "--controller-quorum",
        quorum,
        "--cores",
        "1",
        "--broker-heartbeat-interval-ms",
        "200",
    ];
    if !extra.contains(&"--broker-session-timeout-ms") {
        args.extend_from_slice(&["--broker-session-timeout-ms", "1500"]);
    }
    args.extend_from_slice(extra);
    Broker::start(&work.join(format!("node-{node_id}")), &args)
}

pub(super) fn quorum_of_three() -> String {
    (1..=3)
        .map(|id| format!("{id}@127.0.0.1:{}", free_port()))
        .collect::<Vec<_>>()
        .join(",")
}

/// (broker id, port) of the brokers `broker` lists in DescribeCluster, and the controller.
fn cluster_view(broker: &Broker) -> (Vec<(i32, i32)>, i32) {
    let mut connection = broker.connect();
    let ResponseKind::DescribeCluster(response) = connection.call(
        ApiKey::DescribeCluster,
        0,
        RequestKind::DescribeCluster(DescribeClusterRequest::default()),
    ) else {
        panic!("not a DescribeCluster response")
    };
    let brokers = response
        .brokers
        .iter()
        .map(|broker| (broker.broker_id.0, broker.port))
        .collect();
    (brokers, response.controller_id.0)
}

/// Waits until `broker` lists exactly `expected` (id, port) pairs.
pub(super) fn wait_for_brokers(broker: &Broker, expected: &[(i32, i32)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (brokers, _) = cluster_view(broker);
        if brokers == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "brokers {brokers:?}, expected {expected:?}\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_nodes_elect_one_leader_and_replace_it_when_it_is_killed() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3)
        .map(|id| start_node(work.path(), id, &quorum))
        .collect();
    let (first_leader, first_epoch) = agreed_leader(&nodes.iter().collect::<Vec<_>>(), None);

    // SIGKILL the leader: the other two elect a new one at a higher epoch.
    let killed = usize::try_from(first_leader - 1).unwrap();
    let mut child = nodes[killed].child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    let survivors: Vec<&Broker> = nodes
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != killed)
        .map(|(_, node)| node)
        .collect();
    let (second_leader, second_epoch) = agreed_leader(&survivors, Some(first_leader));
    assert_ne!(second_leader, first_leader);
    assert!(second_epoch > first_epoch);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "re-election took {:?}",
        started.elapsed()
    );

    // The killed node comes back on its data directory and follows the new leader.
    nodes[killed] = start_node(work.path(), first_leader, &quorum);
    let (leader, epoch) = agreed_leader(&nodes.iter().collect::<Vec<_>>(), None);
    assert_eq!(
        (leader, epoch),
        (second_leader, second_epoch),
        "pre-vote: no disruption"
    );
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
}

#[test]
fn brokers_register_and_a_silent_one_is_fenced_until_it_returns() {
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
    let (_, controller) = cluster_view(&nodes[0]);
    assert!(
        (1..=3).contains(&controller),
        "the quorum leader is the controller"
    );

    // Node 3 dies: once its session runs out it is fenced, and no longer listed.
    let mut child = nodes[2].child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for_brokers(&nodes[0], &everyone[..2]);
    wait_for_brokers(&nodes[1], &everyone[..2]);

    // It comes back (on a new port): registered again and unfenced.
    nodes[2] = start_node(work.path(), 3, &quorum);
    let mut back = everyone[..2].to_vec();
    back.push((3, i32::from(nodes[2].address.port())));
    for node in &nodes {
        wait_for_brokers(node, &back);
    }
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
}

/// Wait until `node`'s log has a line containing `text`.
fn wait_for_log(node: &Broker, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn snapshots_truncate_the_metadata_log_and_bring_a_member_back_that_missed_records() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    // A snapshot after every record: the leader's log never reaches back past its last one.
    let every_record = ["--metadata-snapshot-interval-records", "1"];
    let start = |id: i32| start_node_with(work.path(), id, &quorum, &every_record);
    let mut nodes: Vec<Broker> = (1..=3).map(start).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    for (id, node) in (1..=3).zip(&nodes) {
        wait_for_log(node, "metadata snapshot taken");
        let dir = work.path().join(format!("node-{id}/__cluster_metadata-0"));
        assert!(dir.join("snapshot").exists(), "{}", node.log());
    }

    // Node 3 misses its own fencing, which the others compact away at once: it can only
    // catch up through a snapshot when it returns.
    let mut child = nodes[2].child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for_brokers(&nodes[0], &everyone[..2]);
    nodes[2] = start(3);
    let mut back = everyone[..2].to_vec();
    back.push((3, i32::from(nodes[2].address.port())));
    for node in &nodes {
        wait_for_brokers(node, &back);
    }
    wait_for_log(&nodes[2], "metadata snapshot installed from the leader");

    // Every member restarts from its own snapshot and log, with the same metadata.
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
    let nodes: Vec<Broker> = (1..=3).map(start).collect();
    let ports: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &ports);
    }
    for mut node in nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
}
