//! Idempotent producers over the wire: InitProducerId gives ids never given before (across
//! restarts too), a retried Produce is answered with its first offsets and stored once, and
//! out-of-order sequences and fenced epochs get Kafka's error codes; the producer state
//! survives a restart.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::storage::batch::build::{producer_batch, NewRecord};

use super::util::{Broker, Connection};

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

pub fn init_producer_id(connection: &mut Connection, transactional_id: Option<&str>) -> (i16, i64) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(
            transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.into()))),
        )
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let ResponseKind::InitProducerId(response) = connection.call(
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(request),
    ) else {
        panic!()
    };
    (response.error_code, response.producer_id.0)
}

/// Produces `count` records of producer `producer_id` from `first_sequence`; returns the
/// partition's (error code, base offset).
pub fn produce(
    connection: &mut Connection,
    topic: &str,
    producer_id: i64,
    epoch: i16,
    first_sequence: i32,
    count: i32,
) -> (i16, i64) {
    // Timestamps of now: a producer whose last batch is older than producer.id.expiration.ms
    // (a day) is forgotten, on the batch's timestamp, as Kafka does.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<NewRecord> = (first_sequence..first_sequence + count)
        .map(|sequence| NewRecord::value(format!("s{sequence}"), now_ms))
        .collect();
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(
                        producer_batch(&records, producer_id, epoch, first_sequence).freeze(),
                    )),
            ])]);
    let ResponseKind::Produce(response) =
        connection.call(ApiKey::Produce, 9, RequestKind::Produce(request))
    else {
        panic!()
    };
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

fn log_end_offset(connection: &mut Connection, topic: &str) -> i64 {
    let request = ListOffsetsRequest::default().with_topics(vec![
        list_offsets_request::ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)]),
    ]);
    let ResponseKind::ListOffsets(response) =
        connection.call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
    else {
        panic!()
    };
    response.topics[0].partitions[0].offset
}

#[test]
fn retries_are_stored_once_and_sequences_are_checked_across_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let mut connection = broker.connect();
    assert_eq!(
        connection.metadata_auto_create("once").topics[0].error_code,
        0
    );

    let (error, first_id) = init_producer_id(&mut connection, None);
    assert_eq!(error, 0);
    let (_, second_id) = init_producer_id(&mut connection, None);
    assert_ne!(first_id, second_id, "every producer gets its own id");
    let (error, transactional_id) = init_producer_id(&mut connection, Some("txn"));
    assert_eq!(error, 0);
    assert!(
        ![first_id, second_id].contains(&transactional_id),
        "a transactional id gets its own producer id"
    );

    assert_eq!(produce(&mut connection, "once", first_id, 0, 0, 3), (0, 0));
    assert_eq!(produce(&mut connection, "once", first_id, 0, 3, 2), (0, 3));
    // The answer to the second batch was "lost": its retry gets the same offset.
    assert_eq!(produce(&mut connection, "once", first_id, 0, 3, 2), (0, 3));
    assert_eq!(log_end_offset(&mut connection, "once"), 5, "stored once");
    let (error, _) = produce(&mut connection, "once", first_id, 0, 9, 1);
    assert_eq!(error, ResponseError::OutOfOrderSequenceNumber.code());
    assert_eq!(produce(&mut connection, "once", first_id, 1, 0, 1), (0, 5));
    let (error, _) = produce(&mut connection, "once", first_id, 0, 5, 1);
    assert_eq!(error, ResponseError::InvalidProducerEpoch.code());

    let status = broker.stop();
    assert!(status.success(), "{}", broker.log());
    let broker = Broker::start(&data, &[]);
    let mut connection = broker.connect();
    // The producer state came back with the log: a retry is still recognised.
    assert_eq!(produce(&mut connection, "once", first_id, 1, 0, 1), (0, 5));
    assert_eq!(log_end_offset(&mut connection, "once"), 6);
    // Ids after a restart are never ones given before.
    let (error, after_restart) = init_producer_id(&mut connection, None);
    assert_eq!(error, 0);
    assert!(
        after_restart > first_id.max(second_id),
        "{after_restart} after {first_id} and {second_id}"
    );
}

/// `__transaction_state` is created on the first transactional id with
/// `transaction_state_log_num_partitions` partitions (not `__consumer_offsets`' count).
#[test]
fn the_transaction_topic_takes_its_own_partition_count() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &work.path().join("data"),
        &[
            "--transaction-state-log-num-partitions",
            "3",
            "--offsets-topic-num-partitions",
            "5",
        ],
    );
    let mut connection = broker.connect();
    let (code, _) = init_producer_id(&mut connection, Some("counted"));
    assert_eq!(code, 0);
    let request = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(name("__transaction_state")))]));
    let ResponseKind::Metadata(metadata) =
        connection.call(ApiKey::Metadata, 12, RequestKind::Metadata(request))
    else {
        panic!("a Metadata response")
    };
    assert_eq!(metadata.topics[0].error_code, 0);
    assert_eq!(metadata.topics[0].partitions.len(), 3);
}

/// InitProducerId 3 and up with the producer's id and epoch (KIP-360, as librdkafka sends to
/// recover from an abortable error): the current producer's epoch is bumped, an older epoch
/// is refused with PRODUCER_FENCED.
#[test]
fn a_transactional_producer_bumps_its_epoch_and_a_stale_one_is_fenced() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &[]);
    let mut connection = broker.connect();
    let (code, producer_id) = init_producer_id(&mut connection, Some("recovering"));
    assert_eq!(code, 0);
    let mut bump = |epoch: i16| {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(
                "recovering",
            ))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch);
        let ResponseKind::InitProducerId(response) = connection.call(
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(request),
        ) else {
            panic!("an InitProducerId response")
        };
        (response.error_code, response.producer_epoch)
    };
    assert_eq!(bump(0), (0, 1));
    assert_eq!(bump(0), (0, 1), "a retry of the bump");
    assert_eq!(bump(1), (0, 2));
    assert_eq!(bump(0).0, ResponseError::ProducerFenced.code());
}
