//! KIP-890 part 2 over the wire: EndTxn 5 ends each transaction at the producer's next epoch,
//! so the first copy of an EndTxn the producer sent again, arriving after the next
//! transaction began, is fenced instead of ending that transaction (KAFKA-17754). A resent
//! EndTxn is recognised as a retry and answered as the first was.

use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::storage::batch::build::{transactional_batch, NewRecord};

use super::util::{Broker, Connection};

const TOPIC: &str = "tv2";
const ID: &str = "tv2-app";

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Calls until the answer's error (read by `error_of`) is not one that asks to try again
/// (the coordinator still writing the last transaction's markers); returns the answer.
fn call_settled(
    connection: &mut Connection,
    api_key: ApiKey,
    version: i16,
    body: RequestKind,
    error_of: impl Fn(&ResponseKind) -> i16,
) -> ResponseKind {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = connection.call(api_key, version, body.clone());
        let code = error_of(&response);
        let again = [
            ResponseError::ConcurrentTransactions,
            ResponseError::CoordinatorLoadInProgress,
            ResponseError::CoordinatorNotAvailable,
        ]
        .iter()
        .any(|error| error.code() == code);
        if !again || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn add_partition(connection: &mut Connection, producer_id: i64, epoch: i16) -> i16 {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(text(ID)))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(TopicName(text(TOPIC)))
                .with_partitions(vec![0]),
        ]);
    let ResponseKind::AddPartitionsToTxn(response) = call_settled(
        connection,
        ApiKey::AddPartitionsToTxn,
        3,
        RequestKind::AddPartitionsToTxn(request),
        |response| match response {
            ResponseKind::AddPartitionsToTxn(body) => {
                body.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
            }
            _ => 0,
        },
    ) else {
        panic!("not an AddPartitionsToTxn answer")
    };
    response.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

/// A Produce of the transactional id with acks=all: one entry for partition 0 per batch.
fn transactional_produce(batches: Vec<bytes::BytesMut>) -> ProduceRequest {
    let entries = batches
        .into_iter()
        .map(|records| {
            produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records.freeze()))
        })
        .collect();
    ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(text(ID))))
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partition_data(entries)])
}

fn produce(connection: &mut Connection, producer_id: i64, epoch: i16, value: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records = transactional_batch(
        &[NewRecord::value(value.to_owned(), now)],
        producer_id,
        epoch,
        0,
    );
    let request = transactional_produce(vec![records]);
    let ResponseKind::Produce(response) =
        connection.call(ApiKey::Produce, 9, RequestKind::Produce(request))
    else {
        panic!("not a Produce answer")
    };
    assert_eq!(
        response.responses[0].partition_responses[0].error_code, 0,
        "produce {value:?} at epoch {epoch}"
    );
}

/// EndTxn at `version`: (error code, producer id, epoch) of the answer.
fn end_txn(
    connection: &mut Connection,
    version: i16,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> (i16, i64, i16) {
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(text(ID)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let ResponseKind::EndTxn(response) = call_settled(
        connection,
        ApiKey::EndTxn,
        version,
        RequestKind::EndTxn(request),
        |response| match response {
            ResponseKind::EndTxn(body) => body.error_code,
            _ => 0,
        },
    ) else {
        panic!("not an EndTxn answer")
    };
    (
        response.error_code,
        response.producer_id.0,
        response.producer_epoch,
    )
}

/// InitProducerId for the transactional id: (producer id, epoch).
fn init_producer(connection: &mut Connection) -> (i64, i16) {
    let ResponseKind::InitProducerId(init) = connection.call(
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(text(ID))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
    ) else {
        panic!("not an InitProducerId answer")
    };
    assert_eq!(init.error_code, 0);
    (init.producer_id.0, init.producer_epoch)
}

/// What a read_committed Fetch of the partition returns: (offset, value) of each record,
/// control records left out, and the aborted transactions it names (producer id, first
/// offset), whose records the consumer drops.
struct Committed {
    values: Vec<(i64, String)>,
    aborted: Vec<(i64, i64)>,
}

fn read_committed(connection: &mut Connection) -> Committed {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(text(TOPIC)))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(response) =
        connection.call(ApiKey::Fetch, 11, RequestKind::Fetch(request))
    else {
        panic!("not a Fetch answer")
    };
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    let aborted = partition
        .aborted_transactions
        .iter()
        .flatten()
        .map(|txn| (txn.producer_id.0, txn.first_offset))
        .collect();
    let mut records = partition.records.clone().unwrap_or_default();
    let mut values = Vec::new();
    for batch in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).unwrap() {
        for record in batch.records.into_iter().filter(|record| !record.control) {
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            values.push((record.offset, value));
        }
    }
    Committed { values, aborted }
}

