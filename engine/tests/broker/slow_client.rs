//! A client that stops reading its responses stalls only its own connection: other clients of
//! the same shard keep producing and fetching.

use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::storage::batch::build::{batch, NewRecord};

use super::util::Broker;

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("shared"))
}

fn produce(values: usize, size: usize) -> RequestKind {
    let value = "v".repeat(size);
    let records: Vec<NewRecord> = (0..values)
        .map(|_| NewRecord::value(value.clone(), 1_000))
        .collect();
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch(&records).freeze())),
                ])]),
    )
}

fn fetch_all() -> RequestKind {
    RequestKind::Fetch(
        FetchRequest::default()
            .with_max_bytes(64 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(topic())
                .with_partitions(vec![
                    fetch_request::FetchPartition::default().with_partition_max_bytes(64 << 20)
                ])]),
    )
}

#[test]
fn a_client_that_stops_reading_does_not_stall_the_shard() {
    let work = tempfile::tempdir().unwrap();
    // One core, so both clients are on the same shard.
    let broker = Broker::start(
        &work.path().join("data"),
        &[
            "--cores",
            "1",
            "--max-inflight-requests-per-connection",
            "4",
        ],
    );
    let mut writer = broker.connect();
    writer.metadata_auto_create("shared");
    for _ in 0..16 {
        let ResponseKind::Produce(response) = writer.call(ApiKey::Produce, 9, produce(500, 1000))
        else {
            panic!()
        };
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    // The slow client asks for everything (8 MB) over and over and reads nothing: its
    // responses fill the socket buffers and its connection's writer waits.
    let mut slow = broker.connect();
    for _ in 0..20 {
        slow.send(ApiKey::Fetch, 12, &fetch_all());
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    for _ in 0..20 {
        let ResponseKind::Produce(response) = writer.call(ApiKey::Produce, 9, produce(10, 100))
        else {
            panic!()
        };
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        let ResponseKind::Fetch(fetched) = writer.call(ApiKey::Fetch, 12, fetch_all()) else {
            panic!()
        };
        assert_eq!(fetched.responses[0].partitions[0].error_code, 0);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the other client took {:?}",
        started.elapsed()
    );
    drop(slow);
}
