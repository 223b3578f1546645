//! The client library against a broker process: the producer's deliveries, acks, batching
//! and its retries across a broker restart.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::client::config::ProducerConfig;
use spate_engine::client::producer::{Delivery, Producer, ProducerRecord};

use crate::broker::util::Broker;

mod compaction;
mod group;
mod transactions;

fn producer(broker: &Broker, properties: &[(&str, &str)]) -> Producer {
    let address = broker.address.to_string();
    let mut all = vec![("bootstrap.servers", address.as_str())];
    all.extend_from_slice(properties);
    Producer::new(ProducerConfig::from_properties(all.iter().copied()).unwrap()).unwrap()
}

fn record(topic: &str, value: String) -> ProducerRecord {
    ProducerRecord {
        topic: topic.into(),
        partition: Some(0),
        value: Some(Bytes::from(value)),
        ..ProducerRecord::default()
    }
}

/// The log end offset of partition 0, from ListOffsets.
fn end_offset(broker: &Broker, topic: &str) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1),
            ])]);
    let ResponseKind::ListOffsets(response) =
        broker
            .connect()
            .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
    else {
        panic!()
    };
    response.topics[0].partitions[0].offset
}

#[test]
fn deliveries_carry_consecutive_offsets_for_every_acks_setting() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &[]);
    for (acks, topic) in [("all", "acks-all"), ("1", "acks-one"), ("0", "acks-none")] {
        let producer = producer(
            &broker,
            &[("acks", acks), ("linger.ms", "2"), ("batch.size", "4096")],
        );
        let deliveries: Vec<_> = (0..500)
            .map(|i| {
                producer
                    .send(record(topic, format!("{topic}-{i}")))
                    .unwrap()
            })
            .collect();
        producer.flush();
        let offsets: Vec<i64> = deliveries
            .iter()
            .map(|delivery| {
                delivery
                    .try_result()
                    .expect("flushed")
                    .expect("delivered")
                    .offset
            })
            .collect();
        if acks == "0" {
            assert!(
                offsets.iter().all(|offset| *offset == -1),
                "acks=0 gets no offsets"
            );
        } else {
            assert_eq!(offsets, (0..500).collect::<Vec<_>>(), "acks={acks}");
        }
        producer.close();
        // acks=0 gets no answer, so the appends may land a moment after the producer is done.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while end_offset(&broker, topic) < 500 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(end_offset(&broker, topic), 500, "acks={acks}");
    }
}

#[test]
fn callbacks_run_once_per_record() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &[]);
    let producer = producer(&broker, &[("compression.type", "lz4")]);
    let (sender, receiver) = std::sync::mpsc::channel();
    for i in 0..100 {
        let sender = sender.clone();
        producer
            .send_with_callback(record("callbacks", format!("v{i}")), move |result| {
                sender.send(result.map(|metadata| metadata.offset)).unwrap();
            })
            .unwrap();
    }
    producer.close();
    drop(sender);
    let mut offsets: Vec<i64> = receiver.iter().map(Result::unwrap).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..100).collect::<Vec<_>>());
}

/// Keyless 1000-byte records with batch.size 4096: a record that would overflow a batch
/// starts the next one (so no batch holds more than three: 4 x 1032 estimated bytes > 4096),
/// and a full batch moves the sticky partition on, so the records spread over partitions.
#[test]
fn full_batches_stay_within_batch_size_and_move_keyless_records_on() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let broker = Broker::start(&data, &["--num-partitions", "4"]);
    let producer = producer(&broker, &[("batch.size", "4096"), ("linger.ms", "1000")]);
    let deliveries: Vec<_> = (0..60)
        .map(|_| {
            producer
                .send(ProducerRecord {
                    topic: "spread".into(),
                    value: Some(Bytes::from(vec![b'x'; 1000])),
                    ..ProducerRecord::default()
                })
                .unwrap()
        })
        .collect();
    producer.flush();
    let partitions: std::collections::BTreeSet<i32> = deliveries
        .iter()
        .map(|delivery| delivery.try_result().unwrap().unwrap().partition)
        .collect();
    assert!(
        partitions.len() > 1,
        "keyless records stayed on {partitions:?}"
    );
    producer.close();
    for partition in 0..4 {
        let dir = data.join(format!("spread-{partition}"));
        let dump = futures_lite::future::block_on(spate_engine::storage::dump::dump_partition(
            &spate_engine::storage::backend::StdStorage,
            &dir,
        ))
        .unwrap();
        for segment in &dump.segments {
            for batch in &segment.batches {
                assert!(
                    batch.header.records_count <= 3,
                    "a batch of {} records in {}",
                    batch.header.records_count,
                    dir.display()
                );
            }
        }
    }
}

/// The broker restarts under a running producer with acks=all: the producer retries, and
/// every record is delivered once the broker is back, none lost.
#[test]
fn the_producer_retries_across_a_broker_restart() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let address = broker.address;
    let producer = producer(
        &broker,
        &[
            ("acks", "all"),
            ("retry.backoff.ms", "100"),
            ("request.timeout.ms", "5000"),
        ],
    );
    let first: Vec<_> = (0..200)
        .map(|i| producer.send(record("restart", format!("a{i}"))).unwrap())
        .collect();
    producer.flush();
    assert!(first
        .iter()
        .all(|delivery| delivery.try_result().unwrap().is_ok()));
    assert_eq!(broker.stop().code(), Some(0));
    // Sent while the broker is down.
    let second: Vec<_> = (0..200)
        .map(|i| producer.send(record("restart", format!("b{i}"))).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let broker = Broker::start_at(&data, address, &[]);
    let offsets: Vec<i64> = second
        .iter()
        .map(|delivery| {
            delivery
                .wait(Some(Duration::from_secs(60)))
                .expect("answered")
                .expect("delivered after the restart")
                .offset
        })
        .collect();
    assert_eq!(offsets, (200..400).collect::<Vec<_>>());
    producer.close();
    assert_eq!(end_offset(&broker, "restart"), 400);
}

