//! Simulated transactional producers, a `read_committed` reader, and the transaction checker
//! (Jepsen's Kafka workload: aborted reads, precommitted reads, lost and duplicated writes).
//!
//! Each producer owns one transactional id. An instance calls InitProducerId, then runs
//! transactions: a few records to random partitions of [`TOPIC`] (AddPartitionsToTxn before a
//! partition's first record; each record retried with its sequence number until acknowledged),
//! then EndTxn, committing most and aborting the rest. Each instance speaks one transaction
//! version, chosen at random:
//! - version 1: an EndTxn without an answer leaves the transaction's outcome unknown; the
//!   producer then bumps its epoch (InitProducerId with its id and epoch, KIP-360) rather than
//!   sending EndTxn again, so that the unanswered EndTxn, should it arrive later, is fenced
//!   (under version 1 a second EndTxn at the same epoch would leave the door open to
//!   KAFKA-17754);
//! - version 2 (EndTxn 5, KIP-890 part 2): every EndTxn bumps the epoch and answers the new
//!   one, so the producer simply sends an unanswered EndTxn again. Now and then it also sends
//!   a copy of an EndTxn once more, late, once the next transaction may be under way: the
//!   delayed EndTxn of KAFKA-17754, which must not end that transaction.
//!
//! An error that leaves the producer's sequences uncertain bumps the epoch; one that fences
//! it starts a new instance.
//!
//! Now and then an instance turns *zombie* before its EndTxn: a new instance of the same
//! transactional id takes over (InitProducerId without an id, which fences the old epoch and
//! aborts its open transaction), and the zombie wakes up seconds later and sends its EndTxn
//! commit: a delayed EndTxn from an earlier transaction, which must neither end the new
//! instance's transaction nor be told its own committed.
//!
//! The reader polls every partition with `read_committed` as the run goes. What everyone was
//! told is in a [`TxnLedger`]; after healing the checker reads the transactions' outcomes off
//! the partition leaders' logs (their markers) and holds the cluster to it:
//! - no record of a transaction whose commit nobody asked for is committed, or read by a
//!   `read_committed` consumer, nor read before its commit was asked for (precommitted read);
//! - no record of a transaction whose abort was acknowledged is committed (aborted read);
//! - every acknowledged record of a transaction whose commit was acknowledged, or that has
//!   any record committed, is committed (lost write); a transaction is committed or aborted
//!   as a whole; a marker ends records of its own epoch (an abort also those of the epoch
//!   before: the bump that fenced them); no value is committed twice (the producer's retries
//!   are idempotent);
//! - the leader's `read_committed` view (its last stable offset and aborted-transaction list,
//!   through the client's filter) is exactly the committed records; every record the reader
//!   saw is committed at the offset it saw it at;
//! - after healing no transaction is left open: the last stable offset is the high watermark.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use spate_engine::quorum::NodeId;

use super::client;
use super::node::sim_ms;
use super::replicas::{ConsumeAnswer, ConsumeRequest, ProduceAnswer, ProduceRequest, ReplicaDump};
use super::txns::{call_remote, TxnAnswer, TxnRequest};
use super::wire;
use super::world::World;
use crate::SimRng;

/// The topic the transactional producers write.
pub(crate) const TOPIC: &str = "txn-events";
/// Its partitions.
const PARTITIONS: u8 = 2;
/// Its replicas.
const REPLICATION_FACTOR: u8 = 3;
/// Transactional producers (one transactional id each).
const PRODUCERS: u32 = 2;
/// The producers' `transaction.timeout.ms`: a transaction left open this long is aborted by
/// its coordinator.
const TRANSACTION_TIMEOUT_MS: i32 = 5_000;
/// How long a producer waits for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// Most attempts at one record, or one AddPartitionsToTxn, before the producer gives the
/// transaction up.
const ATTEMPTS_MAX: u32 = 6;
/// Percent of transactions committed (the rest are aborted).
const COMMIT_PERCENT: u64 = 70;
/// Percent of transactions whose instance turns zombie before its EndTxn.
const ZOMBIE_PERCENT: u64 = 8;
/// Percent of instances speaking transaction version 2.
const VERSION_2_PERCENT: u64 = 50;
/// Percent of version 2 EndTxns whose copy arrives again, late.
const LATE_COPY_PERCENT: u64 = 30;
/// How often the reader polls.
const READ_EVERY: Duration = Duration::from_millis(300);

/// A transaction: its producer and its number among the producer's transactions.
type TxnKey = (u32, u64);

/// What the transactional producers and the reader did, for the checks.
#[derive(Debug, Default)]
pub(crate) struct TxnLedger {
    txns: BTreeMap<TxnKey, TxnFacts>,
    /// Each value sent, to its transaction.
    owners: BTreeMap<String, TxnKey>,
    /// What the `read_committed` reader saw: value to `(partition, offset)`.
    reads: BTreeMap<String, (i32, i64)>,
    /// Transactions whose commit, and whose abort, was acknowledged.
    pub(crate) commits_acknowledged: u64,
    pub(crate) aborts_acknowledged: u64,
}

