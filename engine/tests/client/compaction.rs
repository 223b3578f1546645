//! The client consumer reading a compacted topic: it skips the offsets compaction removed,
//! including record-less batches at the end of a fetch, and reads the latest value of each
//! key.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_engine::client::admin::{Admin, NewTopic};
use spate_engine::client::config::{ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::{Consumer, StartAt};
use spate_engine::client::producer::{Producer, ProducerRecord};

use crate::broker::util::Broker;

#[test]
fn the_consumer_reads_a_compacted_topic_to_its_end() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &work.path().join("data"),
        &["--log-cleaner-backoff-ms", "100"],
    );
    let address = broker.address.to_string();
    let mut admin = Admin::from_properties([("bootstrap.servers", address.as_str())]).unwrap();
    let configs: BTreeMap<String, String> = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "16384"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    admin
        .create_topics(&[NewTopic {
            name: "profiles".into(),
            partitions: 1,
            replication_factor: 1,
            configs,
        }])
        .unwrap()
        .into_iter()
        .for_each(|result| result.unwrap());
    let producer = Producer::new(
        ProducerConfig::from_properties([
            ("bootstrap.servers", address.as_str()),
            ("linger.ms", "0"),
        ])
        .unwrap(),
    )
    .unwrap();
    // Ten keys written 100 times each: the segments written last roll away once the
    // padding after them fills a few more, and hold the latest values.
    let mut sent = 0;
    for round in 0..100 {
        for key in 0..10 {
            let value = format!("round-{round}-{}", "x".repeat(100));
            producer
                .send(ProducerRecord {
                    topic: "profiles".into(),
                    partition: Some(0),
                    key: Some(Bytes::from(format!("user-{key}"))),
                    value: Some(Bytes::from(value)),
                    ..ProducerRecord::default()
                })
                .unwrap()
                .wait(None)
                .unwrap()
                .unwrap();
            sent += 1;
        }
    }
    for pad in 0..200 {
        producer
            .send(ProducerRecord {
                topic: "profiles".into(),
                partition: Some(0),
                key: Some(Bytes::from(format!("pad-{pad}"))),
                value: Some(Bytes::from("p".repeat(200))),
                ..ProducerRecord::default()
            })
            .unwrap()
            .wait(None)
            .unwrap()
            .unwrap();
        sent += 1;
    }
    producer.close();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut consumer = Consumer::new(
            ConsumerConfig::from_properties([
                ("bootstrap.servers", address.as_str()),
                ("max.partition.fetch.bytes", "4096"),
            ])
            .unwrap(),
        )
        .unwrap();
        consumer.assign(&[("profiles".to_owned(), 0)]);
        consumer.seek("profiles", 0, StartAt::Beginning).unwrap();
        let mut latest = BTreeMap::new();
        let mut read = 0;
        let read_deadline = Instant::now() + Duration::from_secs(20);
        while consumer.position("profiles", 0) != Some(sent) {
            assert!(
                Instant::now() < read_deadline,
                "the consumer is stuck at {:?}",
                consumer.position("profiles", 0)
            );
            for record in consumer.poll(Duration::from_millis(200)).unwrap() {
                read += 1;
                latest.insert(record.key.unwrap(), record.value.unwrap());
            }
        }
        consumer.close();
        let users: Vec<_> = latest
            .iter()
            .filter(|(key, _)| key.starts_with(b"user-"))
            .collect();
        assert_eq!(users.len(), 10);
        assert!(users
            .iter()
            .all(|(_, value)| value.starts_with(b"round-99-")));
        if read == 10 + 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {read} records read"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
