//! The glommio side of the transaction coordinators: one [`TxnHost`] per `__transaction_state`
//! partition this shard leads, run by [`drive`] over the shard's partition ([`ShardOffsets`]),
//! and the transaction markers they write: on this broker through the partition's owning
//! shard, on another with a WriteTxnMarkers request to its leader, as Kafka's coordinator
//! sends them.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    add_partitions_to_txn_request, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey,
    ProducerId, TopicName, TransactionalId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::broker::catalog::Catalog;
use crate::broker::errors::KafkaError;
pub use crate::txn::host::TxnHost;
use crate::txn::host::{TxnMarkers, TxnPartition};
use crate::txn::state::TxnPartition as TopicPartition;
use crate::txn::{
    transaction_partition_for, TxnCall, TxnCoordinatorConfig, TxnReply, TRANSACTION_TOPIC,
};

use super::groups::{GlommioClock, ShardOffsets};
use super::shard::{AcksAll, PartitionOp, Shard, ShardMessage, TxnVerification};
use crate::group::{Call, Reply, OFFSETS_TOPIC};
use crate::storage::Marker;

/// Pause between rounds of marker writes that did not all succeed.
const MARKER_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long a verification or a marker write on another broker may take, connecting
/// included.
const MARKER_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The AddPartitionsToTxn version of a partition leader's verification.
const VERIFY_VERSION: i16 = 4;
/// The WriteTxnMarkers version brokers send each other.
const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// How often a group coordinator still loading is told again of a transaction's marker.
const COMPLETION_ATTEMPTS: usize = 100;
/// How long a marker waits for the partition's in-sync replicas.
const MARKER_REPLICATION_TIMEOUT_MS: u64 = 30_000;

impl TxnPartition for ShardOffsets {
    async fn write_markers(&self, markers: &TxnMarkers) -> bool {
        let mut left: Vec<TopicPartition> = markers.partitions.clone();
        let marker = Marker {
            producer_id: markers.producer_id,
            producer_epoch: markers.producer_epoch,
            coordinator_epoch: markers.coordinator_epoch,
            commit: markers.commit,
        };
        loop {
            let catalog = self.shard.catalog();
            // Grouped by leader: this broker's are appended here, each other leader gets one
            // request.
            let mut by_leader: std::collections::BTreeMap<i32, Vec<TopicPartition>> =
                std::collections::BTreeMap::new();
            for (topic, index) in std::mem::take(&mut left) {
                let Some(entry) = catalog.topic(&topic) else {
                    // Deleted: nothing left to end there.
                    continue;
                };
                let leader = match catalog.layout() {
                    None => self.shard.config.node_id,
                    Some(_) => catalog
                        .partition_state(entry.id, index)
                        .map_or(-1, |state| state.leader),
                };
                by_leader.entry(leader).or_default().push((topic, index));
            }
            for (leader, partitions) in by_leader {
                let failed = if leader == self.shard.config.node_id {
                    let mut failed = Vec::new();
                    for (topic, index) in partitions {
                        if let Err(error) = self.shard.write_marker(&topic, index, marker).await {
                            if marker_retriable(error.code) {
                                debug!(topic, index, error = ?error.code, "transaction marker not written yet");
                                failed.push((topic, index));
                            } else {
                                warn!(topic, index, error = ?error.code, "transaction marker refused");
                            }
                        }
                    }
                    failed
                } else if leader < 0 {
                    partitions
                } else {
                    self.shard
                        .write_markers_remotely(leader, &marker, partitions)
                        .await
                };
                left.extend(failed);
            }
            if left.is_empty() {
                return true;
            }
            if self.shard.shutting_down.get() || !self.leads_at_coordinator_epoch() {
                return false;
            }
            glommio::timer::sleep(MARKER_RETRY_BACKOFF).await;
        }
    }
}

/// Whether a marker refused with `code` is tried again: not when it is stale (the producer's
/// epoch or the coordinator's moved on), as Kafka's coordinator drops those. (A partition of
/// a deleted topic is dropped before it is sent: a leader that does not know the topic yet
/// is asked again.)
fn marker_retriable(code: ResponseError) -> bool {
    !matches!(
        code,
        ResponseError::InvalidProducerEpoch
            | ResponseError::ProducerFenced
            | ResponseError::TransactionCoordinatorFenced
    )
}

/// Loads `host`'s partition and runs it until the shard shuts down or the host is stopped.
pub async fn drive(shard: Rc<Shard>, topic_id: Uuid, host: Rc<TxnHost>) {
    let partition = ShardOffsets {
        shard,
        topic_id,
        partition: host.partition,
        // Its state goes only into the log of the leader epoch it was loaded from.
        leader_epoch: Some(host.coordinator_epoch),
    };
    crate::txn::host::drive(host, partition).await;
}

