//! Sequential consumers of history get the next range read ahead; what they receive is
//! exactly the log, whichever offsets they ask for and whatever happens to the log start.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::storage::batch::build::{batch, NewRecord};

use super::util::{Broker, Connection};

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str("history"))
}

fn fetch(connection: &mut Connection, offset: i64, max_bytes: i32) -> (i16, Bytes) {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(64 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name())
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(max_bytes)])]);
    let ResponseKind::Fetch(response) =
        connection.call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
    else {
        panic!()
    };
    let partition = &response.responses[0].partitions[0];
    (
        partition.error_code,
        partition.records.clone().unwrap_or_default(),
    )
}

/// (first offset, values) of the records in `records`.
fn values(records: &Bytes) -> Vec<(i64, String)> {
    let mut records = records.clone();
    kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records)
        .unwrap()
        .iter()
        .flat_map(|set| &set.records)
        .map(|record| {
            (
                record.offset,
                String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn sequential_fetches_of_history_return_exactly_the_log() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut broker = Broker::start(&data, &["--num-partitions", "1"]);
    let mut connection = broker.connect();
    connection.metadata_auto_create("history");
    // 6,000 records of 1 KiB in batches of 60: about 6 MiB.
    let padding = "p".repeat(1000);
    for first in (0..6000).step_by(60) {
        let records: Vec<NewRecord> = (first..first + 60)
            .map(|i| NewRecord::value(format!("{i:06}{padding}"), 1_000))
            .collect();
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch(&records).freeze())),
                ])]);
        let ResponseKind::Produce(produced) =
            connection.call(ApiKey::Produce, 9, RequestKind::Produce(request))
        else {
            panic!()
        };
        assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    }
    drop(connection);
    assert!(broker.stop().success());
    let broker = Broker::start(&data, &[]);
    let mut connection = broker.connect();

    let expect = |offset: i64| format!("{offset:06}{padding}");
    let mut offset = 0;
    while offset < 6000 {
        let (code, records) = fetch(&mut connection, offset, 1_500_000);
        assert_eq!(code, 0);
        let got = values(&records);
        assert!(!got.is_empty());
        for (record_offset, value) in &got {
            if *record_offset >= offset {
                assert_eq!(value, &expect(*record_offset));
            }
        }
        offset = got.last().unwrap().0 + 1;
        if offset >= 3000 {
            break;
        }
        // Jump around once: the read-ahead for the next range must not answer this.
        if (1500..1700).contains(&offset) {
            let (code, records) = fetch(&mut connection, 120, 1_500_000);
            assert_eq!(code, 0);
            assert_eq!(values(&records)[0], (120, expect(120)));
        }
    }
    // Move the log start past where a read-ahead may have been started: the next fetch at the
    // old position is out of range, not served from the read-ahead.
    let (code, records) = fetch(&mut connection, offset, 1_500_000);
    assert_eq!(code, 0);
    let next = values(&records)
        .last()
        .unwrap_or_else(|| panic!("fetch at {offset} gave {} bytes", records.len()))
        .0
        + 1;
    let ResponseKind::DeleteRecords(deleted) = connection.call(
        ApiKey::DeleteRecords,
        2,
        RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
            delete_records_request::DeleteRecordsTopic::default()
                .with_name(name())
                .with_partitions(vec![delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(next + 10)]),
        ])),
    ) else {
        panic!()
    };
    assert_eq!(deleted.topics[0].partitions[0].error_code, 0);
    let (code, _) = fetch(&mut connection, next, 1_500_000);
    assert_eq!(code, 1, "OFFSET_OUT_OF_RANGE");
    let (code, records) = fetch(&mut connection, next + 10, 1_500_000);
    assert_eq!(code, 0);
    assert!(values(&records)
        .iter()
        .any(|(o, v)| *o == next + 10 && *v == expect(next + 10)));
}
