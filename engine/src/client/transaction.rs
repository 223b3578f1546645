//! A transactional producer's side of Kafka's transaction protocol: where its transaction
//! stands, and the blocking calls to its transaction coordinator (InitProducerId,
//! AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) and to a group's coordinator
//! (TxnOffsetCommit), each retried while the coordinator loads, moves or is busy with the
//! previous state change, as the Java client retries them.
//!
//! [`super::producer::Producer`] drives it: `init_transactions` once, then per transaction
//! `begin_transaction`, records (their partitions added before their first batch), maybe
//! `send_offsets_to_transaction`, and `commit_transaction` or `abort_transaction`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::config::ProducerConfig;
use super::connection::{response_of, Connection};
use super::error::ClientError;
use super::group::find_coordinator_of;
use super::sequencer::ProducerIdentity;

/// FindCoordinator's key type of a group.
const KEY_TYPE_GROUP: i8 = 0;
/// FindCoordinator's key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Pause between retries of a coordinator call.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// The consumer group a transaction's offsets are for, as the consumer knows it
/// ([`super::consumer::Consumer::group_metadata`]): the coordinator checks the generation as
/// for a commit of that consumer (KIP-447).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// The group.
    pub group_id: String,
    /// The consumer's generation (-1 for a consumer without a group membership).
    pub generation_id: i32,
    /// Its member id (empty without membership).
    pub member_id: String,
    /// Its static membership id.
    pub group_instance_id: Option<String>,
}

/// Where the producer's transactions stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// `init_transactions` has not succeeded yet.
    Uninitialized,
    /// No transaction open.
    Ready,
    /// Between `begin_transaction` and its commit or abort.
    InTransaction,
    /// Fenced by a newer producer of the same transactional id, or refused for good: every
    /// call fails with this.
    Fatal(String),
}

/// The producer's transaction state and its coordinators' connections.
#[derive(Debug)]
pub struct Transactions {
    /// Where the transactions stand.
    pub phase: Phase,
    /// The producer id and epoch InitProducerId gave.
    pub identity: Option<ProducerIdentity>,
    /// Partitions added to the open transaction.
    added: BTreeSet<(String, i32)>,
    /// Whether the open transaction reached the coordinator (partitions or offsets added):
    /// without, there is nothing to end there.
    reached_coordinator: bool,
    /// Connections to coordinators, by (key type, key).
    coordinators: BTreeMap<(i8, String), Connection>,
}

impl Default for Transactions {
    fn default() -> Transactions {
        Transactions {
            phase: Phase::Uninitialized,
            identity: None,
            added: BTreeSet::new(),
            reached_coordinator: false,
            coordinators: BTreeMap::new(),
        }
    }
}

/// Whether `code` means the producer can never go on (Kafka's fatal transaction errors).
fn is_fatal(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::ProducerFenced
                | ResponseError::InvalidProducerEpoch
                | ResponseError::TransactionalIdAuthorizationFailed
                | ResponseError::InvalidProducerIdMapping
                | ResponseError::UnsupportedVersion
        )
    )
}

/// What a coordinator's error code asks of the caller.
enum Retry {
    /// Ask again, the same coordinator.
    Same,
    /// Look the coordinator up again, then ask.
    Rediscover,
}

fn retry_of(code: i16) -> Option<Retry> {
    match ResponseError::try_from_code(code)? {
        ResponseError::ConcurrentTransactions | ResponseError::CoordinatorLoadInProgress => {
            Some(Retry::Same)
        }
        ResponseError::CoordinatorNotAvailable | ResponseError::NotCoordinator => {
            Some(Retry::Rediscover)
        }
        _ => None,
    }
}