impl Shard {
    /// Registers a transaction coordinator for each `__transaction_state` partition this shard
    /// owns and leads; stops those whose partition moved away or is led at a new epoch.
    pub(super) fn register_txn_coordinators(&self, catalog: &Catalog) {
        let Some(topic) = catalog.topic(TRANSACTION_TOPIC) else {
            return;
        };
        let leading = |index: i32| {
            self.role_of(catalog, topic.id, index)
                .filter(|(leading, _)| *leading)
                .map(|(_, epoch)| epoch)
        };
        let moved: Vec<i32> = self
            .txn_coordinators
            .borrow()
            .iter()
            .filter(|(&index, host)| leading(index) != Some(host.coordinator_epoch))
            .map(|(&index, _)| index)
            .collect();
        for index in moved {
            if let Some(host) = self.txn_coordinators.borrow_mut().remove(&index) {
                info!(
                    partition = index,
                    "transaction coordinator moved to the new leader"
                );
                host.stop("its partition's leadership moved");
            }
        }
        for index in 0..topic.partitions {
            let Some(epoch) = leading(index) else {
                continue;
            };
            if self.owner_of(topic.id, index) == self.id
                && !self.txn_coordinators.borrow().contains_key(&index)
            {
                let host = Rc::new(TxnHost::new(index, epoch, TxnCoordinatorConfig::default()));
                self.txn_coordinators.borrow_mut().insert(index, host);
            }
        }
    }

    /// Starts the registered transaction coordinators whose partitions are open.
    pub(super) fn start_txn_coordinators(self: &Rc<Self>, catalog: &Catalog) {
        let Some(topic) = catalog.topic(TRANSACTION_TOPIC) else {
            return;
        };
        let hosts: Vec<Rc<TxnHost>> = self.txn_coordinators.borrow().values().cloned().collect();
        for host in hosts {
            if !host.mark_started() {
                continue;
            }
            if self.holds_partition(topic.id, host.partition) {
                glommio::spawn_local(drive(Rc::clone(self), topic.id, host)).detach();
            } else {
                host.stop("its partition is offline");
            }
        }
    }

    /// Runs a call on the coordinator of `transactional_id`, wherever it lives on this broker;
    /// NOT_COORDINATOR when another broker leads its partition.
    pub async fn txn_call(self: &Rc<Self>, transactional_id: &str, call: TxnCall) -> TxnReply {
        let lost = |error| match &call {
            TxnCall::InitProducerId { .. } => TxnReply::ProducerId {
                error: Some(error),
                producer_id: -1,
                producer_epoch: -1,
            },
            _ => TxnReply::Done(Some(error)),
        };
        if let Err(error) = self.ensure_transaction_topic().await {
            warn!(error = ?error.message, "cannot create __transaction_state");
            return lost(ResponseError::CoordinatorNotAvailable);
        }
        let catalog = self.catalog();
        let Some(topic) = catalog.topic(TRANSACTION_TOPIC).cloned() else {
            return lost(ResponseError::CoordinatorNotAvailable);
        };
        let partition = transaction_partition_for(transactional_id, topic.partitions);
        if let Some(state) = catalog.partition_state(topic.id, partition) {
            if state.leader != self.config.node_id {
                return lost(ResponseError::NotCoordinator);
            }
        }
        let owner = self.owner_of(topic.id, partition);
        if owner == self.id {
            return self.local_txn_call(partition, call).await;
        }
        let (reply, receiver) = futures_channel::oneshot::channel();
        let failed = lost(ResponseError::CoordinatorNotAvailable);
        let message = ShardMessage::Txn {
            partition,
            call,
            reply,
        };
        if self.peers.send_to(owner, message).await.is_err() {
            return failed;
        }
        receiver.await.unwrap_or(failed)
    }

    /// Runs a call on this shard's coordinator of a `__transaction_state` partition.
    pub(super) async fn local_txn_call(&self, partition: i32, call: TxnCall) -> TxnReply {
        let host = self.txn_coordinators.borrow().get(&partition).cloned();
        match host {
            Some(host) => host.call(&GlommioClock, call).await,
            None => match call {
                TxnCall::InitProducerId { .. } => TxnReply::ProducerId {
                    error: Some(ResponseError::CoordinatorLoadInProgress),
                    producer_id: -1,
                    producer_epoch: -1,
                },
                _ => TxnReply::Done(Some(ResponseError::CoordinatorLoadInProgress)),
            },
        }
    }

    /// Creates `__transaction_state` if it does not exist, as Kafka does on the first
    /// FindCoordinator for a transactional id: `transaction_state_log_num_partitions`
    /// partitions, kept forever (the coordinator forgets expired ids with tombstones), each state change
    /// synced before it is answered.
    pub async fn ensure_transaction_topic(self: &Rc<Self>) -> Result<(), KafkaError> {
        self.ensure_internal_topic(TRANSACTION_TOPIC).await
    }