/// One transaction, as its producer saw it.
#[derive(Debug, Default)]
struct TxnFacts {
    /// Values acknowledged (appended and replicated).
    acknowledged: BTreeSet<String>,
    /// When its commit was first asked for, by its producer or its zombie.
    commit_asked_ms: Option<u64>,
    /// The outcome an EndTxn answer told: commit (`true`) or abort.
    outcome: Option<bool>,
    /// Its EndTxn was of transaction version 2: its markers carry the epoch after its
    /// records'.
    ended_bumping: bool,
}

impl TxnLedger {
    fn sent(&mut self, txn: TxnKey, value: &str) {
        self.txns.entry(txn).or_default();
        self.owners.insert(value.to_owned(), txn);
    }

    fn acknowledged(&mut self, txn: TxnKey, value: &str) {
        self.txns
            .entry(txn)
            .or_default()
            .acknowledged
            .insert(value.to_owned());
    }

    fn ended_bumping(&mut self, txn: TxnKey) {
        self.txns.entry(txn).or_default().ended_bumping = true;
    }

    fn commit_asked(&mut self, txn: TxnKey, now_ms: u64) {
        self.txns
            .entry(txn)
            .or_default()
            .commit_asked_ms
            .get_or_insert(now_ms);
    }

    /// An EndTxn answered without error: a violation if the transaction was told the
    /// opposite before.
    fn ended(&mut self, txn: TxnKey, commit: bool) -> Result<(), String> {
        let facts = self.txns.entry(txn).or_default();
        match facts.outcome.replace(commit) {
            Some(told) if told != commit => Err(format!(
                "transaction {txn:?} was told it {} and then that it {}",
                verb(told),
                verb(commit)
            )),
            Some(_) => Ok(()),
            None => {
                if commit {
                    self.commits_acknowledged += 1;
                } else {
                    self.aborts_acknowledged += 1;
                }
                Ok(())
            }
        }
    }

    /// The reader saw `value` at `offset` of `partition` at `now_ms`: a violation if nobody
    /// asked for its transaction's commit by then, or its abort was acknowledged.
    fn read(
        &mut self,
        partition: i32,
        offset: i64,
        value: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(txn) = self.owners.get(value).copied() else {
            return Err(format!(
                "a read_committed read of {TOPIC}-{partition} returned {value:?} at offset \
                 {offset}, which no producer sent"
            ));
        };
        if let Some(&(seen_partition, seen_offset)) = self.reads.get(value) {
            if (seen_partition, seen_offset) != (partition, offset) {
                return Err(format!(
                    "{value:?} was read at {TOPIC}-{seen_partition} offset {seen_offset} and \
                     then at {TOPIC}-{partition} offset {offset}"
                ));
            }
            return Ok(());
        }
        self.reads.insert(value.to_owned(), (partition, offset));
        let facts = &self.txns[&txn];
        match (facts.commit_asked_ms, facts.outcome) {
            (_, Some(false)) => Err(format!(
                "aborted read: {value:?} of transaction {txn:?}, whose abort was acknowledged, \
                 read with read_committed"
            )),
            (Some(asked_ms), _) if asked_ms <= now_ms => Ok(()),
            _ => Err(format!(
                "precommitted read: {value:?} of transaction {txn:?} read with read_committed \
                 at {now_ms} ms, before anyone asked to commit it"
            )),
        }
    }
}

/// An EndTxn was answered without error: the ledger takes the outcome (a violation if the
/// transaction was told the opposite before), and the trace `event`.
fn told_ended(world: &mut World, txn: TxnKey, commit: bool, event: String) {
    if let Err(violation) = world.txns.ended(txn, commit) {
        world.violation(violation);
    }
    world.event(event);
}

fn verb(commit: bool) -> &'static str {
    if commit {
        "committed"
    } else {
        "aborted"
    }
}

/// The transactional producers and the reader, as tasks of one simulated client host.
pub(crate) async fn run_all(
    nodes: Vec<NodeId>,
    world: Rc<RefCell<World>>,
    seed: u64,
    stop_ms: u64,
) -> turmoil::Result {
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let producer = Producer {
            producer,
            nodes: nodes.clone(),
            world: Rc::clone(&world),
            rng: SimRng::new(seed ^ (0x7a_0000 + u64::from(producer))),
            coordinator: None,
            leaders: BTreeMap::new(),
            stop_ms,
        };
        tasks.push(tokio::task::spawn_local(producer.run()));
    }
    tasks.push(tokio::task::spawn_local(read(
        nodes,
        Rc::clone(&world),
        seed ^ 0x7a_eead,
        stop_ms,
    )));
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// A transactional producer's id and epoch, and its next sequence number per partition.
struct Session {
    producer_id: i64,
    epoch: i16,
    sequences: BTreeMap<i32, i32>,
    /// Speaks transaction version 2 (EndTxn bumps the epoch).
    version_2: bool,
}

/// How a transaction ended, for what the producer does next.
enum Ended {
    /// Its EndTxn was answered: the next transaction goes on with the same epoch.
    Answered,
    /// Its outcome or the producer's sequences are unknown: bump the epoch.
    Bump,
    /// The producer was fenced: a new instance.
    Fenced,
    /// The instance turned zombie: a new instance.
    Zombie,
}

