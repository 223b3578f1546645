//! The client consumer in a consumer group against a broker process: members share the
//! partitions under each assignor and rebalance as members come and go, commits carry a group
//! across restarts, listeners see what moves, and a member that stops polling is replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_engine::client::admin::{Admin, NewTopic};
use spate_engine::client::assignor::TopicPartition;
use spate_engine::client::config::{ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::{Consumer, RebalanceListener, StartAt};
use spate_engine::client::producer::{Producer, ProducerRecord};

use crate::broker::util::Broker;

fn start_broker(work: &tempfile::TempDir) -> Broker {
    Broker::start(
        &work.path().join("data"),
        &["--group-initial-rebalance-delay-ms", "0"],
    )
}

fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    let address = broker.address.to_string();
    let mut admin = Admin::from_properties([("bootstrap.servers", address.as_str())]).unwrap();
    admin
        .create_topics(&[NewTopic {
            name: topic.into(),
            partitions,
            replication_factor: 1,
            configs: BTreeMap::new(),
        }])
        .unwrap()
        .into_iter()
        .for_each(|result| result.unwrap());
}

/// `count` records spread over `partitions` partitions, values `v0`, `v1`, ...
fn produce(broker: &Broker, topic: &str, partitions: i32, range: std::ops::Range<usize>) {
    let address = broker.address.to_string();
    let producer = Producer::new(
        ProducerConfig::from_properties([("bootstrap.servers", address.as_str()), ("acks", "all")])
            .unwrap(),
    )
    .unwrap();
    let deliveries: Vec<_> = range
        .map(|index| {
            producer
                .send(ProducerRecord {
                    topic: topic.into(),
                    partition: Some(i32::try_from(index).unwrap() % partitions),
                    value: Some(Bytes::from(format!("v{index}"))),
                    ..ProducerRecord::default()
                })
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery.wait(None).unwrap().unwrap();
    }
    producer.close();
}

fn consumer(broker: &Broker, group: &str, properties: &[(&str, &str)]) -> Consumer {
    let address = broker.address.to_string();
    let mut all = vec![
        ("bootstrap.servers", address.as_str()),
        ("group.id", group),
        ("auto.offset.reset", "earliest"),
        ("heartbeat.interval.ms", "200"),
        ("session.timeout.ms", "6000"),
        ("retry.backoff.ms", "20"),
    ];
    all.extend_from_slice(properties);
    Consumer::new(ConsumerConfig::from_properties(all.iter().copied()).unwrap()).unwrap()
}

/// What a consumer running on its own thread has seen.
#[derive(Default)]
struct Seen {
    values: Vec<String>,
    assignment: Vec<TopicPartition>,
}

/// Runs `consumer` on a thread, polling until `stop`, then closing it (commit and leave).
fn run(
    mut consumer: Consumer,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Seen>>, std::thread::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = Arc::clone(&seen);
    let thread =
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let records = consumer.poll(Duration::from_millis(100)).unwrap();
                let mut seen = shared.lock().unwrap();
                seen.values.extend(records.iter().map(|record| {
                    String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap()
                }));
                seen.assignment = consumer.assignment();
            }
            consumer.close();
        });
    (seen, thread)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two members of each assignor's group split six partitions three and three, every record
