//! The client's transactional producer and `read_committed` consumer against a broker
//! process: committed records are read, aborted ones never; offsets sent to a transaction
//! commit with it; a newer producer of the transactional id fences the older.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_engine::client::config::{ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::{Consumer, StartAt};
use spate_engine::client::producer::{Producer, ProducerRecord};

use crate::broker::util::Broker;

fn transactional(broker: &Broker, transactional_id: &str) -> Producer {
    let address = broker.address.to_string();
    let producer = Producer::new(
        ProducerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("transactional.id", transactional_id),
        ])
        .unwrap(),
    )
    .unwrap();
    producer.init_transactions().unwrap();
    producer
}

fn send(producer: &Producer, topic: &str, partition: i32, value: String) {
    producer
        .send(ProducerRecord {
            topic: topic.into(),
            partition: Some(partition),
            value: Some(Bytes::from(value)),
            ..ProducerRecord::default()
        })
        .unwrap();
}

fn consumer(broker: &Broker, properties: &[(&str, &str)]) -> Consumer {
    let address = broker.address.to_string();
    let mut all = vec![("bootstrap.servers", address.as_str())];
    all.extend_from_slice(properties);
    Consumer::new(ConsumerConfig::from_properties(all.iter().copied()).unwrap()).unwrap()
}

/// Every value of partitions `0..partitions` of `topic`, read from the start until none comes
/// for a second.
fn read_all(broker: &Broker, topic: &str, partitions: i32, isolation: &str) -> Vec<String> {
    let mut consumer = consumer(broker, &[("isolation.level", isolation)]);
    let assigned: Vec<(String, i32)> = (0..partitions).map(|p| (topic.to_owned(), p)).collect();
    consumer.assign(&assigned);
    for p in 0..partitions {
        consumer.seek(topic, p, StartAt::Beginning).unwrap();
    }
    let mut values = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(1) {
        let records = consumer.poll(Duration::from_millis(200)).unwrap();
        if !records.is_empty() {
            quiet_since = Instant::now();
        }
        values.extend(
            records
                .into_iter()
                .map(|record| String::from_utf8(record.value.unwrap().to_vec()).unwrap()),
        );
    }
    values.sort();
    values
}

#[test]
fn read_committed_sees_committed_transactions_only_and_a_new_producer_fences_the_old() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &["--num-partitions", "2"]);
    let producer = transactional(&broker, "client-txn");
    let mut committed = Vec::new();
    let mut all = Vec::new();
    for round in 0..3 {
        producer.begin_transaction().unwrap();
        for i in 0..10 {
            let value = format!("r{round}-{i:02}");
            send(&producer, "txn", i % 2, value.clone());
            all.push(value.clone());
            if round != 1 {
                committed.push(value);
            }
        }
        if round == 1 {
            producer.abort_transaction().unwrap();
        } else {
            producer.commit_transaction().unwrap();
        }
    }
    committed.sort();
    all.sort();
    assert_eq!(read_all(&broker, "txn", 2, "read_committed"), committed);
    assert_eq!(read_all(&broker, "txn", 2, "read_uncommitted"), all);

    // Outside a transaction a transactional producer does not send.
    assert!(producer
        .send(ProducerRecord {
            topic: "txn".into(),
            value: Some(Bytes::from_static(b"stray")),
            ..ProducerRecord::default()
        })
        .is_err());

    // A second producer of the id fences the first, whose open transaction is aborted.
    producer.begin_transaction().unwrap();
    send(&producer, "txn", 0, "zombie".into());
    producer.flush();
    let successor = transactional(&broker, "client-txn");
    assert!(
        producer.commit_transaction().is_err(),
        "the zombie is fenced"
    );
    assert!(producer.begin_transaction().is_err(), "and stays fenced");
    successor.begin_transaction().unwrap();
    send(&successor, "txn", 1, "successor".into());
    successor.commit_transaction().unwrap();
    let seen = read_all(&broker, "txn", 2, "read_committed");
    assert!(seen.contains(&"successor".to_owned()));
    assert!(!seen.contains(&"zombie".to_owned()));
}

#[test]
fn offsets_sent_to_a_transaction_are_committed_with_it_and_dropped_with_an_abort() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &work.path().join("data"),
        &["--group-initial-rebalance-delay-ms", "0"],
    );
    let setup = transactional(&broker, "setup");
    setup.begin_transaction().unwrap();
    for i in 0..40 {
        send(&setup, "input", 0, format!("in-{i}"));
    }
    setup.commit_transaction().unwrap();

    let producer = transactional(&broker, "transformer");
    let mut input = consumer(
        &broker,
        &[
            ("group.id", "transform"),
            ("retry.backoff.ms", "20"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
        ],
    );
    input.subscribe(&["input".to_owned()]).unwrap();
    let mut transformed = 0;
    let mut aborted_once = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while transformed < 40 && Instant::now() < deadline {
        let records = input.poll(Duration::from_millis(200)).unwrap();
        if records.is_empty() {
            continue;
        }
        producer.begin_transaction().unwrap();
        for record in &records {
            let value = String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap();
            send(&producer, "output", 0, format!("out-{value}"));
        }
        let offsets: Vec<(String, i32, i64)> = input
            .positions()
            .into_iter()
            .map(|((topic, partition), offset)| (topic, partition, offset))
            .collect();
        producer
            .send_offsets_to_transaction(&offsets, &input.group_metadata().unwrap())
            .unwrap();
        if !aborted_once {
            // Neither the records nor the offsets of an aborted transaction count: back to
            // the start.
            producer.abort_transaction().unwrap();
            aborted_once = true;
            input.seek("input", 0, StartAt::Beginning).unwrap();
            continue;
        }
        producer.commit_transaction().unwrap();
        transformed += records.len();
    }
    assert_eq!(transformed, 40);
    let committed = input.committed(&[("input".to_owned(), 0)]).unwrap();
    // Past the 40 records and the setup transaction's marker at offset 40.
    assert_eq!(committed, BTreeMap::from([(("input".to_owned(), 0), 41)]));
    let expected: Vec<String> = {
        let mut values: Vec<String> = (0..40).map(|i| format!("out-in-{i}")).collect();
        values.sort();
        values
    };
    assert_eq!(read_all(&broker, "output", 1, "read_committed"), expected);
}
