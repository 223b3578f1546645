//! A simulated admin client: creates topics one after another, each through a node chosen at
//! random, and records which creations were acknowledged. A creation that times out or whose
//! connection breaks has an unknown outcome (it may still happen); only acknowledged ones are
//! checked.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use spate_engine::quorum::NodeId;

use super::node::{host_name, CLIENT_PORT};
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
    loop {
        let pause = Duration::from_millis(100 + rng.below(900));
        tokio::time::sleep(pause).await;
        let now_ms = turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_millis() as u64);
        if now_ms >= stop_ms {
            return Ok(());
        }
        let node = nodes[rng.below(nodes.len() as u64) as usize];
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
    let mut stream = turmoil::net::TcpStream::connect((host_name(node), CLIENT_PORT))
        .await
        .ok()?;
    let mut payload = vec![partitions, replication_factor];
    payload.extend_from_slice(topic.as_bytes());
    wire::write_frame(&mut stream, wire::CREATE_TOPIC, &payload)
        .await
        .ok()?;
    let (kind, answer) = wire::read_frame(&mut stream).await?;
    let code: [u8; 2] = answer.try_into().ok()?;
    (kind == wire::CREATE_TOPIC_ANSWER).then(|| i16::from_be_bytes(code))
}
