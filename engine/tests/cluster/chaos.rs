//! Jepsen-style: three brokers, a topic with three replicas and min.insync.replicas=2,
//! producers with acks=all writing sequence-numbered records while brokers are SIGKILLed and
//! restarted (the partitions' leaders and the active controller among them) for at least
//! 60 s (`SPATE_CHAOS_SECS`; `SPATE_CHAOS_SEED` replays a schedule). After healing, every
//! replica of every partition is read from its broker's data directory and checked against
//! the history with `spate_engine::history::check`: no acknowledged record lost, no record
//! at two offsets, replicas identical below the high watermark, each producer's records in
//! send order. A failing run leaves its history as JSON lines next to the test's output.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_engine::client::admin::{Admin, NewTopic, TopicInfo};
use spate_engine::client::config::ProducerConfig;
use spate_engine::client::producer::{Producer, ProducerRecord};
use spate_engine::history::{check, History, Operation, ReplicaLog};
use spate_engine::rng::SplitMix64;
use spate_engine::storage::backend::StdStorage;
use spate_engine::storage::{LogConfig, PartitionLog};

use super::quorum::{quorum_of_three, quorum_view, wait_for_brokers};
use crate::broker::util::Broker;

const TOPIC: &str = "chaos";
const PARTITIONS: i32 = 3;
const PRODUCERS: u32 = 3;