#[test]
fn a_late_end_txn_cannot_end_the_next_transaction() {
    let work = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&work.path().join("data"), &[]);
    let mut connection = broker.connect();
    assert_eq!(
        connection.metadata_auto_create(TOPIC).topics[0].error_code,
        0
    );
    let (producer_id, first_epoch) = init_producer(&mut connection);

    // The first transaction, committed with EndTxn 5: answered with the next epoch.
    assert_eq!(add_partition(&mut connection, producer_id, first_epoch), 0);
    produce(&mut connection, producer_id, first_epoch, "first");
    let next_epoch = first_epoch + 1;
    assert_eq!(
        end_txn(&mut connection, 5, producer_id, first_epoch, true),
        (0, producer_id, next_epoch)
    );
    // The producer, its answer lost, sends it again: a retry, answered the same.
    assert_eq!(
        end_txn(&mut connection, 5, producer_id, first_epoch, true),
        (0, producer_id, next_epoch)
    );

    // The next transaction, at the new epoch (sequences from 0 again).
    assert_eq!(add_partition(&mut connection, producer_id, next_epoch), 0);
    produce(&mut connection, producer_id, next_epoch, "second");
    // The first EndTxn, held up in the network, arrives now: fenced, whatever its version.
    let fenced = ResponseError::ProducerFenced.code();
    assert_eq!(
        end_txn(&mut connection, 5, producer_id, first_epoch, true).0,
        fenced
    );
    assert_eq!(
        end_txn(&mut connection, 3, producer_id, first_epoch, true).0,
        fenced
    );
    let Committed { values, aborted } = read_committed(&mut connection);
    assert_eq!(
        (values.len(), values[0].1.as_str(), aborted.len()),
        (1, "first", 0),
        "the second transaction is still open: {values:?}"
    );

    // Its own end aborts it, at the epoch after.
    assert_eq!(
        end_txn(&mut connection, 5, producer_id, next_epoch, false),
        (0, producer_id, next_epoch + 1)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Committed { values, aborted } = read_committed(&mut connection);
        if !aborted.is_empty() {
            let second = values.iter().find(|(_, value)| value == "second").unwrap();
            assert_eq!(aborted, [(producer_id, second.0)], "{values:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abort marker is never written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Below version 5 the answer carries no producer id, and the epoch stays.
    assert_eq!(
        add_partition(&mut connection, producer_id, next_epoch + 1),
        0
    );
    assert_eq!(
        end_txn(&mut connection, 4, producer_id, next_epoch + 1, false),
        (0, -1, -1)
    );
    assert!(broker.stop().success(), "{}", broker.log());
}

#[test]
fn a_transactional_batch_for_a_partition_not_in_the_transaction_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &[]);
    let mut connection = broker.connect();
    assert_eq!(
        connection.metadata_auto_create(TOPIC).topics[0].error_code,
        0
    );
    let (producer_id, epoch) = init_producer(&mut connection);
    // No AddPartitionsToTxn. The partition twice in one request: a plain batch first, then
    // the transactional one, which is verified for itself all the same.
    let plain = spate_engine::storage::batch::build::batch(&[NewRecord::value("plain", 1_000)]);
    let transactional = transactional_batch(
        &[NewRecord::value("unverified", 1_000)],
        producer_id,
        epoch,
        0,
    );
    let request = transactional_produce(vec![plain, transactional]);
    let ResponseKind::Produce(response) =
        connection.call(ApiKey::Produce, 9, RequestKind::Produce(request))
    else {
        panic!("not a Produce answer")
    };
    let codes: Vec<i16> = response.responses[0]
        .partition_responses
        .iter()
        .map(|partition| partition.error_code)
        .collect();
    assert_eq!(codes, [0, ResponseError::InvalidTxnState.code()]);
    // Nothing was left open: the partition is stable.
    let Committed { values, .. } = read_committed(&mut connection);
    assert_eq!(values, [(0, "plain".to_owned())]);
}
