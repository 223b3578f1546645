//! A simulated admin client: creates topics one after another, each through a node chosen at
//! random, and records which creations were acknowledged. A creation that times out or whose
//! connection breaks has an unknown outcome (it may still happen); only acknowledged ones are
//! checked. In half the seeds it also moves the replicas of the producers' topic and of
//! `__consumer_offsets` to three nodes chosen at random, preferred leader first
//! (AlterPartitionReassignments): with five nodes, replicas move to nodes that must catch up;
//! with three, the preferred leader changes.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use spate_engine::group::OFFSETS_TOPIC;
use spate_engine::quorum::admin::Reassignment;
use spate_engine::quorum::NodeId;

use super::groups;
use super::node::{host_name, CLIENT_PORT};
use super::producer;
use super::wire;
use super::world::World;
use crate::SimRng;

/// How long the client waits for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Creates topics until `stop_ms` of simulated time.
pub(crate) async fn run(
    nodes: Vec<NodeId>,
    world: Rc<RefCell<World>>,
    seed: u64,
    stop_ms: u64,
) -> turmoil::Result {
    let mut rng = SimRng::new(seed);
    let mut next_topic = 0_u64;
    let reassigning = rng.chance(50);
    loop {
        let pause = Duration::from_millis(100 + rng.below(900));
        tokio::time::sleep(pause).await;
        let now_ms = turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_millis() as u64);
        if now_ms >= stop_ms {
            return Ok(());
        }
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        if reassigning && rng.chance(40) {
            reassign_one(&nodes, node, &world, &mut rng).await;
            continue;
        }
        let topic = format!("topic-{next_topic}");
        next_topic += 1;
        let partitions = 1 + rng.below(4) as u8;
        world
            .borrow_mut()
            .event(format!("client asks node {node} to create {topic}"));
        // Two replicas on three nodes (a topic is still created with one node down), three on
        // more.
        let replication_factor = if nodes.len() >= 4 { 3 } else { 2 };
        let outcome = tokio::time::timeout(
            ANSWER_TIMEOUT,
            create(node, &topic, partitions, replication_factor),
        )
        .await;
        let mut world = world.borrow_mut();
        match outcome {
            Ok(Some(0)) => {
                world.event(format!("client: {topic} created"));
                world.acknowledged_topics.insert(topic);
            }
            Ok(Some(code)) => world.event(format!("client: {topic} refused with error {code}")),
            Ok(None) => world.event(format!("client: {topic} outcome unknown (connection lost)")),
            Err(_) => world.event(format!("client: {topic} outcome unknown (timed out)")),
        }
    }
}

/// One creation; the error code answered, or `None` when the connection failed.
pub(crate) async fn create(
    node: NodeId,
    topic: &str,
    partitions: u8,
    replication_factor: u8,
) -> Option<i16> {
    let mut payload = vec![partitions, replication_factor];
    payload.extend_from_slice(topic.as_bytes());
    admin_request(node, wire::CREATE_TOPIC, &payload).await
}

/// One topic request of `kind` to `node`'s client port; the error code answered, or `None`
/// when the connection failed.
async fn admin_request(node: NodeId, kind: u8, payload: &[u8]) -> Option<i16> {
    let mut stream = turmoil::net::TcpStream::connect((host_name(node), CLIENT_PORT))
        .await
        .ok()?;
    wire::write_frame(&mut stream, kind, payload).await.ok()?;
    let (kind, answer) = wire::read_frame(&mut stream).await?;
    let code: [u8; 2] = answer.try_into().ok()?;
    (kind == wire::ADMIN_ANSWER).then(|| i16::from_be_bytes(code))
}

/// Moves one partition of the producers' topic or of `__consumer_offsets` to three nodes
/// chosen at random, through `node`.
async fn reassign_one(nodes: &[NodeId], node: NodeId, world: &RefCell<World>, rng: &mut SimRng) {
    let (topic, partitions) = if rng.chance(70) {
        (producer::TOPIC, i32::from(producer::PARTITIONS))
    } else {
        (OFFSETS_TOPIC, groups::OFFSETS_PARTITIONS)
    };
    let partition = rng.below(partitions as u64) as i32;
    let mut shuffled = nodes.to_vec();
    for index in (1..shuffled.len()).rev() {
        shuffled.swap(index, rng.below(index as u64 + 1) as usize);
    }
    let target: Vec<i32> = shuffled.iter().take(3).map(|&node| node as i32).collect();
    world.borrow_mut().event(format!(
        "client asks node {node} to move {topic}-{partition} to {target:?}"
    ));
    let reassignment = Reassignment {
        topic: topic.to_owned(),
        partition,
        target: Some(target),
    };
    let outcome = tokio::time::timeout(ANSWER_TIMEOUT, reassign(node, &reassignment)).await;
    world.borrow_mut().event(format!(
        "client: moving {topic}-{partition}: {}",
        match outcome {
            Ok(Some(0)) => "accepted".to_owned(),
            Ok(Some(code)) => format!("refused with error {code}"),
            Ok(None) => "outcome unknown (connection lost)".to_owned(),
            Err(_) => "outcome unknown (timed out)".to_owned(),
        }
    ));
}

/// One reassignment; the error code answered, or `None` when the connection failed.
async fn reassign(node: NodeId, reassignment: &Reassignment) -> Option<i16> {
    let payload = serde_json::to_vec(reassignment).ok()?;
    admin_request(node, wire::REASSIGN, &payload).await
}
