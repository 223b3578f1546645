//! The turmoil driver of one node's transaction coordinators: the engine's runtime-agnostic
//! [`TxnHost`] (`spate_engine::txn::host`, which the broker runs with glommio) over
//! [`SimStatePartition`], the node's replica of a `__transaction_state` partition it leads,
//! and the transaction markers it writes.
//!
//! - A node asks the controller for `__transaction_state` on the first transactional request,
//!   as a broker does on the first FindCoordinator for a transactional id.
//! - A coordinator starts when the node becomes the leader of a transaction state partition
//!   (it loads the partition to its log end; transactions found preparing resume their
//!   markers) and stops when the leadership moves.
//! - Markers go to each partition's leader as the metadata names it: appended here when this
//!   node leads it, else sent to the leader's data port ([`MarkerRequest`]); each is retried
//!   until written or refused as stale, while the coordinator's leadership lasts. A leader
//!   appends a marker with `acks=all`, as Kafka's markers are written.
//! - Transactional producers reach the coordinator with [`TxnRequest`]s (JSON); a partition
//!   leader asks it, before appending a transactional batch, whether the partition is in the
//!   producer's ongoing transaction ([`verify`], KIP-890's verification), on this node or on
//!   the coordinator's.
//! - Producer ids come from the run's [`World`](super::world::World): the broker takes them
//!   from the controller, whose id blocks this simulation does not run.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use spate_engine::quorum::admin::{TopicAdmin, TopicToCreate};
use spate_engine::storage::Marker;
use spate_engine::txn::host::{self, TxnHost, TxnMarkers, TxnPartition};
use spate_engine::txn::{
    transaction_partition_for, TxnCall, TxnCoordinatorConfig, TxnReply, TRANSACTION_TOPIC,
};

use super::groups::SimStatePartition;
use super::node::host_name;
use super::replicas::{
    wait_acks_all, Replicas, SimReplica, ACKS_ALL_TIMEOUT_MS, DATA_PORT, MIN_INSYNC_REPLICAS,
};
use super::wire;

/// `__transaction_state` partitions in the simulation (Kafka's default is 50).
pub(crate) const TXN_STATE_PARTITIONS: i32 = 2;
/// Pause between rounds of marker writes that did not all succeed.
const MARKER_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long one exchange with another node (a marker, a verification) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);

/// A transactional producer's request to the coordinator of its transactional id, or a
/// partition leader's verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TxnRequest {
    /// InitProducerId; `expected` is the id and epoch the producer has (KIP-360), if any.
    InitProducerId {
        transactional_id: String,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    },
    AddPartitions {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    },
    EndTxn {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        /// EndTxn 5 and up (transaction version 2): the end bumps the epoch.
        bump_epoch: bool,
    },
    /// A partition leader's check before appending a transactional batch.
    Verify {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    },
}

impl TxnRequest {
    fn transactional_id(&self) -> &str {
        match self {
            TxnRequest::InitProducerId {
                transactional_id, ..
            }
            | TxnRequest::AddPartitions {
                transactional_id, ..
            }
            | TxnRequest::EndTxn {
                transactional_id, ..
            }
            | TxnRequest::Verify {
                transactional_id, ..
            } => transactional_id,
        }
    }

    /// The coordinator's call; an InitProducerId, or an EndTxn that bumps an exhausted epoch,
    /// takes `fresh_producer_id` if it needs one.
    fn into_call(self, fresh_producer_id: i64) -> TxnCall {
        match self {
            TxnRequest::InitProducerId {
                transactional_id,
                timeout_ms,
                expected,
            } => TxnCall::InitProducerId {
                transactional_id,
                timeout_ms,
                fresh_producer_id,
                expected,
            },
            TxnRequest::AddPartitions {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            } => TxnCall::AddPartitions {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            },
            TxnRequest::EndTxn {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
                bump_epoch,
            } => TxnCall::EndTxn {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
                bump_epoch,
                fresh_producer_id: (bump_epoch && producer_epoch >= i16::MAX - 1)
                    .then_some(fresh_producer_id),
            },
            TxnRequest::Verify {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            } => TxnCall::Verify {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            },
        }
    }
}

/// The coordinator's answer: a Kafka error code, the node this node believes coordinates the
/// transactional id (-1 when unknown), and InitProducerId's id and epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TxnAnswer {
    pub(crate) error: i16,
    pub(crate) coordinator_hint: i32,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
}

impl TxnAnswer {
    fn failed(error: ResponseError, coordinator_hint: i32) -> TxnAnswer {
        TxnAnswer {
            error: error.code(),
            coordinator_hint,
            producer_id: -1,
            producer_epoch: -1,
        }
    }
}

/// A transaction marker for a partition this node leads (JSON), from a coordinator; answered
/// with a Kafka error code (big-endian `i16`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MarkerRequest {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) coordinator_epoch: i32,
    pub(crate) commit: bool,
}