fn node_args(node_id: i32, quorum: &str) -> Vec<String> {
    [
        "--node-id",
        &node_id.to_string(),
        "--controller-quorum",
        quorum,
        "--cores",
        "1",
        "--broker-heartbeat-interval-ms",
        "200",
        "--broker-session-timeout-ms",
        "1500",
        "--replica-lag-time-max-ms",
        "2000",
        "--leader-imbalance-check-interval-ms",
        "1000",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

fn start(work: &Path, node_id: i32, quorum: &str, address: SocketAddr) -> Broker {
    let args = node_args(node_id, quorum);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start_at(&data_dir(work, node_id), address, &args)
}

fn data_dir(work: &Path, node_id: i32) -> std::path::PathBuf {
    work.join(format!("node-{node_id}"))
}

/// The topic as the first running node describes it.
fn describe(nodes: &mut [Broker]) -> Option<TopicInfo> {
    let node = nodes
        .iter_mut()
        .find_map(|node| node.is_running().then_some(node))?;
    let address = node.address.to_string();
    let mut admin = Admin::from_properties([("bootstrap.servers", address.as_str())]).ok()?;
    admin
        .describe_topics(Some(&[TOPIC.to_string()]))
        .ok()?
        .into_iter()
        .next()
}

/// One producer: sends `p{id}-{seq}` to partition `seq % PARTITIONS`, one at a time, without
/// retries (so that a record is written at most once per send), until told to stop.
fn produce(id: u32, bootstrap: String, stop: Arc<AtomicBool>) -> History {
    let producer = Producer::new(
        ProducerConfig::from_properties([
            ("bootstrap.servers", bootstrap.as_str()),
            ("acks", "all"),
            ("retries", "0"),
            ("linger.ms", "0"),
            ("max.in.flight.requests.per.connection", "1"),
            ("delivery.timeout.ms", "5000"),
            ("retry.backoff.ms", "50"),
        ])
        .unwrap(),
    )
    .unwrap();
    let mut history = History::new();
    let mut seq = 0_u64;
    while !stop.load(Ordering::SeqCst) {
        let partition = (seq % PARTITIONS as u64) as i32;
        let value = format!("p{id}-{seq}");
        history.push(Operation::Send {
            producer: id,
            seq,
            partition,
            value: value.clone(),
        });
        let sent = producer.send(ProducerRecord {
            topic: TOPIC.into(),
            partition: Some(partition),
            value: Some(Bytes::from(value)),
            ..ProducerRecord::default()
        });
        let outcome = match sent {
            Ok(delivery) => match delivery.wait(Some(Duration::from_secs(15))) {
                Some(Ok(metadata)) => Ok(metadata.offset),
                Some(Err(error)) => Err(error.to_string()),
                None => Err("no answer in 15 s".to_string()),
            },
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(offset) => history.push(Operation::Acked {
                producer: id,
                seq,
                offset,
            }),
            Err(error) => {
                history.push(Operation::Failed {
                    producer: id,
                    seq,
                    error,
                });
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        seq += 1;
    }
    producer.close();
    history
}

/// Every record of one partition directory, read offline (after the broker stopped).
pub(super) fn read_replica(dir: &Path, node: i32, partition: i32) -> ReplicaLog {
    let records = futures_lite::future::block_on(async {
        let (mut log, _) = PartitionLog::open(StdStorage, dir, LogConfig::default(), 0)
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        let mut records = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let bytes = log.read(offset, 1 << 20, None).await.unwrap().to_bytes();
            let mut buffer = bytes.clone();
            let batches = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buffer)
                .unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
            let before = offset;
            for record in batches.iter().flat_map(|batch| &batch.records) {
                if record.offset >= offset {
                    let value = record.value.as_deref().unwrap_or_default();
                    records.push((record.offset, String::from_utf8_lossy(value).into_owned()));
                    offset = record.offset + 1;
                }
            }
            assert!(
                offset > before,
                "{}: no progress at {offset}",
                dir.display()
            );
        }
        log.close(0).await.unwrap();
        records
    });
    ReplicaLog {
        node,
        partition,
        records,
    }
}

#[test]
fn acknowledged_writes_survive_brokers_killed_and_restarted_for_a_minute() {
    let seconds: u64 = std::env::var("SPATE_CHAOS_SECS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SPATE_CHAOS_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos: seed {seed} (SPATE_CHAOS_SEED={seed} replays the schedule), {seconds} s");
    let mut random = SplitMix64::new(seed);
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3)
        .map(|id| start(work.path(), id, &quorum, "127.0.0.1:0".parse().unwrap()))
        .collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    let address = nodes[0].address.to_string();
    Admin::from_properties([("bootstrap.servers", address.as_str())])
        .unwrap()
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let healthy = |info: &TopicInfo| {
        info.partitions.len() == PARTITIONS as usize
            && info
                .partitions
                .iter()
                .all(|partition| partition.leader >= 0 && partition.isr.len() == 3)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !describe(&mut nodes).is_some_and(|info| healthy(&info)) {
        assert!(Instant::now() < deadline, "{}", nodes[0].log());
        std::thread::sleep(Duration::from_millis(100));
    }

    let bootstrap = nodes
        .iter()
        .map(|node| node.address.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let bootstrap = bootstrap.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || produce(id, bootstrap, stop))
        })
        .collect();

    // The schedule: one broker down at a time, in turn a partition leader, the active
    // controller and a random one, each down for 0.5 to 2.5 s, 1 to 3 s apart.
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut turn = 0_u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(1_000 + random.below(2_000)));
        let victim = match turn % 3 {
            0 => describe(&mut nodes)
                .and_then(|info| {
                    let partition = random.below(PARTITIONS as u64) as usize;
                    info.partitions.get(partition).map(|p| p.leader)
                })
                .filter(|&leader| leader > 0),
            1 => nodes
                .iter()
                .find_map(|node| quorum_view(node).map(|(leader, _)| leader)),
            _ => None,
        }
        .unwrap_or_else(|| 1 + random.below(3) as i32);
        let kind = ["partition leader", "controller", "random"][(turn % 3) as usize];
        turn += 1;
        let index = victim as usize - 1;
        let address = nodes[index].address;
        let mut child = nodes[index].child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push((started.elapsed(), victim, kind));
        std::thread::sleep(Duration::from_millis(500 + random.below(2_000)));
        nodes[index] = start(work.path(), victim, &quorum, address);
    }
    stop.store(true, Ordering::SeqCst);
    let mut history = History::new();
    for producer in producers {
        history.extend(producer.join().unwrap());
    }

    // Heal: every partition led, every replica back in its ISR, high watermarks settled.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut info = loop {
        if let Some(info) = describe(&mut nodes).filter(|info| healthy(info)) {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "no healthy cluster: {:?}",
            describe(&mut nodes)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Each partition's high watermark, read from its leader until it holds still (the
    // leader may move meanwhile: the preferred one takes over again).
    let mut high_watermarks = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for partition in 0..PARTITIONS {
        let mut previous = None;
        loop {
            assert!(Instant::now() < deadline, "high watermarks unsettled");
            let leader = info.partitions[partition as usize].leader;
            let read = describe(&mut nodes)
                .and_then(|now| now.partitions.get(partition as usize).map(|p| p.leader))
                .filter(|&now| now == leader)
                .and_then(|leader| {
                    super::replication::latest_offset(&nodes[leader as usize - 1], TOPIC, partition)
                        .ok()
                });
            match read {
                Some(high_watermark) if Some(high_watermark) == previous => {
                    high_watermarks.insert(partition, high_watermark);
                    break;
                }
                Some(high_watermark) => previous = Some(high_watermark),
                None => {
                    previous = None;
                    if let Some(now) = describe(&mut nodes).filter(|now| healthy(now)) {
                        info = now;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1_000));
        }
    }
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }

    let mut replicas = Vec::new();
    for node_id in 1..=3 {
        for partition in 0..PARTITIONS {
            let dir = data_dir(work.path(), node_id).join(format!("{TOPIC}-{partition}"));
            replicas.push(read_replica(&dir, node_id, partition));
        }
    }
    eprintln!("chaos: kills {kills:?}");
    match check(&history, &replicas, &high_watermarks) {
        Ok(summary) => {
            eprintln!("chaos: {summary:?}, high watermarks {high_watermarks:?}");
            assert!(
                summary.acknowledged >= 100,
                "too little was acknowledged to mean anything: {summary:?}"
            );
            assert!(kills.len() >= 3, "{kills:?}");
        }
        Err(violations) => {
            // The brokers' logs and data directories stay for a look, with the history.
            let kept = work.keep();
            std::fs::write(kept.join("history.jsonl"), history.to_json_lines()).unwrap();
            panic!(
                "seed {seed}: {} violation(s); history, broker logs and data in {}:\n{}",
                violations.len(),
                kept.display(),
                violations
                    .iter()
                    .take(20)
                    .map(|violation| format!("  {violation}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
