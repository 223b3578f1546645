//! A proptest-driven fuzzer for request decoding and dispatch, bounded in time: random bodies
//! for every advertised API and version, and valid requests with bytes flipped, cut or
//! appended. Whatever arrives, the broker answers or closes that connection, and keeps serving.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use spate_engine::protocol::versions;

use super::util::{answers_api_versions, Broker, Connection};

fn frame(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(body.len() + 14);
    frame.extend_from_slice(&((body.len() + 10) as u32).to_be_bytes());
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&7_i32.to_be_bytes());
    frame.extend_from_slice(&(-1_i16).to_be_bytes()); // null client id
    frame.extend_from_slice(body);
    frame
}

#[test]
fn random_requests_never_take_the_broker_down() {
    let cases: u32 = std::env::var("SPATE_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(4000);
    let work = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&work.path().join("data"), &["--num-partitions", "2"]);
    let apis: Vec<(i16, i16, i16)> = versions::all()
        .map(|(key, range)| (key as i16, range.min, range.max))
        .collect();
    let strategy = (
        proptest::sample::select(apis),
        any::<u16>(),
        proptest::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                1 => Just(0xff_u8),
                1 => Just(0_u8),
                1 => 1_u8..8,
            ],
            0..96,
        ),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let address = broker.address;
    runner
        .run(
            &strategy,
            |((api_key, min, max), version_pick, body, flexible_header)| {
                let version = min + (version_pick % (max - min + 1) as u16) as i16;
                let mut bytes = frame(api_key, version, &body);
                if flexible_header {
                    bytes.insert(14, 0); // empty tagged fields after the client id
                    let size = (bytes.len() - 4) as u32;
                    bytes[..4].copy_from_slice(&size.to_be_bytes());
                }
                exchange(address, &bytes);
                Ok(())
            },
        )
        .unwrap();
    assert!(broker.is_running(), "{}", broker.log());

    // Valid requests with bytes flipped, cut off or appended.
    let valid = valid_frames();
    let mutation = (
        0..valid.len(),
        proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..6),
        proptest::option::of(any::<proptest::sample::Index>()),
        proptest::collection::vec(any::<u8>(), 0..8),
    );
    runner
        .run(&mutation, |(which, flips, cut, tail)| {
            let mut bytes = valid[which].clone();
            for (at, value) in flips {
                let at = 4 + at.index(bytes.len() - 4);
                bytes[at] = value;
            }
            if let Some(at) = cut {
                bytes.truncate(4 + at.index(bytes.len() - 4));
            }
            bytes.extend_from_slice(&tail);
            let size = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&size.to_be_bytes());
            exchange(address, &bytes);
            Ok(())
        })
        .unwrap();
    assert!(broker.is_running(), "{}", broker.log());
    assert!(answers_api_versions(address));
    assert!(!broker.log().contains("panicked"), "{}", broker.log());
    assert!(broker.stop().success(), "{}", broker.log());
}

/// Sends one frame on a new connection and reads a response or the close.
fn exchange(address: std::net::SocketAddr, bytes: &[u8]) {
    let mut connection = Connection::open(address);
    connection
        .stream
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    if connection.send_raw(bytes).is_ok() {
        let _ = connection.receive_frame();
    }
}

/// Encoded requests of the busiest APIs, at flexible and older versions.
fn valid_frames() -> Vec<Vec<u8>> {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use spate_engine::storage::batch::build::{batch, NewRecord};
    let topic = TopicName(StrBytes::from_static_str("fuzzed"));
    let records = batch(&[NewRecord::value("a", 1), NewRecord::value("b", 2)]).freeze();
    let produce =
        RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(vec![
        produce_request::TopicProduceData::default()
            .with_name(topic.clone())
            .with_partition_data(vec![produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))]),
    ]));
    let fetch = RequestKind::Fetch(FetchRequest::default().with_max_bytes(1 << 20).with_topics(
        vec![fetch_request::FetchTopic::default()
                .with_topic(topic.clone())
                .with_partitions(vec![
                    fetch_request::FetchPartition::default().with_partition_max_bytes(1 << 20)
                ])],
    ));
    let metadata = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(topic.clone())),
    ])));
    let create = RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("fuzz-created")))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]));
    let list = RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic)
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default().with_timestamp(-2)
                ]),
        ]));
    let mut frames = Vec::new();
    for (api_key, version, body) in [
        (ApiKey::Produce, 9, &produce),
        (ApiKey::Produce, 3, &produce),
        (ApiKey::Fetch, 12, &fetch),
        (ApiKey::Fetch, 4, &fetch),
        (ApiKey::Metadata, 12, &metadata),
        (ApiKey::Metadata, 1, &metadata),
        (ApiKey::CreateTopics, 5, &create),
        (ApiKey::ListOffsets, 7, &list),
    ] {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(1);
        let mut frame = bytes::BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        frames.push(frame.to_vec());
    }
    frames
}