impl Transactions {
    /// The transactional id's producer id and epoch (InitProducerId): bumps the epoch,
    /// fencing earlier producers of the id and aborting their open transaction.
    ///
    /// # Errors
    /// The coordinator's refusal, or the last retriable error once `max.block.ms` passed.
    pub fn init(&mut self, config: &ProducerConfig) -> Result<ProducerIdentity, ClientError> {
        let transactional_id = transactional_id(config)?;
        if let Phase::Fatal(reason) = &self.phase {
            return Err(ClientError::InvalidState(reason.clone()));
        }
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(text(&transactional_id))))
            .with_transaction_timeout_ms(config.transaction_timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = self.call(
            config,
            KEY_TYPE_TRANSACTION,
            &transactional_id,
            ApiKey::InitProducerId,
            RequestKind::InitProducerId(request),
            |response| match response {
                ResponseKind::InitProducerId(body) => body.error_code,
                _ => 0,
            },
        )?;
        let response = response_of!(response, InitProducerId)?;
        let identity = ProducerIdentity {
            producer_id: response.producer_id.0,
            epoch: response.producer_epoch,
        };
        self.identity = Some(identity);
        self.phase = Phase::Ready;
        self.added.clear();
        Ok(identity)
    }

    /// Opens a transaction.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] before `init_transactions`, in a transaction, or once
    /// fenced.
    pub fn begin(&mut self) -> Result<(), ClientError> {
        match &self.phase {
            Phase::Ready => {
                self.phase = Phase::InTransaction;
                self.added.clear();
                self.reached_coordinator = false;
                Ok(())
            }
            Phase::Uninitialized => Err(ClientError::InvalidState(
                "begin_transaction needs init_transactions first".into(),
            )),
            Phase::InTransaction => Err(ClientError::InvalidState(
                "a transaction is already open".into(),
            )),
            Phase::Fatal(reason) => Err(ClientError::InvalidState(reason.clone())),
        }
    }

    /// Checks that a record may be sent: a transaction is open.
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] outside a transaction.
    pub fn check_open(&self) -> Result<(), ClientError> {
        match &self.phase {
            Phase::InTransaction => Ok(()),
            Phase::Fatal(reason) => Err(ClientError::InvalidState(reason.clone())),
            _ => Err(ClientError::InvalidState(
                "a transactional producer sends inside a transaction: begin_transaction first"
                    .into(),
            )),
        }
    }

    /// Adds `partition` to the open transaction unless it was added already
    /// (AddPartitionsToTxn), before its first record is sent.
    ///
    /// # Errors
    /// The coordinator's refusal; a fatal one leaves the producer unusable.
    pub fn add_partition(
        &mut self,
        config: &ProducerConfig,
        partition: &(String, i32),
    ) -> Result<(), ClientError> {
        self.check_open()?;
        if self.added.contains(partition) {
            return Ok(());
        }
        let transactional_id = transactional_id(config)?;
        let identity = self.identity.expect("initialized");
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(text(&transactional_id)))
            .with_v3_and_below_producer_id(ProducerId(identity.producer_id))
            .with_v3_and_below_producer_epoch(identity.epoch)
            .with_v3_and_below_topics(vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(text(&partition.0)))
                    .with_partitions(vec![partition.1]),
            ]);
        self.call(
            config,
            KEY_TYPE_TRANSACTION,
            &transactional_id,
            ApiKey::AddPartitionsToTxn,
            RequestKind::AddPartitionsToTxn(request),
            |response| match response {
                ResponseKind::AddPartitionsToTxn(body) => body
                    .results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|topic| &topic.results_by_partition)
                    .map(|result| result.partition_error_code)
                    .find(|&code| code != 0)
                    .unwrap_or(0),
                _ => 0,
            },
        )?;
        self.added.insert(partition.clone());
        self.reached_coordinator = true;
        Ok(())
    }

    /// Commits `offsets` (`(topic, partition, next offset)`) for `group` inside the open
    /// transaction: AddOffsetsToTxn to the transaction coordinator, then TxnOffsetCommit to
    /// the group's.
    ///
    /// # Errors
    /// Either coordinator's refusal (ILLEGAL_GENERATION and the like when the consumer's
    /// generation is over: the transaction must abort).
    pub fn send_offsets(
        &mut self,
        config: &ProducerConfig,
        offsets: &[(String, i32, i64)],
        group: &GroupMetadata,
    ) -> Result<(), ClientError> {
        self.check_open()?;
        let transactional_id = transactional_id(config)?;
        let identity = self.identity.expect("initialized");
        let add = AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(text(&transactional_id)))
            .with_producer_id(ProducerId(identity.producer_id))
            .with_producer_epoch(identity.epoch)
            .with_group_id(GroupId(text(&group.group_id)));
        self.call(
            config,
            KEY_TYPE_TRANSACTION,
            &transactional_id,
            ApiKey::AddOffsetsToTxn,
            RequestKind::AddOffsetsToTxn(add),
            |response| match response {
                ResponseKind::AddOffsetsToTxn(body) => body.error_code,
                _ => 0,
            },
        )?;
        self.reached_coordinator = true;
        let mut topics: Vec<txn_offset_commit_request::TxnOffsetCommitRequestTopic> = Vec::new();
        for (topic, partition, offset) in offsets {
            let entry = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1);
            match topics
                .iter_mut()
                .find(|known| known.name.0.as_str() == topic)
            {
                Some(known) => known.partitions.push(entry),
                None => topics.push(
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(text(topic)))
                        .with_partitions(vec![entry]),
                ),
            }
        }
        let commit = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(text(&transactional_id)))
            .with_group_id(GroupId(text(&group.group_id)))
            .with_producer_id(ProducerId(identity.producer_id))
            .with_producer_epoch(identity.epoch)
            .with_generation_id(group.generation_id)
            .with_member_id(text(&group.member_id))
            .with_group_instance_id(group.group_instance_id.as_deref().map(text))
            .with_topics(topics);
        self.call(
            config,
            KEY_TYPE_GROUP,
            &group.group_id,
            ApiKey::TxnOffsetCommit,
            RequestKind::TxnOffsetCommit(commit),
            |response| match response {
                ResponseKind::TxnOffsetCommit(body) => body
                    .topics
                    .iter()
                    .flat_map(|topic| &topic.partitions)
                    .map(|partition| partition.error_code)
                    .find(|&code| code != 0)
                    .unwrap_or(0),
                _ => 0,
            },
        )?;
        Ok(())
    }

    /// Ends the open transaction (EndTxn): commits it, or aborts it. With a broker that
    /// speaks EndTxn 5 (KIP-890's transaction version 2) the end bumps the producer's epoch:
    /// the answer carries the producer id and epoch of the next transaction, returned here,
    /// and an EndTxn sent again after a lost answer is recognised as a retry, while a copy
    /// arriving later still can no longer end the next transaction (KAFKA-17754).
    ///
    /// # Errors
    /// The coordinator's refusal; a fatal one leaves the producer unusable.
    pub fn end(
        &mut self,
        config: &ProducerConfig,
        commit: bool,
    ) -> Result<Option<ProducerIdentity>, ClientError> {
        match &self.phase {
            Phase::InTransaction => {}
            Phase::Fatal(reason) => return Err(ClientError::InvalidState(reason.clone())),
            _ => {
                return Err(ClientError::InvalidState(
                    "no transaction is open: begin_transaction first".into(),
                ))
            }
        }
        if !self.reached_coordinator {
            // Nothing reached the coordinator (no record, no offsets): nothing to end there,
            // as the Java client skips EndTxn for an empty transaction.
            self.phase = Phase::Ready;
            return Ok(None);
        }
        let transactional_id = transactional_id(config)?;
        let identity = self.identity.expect("initialized");
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(text(&transactional_id)))
            .with_producer_id(ProducerId(identity.producer_id))
            .with_producer_epoch(identity.epoch)
            .with_committed(commit);
        let response = self.call(
            config,
            KEY_TYPE_TRANSACTION,
            &transactional_id,
            ApiKey::EndTxn,
            RequestKind::EndTxn(request),
            |response| match response {
                ResponseKind::EndTxn(body) => body.error_code,
                _ => 0,
            },
        )?;
        let response = response_of!(response, EndTxn)?;
        // Below version 5 the answer has no producer id (-1): the epoch stays.
        let bumped = (response.producer_id.0 >= 0).then_some(ProducerIdentity {
            producer_id: response.producer_id.0,
            epoch: response.producer_epoch,
        });
        if let Some(identity) = bumped {
            self.identity = Some(identity);
        }
        self.phase = Phase::Ready;
        self.added.clear();
        self.reached_coordinator = false;
        Ok(bumped)
    }

    /// Sends `body` to the coordinator of `key` and returns its answer, retrying retriable
    /// errors (`error_of` reads the answer's) until `max.block.ms`. A fatal error fences the
    /// producer for good.
    fn call(
        &mut self,
        config: &ProducerConfig,
        key_type: i8,
        key: &str,
        api_key: ApiKey,
        body: RequestKind,
        error_of: impl Fn(&ResponseKind) -> i16,
    ) -> Result<ResponseKind, ClientError> {
        let deadline = Instant::now() + super::producer::MAX_BLOCK;
        let slot = (key_type, key.to_owned());
        loop {
            let attempt = self
                .connection(config, key_type, key)
                .and_then(|connection| {
                    connection
                        .call(api_key, body.clone())
                        .map(|(_, response)| response)
                });
            let retry = match attempt {
                Ok(response) => {
                    let code = error_of(&response);
                    if code == 0 {
                        return Ok(response);
                    }
                    let error = ClientError::from_code(code, None);
                    if is_fatal(code) {
                        self.phase = Phase::Fatal(format!(
                            "the transactional producer cannot go on: {error}"
                        ));
                        return Err(error);
                    }
                    match retry_of(code) {
                        Some(retry) => (retry, error),
                        None => return Err(error),
                    }
                }
                Err(error)
                    if error.is_disconnect() || matches!(error, ClientError::Connect { .. }) =>
                {
                    (Retry::Rediscover, error)
                }
                Err(ClientError::Kafka { code, message, .. }) if retry_of(code).is_some() => {
                    (Retry::Rediscover, ClientError::from_code(code, message))
                }
                Err(error) => return Err(error),
            };
            if let (Retry::Rediscover, _) = retry {
                self.coordinators.remove(&slot);
            }
            if Instant::now() >= deadline {
                return Err(retry.1);
            }
            std::thread::sleep(RETRY_BACKOFF);
        }
    }

    /// The connection to the coordinator of `key`, found and opened when there is none.
    fn connection(
        &mut self,
        config: &ProducerConfig,
        key_type: i8,
        key: &str,
    ) -> Result<&mut Connection, ClientError> {
        let slot = (key_type, key.to_owned());
        if !self.coordinators.contains_key(&slot) {
            let mut bootstrap = Connection::open_any(&config.common)?;
            let address = find_coordinator_of(&mut bootstrap, key_type, key)?;
            let timeout = Duration::from_millis(config.common.request_timeout_ms);
            let connection = Connection::open(&address, &config.common.client_id, timeout)?;
            self.coordinators.insert(slot.clone(), connection);
        }
        Ok(self.coordinators.get_mut(&slot).expect("just inserted"))
    }
}

fn transactional_id(config: &ProducerConfig) -> Result<String, ClientError> {
    config.transactional_id.clone().ok_or_else(|| {
        ClientError::InvalidState("transactions need transactional.id to be set".into())
    })
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}