    /// Appends a transaction marker to a partition this broker leads, on its owning shard;
    /// in a cluster it waits for the partition's in-sync replicas, as Kafka's markers are
    /// written with `acks=all`.
    ///
    /// # Errors
    /// UNKNOWN_TOPIC_OR_PARTITION; the partition's refusals (NOT_LEADER_OR_FOLLOWER,
    /// NOT_ENOUGH_REPLICAS, INVALID_PRODUCER_EPOCH, TRANSACTION_COORDINATOR_FENCED, ...).
    pub async fn write_marker(
        self: &Rc<Self>,
        topic: &str,
        index: i32,
        marker: Marker,
    ) -> Result<(), KafkaError> {
        let catalog = self.catalog();
        let Some(entry) = catalog.topic(topic).cloned() else {
            return Err(KafkaError::new(ResponseError::UnknownTopicOrPartition));
        };
        if index < 0 || index >= entry.partitions {
            return Err(KafkaError::new(ResponseError::UnknownTopicOrPartition));
        }
        let acks_all = catalog.layout().is_some().then(|| AcksAll {
            min_insync_replicas: catalog.min_insync_replicas(&entry),
            timeout_ms: MARKER_REPLICATION_TIMEOUT_MS,
        });
        self.start_partition_call(
            entry.id,
            index,
            PartitionOp::WriteMarker { marker, acks_all },
        )
        .result()
        .await?;
        if topic == OFFSETS_TOPIC {
            self.complete_txn_offsets(index, marker).await;
        }
        Ok(())
    }

    /// Tells the group coordinator of `__consumer_offsets` partition `index` that a marker of
    /// `marker.producer_id` was written there, so that the transaction's offsets become
    /// committed (or are dropped), as Kafka's `handleTxnCompletion`. A coordinator still
    /// loading reads the marker from the log; one that finished loading meanwhile is told.
    async fn complete_txn_offsets(self: &Rc<Self>, index: i32, marker: Marker) {
        for _ in 0..COMPLETION_ATTEMPTS {
            let reply = self
                .group_call_at(
                    index,
                    Call::TxnCompleted {
                        producer_id: marker.producer_id,
                        commit: marker.commit,
                    },
                )
                .await;
            match reply {
                Reply::TxnCompleted(Some(ResponseError::CoordinatorLoadInProgress)) => {
                    glommio::timer::sleep(MARKER_RETRY_BACKOFF).await;
                }
                Reply::TxnCompleted(Some(error)) => {
                    debug!(
                        partition = index,
                        ?error,
                        "transactional offsets not completed"
                    );
                    return;
                }
                _ => return,
            }
        }
    }

    /// Asks the producer's transaction coordinator, here or on another broker, whether
    /// `partition` of `verify.topic` is in the producer's ongoing transaction (KIP-890's
    /// verification, before a transactional batch that would open a transaction there is
    /// appended).
    ///
    /// # Errors
    /// The coordinator's refusal, or NOT_ENOUGH_REPLICAS (which producers retry) when it
    /// cannot be reached.
    pub async fn verify_in_transaction(
        self: &Rc<Self>,
        verify: &TxnVerification,
        partition: i32,
    ) -> Result<(), KafkaError> {
        let partitions = vec![(verify.topic.clone(), partition)];
        let reply = self
            .txn_call(
                &verify.transactional_id,
                TxnCall::Verify {
                    transactional_id: verify.transactional_id.clone(),
                    producer_id: verify.producer_id,
                    producer_epoch: verify.producer_epoch,
                    partitions: partitions.clone(),
                },
            )
            .await;
        let reply = match reply {
            // The coordinator is on another broker: ask it there.
            TxnReply::Done(Some(ResponseError::NotCoordinator)) => TxnReply::Done(
                self.verify_remotely(
                    &verify.transactional_id,
                    verify.producer_id,
                    verify.producer_epoch,
                    &partitions,
                )
                .await,
            ),
            reply => reply,
        };
        match reply {
            TxnReply::Done(None) | TxnReply::ProducerId { error: None, .. } => Ok(()),
            TxnReply::Done(Some(error))
            | TxnReply::ProducerId {
                error: Some(error), ..
            } => Err(KafkaError::with_message(
                error,
                "the partition is not in the producer's ongoing transaction",
            )),
        }
    }