/// is read once between them, and the survivor takes all six when the other leaves.
#[test]
fn members_share_partitions_and_the_survivor_takes_all_under_every_assignor() {
    let work = tempfile::tempdir().unwrap();
    let broker = start_broker(&work);
    for assignor in ["range", "roundrobin", "cooperative-sticky"] {
        let topic = format!("share-{assignor}");
        create_topic(&broker, &topic, 6);
        produce(&broker, &topic, 6, 0..600);
        let group = format!("group-{assignor}");
        let properties = [("partition.assignment.strategy", assignor)];
        let stop_first = Arc::new(AtomicBool::new(false));
        let mut first = consumer(&broker, &group, &properties);
        first.subscribe(std::slice::from_ref(&topic)).unwrap();
        let (first_seen, first_thread) = run(first, Arc::clone(&stop_first));
        wait_until("the first member to hold all six", || {
            first_seen.lock().unwrap().assignment.len() == 6
        });

        let stop_second = Arc::new(AtomicBool::new(false));
        let mut second = consumer(&broker, &group, &properties);
        second.subscribe(std::slice::from_ref(&topic)).unwrap();
        let (second_seen, second_thread) = run(second, Arc::clone(&stop_second));
        wait_until("three partitions each", || {
            let first = first_seen.lock().unwrap().assignment.clone();
            let second = second_seen.lock().unwrap().assignment.clone();
            first.len() == 3
                && second.len() == 3
                && first.iter().all(|partition| !second.contains(partition))
        });
        produce(&broker, &topic, 6, 600..1200);
        wait_until("every record read", || {
            first_seen.lock().unwrap().values.len() + second_seen.lock().unwrap().values.len()
                >= 1200
        });
        assert!(
            !second_seen.lock().unwrap().values.is_empty(),
            "{assignor}: the second member read nothing"
        );

        stop_second.store(true, Ordering::Relaxed);
        second_thread.join().unwrap();
        wait_until("the survivor to hold all six again", || {
            first_seen.lock().unwrap().assignment.len() == 6
        });
        produce(&broker, &topic, 6, 1200..1260);
        wait_until("the records after the leave", || {
            first_seen.lock().unwrap().values.len() + second_seen.lock().unwrap().values.len()
                >= 1260
        });
        stop_first.store(true, Ordering::Relaxed);
        first_thread.join().unwrap();

        let mut all: Vec<String> = first_seen.lock().unwrap().values.clone();
        all.extend(second_seen.lock().unwrap().values.iter().cloned());
        let distinct: BTreeSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), 1260, "{assignor}: records missing");
        // Commits on revocation keep a handed-over partition from being read twice.
        assert_eq!(all.len(), 1260, "{assignor}: records read twice");
    }
}

/// A member reads part of a topic and commits; the group's next member starts after it.
#[test]
fn a_new_member_starts_at_the_groups_committed_offsets() {
    let work = tempfile::tempdir().unwrap();
    let broker = start_broker(&work);
    create_topic(&broker, "resume-group", 1);
    produce(&broker, "resume-group", 1, 0..100);
    let mut first = consumer(
        &broker,
        "resumers",
        &[("enable.auto.commit", "false"), ("max.poll.records", "10")],
    );
    first.subscribe(&["resume-group".into()]).unwrap();
    let mut read = Vec::new();
    while read.len() < 40 {
        read.extend(first.poll(Duration::from_secs(1)).unwrap());
    }
    assert_eq!(read.len(), 40);
    assert_eq!(first.position("resume-group", 0), Some(40));
    first.commit(None).unwrap();
    // An asynchronous commit of a later offset, confirmed through its callback.
    let (sender, receiver) = std::sync::mpsc::channel();
    first
        .commit_async(
            Some(BTreeMap::from([(("resume-group".into(), 0), 45)])),
            Some(Box::new(move |result| sender.send(result.is_ok()).unwrap())),
        )
        .unwrap();
    assert!(receiver.recv_timeout(Duration::from_secs(10)).unwrap());
    assert_eq!(
        first.committed(&[("resume-group".into(), 0)]).unwrap(),
        BTreeMap::from([(("resume-group".into(), 0), 45)])
    );
    first.close();

    let mut second = consumer(&broker, "resumers", &[("enable.auto.commit", "false")]);
    second.subscribe(&["resume-group".into()]).unwrap();
    let mut rest = Vec::new();
    while rest.len() < 55 {
        rest.extend(second.poll(Duration::from_secs(1)).unwrap());
    }
    assert_eq!(rest[0].offset, 45);
    assert_eq!(rest.last().unwrap().offset, 99);
    assert_eq!(second.lag("resume-group", 0), Some(0));
}

