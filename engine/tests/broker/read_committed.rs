//! READ_COMMITTED over the wire: a partition log holding aborted, committed and open
//! transactions (written with the storage API while the broker is stopped, since the
//! transaction coordinator is still to come) is served up to its last stable offset, with the
//! aborted transactions a consumer must skip; READ_UNCOMMITTED sees everything. A client's
//! transactional batch is refused.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::storage::backend::StdStorage;
use spate_engine::storage::batch::build::{batch, transactional_batch, NewRecord};
use spate_engine::storage::{LogConfig, PartitionLog};

use super::util::{Broker, Connection};

const TOPIC: &str = "transactions";

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What a Fetch answered for the partition.
struct Fetched {
    high_watermark: i64,
    last_stable_offset: i64,
    /// (producer id, first offset) of each aborted transaction; `None` when not sent.
    aborted: Option<Vec<(i64, i64)>>,
    /// The offsets of the records read, control records included.
    offsets: Vec<i64>,
}

fn fetch(connection: &mut Connection, isolation_level: i8) -> Fetched {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation_level)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name(TOPIC))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(response) =
        connection.call(ApiKey::Fetch, 11, RequestKind::Fetch(request))
    else {
        panic!("not a fetch response")
    };
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    let aborted = partition.aborted_transactions.as_ref().map(|list| {
        list.iter()
            .map(|txn| (txn.producer_id.0, txn.first_offset))
            .collect()
    });
    let mut records = partition.records.clone().unwrap_or_default();
    let mut offsets = Vec::new();
    for set in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).unwrap() {
        offsets.extend(set.records.iter().map(|record| record.offset));
    }
    Fetched {
        high_watermark: partition.high_watermark,
        last_stable_offset: partition.last_stable_offset,
        aborted,
        offsets,
    }
}

fn latest_offset(connection: &mut Connection, isolation_level: i8) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_isolation_level(isolation_level)
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(name(TOPIC))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1),
            ])]);
    let ResponseKind::ListOffsets(response) =
        connection.call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
    else {
        panic!("not a list offsets response")
    };
    response.topics[0].partitions[0].offset
}

#[test]
fn read_committed_stops_at_the_last_stable_offset_and_names_the_aborted_transactions() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let mut connection = broker.connect();
    assert_eq!(
        connection.metadata_auto_create(TOPIC).topics[0].error_code,
        0
    );

    // A client's transactional batch is refused: only a coordinator's transaction may open.
    let now = now_ms();
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name(TOPIC))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(
                        transactional_batch(&[NewRecord::value("x", now)], 9, 0, 0).freeze(),
                    )),
            ])]);
    let ResponseKind::Produce(response) =
        connection.call(ApiKey::Produce, 9, RequestKind::Produce(request))
    else {
        panic!()
    };
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        ResponseError::TransactionalIdAuthorizationFailed.code()
    );
    assert!(broker.stop().success());

    // 0 plain; 1 of producer 1 and 2 of producer 2 in transactions; 3 aborts 1's, 4 commits
    // 2's; 5 plain; 6 of producer 3, whose transaction stays open; 7 plain.
    futures_lite::future::block_on(async {
        let (mut log, _) = PartitionLog::open(
            StdStorage,
            data.join(format!("{TOPIC}-0")),
            LogConfig::default(),
            now,
        )
        .await
        .unwrap();
        let plain = |value: &str| batch(&[NewRecord::value(value.to_owned(), now)]);
        let txn =
            |producer_id| transactional_batch(&[NewRecord::value("t", now)], producer_id, 0, 0);
        log.append(plain("a"), 0, now).await.unwrap();
        log.append(txn(1), 0, now).await.unwrap();
        log.append(txn(2), 0, now).await.unwrap();
        log.append_marker(1, 0, 0, false, 0, now).await.unwrap();
        log.append_marker(2, 0, 0, true, 0, now).await.unwrap();
        log.append(plain("b"), 0, now).await.unwrap();
        log.append(txn(3), 0, now).await.unwrap();
        log.append(plain("c"), 0, now).await.unwrap();
        log.close(now).await.unwrap();
    });

    let mut broker = Broker::start(&data, &[]);
    let mut connection = broker.connect();
    let committed = fetch(&mut connection, 1);
    assert_eq!(
        (committed.high_watermark, committed.last_stable_offset),
        (8, 6)
    );
    assert_eq!(
        committed.aborted,
        Some(vec![(1, 1)]),
        "producer 1's transaction from offset 1"
    );
    assert_eq!(
        committed.offsets,
        [0, 1, 2, 3, 4, 5],
        "markers included, nothing from 6 on"
    );
    let uncommitted = fetch(&mut connection, 0);
    assert_eq!(uncommitted.last_stable_offset, 6);
    assert_eq!(
        uncommitted.aborted, None,
        "read_uncommitted is told of none"
    );
    assert_eq!(uncommitted.offsets, (0..8).collect::<Vec<_>>());
    assert_eq!(latest_offset(&mut connection, 1), 6);
    assert_eq!(latest_offset(&mut connection, 0), 8);
    assert!(broker.stop().success(), "{}", broker.log());
}