struct Producer {
    producer: u32,
    nodes: Vec<NodeId>,
    world: Rc<RefCell<World>>,
    rng: SimRng,
    /// The node the last answer named as the transactional id's coordinator.
    coordinator: Option<i32>,
    /// The node the last answer named as each partition's leader.
    leaders: BTreeMap<i32, i32>,
    stop_ms: u64,
}

fn is(code: i16, errors: &[ResponseError]) -> bool {
    errors.iter().any(|error| error.code() == code)
}

/// Errors after which the request was not carried out and is sent again.
const NOT_DONE: [ResponseError; 4] = [
    ResponseError::NotCoordinator,
    ResponseError::CoordinatorNotAvailable,
    ResponseError::CoordinatorLoadInProgress,
    ResponseError::ConcurrentTransactions,
];

/// Errors that fence a producer's epoch.
const FENCED: [ResponseError; 3] = [
    ResponseError::ProducerFenced,
    ResponseError::InvalidProducerEpoch,
    ResponseError::InvalidProducerIdMapping,
];

impl Producer {
    fn transactional_id(&self) -> String {
        format!("txn-{}", self.producer)
    }

    fn any_node(&mut self) -> i32 {
        self.nodes[self.rng.below(self.nodes.len() as u64) as usize] as i32
    }

    async fn run(mut self) {
        if !create_topic(&self.nodes, &mut self.rng, self.stop_ms).await {
            return;
        }
        let mut txn_number = 0_u64;
        let mut expected: Option<(i64, i16)> = None;
        while sim_ms() < self.stop_ms {
            let Some(mut session) = self.init(expected).await else {
                if expected.take().is_none() {
                    // Not even a new instance got an id before the run's end.
                    return;
                }
                continue;
            };
            loop {
                if sim_ms() >= self.stop_ms {
                    return;
                }
                let txn = (self.producer, txn_number);
                txn_number += 1;
                match self.transaction(txn, &mut session).await {
                    Ended::Answered => {}
                    Ended::Bump => {
                        expected = Some((session.producer_id, session.epoch));
                        break;
                    }
                    Ended::Fenced | Ended::Zombie => {
                        expected = None;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10 + self.rng.below(100))).await;
            }
        }
    }