/// A transactional request on this node: answered by the coordinator of the id's partition if
/// this node runs it, else NOT_COORDINATOR with the leader this node knows.
pub(crate) async fn answer(replicas: &Rc<Replicas>, request: TxnRequest) -> TxnAnswer {
    let (partition, hint) = {
        let image = replicas.image.borrow();
        let partitions = image
            .topic_id(TRANSACTION_TOPIC)
            .and_then(|id| image.topics().get(&id))
            .map_or(0, |topic| topic.partitions.len());
        if partitions == 0 {
            drop(image);
            replicas.ensure_transaction_topic();
            return TxnAnswer::failed(ResponseError::CoordinatorNotAvailable, -1);
        }
        let partition = transaction_partition_for(request.transactional_id(), partitions as i32);
        (partition, replicas.leader_of(TRANSACTION_TOPIC, partition))
    };
    let host = replicas.txn_hosts.borrow().get(&partition).cloned();
    let Some(host) = host.filter(|host| !host.is_stopped()) else {
        return TxnAnswer::failed(ResponseError::NotCoordinator, hint);
    };
    let fresh_producer_id = match &request {
        TxnRequest::InitProducerId { .. } => replicas.world.borrow_mut().allocate_producer_id(),
        TxnRequest::EndTxn {
            bump_epoch: true,
            producer_epoch,
            ..
        } if *producer_epoch >= i16::MAX - 1 => replicas.world.borrow_mut().allocate_producer_id(),
        _ => -1,
    };
    let described = format!("{request:?}");
    let verifying = matches!(request, TxnRequest::Verify { .. });
    let reply = host
        .call(replicas.as_ref(), request.into_call(fresh_producer_id))
        .await;
    // (A verification that passes is left out: one comes with every record.)
    if !verifying || reply != TxnReply::Done(None) {
        replicas.world.borrow_mut().event(format!(
            "node {}: transaction coordinator of {TRANSACTION_TOPIC}-{partition} answers \
             {described}: {reply:?}",
            replicas.node
        ));
    }
    match reply {
        TxnReply::ProducerId {
            error,
            producer_id,
            producer_epoch,
        } => TxnAnswer {
            error: error.map_or(0, |error| error.code()),
            coordinator_hint: hint,
            producer_id,
            producer_epoch,
        },
        TxnReply::Done(error) => TxnAnswer {
            error: error.map_or(0, |error| error.code()),
            coordinator_hint: hint,
            producer_id: -1,
            producer_epoch: -1,
        },
    }
}

/// Whether a transactional batch of `transactional_id`'s producer may be appended to
/// `(topic, partition)`: `None` when the coordinator finds the partition in the producer's
/// ongoing transaction, else the error to answer the produce with (NOT_ENOUGH_REPLICAS,
/// which producers retry, when the coordinator cannot be reached), as the broker's
/// `verify_transactions` answers.
pub(crate) async fn verify(
    replicas: &Rc<Replicas>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partition: (String, i32),
) -> Option<ResponseError> {
    let request = TxnRequest::Verify {
        transactional_id: transactional_id.to_owned(),
        producer_id,
        producer_epoch,
        partitions: vec![partition],
    };
    let here = answer(replicas, request.clone()).await;
    let answered = if here.error == ResponseError::NotCoordinator.code()
        && here.coordinator_hint >= 0
        && here.coordinator_hint != replicas.node
    {
        let asked = call_remote(
            here.coordinator_hint,
            wire::TXN_CALL,
            &request,
            wire::TXN_ANSWER,
        );
        match tokio::time::timeout(EXCHANGE_TIMEOUT, asked).await {
            Ok(Some(answer)) => serde_json::from_slice::<TxnAnswer>(&answer).ok(),
            _ => None,
        }
    } else {
        Some(here)
    };
    let Some(answered) = answered else {
        return Some(ResponseError::NotEnoughReplicas);
    };
    match answered.error {
        0 => None,
        code if code == ResponseError::NotCoordinator.code()
            || code == ResponseError::CoordinatorNotAvailable.code()
            || code == ResponseError::CoordinatorLoadInProgress.code() =>
        {
            Some(ResponseError::NotEnoughReplicas)
        }
        code => {
            Some(ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError))
        }
    }
}

/// One request to `node`'s data port on a connection of its own; the answer's payload when it
/// is of `answer_kind`.
pub(crate) async fn call_remote(
    node: i32,
    kind: u8,
    request: &impl Serialize,
    answer_kind: u8,
) -> Option<Vec<u8>> {
    let body = serde_json::to_vec(request).ok()?;
    let mut stream = turmoil::net::TcpStream::connect((host_name(node as u64), DATA_PORT))
        .await
        .ok()?;
    wire::write_frame(&mut stream, kind, &body).await.ok()?;
    let (kind, answer) = wire::read_frame(&mut stream).await?;
    (kind == answer_kind).then_some(answer)
}

