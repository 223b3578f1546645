//! Transactions in a cluster, over the wire: a partition leader verifies a transactional
//! batch with the transaction coordinator on another broker (AddPartitionsToTxn v4,
//! `verify_only`, KIP-890 part 1): a partition the transaction never added is refused with
//! INVALID_TXN_STATE, and accepted once added.

use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::client::admin::NewTopic;
use spate_engine::storage::batch::build::{transactional_batch, NewRecord};

use super::quorum::{quorum_of_three, wait_for_brokers};
use super::replication::{admin, start};
use crate::broker::util::{Broker, Connection};

const TOPIC: &str = "verified";

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// The broker coordinating `transactional_id`, once one does.
fn coordinator_of(node: &Broker, transactional_id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut connection = node.connect();
    loop {
        let request = FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![text(transactional_id)]);
        let ResponseKind::FindCoordinator(response) = connection.call(
            ApiKey::FindCoordinator,
            4,
            RequestKind::FindCoordinator(request),
        ) else {
            panic!()
        };
        let coordinator = &response.coordinators[0];
        if coordinator.error_code == 0 {
            return coordinator.node_id.0;
        }
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls `request` until its error (read by `error_of`) is not a retriable coordinator or
/// leadership error; returns the response.
fn call_until_settled(
    connection: &mut Connection,
    api_key: ApiKey,
    version: i16,
    request: RequestKind,
    error_of: impl Fn(&ResponseKind) -> i16,
) -> ResponseKind {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = connection.call(api_key, version, request.clone());
        let retriable = [
            ResponseError::CoordinatorLoadInProgress,
            ResponseError::CoordinatorNotAvailable,
            ResponseError::NotLeaderOrFollower,
            ResponseError::ConcurrentTransactions,
        ];
        let code = error_of(&response);
        if !retriable.iter().any(|error| error.code() == code) || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce_transactional(
    connection: &mut Connection,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    sequence: i32,
) -> i16 {
    let records = [NewRecord::value("in a transaction", 1_000)];
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(text(transactional_id))))
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(
                        transactional_batch(&records, producer_id, epoch, sequence).freeze(),
                    )),
            ])]);
    let response = call_until_settled(
        connection,
        ApiKey::Produce,
        9,
        RequestKind::Produce(request),
        |response| match response {
            ResponseKind::Produce(body) => body.responses[0].partition_responses[0].error_code,
            _ => panic!(),
        },
    );
    let ResponseKind::Produce(response) = response else {
        panic!()
    };
    response.responses[0].partition_responses[0].error_code
}

#[test]
fn a_leader_verifies_transactional_batches_with_a_coordinator_on_another_broker() {
    let work = tempfile::tempdir().unwrap();
    let quorum = quorum_of_three();
    let mut nodes: Vec<Broker> = (1..=3).map(|id| start(work.path(), id, &quorum)).collect();
    let everyone: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id, i32::from(nodes[id as usize - 1].address.port())))
        .collect();
    for node in &nodes {
        wait_for_brokers(node, &everyone);
    }
    let results = admin(&nodes[0])
        .create_topics(&[NewTopic {
            name: TOPIC.into(),
            partitions: 1,
            replication_factor: 1,
            configs: Default::default(),
        }])
        .unwrap();
    results[0].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let described = admin(&nodes[0]).describe_topics(Some(&[TOPIC.to_string()]));
        if let Some(leader) = described
            .ok()
            .and_then(|mut topics| topics.remove(0).partitions.first().map(|p| p.leader))
            .filter(|leader| *leader > 0)
        {
            break leader;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    };
    // A transactional id coordinated elsewhere than the partition's leader.
    let (transactional_id, coordinator) = (0..200)
        .map(|index| format!("verified-{index}"))
        .map(|id| {
            let coordinator = coordinator_of(&nodes[0], &id);
            (id, coordinator)
        })
        .find(|(_, coordinator)| *coordinator != leader)
        .expect("some id is coordinated by another broker");
    let mut at_coordinator = nodes[coordinator as usize - 1].connect();
    let init = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(text(&transactional_id))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let ResponseKind::InitProducerId(init) = call_until_settled(
        &mut at_coordinator,
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(init),
        |response| match response {
            ResponseKind::InitProducerId(body) => body.error_code,
            _ => panic!(),
        },
    ) else {
        panic!()
    };
    assert_eq!(init.error_code, 0);
    let (producer_id, epoch) = (init.producer_id.0, init.producer_epoch);

    // Not added to the transaction: the leader's verification with the coordinator fails.
    let mut at_leader = nodes[leader as usize - 1].connect();
    assert_eq!(
        produce_transactional(&mut at_leader, &transactional_id, producer_id, epoch, 0),
        ResponseError::InvalidTxnState.code(),
        "{}",
        nodes[leader as usize - 1].log()
    );
    let add = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(text(&transactional_id)))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(TopicName(text(TOPIC)))
                .with_partitions(vec![0]),
        ]);
    let ResponseKind::AddPartitionsToTxn(added) = at_coordinator.call(
        ApiKey::AddPartitionsToTxn,
        3,
        RequestKind::AddPartitionsToTxn(add),
    ) else {
        panic!()
    };
    assert_eq!(
        added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
        0
    );
    assert_eq!(
        produce_transactional(&mut at_leader, &transactional_id, producer_id, epoch, 0),
        0
    );
    // A newer producer of the id fences this one: the verification refuses its epoch.
    let init = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(text(&transactional_id))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let bumped = call_until_settled(
        &mut at_coordinator,
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(init),
        |response| match response {
            ResponseKind::InitProducerId(body) => body.error_code,
            _ => panic!(),
        },
    );
    let ResponseKind::InitProducerId(bumped) = bumped else {
        panic!()
    };
    // The open transaction is aborted at one bump (the retry's answer comes after it), the
    // new producer gets the next, as Kafka's coordinator does.
    assert_eq!(bumped.error_code, 0);
    assert!(bumped.producer_epoch > epoch);
    assert_eq!(
        produce_transactional(&mut at_leader, &transactional_id, producer_id, epoch, 1),
        ResponseError::InvalidProducerEpoch.code()
    );
    for node in &mut nodes {
        assert!(node.stop().success(), "{}", node.log());
    }
}