    /// One request to the transactional id's coordinator (the node last named, else any);
    /// `None` when no answer came.
    async fn call(&mut self, request: &TxnRequest) -> Option<TxnAnswer> {
        let node = match self.coordinator {
            Some(node) => node,
            None => self.any_node(),
        };
        let sent = call_remote(node, wire::TXN_CALL, request, wire::TXN_ANSWER);
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, sent)
            .await
            .ok()
            .flatten()
            .and_then(|answer| serde_json::from_slice::<TxnAnswer>(&answer).ok());
        match &answer {
            Some(answer) if is(answer.error, &NOT_DONE[..2]) => {
                self.coordinator =
                    (answer.coordinator_hint >= 0).then_some(answer.coordinator_hint);
            }
            Some(_) => self.coordinator = Some(node),
            None => self.coordinator = None,
        }
        answer
    }

    /// InitProducerId until it is answered (`expected`: the id and epoch to bump), or `None`
    /// when the run ends first or the answer fences `expected`.
    async fn init(&mut self, expected: Option<(i64, i16)>) -> Option<Session> {
        let request = TxnRequest::InitProducerId {
            transactional_id: self.transactional_id(),
            timeout_ms: TRANSACTION_TIMEOUT_MS,
            expected,
        };
        while sim_ms() < self.stop_ms {
            let answer = self.call(&request).await;
            match answer {
                Some(answer) if answer.error == 0 => {
                    self.event(format!(
                        "producer {} instance with id {} epoch {} (asked with {expected:?})",
                        self.transactional_id(),
                        answer.producer_id,
                        answer.producer_epoch
                    ));
                    return Some(Session {
                        producer_id: answer.producer_id,
                        epoch: answer.producer_epoch,
                        sequences: BTreeMap::new(),
                        version_2: self.rng.chance(VERSION_2_PERCENT),
                    });
                }
                Some(answer) if expected.is_some() && is(answer.error, &FENCED) => return None,
                _ => tokio::time::sleep(Duration::from_millis(50 + self.rng.below(150))).await,
            }
        }
        None
    }

    async fn transaction(&mut self, txn: TxnKey, session: &mut Session) -> Ended {
        let records = 1 + self.rng.below(4);
        let mut added = BTreeSet::new();
        let mut failed = None;
        for index in 0..records {
            let partition = self.rng.below(u64::from(PARTITIONS)) as i32;
            if added.insert(partition) {
                if let Err(ended) = self.add_partition(session, partition).await {
                    failed = Some(ended);
                    break;
                }
            }
            let value = format!("t{}-{}-{index}", txn.0, txn.1);
            if let Err(ended) = self.produce(txn, session, partition, value).await {
                failed = Some(ended);
                break;
            }
        }
        match failed {
            Some(Ended::Fenced) => return Ended::Fenced,
            // The sequences are unknown: no EndTxn, the epoch bump aborts the transaction.
            Some(_) => return Ended::Bump,
            None => {}
        }
        if self.rng.chance(ZOMBIE_PERCENT) {
            self.turn_zombie(txn, session);
            return Ended::Zombie;
        }
        let commit = self.rng.chance(COMMIT_PERCENT);
        if session.version_2 {
            self.end_bumping(txn, session, commit).await
        } else {
            self.end(txn, session, commit).await
        }
    }

    async fn add_partition(&mut self, session: &Session, partition: i32) -> Result<(), Ended> {
        let request = TxnRequest::AddPartitions {
            transactional_id: self.transactional_id(),
            producer_id: session.producer_id,
            producer_epoch: session.epoch,
            partitions: vec![(TOPIC.to_owned(), partition)],
        };
        for _ in 0..ATTEMPTS_MAX {
            match self.call(&request).await {
                Some(answer) if answer.error == 0 => return Ok(()),
                Some(answer) if is(answer.error, &FENCED) => return Err(Ended::Fenced),
                Some(answer) if !is(answer.error, &NOT_DONE) => return Err(Ended::Bump),
                _ => tokio::time::sleep(Duration::from_millis(50 + self.rng.below(150))).await,
            }
        }
        Err(Ended::Bump)
    }

    /// One record, retried with its sequence number until acknowledged.
    async fn produce(
        &mut self,
        txn: TxnKey,
        session: &mut Session,
        partition: i32,
        value: String,
    ) -> Result<(), Ended> {
        let sequence = *session.sequences.entry(partition).or_insert(0);
        self.world.borrow_mut().txns.sent(txn, &value);
        let request = ProduceRequest {
            topic: TOPIC.to_owned(),
            partition,
            acks_all: true,
            value: value.clone(),
            idempotent: Some((session.producer_id, session.epoch, sequence)),
            transactional_id: Some(self.transactional_id()),
        };
        for _ in 0..ATTEMPTS_MAX {
            let node = match self.leaders.get(&partition) {
                Some(&node) => node,
                None => self.any_node(),
            };
            let sent = call_remote(node, wire::PRODUCE, &request, wire::PRODUCE_ANSWER);
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, sent)
                .await
                .ok()
                .flatten()
                .and_then(|answer| serde_json::from_slice::<ProduceAnswer>(&answer).ok());
            match answer {
                Some(answer) if answer.error_code == 0 => {
                    self.leaders.insert(partition, node);
                    session.sequences.insert(partition, sequence + 1);
                    let mut world = self.world.borrow_mut();
                    world.txns.acknowledged(txn, &value);
                    world.event(format!(
                        "producer txn-{} record {value} at {TOPIC}-{partition} offset {}",
                        txn.0, answer.offset
                    ));
                    return Ok(());
                }
                Some(answer) => {
                    if answer.leader_hint >= 0 {
                        self.leaders.insert(partition, answer.leader_hint);
                    } else {
                        self.leaders.remove(&partition);
                    }
                    let fatal = [
                        ResponseError::InvalidTxnState,
                        ResponseError::OutOfOrderSequenceNumber,
                    ];
                    if is(answer.error_code, &FENCED) || is(answer.error_code, &fatal) {
                        self.event(format!(
                            "producer txn-{} record {value}: error {}",
                            txn.0, answer.error_code
                        ));
                        return Err(Ended::Bump);
                    }
                }
                None => {
                    self.leaders.remove(&partition);
                }
            }
            tokio::time::sleep(Duration::from_millis(50 + self.rng.below(150))).await;
        }
        Err(Ended::Bump)
    }

    /// EndTxn, sent again only while the answer says it was not carried out.
    async fn end(&mut self, txn: TxnKey, session: &Session, commit: bool) -> Ended {
        let request = TxnRequest::EndTxn {
            transactional_id: self.transactional_id(),
            producer_id: session.producer_id,
            producer_epoch: session.epoch,
            commit,
            bump_epoch: false,
        };
        if commit {
            self.world.borrow_mut().txns.commit_asked(txn, sim_ms());
        }
        loop {
            let answer = self.call(&request).await;
            let Some(answer) = answer else {
                self.event(format!(
                    "producer txn-{} transaction {}: EndTxn unanswered, outcome unknown",
                    txn.0, txn.1
                ));
                return Ended::Bump;
            };
            if answer.error == 0 {
                told_ended(
                    &mut self.world.borrow_mut(),
                    txn,
                    commit,
                    format!(
                        "producer txn-{} transaction {} {}",
                        txn.0,
                        txn.1,
                        verb(commit)
                    ),
                );
                return Ended::Answered;
            }
            if is(answer.error, &FENCED) {
                return Ended::Fenced;
            }
            if !is(answer.error, &NOT_DONE) || sim_ms() >= self.stop_ms + 10_000 {
                return Ended::Bump;
            }
            tokio::time::sleep(Duration::from_millis(50 + self.rng.below(150))).await;
        }
    }

    /// Transaction version 2's EndTxn: sent again until answered (a retry is recognised by
    /// its epoch); the answer's epoch is the next transaction's. Now and then a copy of it
    /// is sent once more, late (see [`Producer::send_late_copy`]).
    async fn end_bumping(&mut self, txn: TxnKey, session: &mut Session, commit: bool) -> Ended {
        let request = TxnRequest::EndTxn {
            transactional_id: self.transactional_id(),
            producer_id: session.producer_id,
            producer_epoch: session.epoch,
            commit,
            bump_epoch: true,
        };
        {
            let mut world = self.world.borrow_mut();
            world.txns.ended_bumping(txn);
            if commit {
                world.txns.commit_asked(txn, sim_ms());
            }
        }
        if self.rng.chance(LATE_COPY_PERCENT) {
            self.send_late_copy(txn, request.clone(), commit);
        }
        while sim_ms() < self.stop_ms + 10_000 {
            let Some(answer) = self.call(&request).await else {
                self.event(format!(
                    "producer txn-{} transaction {}: EndTxn unanswered, sent again",
                    txn.0, txn.1
                ));
                continue;
            };
            if answer.error == 0 {
                told_ended(
                    &mut self.world.borrow_mut(),
                    txn,
                    commit,
                    format!(
                        "producer txn-{} transaction {} {}; on at id {} epoch {}",
                        txn.0,
                        txn.1,
                        verb(commit),
                        answer.producer_id,
                        answer.producer_epoch
                    ),
                );
                if (answer.producer_id, answer.producer_epoch)
                    != (session.producer_id, session.epoch)
                {
                    // Sequences start again at a new epoch.
                    session.sequences.clear();
                }
                session.producer_id = answer.producer_id;
                session.epoch = answer.producer_epoch;
                return Ended::Answered;
            }
            if is(answer.error, &FENCED) {
                return Ended::Fenced;
            }
            if !is(answer.error, &NOT_DONE) {
                return Ended::Bump;
            }
            tokio::time::sleep(Duration::from_millis(50 + self.rng.below(150))).await;
        }
        Ended::Bump
    }

    /// Sends `request`, an EndTxn, once more after a while, as a network holding a copy
    /// back would (KAFKA-17754): by then the producer's next transaction may be open, and
    /// the copy must not end it. An answer without error may only confirm `txn`'s outcome.
    fn send_late_copy(&mut self, txn: TxnKey, request: TxnRequest, commit: bool) {
        let delay = Duration::from_millis(100 + self.rng.below(2_900));
        let mut late = Producer {
            producer: self.producer,
            nodes: self.nodes.clone(),
            world: Rc::clone(&self.world),
            rng: SimRng::new(self.rng.next_u64()),
            coordinator: self.coordinator,
            leaders: BTreeMap::new(),
            stop_ms: self.stop_ms,
        };
        tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            let answer = late.call(&request).await;
            let mut world = late.world.borrow_mut();
            match answer {
                Some(answer) if answer.error == 0 => told_ended(
                    &mut world,
                    txn,
                    commit,
                    format!(
                        "late copy of txn-{}'s EndTxn for transaction {}: answered",
                        txn.0, txn.1
                    ),
                ),
                answer => world.event(format!(
                    "late copy of txn-{}'s EndTxn for transaction {}: {:?}",
                    txn.0,
                    txn.1,
                    answer.map(|answer| answer.error)
                )),
            }
        });
    }

    /// The instance stalls before its EndTxn: a new instance takes the transactional id over,
    /// and this one sends its EndTxn commit seconds later, once.
    fn turn_zombie(&mut self, txn: TxnKey, session: &Session) {
        let delay = Duration::from_millis(500 + self.rng.below(4_500));
        self.event(format!(
            "producer txn-{} transaction {}: the instance at epoch {} stalls for {} ms",
            txn.0,
            txn.1,
            session.epoch,
            delay.as_millis()
        ));
        let mut zombie = Producer {
            producer: self.producer,
            nodes: self.nodes.clone(),
            world: Rc::clone(&self.world),
            rng: SimRng::new(self.rng.next_u64()),
            coordinator: None,
            leaders: BTreeMap::new(),
            stop_ms: self.stop_ms,
        };
        let request = TxnRequest::EndTxn {
            transactional_id: self.transactional_id(),
            producer_id: session.producer_id,
            producer_epoch: session.epoch,
            commit: true,
            bump_epoch: session.version_2,
        };
        if session.version_2 {
            self.world.borrow_mut().txns.ended_bumping(txn);
        }
        tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            zombie.world.borrow_mut().txns.commit_asked(txn, sim_ms());
            for _ in 0..ATTEMPTS_MAX {
                match zombie.call(&request).await {
                    Some(answer) if answer.error == 0 => {
                        told_ended(
                            &mut zombie.world.borrow_mut(),
                            txn,
                            true,
                            format!(
                                "zombie of txn-{} transaction {}: EndTxn commit answered",
                                txn.0, txn.1
                            ),
                        );
                        return;
                    }
                    Some(answer) if is(answer.error, &NOT_DONE) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    answer => {
                        zombie.event(format!(
                            "zombie of txn-{} transaction {}: EndTxn commit: {:?}",
                            txn.0,
                            txn.1,
                            answer.map(|answer| answer.error)
                        ));
                        return;
                    }
                }
            }
        });
    }

    fn event(&self, text: String) {
        self.world.borrow_mut().event(text);
    }
}