/// Sends the values 0..3000 to partition 0 of `topic` from a thread of its own, pausing now
/// and then, so that a broker restart falls in the middle; the thread returns the deliveries.
fn send_numbered_in_background(
    producer: &std::sync::Arc<Producer>,
    topic: &'static str,
) -> std::thread::JoinHandle<Vec<Delivery>> {
    let producer = std::sync::Arc::clone(producer);
    std::thread::spawn(move || {
        (0..3000)
            .map(|i| {
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
                producer.send(record(topic, format!("{i}"))).unwrap()
            })
            .collect()
    })
}

/// Every record of [`send_numbered_in_background`] was delivered, the n-th at offset n.
fn assert_sent_order_is_offset_order(sending: std::thread::JoinHandle<Vec<Delivery>>) {
    let deliveries = sending.join().unwrap();
    let offsets: Vec<i64> = deliveries
        .iter()
        .map(|delivery| {
            delivery
                .wait(Some(Duration::from_secs(60)))
                .expect("answered")
                .expect("delivered")
                .offset
        })
        .collect();
    let misplaced = offsets
        .iter()
        .enumerate()
        .find(|(index, offset)| **offset != *index as i64);
    assert_eq!(
        misplaced, None,
        "the record sent n-th must land at offset n"
    );
}

/// A producer keeps sending small batches while the broker restarts under it: with one
/// request in flight, whatever fails and is retried keeps its place, so the offsets follow
/// the order of the sends.
#[test]
fn one_request_in_flight_keeps_a_partitions_order_through_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let address = broker.address;
    let producer = std::sync::Arc::new(producer(
        &broker,
        &[
            ("acks", "all"),
            ("batch.size", "200"),
            ("linger.ms", "0"),
            ("max.in.flight.requests.per.connection", "1"),
            ("retry.backoff.ms", "50"),
            ("request.timeout.ms", "5000"),
        ],
    ));
    let sending = send_numbered_in_background(&producer, "ordered");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(broker.stop().code(), Some(0));
    let broker = Broker::start_at(&data, address, &[]);
    assert_sent_order_is_offset_order(sending);
    drop(broker);
}

/// With idempotence (the default) and five requests in flight, a producer keeps sending
/// while the broker is killed (SIGKILL: answers to requests it wrote are lost) and restarted:
/// retried batches are stored once and in order, so the record sent n-th lands at offset n,
/// and the log holds nothing else.
#[test]
fn idempotence_keeps_order_and_stores_retries_once_through_a_kill() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    // Every append synced before it is answered: what was acknowledged survives the kill,
    // and so may batches whose answers the kill lost, which the producer then retries.
    let durable = ["--topic-default", "log.flush.interval.messages=1"];
    let mut broker = Broker::start(&data, &durable);
    let address = broker.address;
    let producer = std::sync::Arc::new(producer(
        &broker,
        &[
            ("batch.size", "200"),
            ("linger.ms", "0"),
            ("retry.backoff.ms", "50"),
            ("request.timeout.ms", "5000"),
        ],
    ));
    let sending = send_numbered_in_background(&producer, "exactly");
    std::thread::sleep(Duration::from_millis(100));
    let mut child = broker.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let broker = Broker::start_at(&data, address, &durable);
    assert_sent_order_is_offset_order(sending);
    assert_eq!(end_offset(&broker, "exactly"), 3000, "nothing stored twice");
    assert!(
        first_batch_producer_id(&broker, "exactly") >= 0,
        "the batches carry a producer id"
    );
}

/// The producer id in the header of partition 0's first batch, from a Fetch.
fn first_batch_producer_id(broker: &Broker, topic: &str) -> i64 {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(response) =
        broker
            .connect()
            .call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
    else {
        panic!()
    };
    let records = response.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    spate_engine::storage::batch::BatchHeader::parse(&records)
        .expect("a batch")
        .producer_id
}

/// The broker restarts under a running consumer: it reconnects and resumes where it was,
/// missing nothing and repeating nothing.
#[test]
fn the_consumer_resumes_across_a_broker_restart() {
    use spate_engine::client::config::ConsumerConfig;
    use spate_engine::client::consumer::{Consumer, StartAt};
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let address = broker.address;
    let first = producer(&broker, &[("acks", "all")]);
    for i in 0..100 {
        first.send(record("resume", format!("a{i}"))).unwrap();
    }
    first.close();
    let bootstrap = address.to_string();
    let config = ConsumerConfig::from_properties([
        ("bootstrap.servers", bootstrap.as_str()),
        ("retry.backoff.ms", "50"),
    ])
    .unwrap();
    let mut consumer = Consumer::new(config).unwrap();
    consumer.assign(&[("resume".into(), 0)]);
    consumer.seek("resume", 0, StartAt::Beginning).unwrap();
    let mut values = Vec::new();
    while values.len() < 100 {
        values.extend(consumer.poll(Duration::from_secs(5)).unwrap());
    }
    assert_eq!(broker.stop().code(), Some(0));
    let broker = Broker::start_at(&data, address, &[]);
    let second = producer(&broker, &[("acks", "all")]);
    for i in 0..50 {
        second.send(record("resume", format!("b{i}"))).unwrap();
    }
    second.close();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while values.len() < 150 && std::time::Instant::now() < deadline {
        values.extend(consumer.poll(Duration::from_secs(5)).unwrap());
    }
    let offsets: Vec<i64> = values.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, (0..150).collect::<Vec<_>>());
    assert_eq!(values[149].value.as_deref(), Some(&b"b49"[..]));
}