/// Appends a coordinator's marker to a partition this node leads, and waits for the in-sync
/// replicas: the Kafka error code of the outcome.
pub(crate) async fn write_marker_here(replicas: &Rc<Replicas>, request: &MarkerRequest) -> i16 {
    let Some(replica) = replicas.replica(&request.topic, request.partition) else {
        return ResponseError::NotLeaderOrFollower.code();
    };
    if let Err(error) = replica.check_acks_all(MIN_INSYNC_REPLICAS) {
        return error.code.code();
    }
    let marker = Marker {
        producer_id: request.producer_id,
        producer_epoch: request.producer_epoch,
        coordinator_epoch: request.coordinator_epoch,
        commit: request.commit,
    };
    let info = match replica
        .append_marker_as_leader(marker, replicas.now_ms())
        .await
    {
        Ok(info) => info,
        Err(error) => return error.code.code(),
    };
    replicas.send_isr_changes(&replica);
    replicas.world.borrow_mut().event(format!(
        "node {}: {} marker of producer {} epoch {} at {}-{} offset {}",
        replicas.node,
        if request.commit { "commit" } else { "abort" },
        request.producer_id,
        request.producer_epoch,
        request.topic,
        request.partition,
        info.base_offset
    ));
    match wait_acks_all(
        replicas,
        &replica,
        info.last_offset + 1,
        MIN_INSYNC_REPLICAS,
        ACKS_ALL_TIMEOUT_MS,
    )
    .await
    {
        Ok(()) => 0,
        Err(code) => code.code(),
    }
}

/// Whether a marker refused with `code` is stale (the producer's epoch or the coordinator's
/// moved on): dropped, as Kafka's coordinator drops those, not retried.
fn marker_stale(code: i16) -> bool {
    [
        ResponseError::InvalidProducerEpoch,
        ResponseError::ProducerFenced,
        ResponseError::TransactionCoordinatorFenced,
    ]
    .iter()
    .any(|stale| stale.code() == code)
}

impl TxnPartition for SimStatePartition {
    async fn write_markers(&self, markers: &TxnMarkers) -> bool {
        let mut left = markers.partitions.clone();
        loop {
            let mut failed = Vec::new();
            for (topic, partition) in left {
                let request = MarkerRequest {
                    topic: topic.clone(),
                    partition,
                    producer_id: markers.producer_id,
                    producer_epoch: markers.producer_epoch,
                    coordinator_epoch: markers.coordinator_epoch,
                    commit: markers.commit,
                };
                let leader = self.replicas.leader_of(&topic, partition);
                let code = if leader == self.replicas.node {
                    write_marker_here(&self.replicas, &request).await
                } else if leader < 0 {
                    ResponseError::NotLeaderOrFollower.code()
                } else {
                    let sent = call_remote(leader, wire::MARKER, &request, wire::MARKER_ANSWER);
                    match tokio::time::timeout(EXCHANGE_TIMEOUT, sent).await {
                        Ok(Some(answer)) if answer.len() == 2 => {
                            i16::from_be_bytes([answer[0], answer[1]])
                        }
                        _ => ResponseError::RequestTimedOut.code(),
                    }
                };
                if code != 0 && !marker_stale(code) {
                    failed.push((topic, partition));
                }
            }
            left = failed;
            if left.is_empty() {
                return true;
            }
            if !self.replica.is_leading() || self.replica.leader_epoch() != self.leader_epoch {
                return false;
            }
            tokio::time::sleep(MARKER_RETRY_BACKOFF).await;
        }
    }
}

/// Starts a coordinator for a transaction state partition `replica` now leads (a new leader
/// epoch: the log may differ from the last time), or stops the one of a partition it no
/// longer leads.
pub(crate) fn place_coordinator(
    replicas: &Rc<Replicas>,
    replica: &Rc<SimReplica>,
    took_lead: bool,
) {
    let index = replica.index();
    if took_lead || !replica.is_leading() {
        stop_coordinator(replicas, index);
    }
    if took_lead {
        let host = Rc::new(TxnHost::new(
            index,
            replica.leader_epoch(),
            TxnCoordinatorConfig::default(),
        ));
        replicas
            .txn_hosts
            .borrow_mut()
            .insert(index, Rc::clone(&host));
        replicas.world.borrow_mut().event(format!(
            "node {}: transaction coordinator of {TRANSACTION_TOPIC}-{index} starts at leader \
             epoch {}",
            replicas.node,
            replica.leader_epoch()
        ));
        let partition = SimStatePartition {
            replicas: Rc::clone(replicas),
            replica: Rc::clone(replica),
            leader_epoch: replica.leader_epoch(),
        };
        tokio::task::spawn_local(host::drive(host, partition));
    }
}

/// Stops the coordinator of transaction state partition `index`, if this node runs one.
pub(crate) fn stop_coordinator(replicas: &Replicas, index: i32) {
    if let Some(old) = replicas.txn_hosts.borrow_mut().remove(&index) {
        old.stop("its partition's leadership moved");
        replicas.world.borrow_mut().event(format!(
            "node {}: transaction coordinator of {TRANSACTION_TOPIC}-{index} stopped",
            replicas.node
        ));
    }
}

/// The controller's creation of `__transaction_state`, as a broker asks for it.
pub(crate) fn transaction_topic() -> TopicAdmin {
    TopicAdmin::Create(vec![TopicToCreate {
        name: TRANSACTION_TOPIC.to_owned(),
        partitions: TXN_STATE_PARTITIONS,
        // Kafka's transaction.state.log.replication.factor.
        replication_factor: 3,
        configs: std::collections::BTreeMap::new(),
    }])
}