    /// Asks the coordinator of `transactional_id`, on another broker, whether `partitions`
    /// are in the producer's ongoing transaction (AddPartitionsToTxn v4 with `verify_only`,
    /// as Kafka's partition leaders ask since KIP-890). `None` when they are; the error to
    /// answer the produce with otherwise (NOT_ENOUGH_REPLICAS, which producers retry, when
    /// the coordinator cannot be reached).
    pub async fn verify_remotely(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) -> Option<ResponseError> {
        let unreachable = Some(ResponseError::NotEnoughReplicas);
        let catalog = self.catalog();
        // Without the coordinator's partition in the metadata nothing is verified: the
        // producer retries.
        let Some(topic) = catalog.topic(TRANSACTION_TOPIC) else {
            return unreachable;
        };
        let index = transaction_partition_for(transactional_id, topic.partitions);
        let Some(leader) = catalog
            .partition_state(topic.id, index)
            .map(|state| state.leader)
        else {
            return unreachable;
        };
        let Some(address) = catalog
            .layout()
            .and_then(|layout| layout.brokers.get(&leader).cloned())
        else {
            return unreachable;
        };
        let mut topics: Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic> = Vec::new();
        for (name, partition) in partitions {
            match topics
                .iter_mut()
                .find(|entry| entry.name.0.as_str() == name)
            {
                Some(entry) => entry.partitions.push(*partition),
                None => topics.push(
                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.clone())))
                        .with_partitions(vec![*partition]),
                ),
            }
        }
        let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(
                    transactional_id.to_owned(),
                )))
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(producer_epoch)
                .with_verify_only(true)
                .with_topics(topics),
        ]);
        let target = format!("{}:{}", address.host, address.port);
        let answered: Result<AddPartitionsToTxnResponse, String> = self
            .broker_connections
            .exchange(
                &target,
                ApiKey::AddPartitionsToTxn,
                VERIFY_VERSION,
                &request,
                MARKER_EXCHANGE_TIMEOUT,
            )
            .await;
        let response = match answered {
            Ok(response) => response,
            Err(error) => {
                debug!(leader, %target, %error, "cannot verify a transaction");
                return unreachable;
            }
        };
        let codes = response
            .results_by_transaction
            .iter()
            .flat_map(|result| &result.topic_results)
            .flat_map(|topic| &topic.results_by_partition)
            .map(|partition| partition.partition_error_code);
        let mut answered_any = false;
        for code in codes {
            answered_any = true;
            if let Some(error) = ResponseError::try_from_code(code) {
                // The coordinator moved meanwhile: the producer retries.
                return Some(match error {
                    ResponseError::NotCoordinator
                    | ResponseError::CoordinatorNotAvailable
                    | ResponseError::CoordinatorLoadInProgress => ResponseError::NotEnoughReplicas,
                    other => other,
                });
            }
        }
        if answered_any {
            None
        } else {
            unreachable
        }
    }

    /// Sends `partitions`' markers to their leader `leader` (WriteTxnMarkers); returns those
    /// to try again.
    async fn write_markers_remotely(
        &self,
        leader: i32,
        marker: &Marker,
        partitions: Vec<TopicPartition>,
    ) -> Vec<TopicPartition> {
        let address = self
            .catalog()
            .layout()
            .and_then(|layout| layout.brokers.get(&leader).cloned());
        let Some(address) = address else {
            return partitions;
        };
        let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
        for (topic, index) in &partitions {
            match topics
                .iter_mut()
                .find(|entry| entry.name.0.as_str() == topic)
            {
                Some(entry) => entry.partition_indexes.push(*index),
                None => topics.push(
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partition_indexes(vec![*index]),
                ),
            }
        }
        let request =
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(marker.producer_id))
                .with_producer_epoch(marker.producer_epoch)
                .with_transaction_result(marker.commit)
                .with_coordinator_epoch(marker.coordinator_epoch)
                .with_topics(topics)]);
        let target = format!("{}:{}", address.host, address.port);
        let answered: Result<WriteTxnMarkersResponse, String> = self
            .broker_connections
            .exchange(
                &target,
                ApiKey::WriteTxnMarkers,
                WRITE_TXN_MARKERS_VERSION,
                &request,
                MARKER_EXCHANGE_TIMEOUT,
            )
            .await;
        let response = match answered {
            Ok(response) => response,
            Err(error) => {
                debug!(leader, %target, %error, "cannot write transaction markers");
                return partitions;
            }
        };
        // A partition the answer does not mention is tried again.
        let mut unanswered = partitions;
        for result in response.markers {
            for topic in result.topics {
                for partition in topic.partitions {
                    let key = (topic.name.0.to_string(), partition.partition_index);
                    if let Some(code) = ResponseError::try_from_code(partition.error_code) {
                        if marker_retriable(code) {
                            continue;
                        }
                        warn!(topic = %topic.name.0, partition = partition.partition_index, error = ?code, "transaction marker refused");
                    }
                    unanswered.retain(|pending| *pending != key);
                }
            }
        }
        unanswered
    }
}