/// A listener call: "revoked" or "assigned", with the partitions.
type ListenerCall = (&'static str, Vec<TopicPartition>);

/// Records listener calls.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<ListenerCall>>>);

impl RebalanceListener for Recorder {
    fn on_partitions_revoked(&mut self, _: &mut Consumer, partitions: &[TopicPartition]) {
        self.0
            .lock()
            .unwrap()
            .push(("revoked", partitions.to_vec()));
    }
    fn on_partitions_assigned(&mut self, consumer: &mut Consumer, partitions: &[TopicPartition]) {
        // The listener may use the consumer: here it starts every new partition at offset 0.
        for (topic, partition) in partitions {
            consumer
                .seek(topic, *partition, StartAt::Offset(0))
                .unwrap();
        }
        self.0
            .lock()
            .unwrap()
            .push(("assigned", partitions.to_vec()));
    }
}

/// With an eager assignor the first member gives back all four partitions when a second
/// joins; with cooperative-sticky it gives back only the two that move.
#[test]
fn listeners_see_eager_and_cooperative_rebalances_as_kafka_defines_them() {
    let work = tempfile::tempdir().unwrap();
    let broker = start_broker(&work);
    create_topic(&broker, "listened", 4);
    for (assignor, revoked_on_join) in [("range", 4), ("cooperative-sticky", 2)] {
        let group = format!("listeners-{assignor}");
        let properties = [("partition.assignment.strategy", assignor)];
        let recorder = Recorder::default();
        let mut first = consumer(&broker, &group, &properties);
        first.set_rebalance_listener(Box::new(recorder.clone()));
        first.subscribe(&["listened".into()]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, thread) = run(first, Arc::clone(&stop));
        wait_until("four partitions", || {
            seen.lock().unwrap().assignment.len() == 4
        });
        let stop_second = Arc::new(AtomicBool::new(false));
        let mut second = consumer(&broker, &group, &properties);
        second.subscribe(&["listened".into()]).unwrap();
        let (second_seen, second_thread) = run(second, Arc::clone(&stop_second));
        wait_until("two each", || {
            seen.lock().unwrap().assignment.len() == 2
                && second_seen.lock().unwrap().assignment.len() == 2
        });
        stop_second.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        second_thread.join().unwrap();
        thread.join().unwrap();
        let calls = recorder.0.lock().unwrap().clone();
        assert_eq!(calls[0].0, "assigned", "{assignor}: {calls:?}");
        assert_eq!(calls[0].1.len(), 4, "{assignor}: {calls:?}");
        assert_eq!(calls[1].0, "revoked", "{assignor}: {calls:?}");
        assert_eq!(calls[1].1.len(), revoked_on_join, "{assignor}: {calls:?}");
        if assignor == "range" {
            assert_eq!(calls[2].0, "assigned", "{calls:?}");
            assert_eq!(calls[2].1.len(), 2, "{calls:?}");
        } else {
            // Cooperative: nothing new for the first member; the kept two stay assigned.
            assert!(calls[2..]
                .iter()
                .take_while(|(kind, _)| *kind == "assigned")
                .all(|(_, partitions)| partitions.is_empty()));
        }
    }
}

/// A paused partition yields nothing until resumed; the others keep flowing.
#[test]
fn paused_partitions_wait_until_resumed() {
    let work = tempfile::tempdir().unwrap();
    let broker = start_broker(&work);
    create_topic(&broker, "pausing", 2);
    produce(&broker, "pausing", 2, 0..100);
    let address = broker.address.to_string();
    let mut consumer = Consumer::new(
        ConsumerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("auto.offset.reset", "earliest"),
        ])
        .unwrap(),
    )
    .unwrap();
    consumer.assign(&[("pausing".into(), 0), ("pausing".into(), 1)]);
    consumer.pause(&[("pausing".into(), 1)]).unwrap();
    assert_eq!(consumer.paused(), [("pausing".to_owned(), 1)]);
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        read.extend(consumer.poll(Duration::from_millis(200)).unwrap());
    }
    assert_eq!(read.len(), 50);
    assert!(read.iter().all(|record| record.partition == 0));
    assert_eq!(consumer.lag("pausing", 0), Some(0));
    consumer.resume(&[("pausing".into(), 1)]).unwrap();
    while read.len() < 100 {
        read.extend(consumer.poll(Duration::from_secs(1)).unwrap());
    }
    assert_eq!(
        read.iter().filter(|record| record.partition == 1).count(),
        50
    );
    assert!(consumer
        .seek("pausing", 7, StartAt::Beginning)
        .unwrap_err()
        .to_string()
        .contains("not assigned"));
}

