//! The client consumer reading a compacted topic: it skips the offsets compaction removed,
//! including record-less batches at the end of a fetch, and reads the latest value of each
//! key.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{
    fetch_request, ApiKey, BrokerId, FetchRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_engine::client::admin::{Admin, NewTopic};
use spate_engine::client::config::{ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::{Consumer, StartAt};
use spate_engine::client::producer::{Producer, ProducerRecord};
use spate_engine::storage::batch::BatchHeader;

use crate::broker::util::{Broker, Connection};

/// A broker whose cleaner looks every 100 ms, a one-partition compacted topic `name` with
/// 16 KiB segments, and a producer sending one record a request.
fn compacted_topic(work: &std::path::Path, name: &str) -> (Broker, Producer) {
    let broker = Broker::start(&work.join("data"), &["--log-cleaner-backoff-ms", "100"]);
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
            name: name.into(),
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
    (broker, producer)
}

#[test]
fn the_consumer_reads_a_compacted_topic_to_its_end() {
    let work = tempfile::tempdir().unwrap();
    let (broker, producer) = compacted_topic(work.path(), "profiles");
    let address = broker.address.to_string();
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

/// The batches of partition 0 of `topic` from `offset` as one Fetch returns them (one
/// segment's worth at most): (base offset, next offset, records).
fn fetch_batches(connection: &mut Connection, topic: &str, offset: i64) -> Vec<(i64, i64, i32)> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(response) =
        connection.call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
    else {
        panic!("a Fetch response")
    };
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    let mut records = partition.records.clone().unwrap_or_default();
    let mut batches = Vec::new();
    while records.len() >= 61 {
        let header = BatchHeader::parse(&records).unwrap();
        batches.push((
            header.base_offset,
            header.next_offset(),
            header.records_count,
        ));
        let _ = records.split_to(header.size_bytes().min(records.len()));
    }
    batches
}

/// A fetch can hold nothing but a record-less batch: the filler compaction leaves where a
/// segment's last batches were superseded (fetches read one segment at a time). The consumer
/// must step past it rather than ask for the same offset again.
#[test]
fn the_consumer_steps_past_a_fetch_that_holds_only_a_filler() {
    let work = tempfile::tempdir().unwrap();
    let (broker, producer) = compacted_topic(work.path(), "sessions");
    let address = broker.address.to_string();
    // One record a batch, about 1 KiB: fifteen fill a 16 KiB segment. Each segment's last
    // is the key "hot", written again at the end of the next one, so cleaning leaves each
    // segment fourteen records and then a filler, and no two cleaned segments fit one.
    let sent = 6 * 15;
    for n in 0..sent {
        let key = if n % 15 == 14 {
            "hot".to_owned()
        } else {
            format!("session-{n:04}")
        };
        producer
            .send(ProducerRecord {
                topic: "sessions".into(),
                partition: Some(0),
                key: Some(Bytes::from(key)),
                value: Some(Bytes::from("s".repeat(1000))),
                ..ProducerRecord::default()
            })
            .unwrap()
            .wait(None)
            .unwrap()
            .unwrap();
    }
    producer.close();

    // Wait for the cleaner to have cleaned every closed segment: the first four (the fifth's
    // "hot" is the latest below the active segment) then end with a filler, which a fetch at
    // its offset returns alone.
    let mut connection = broker.connect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut offset = 0;
        let mut alone = 0;
        while offset < sent as i64 {
            let batches = fetch_batches(&mut connection, "sessions", offset);
            let &(base, next, records) = batches.last().expect("a batch below the end");
            if records == 0 {
                let again = fetch_batches(&mut connection, "sessions", base);
                if again == [(base, next, 0)] {
                    alone += 1;
                }
            }
            offset = next;
        }
        if alone == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{alone} fetches ended on a filler alone, not 4: not compacted?"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut consumer = Consumer::new(
        ConsumerConfig::from_properties([("bootstrap.servers", address.as_str())]).unwrap(),
    )
    .unwrap();
    consumer.assign(&[("sessions".to_owned(), 0)]);
    consumer.seek("sessions", 0, StartAt::Beginning).unwrap();
    let mut read = Vec::new();
    let read_deadline = Instant::now() + Duration::from_secs(20);
    while consumer.position("sessions", 0) != Some(sent as i64) {
        assert!(
            Instant::now() < read_deadline,
            "the consumer is stuck at {:?}",
            consumer.position("sessions", 0)
        );
        for record in consumer.poll(Duration::from_millis(200)).unwrap() {
            read.push((record.offset, record.key.unwrap()));
        }
    }
    consumer.close();
    // Every session once; of "hot", the latest, and the one in the last closed segment (the
    // active segment's is not in the cleaner's map, as in Kafka).
    let sessions = read
        .iter()
        .filter(|(_, key)| key.starts_with(b"session-"))
        .count();
    assert_eq!(sessions, 6 * 14);
    let hot: Vec<i64> = read
        .iter()
        .filter(|(_, key)| key.as_ref() == b"hot")
        .map(|(offset, _)| *offset)
        .collect();
    assert_eq!(
        hot,
        [sent as i64 - 16, sent as i64 - 1],
        "superseded values of hot"
    );
}
