//! Simulated producers and the replica checker.
//!
//! Each producer sends unique values, one at a time, to random partitions of one topic
//! ([`TOPIC`]), through the node it believes leads the partition (the last answer's hint, or a
//! random node), with `acks=all` or `acks=1`. It records what it sent and what it was told in
//! the run's [`History`](spate_engine::history::History), the same history the cluster tests
//! of real brokers record: an `acks=all` acknowledgement is a promise the checker holds the
//! cluster to; an `acks=1` one is not (the leader alone had the record), so it goes into the
//! history as an outcome unknown, like a timeout or a lost connection.
//!
//! The idempotent producer retries a record whose outcome it does not know (timeout, lost
//! connection, any error) with the same sequence number until it is acknowledged: each retry
//! is a new `Send` of the same value in the history, and the checker's "no value twice in a
//! partition" is then Kafka's idempotence guarantee.
//!
//! After healing the checker asks every node for its replicas ([`collect_replicas`]).

use std::cell::RefCell;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use spate_engine::history::Operation;
use spate_engine::quorum::NodeId;

use super::client;
use super::node::{host_name, sim_ms};
use super::replicas::{ProduceAnswer, ProduceRequest, ReplicaDump, DATA_PORT};
use super::wire;
use super::world::World;
use crate::SimRng;

/// The topic the producers write.
pub(crate) const TOPIC: &str = "events";
/// Its partitions.
pub(crate) const PARTITIONS: u8 = 3;
/// Its replicas: three, so that `acks=all` (`min.insync.replicas` 2) goes on with one down.
const REPLICATION_FACTOR: u8 = 3;
/// How long a producer waits for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);
/// Kafka's TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// The idempotent producer's id. The simulated nodes run the storage and replication cores,
/// which check sequences; the id allocator (InitProducerId) is the broker's, not simulated.
const IDEMPOTENT_PRODUCER_ID: i64 = 4_000;
/// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER and INVALID_PRODUCER_EPOCH: a producer that sends one
/// record at a time and retries it until acknowledged never gets these from the partition's
/// current leader (a deposed leader that has not yet heard of its successor answers from its
/// older log, and may).
const SEQUENCE_ERRORS: [i16; 2] = [45, 47];

/// How a producer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `acks=all`; a failed send is not retried.
    AcksAll,
    /// `acks=1`; a failed send is not retried.
    AcksOne,
    /// `acks=all`, idempotent: a failed send (timeout, lost connection, error) is retried with
    /// the same sequence number until acknowledged, so the log must hold it once.
    Idempotent,
}