/// A member that stops polling for longer than max.poll.interval.ms leaves the group, which
/// gives its partitions to the member still polling; when it polls again it rejoins.
#[test]
fn a_member_that_stops_polling_is_replaced_and_rejoins_later() {
    let work = tempfile::tempdir().unwrap();
    let broker = start_broker(&work);
    create_topic(&broker, "stalled", 2);
    let properties = [("max.poll.interval.ms", "1500")];
    let mut stalling = consumer(&broker, "stallers", &properties);
    stalling.subscribe(&["stalled".into()]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut steady = consumer(&broker, "stallers", &properties);
    steady.subscribe(&["stalled".into()]).unwrap();
    let (steady_seen, steady_thread) = run(steady, Arc::clone(&stop));
    wait_until("both members to hold a partition", || {
        stalling.poll(Duration::from_millis(100)).unwrap();
        stalling.assignment().len() == 1 && steady_seen.lock().unwrap().assignment.len() == 1
    });
    std::thread::sleep(Duration::from_millis(4000));
    wait_until("the steady member to hold both", || {
        steady_seen.lock().unwrap().assignment.len() == 2
    });
    wait_until("the stalled member to rejoin", || {
        stalling.poll(Duration::from_millis(100)).unwrap();
        stalling.assignment().len() == 1
    });
    stop.store(true, Ordering::Relaxed);
    steady_thread.join().unwrap();
}

/// Without a committed offset, `auto.offset.reset` decides: `latest` reads only what comes
/// next, `earliest` everything, `none` is an error; an offset out of range with `none` is
/// OFFSET_OUT_OF_RANGE, and with `earliest` starts over at the log start.
#[test]
fn auto_offset_reset_earliest_latest_and_none() {
    let work = tempfile::tempdir().unwrap();
    let broker = start_broker(&work);
    create_topic(&broker, "resets", 1);
    produce(&broker, "resets", 1, 0..10);
    let read_all = |consumer: &mut Consumer, count: usize| {
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while values.len() < count {
            assert!(Instant::now() < deadline, "read {values:?}");
            for record in consumer.poll(Duration::from_millis(200)).unwrap() {
                values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
            }
        }
        values
    };

    let mut latest = consumer(&broker, "reset-latest", &[("auto.offset.reset", "latest")]);
    latest.subscribe(&["resets".into()]).unwrap();
    while latest.position("resets", 0).is_none() {
        assert!(latest.poll(Duration::from_millis(200)).unwrap().is_empty());
    }
    produce(&broker, "resets", 1, 10..12);
    assert_eq!(read_all(&mut latest, 2), ["v10", "v11"]);

    let mut earliest = consumer(&broker, "reset-earliest", &[]);
    earliest.subscribe(&["resets".into()]).unwrap();
    assert_eq!(read_all(&mut earliest, 12).len(), 12);

    let mut none = consumer(&broker, "reset-none", &[("auto.offset.reset", "none")]);
    none.subscribe(&["resets".into()]).unwrap();
    let error = none.poll(Duration::from_secs(5)).unwrap_err();
    assert!(
        error.to_string().contains("auto.offset.reset=none"),
        "{error}"
    );
    // With a position beyond the log end: OFFSET_OUT_OF_RANGE for `none`...
    none.seek("resets", 0, StartAt::Offset(1000)).unwrap();
    let error = none.poll(Duration::from_secs(5)).unwrap_err();
    assert!(error.to_string().contains("OFFSET_OUT_OF_RANGE"), "{error}");
    // ... and the log start again for `earliest`.
    earliest.seek("resets", 0, StartAt::Offset(1000)).unwrap();
    assert_eq!(read_all(&mut earliest, 1)[0], "v0");
}