/// Creates the topic unless it exists; `false` if the run ended first.
async fn create_topic(nodes: &[NodeId], rng: &mut SimRng, stop_ms: u64) -> bool {
    /// Kafka's TOPIC_ALREADY_EXISTS.
    const TOPIC_ALREADY_EXISTS: i16 = 36;
    while sim_ms() < stop_ms {
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        let created = tokio::time::timeout(
            ANSWER_TIMEOUT,
            client::create(node, TOPIC, PARTITIONS, REPLICATION_FACTOR),
        )
        .await;
        if let Ok(Some(0 | TOPIC_ALREADY_EXISTS)) = created {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The `read_committed` reader: polls each partition's leader from where it left off.
async fn read(nodes: Vec<NodeId>, world: Rc<RefCell<World>>, seed: u64, stop_ms: u64) {
    let mut rng = SimRng::new(seed);
    let mut next = [0_i64; PARTITIONS as usize];
    let mut leaders: BTreeMap<i32, i32> = BTreeMap::new();
    while sim_ms() < stop_ms {
        tokio::time::sleep(READ_EVERY).await;
        for partition in 0..i32::from(PARTITIONS) {
            let node = match leaders.get(&partition) {
                Some(&node) => node,
                None => nodes[rng.below(nodes.len() as u64) as usize] as i32,
            };
            let request = ConsumeRequest {
                topic: TOPIC.to_owned(),
                partition,
                offset: next[partition as usize],
                read_committed: true,
            };
            let sent = call_remote(node, wire::CONSUME, &request, wire::CONSUME_ANSWER);
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, sent)
                .await
                .ok()
                .flatten()
                .and_then(|answer| serde_json::from_slice::<ConsumeAnswer>(&answer).ok());
            let Some(answer) = answer else {
                leaders.remove(&partition);
                continue;
            };
            if answer.error_code != 0 {
                if answer.leader_hint >= 0 {
                    leaders.insert(partition, answer.leader_hint);
                } else {
                    leaders.remove(&partition);
                }
                continue;
            }
            leaders.insert(partition, node);
            let now_ms = sim_ms();
            let mut world = world.borrow_mut();
            for (offset, value) in &answer.records {
                if let Err(violation) = world.txns.read(partition, *offset, value, now_ms) {
                    world.violation(violation);
                }
            }
            // Everything below `read_to` was read, or skipped as aborted or as markers.
            let next = &mut next[partition as usize];
            *next = (*next).max(answer.read_to);
        }
    }
}

/// What the transactions came to, for the run's summary.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TxnSummary {
    pub(crate) committed_records: usize,
    pub(crate) aborted_records: usize,
}

/// After healing: each partition's leader log against the ledger. See the module docs.
pub(crate) fn check(world: &World) -> Result<TxnSummary, String> {
    let ledger = &world.txns;
    let mut summary = TxnSummary::default();
    // Value to `(partition, offset)`, committed and aborted.
    let mut committed: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
    let mut aborted: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
    let leaders: BTreeMap<i32, &ReplicaDump> = world
        .dumps
        .values()
        .flatten()
        .filter(|dump| dump.topic == TOPIC && dump.leading)
        .map(|dump| (dump.partition, dump))
        .collect();
    for (&partition, dump) in &leaders {
        if dump.last_stable_offset != dump.high_watermark {
            return Err(format!(
                "after healing {TOPIC}-{partition} has an open transaction: its last stable \
                 offset is {}, its high watermark {}",
                dump.last_stable_offset, dump.high_watermark
            ));
        }
        let values: BTreeMap<i64, &str> = dump
            .records
            .iter()
            .map(|(offset, value)| (*offset, value.as_str()))
            .collect();
        // Per producer id, the records of its open transaction, with their epochs.
        let mut open: BTreeMap<i64, Vec<(i64, i16, &str)>> = BTreeMap::new();
        for logged in &dump.producers {
            match logged.marker {
                Some(commit) => {
                    let ended = open.remove(&logged.producer_id).unwrap_or_default();
                    let into = if commit { &mut committed } else { &mut aborted };
                    for (offset, epoch, value) in ended {
                        // A marker carries its transaction's epoch; an abort may carry the
                        // next one (the epoch bump that fenced the producer aborts its
                        // transaction), and so may any end of transaction version 2.
                        // Anything else ends some other transaction's records.
                        let marker_epoch = logged.producer_epoch;
                        let bumped = !commit
                            || ledger
                                .owners
                                .get(value)
                                .and_then(|txn| ledger.txns.get(txn))
                                .is_some_and(|facts| facts.ended_bumping);
                        if marker_epoch != epoch && (!bumped || marker_epoch != epoch + 1) {
                            return Err(format!(
                                "the {} marker of producer {} at {TOPIC}-{partition} offset \
                                 {} (epoch {marker_epoch}) ends {value:?} at offset {offset} \
                                 of epoch {epoch}",
                                if commit { "commit" } else { "abort" },
                                logged.producer_id,
                                logged.offset
                            ));
                        }
                        if let Some((other_partition, other_offset)) =
                            into.insert(value, (partition, offset))
                        {
                            return Err(format!(
                                "{value:?} is in {TOPIC} twice: at {other_partition}/\
                                 {other_offset} and {partition}/{offset}"
                            ));
                        }
                    }
                }
                None if logged.transactional => {
                    let value = values.get(&logged.offset).copied().unwrap_or_default();
                    open.entry(logged.producer_id).or_default().push((
                        logged.offset,
                        logged.producer_epoch,
                        value,
                    ));
                }
                None => {
                    return Err(format!(
                        "{TOPIC}-{partition} holds a record outside any transaction at offset {}",
                        logged.offset
                    ))
                }
            }
        }
        let expected: Vec<(i64, &str)> = committed
            .iter()
            .filter(|(_, (at_partition, _))| *at_partition == partition)
            .map(|(value, (_, offset))| (*offset, *value))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let viewed: Vec<(i64, &str)> = dump
            .read_committed
            .iter()
            .map(|(offset, value)| (*offset, value.as_str()))
            .collect();
        if viewed != expected {
            let first = viewed
                .iter()
                .zip(&expected)
                .find(|(seen, wanted)| seen != wanted);
            return Err(format!(
                "the read_committed view of {TOPIC}-{partition} ({} records) is not its \
                 committed records ({}): first difference {first:?}",
                viewed.len(),
                expected.len()
            ));
        }
    }
    for (value, at) in &committed {
        let Some(txn) = ledger.owners.get(*value) else {
            return Err(format!(
                "{value:?} is committed in {TOPIC}, and no producer sent it"
            ));
        };
        let facts = &ledger.txns[txn];
        if facts.commit_asked_ms.is_none() {
            return Err(format!(
                "{value:?} of transaction {txn:?} is committed at {at:?}, and nobody asked to \
                 commit it"
            ));
        }
        if facts.outcome == Some(false) {
            return Err(format!(
                "aborted read: {value:?} of transaction {txn:?} is committed at {at:?}, and its \
                 abort was acknowledged"
            ));
        }
    }
    let committed_txns: BTreeSet<TxnKey> = committed
        .keys()
        .filter_map(|value| ledger.owners.get(*value).copied())
        .collect();
    for (txn, facts) in &ledger.txns {
        // A transaction is committed whole: once its commit was acknowledged, or once any
        // of its records is committed, every record acknowledged to it is.
        if facts.outcome == Some(true) || committed_txns.contains(txn) {
            if let Some(lost) = facts
                .acknowledged
                .iter()
                .find(|value| !committed.contains_key(value.as_str()))
            {
                return Err(format!(
                    "lost write: {lost:?} of transaction {txn:?}, whose commit was \
                     acknowledged or which has committed records, is not committed ({})",
                    if aborted.contains_key(lost.as_str()) {
                        "it was aborted"
                    } else {
                        "it is not in the log"
                    }
                ));
            }
        }
    }
    for (value, at) in &aborted {
        let Some(txn) = ledger.owners.get(*value) else {
            return Err(format!("{value:?} is in {TOPIC}, and no producer sent it"));
        };
        let split = committed
            .keys()
            .find(|other| ledger.owners.get(**other) == Some(txn));
        if let Some(other) = split {
            return Err(format!(
                "transaction {txn:?} is split: {value:?} aborted at {at:?}, {other:?} committed"
            ));
        }
    }
    for (value, &(partition, offset)) in &ledger.reads {
        if committed.get(value.as_str()) != Some(&(partition, offset)) {
            return Err(format!(
                "{value:?} was read with read_committed at {TOPIC}-{partition} offset {offset}, \
                 and the log after healing has {}",
                match committed.get(value.as_str()) {
                    Some(at) => format!("it committed at {at:?}"),
                    None => "it not committed".to_owned(),
                }
            ));
        }
    }
    summary.committed_records = committed.len();
    summary.aborted_records = aborted.len();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::replicas::LoggedProducer;

    const PRODUCER_ID: i64 = 10_000;

    fn record(offset: i64, marker: Option<bool>) -> LoggedProducer {
        LoggedProducer {
            offset,
            producer_id: PRODUCER_ID,
            producer_epoch: 0,
            transactional: true,
            marker,
        }
    }

    /// A world whose transaction (0, 0) sent `t0-0-0` and `t0-0-1`, both acknowledged, and
    /// whose partition 0 leader holds them at offsets 0 and 1 and then a marker at 2 that
    /// commits (`Some(true)`), aborts, or is missing; its `read_committed` view as given.
    fn world(marker: Option<bool>, read_committed: &[(i64, &str)]) -> World {
        let mut world = World::new(false);
        for value in ["t0-0-0", "t0-0-1"] {
            world.txns.sent((0, 0), value);
            world.txns.acknowledged((0, 0), value);
        }
        let mut records = vec![(0, "t0-0-0".to_owned()), (1, "t0-0-1".to_owned())];
        let mut producers = vec![record(0, None), record(1, None)];
        if let Some(commit) = marker {
            records.push((2, String::new()));
            producers.push(record(2, Some(commit)));
        }
        let end = records.len() as i64;
        world.dumps.insert(
            1,
            vec![ReplicaDump {
                topic: TOPIC.to_owned(),
                partition: 0,
                leading: true,
                leader_epoch: 0,
                high_watermark: end,
                log_start_offset: 0,
                log_end_offset: end,
                records,
                batches: Vec::new(),
                producers,
                read_committed: read_committed
                    .iter()
                    .map(|(offset, value)| (*offset, (*value).to_owned()))
                    .collect(),
                last_stable_offset: if marker.is_some() { end } else { 0 },
            }],
        );
        world
    }

    const BOTH: [(i64, &str); 2] = [(0, "t0-0-0"), (1, "t0-0-1")];

    #[test]
    fn a_committed_transaction_that_was_asked_and_told_so_passes() {
        let mut world = world(Some(true), &BOTH);
        world.txns.commit_asked((0, 0), 10);
        world.txns.ended((0, 0), true).unwrap();
        world.txns.read(0, 1, "t0-0-1", 20).unwrap();
        let summary = check(&world).unwrap();
        assert_eq!(summary.committed_records, 2);
    }

    #[test]
    fn an_aborted_transaction_that_was_told_so_passes() {
        let mut world = world(Some(false), &[]);
        world.txns.ended((0, 0), false).unwrap();
        assert_eq!(check(&world).unwrap().aborted_records, 2);
    }

    #[test]
    fn a_commit_nobody_asked_for_is_caught() {
        let world = world(Some(true), &BOTH);
        let error = check(&world).unwrap_err();
        assert!(error.contains("nobody asked to commit"), "{error}");
    }

    #[test]
    fn a_committed_transaction_whose_abort_was_acknowledged_is_an_aborted_read() {
        let mut world = world(Some(true), &BOTH);
        world.txns.commit_asked((0, 0), 10);
        world.txns.ended((0, 0), false).unwrap();
        let error = check(&world).unwrap_err();
        assert!(error.contains("aborted read"), "{error}");
    }

    #[test]
    fn an_aborted_transaction_whose_commit_was_acknowledged_is_a_lost_write() {
        let mut world = world(Some(false), &[]);
        world.txns.commit_asked((0, 0), 10);
        world.txns.ended((0, 0), true).unwrap();
        let error = check(&world).unwrap_err();
        assert!(error.contains("lost write"), "{error}");
    }

    #[test]
    fn a_committed_transaction_missing_an_acknowledged_record_is_a_lost_write() {
        // Its EndTxn went unanswered: the outcome is unknown, but the log committed it.
        let mut world = world(Some(true), &BOTH);
        world.txns.commit_asked((0, 0), 10);
        world.txns.sent((0, 0), "t0-0-2");
        world.txns.acknowledged((0, 0), "t0-0-2");
        let error = check(&world).unwrap_err();
        assert!(error.contains("lost write: \"t0-0-2\""), "{error}");
    }

    #[test]
    fn a_marker_of_another_epoch_is_caught() {
        let mut world = world(Some(true), &BOTH);
        world.txns.commit_asked((0, 0), 10);
        world.dumps.get_mut(&1).unwrap()[0].producers[2].producer_epoch = 1;
        let error = check(&world).unwrap_err();
        assert!(error.contains("(epoch 1) ends"), "{error}");
    }

    #[test]
    fn a_commit_marker_of_the_next_epoch_ends_a_version_2_transaction_only() {
        let mut world = world(Some(true), &BOTH);
        world.txns.commit_asked((0, 0), 10);
        world.dumps.get_mut(&1).unwrap()[0].producers[2].producer_epoch = 1;
        world.txns.ended_bumping((0, 0));
        assert!(check(&world).is_ok(), "{:?}", check(&world));
        world.dumps.get_mut(&1).unwrap()[0].producers[2].producer_epoch = 2;
        let error = check(&world).unwrap_err();
        assert!(error.contains("(epoch 2) ends"), "{error}");
    }

    #[test]
    fn a_transaction_left_open_after_healing_is_caught() {
        let world = world(None, &[]);
        let error = check(&world).unwrap_err();
        assert!(error.contains("open transaction"), "{error}");
    }

    #[test]
    fn a_read_committed_view_that_differs_from_the_markers_is_caught() {
        // The view shows an aborted transaction's records.
        let mut world = world(Some(false), &BOTH);
        world.txns.ended((0, 0), false).unwrap();
        let error = check(&world).unwrap_err();
        assert!(error.contains("read_committed view"), "{error}");
    }

    #[test]
    fn reads_before_the_commit_or_of_an_abort_are_caught_as_they_happen() {
        let mut world = world(Some(true), &BOTH);
        let error = world.txns.read(0, 0, "t0-0-0", 5).unwrap_err();
        assert!(error.contains("precommitted read"), "{error}");
        world.txns.commit_asked((0, 0), 10);
        world.txns.read(0, 1, "t0-0-1", 10).unwrap();
        let error = world.txns.read(0, 2, "t0-0-1", 11).unwrap_err();
        assert!(error.contains("and then at"), "{error}");
        world.txns.ended((0, 0), false).unwrap();
        let error = world.txns.ended((0, 0), true).unwrap_err();
        assert!(
            error.contains("told it aborted and then that it committed"),
            "{error}"
        );
    }
}