/// The producers and the checker, as tasks of one simulated client host (fewer hosts make
/// faster steps): producers 0 and 1 with `acks=all`, producer 2 with `acks=1`, producer 3
/// idempotent with retries.
pub(crate) async fn run_all(
    nodes: Vec<NodeId>,
    world: Rc<RefCell<World>>,
    seed: u64,
    stop_ms: u64,
    collect_at_ms: u64,
) -> turmoil::Result {
    let mut tasks = Vec::new();
    let modes = [
        (0, Mode::AcksAll),
        (1, Mode::AcksAll),
        (2, Mode::AcksOne),
        (3, Mode::Idempotent),
    ];
    for (producer, mode) in modes {
        tasks.push(tokio::task::spawn_local(run(
            producer,
            mode,
            nodes.clone(),
            Rc::clone(&world),
            seed ^ (0x9e0d_0000 + u64::from(producer)),
            stop_ms,
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
    collect_replicas(nodes, world, collect_at_ms).await
}

/// A producer: creates the topic unless it exists, then sends until `stop_ms`.
async fn run(
    producer: u32,
    mode: Mode,
    nodes: Vec<NodeId>,
    world: Rc<RefCell<World>>,
    seed: u64,
    stop_ms: u64,
) -> turmoil::Result {
    let mut rng = SimRng::new(seed);
    let pick = |rng: &mut SimRng| nodes[rng.below(nodes.len() as u64) as usize];
    loop {
        if sim_ms() >= stop_ms {
            return Ok(());
        }
        let node = pick(&mut rng);
        let created = tokio::time::timeout(
            ANSWER_TIMEOUT,
            client::create(node, TOPIC, PARTITIONS, REPLICATION_FACTOR),
        )
        .await;
        if let Ok(Some(0 | TOPIC_ALREADY_EXISTS)) = created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut leaders: Vec<Option<NodeId>> = vec![None; usize::from(PARTITIONS)];
    let mut connections: BTreeMap<NodeId, turmoil::net::TcpStream> = BTreeMap::new();
    let acks_all = mode != Mode::AcksOne;
    let mut seq = 0_u64;
    // The idempotent producer's next sequence number per partition, and the record it is
    // retrying, if any.
    let mut sequences = vec![0_i32; usize::from(PARTITIONS)];
    let mut retrying: Option<i32> = None;
    while sim_ms() < stop_ms {
        let partition = retrying.unwrap_or_else(|| rng.below(u64::from(PARTITIONS)) as i32);
        let value = format!("p{producer}-{seq}");
        let node = leaders[partition as usize].unwrap_or_else(|| pick(&mut rng));
        world.borrow_mut().history.push(Operation::Send {
            producer,
            seq,
            partition,
            value: value.clone(),
        });
        let request = ProduceRequest {
            topic: TOPIC.to_owned(),
            partition,
            acks_all,
            value,
            idempotent: (mode == Mode::Idempotent)
                .then(|| (IDEMPOTENT_PRODUCER_ID, 0, sequences[partition as usize])),
            transactional_id: None,
        };
        let answer =
            tokio::time::timeout(ANSWER_TIMEOUT, produce(&mut connections, node, &request)).await;
        if !matches!(answer, Ok(Some(_))) {
            connections.remove(&node);
        }
        let error_code = match &answer {
            Ok(Some(answer)) => Some(answer.error_code),
            _ => None,
        };
        let outcome = match answer {
            Ok(Some(answer)) => {
                leaders[partition as usize] =
                    (answer.leader_hint >= 0).then_some(answer.leader_hint as NodeId);
                if answer.error_code == 0 && acks_all {
                    Operation::Acked {
                        producer,
                        seq,
                        offset: answer.offset,
                    }
                } else if answer.error_code == 0 {
                    Operation::Failed {
                        producer,
                        seq,
                        error: format!("acks=1 at offset {} (the leader alone)", answer.offset),
                    }
                } else {
                    Operation::Failed {
                        producer,
                        seq,
                        error: format!("error {}", answer.error_code),
                    }
                }
            }
            Ok(None) => {
                leaders[partition as usize] = None;
                Operation::Failed {
                    producer,
                    seq,
                    error: "connection lost".to_owned(),
                }
            }
            Err(_) => {
                leaders[partition as usize] = None;
                Operation::Failed {
                    producer,
                    seq,
                    error: "timed out".to_owned(),
                }
            }
        };
        let acknowledged = matches!(outcome, Operation::Acked { .. });
        {
            let mut world = world.borrow_mut();
            if let Some(code) = error_code.filter(|code| SEQUENCE_ERRORS.contains(code)) {
                if mode == Mode::Idempotent
                    && world.leads_newest_epoch(TOPIC, partition, node as i32)
                {
                    world.violation(format!(
                        "idempotent producer {producer} got error {code} for its record {seq} \
                         (sequence {} of partition {partition}) from node {node}",
                        sequences[partition as usize]
                    ));
                }
            }
            world.event(format!("producer {producer} to node {node}: {outcome:?}"));
            world.history.push(outcome);
        }
        if mode == Mode::Idempotent && !acknowledged {
            // The same record again, with the same sequence number.
            retrying = Some(partition);
            tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
            continue;
        }
        if mode == Mode::Idempotent {
            sequences[partition as usize] += 1;
            retrying = None;
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(5 + rng.below(40))).await;
    }
    Ok(())
}

/// One record to `node`, over the producer's connection to it (made when missing); `None`
/// when the connection failed.
async fn produce(
    connections: &mut BTreeMap<NodeId, turmoil::net::TcpStream>,
    node: NodeId,
    request: &ProduceRequest,
) -> Option<ProduceAnswer> {
    let stream = match connections.entry(node) {
        Entry::Occupied(connection) => connection.into_mut(),
        Entry::Vacant(missing) => missing.insert(
            turmoil::net::TcpStream::connect((host_name(node), DATA_PORT))
                .await
                .ok()?,
        ),
    };
    let body = serde_json::to_vec(request).ok()?;
    wire::write_frame(stream, wire::PRODUCE, &body).await.ok()?;
    let (kind, answer) = wire::read_frame(stream).await?;
    if kind != wire::PRODUCE_ANSWER {
        return None;
    }
    serde_json::from_slice(&answer).ok()
}

/// At `at_ms`, asks every node for its replicas' records and leaves them in the world.
async fn collect_replicas(
    nodes: Vec<NodeId>,
    world: Rc<RefCell<World>>,
    at_ms: u64,
) -> turmoil::Result {
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(sim_ms()))).await;
    for node in nodes {
        let dump = tokio::time::timeout(ANSWER_TIMEOUT, ask_dump(node)).await;
        if let Ok(Some(dump)) = dump {
            world.borrow_mut().dumps.insert(node, dump);
        }
    }
    Ok(())
}

async fn ask_dump(node: NodeId) -> Option<Vec<ReplicaDump>> {
    let mut stream = turmoil::net::TcpStream::connect((host_name(node), DATA_PORT))
        .await
        .ok()?;
    wire::write_frame(&mut stream, wire::DUMP, &[]).await.ok()?;
    let (kind, answer) = wire::read_frame(&mut stream).await?;
    if kind != wire::DUMP_ANSWER {
        return None;
    }
    serde_json::from_slice(&answer).ok()
}
