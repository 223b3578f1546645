//! The transaction coordinator's rules, driven by hand.

use kafka_protocol::error::ResponseError;

use super::coordinator::*;
use super::records::TxnRecord;
use super::state::{TxnMetadata, TxnState};

const ID: &str = "app-1";
const TIMEOUT_MS: i32 = 60_000;
const COORDINATOR_EPOCH: i32 = 7;

/// A coordinator and its driver: appends complete at once unless held.
struct Driver {
    coordinator: TxnCoordinator,
    replies: Vec<(CallId, TxnReply)>,
    appended: Vec<TxnRecord>,
    held: Vec<AppendId>,
    hold_appends: bool,
    markers: Vec<TxnOutput>,
    next_call: CallId,
    next_producer_id: i64,
    /// The time of the last call or event.
    now_ms: i64,
}

impl Driver {
    fn new() -> Driver {
        let mut coordinator =
            TxnCoordinator::new(TxnCoordinatorConfig::default(), COORDINATOR_EPOCH);
        coordinator.finish_load();
        Driver {
            coordinator,
            replies: Vec::new(),
            appended: Vec::new(),
            held: Vec::new(),
            hold_appends: false,
            markers: Vec::new(),
            next_call: 0,
            next_producer_id: 1_000,
            now_ms: 0,
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.coordinator.poll_output() {
            match output {
                TxnOutput::Reply(call, reply) => self.replies.push((call, reply)),
                TxnOutput::Append { id, record } => {
                    self.appended.push(record);
                    if self.hold_appends {
                        self.held.push(id);
                    } else {
                        self.coordinator.append_completed(self.now_ms, id, Ok(()));
                    }
                }
                markers @ TxnOutput::WriteMarkers { .. } => self.markers.push(markers),
            }
        }
    }

    /// Makes a call and returns its reply, if it came.
    fn call(&mut self, call: TxnCall, now_ms: i64) -> Option<TxnReply> {
        let id = self.next_call;
        self.next_call += 1;
        self.now_ms = now_ms;
        self.coordinator.handle_call(id, call, now_ms);
        self.drain();
        self.replies
            .iter()
            .find(|(call, _)| *call == id)
            .map(|(_, reply)| *reply)
    }

    fn init(&mut self, now_ms: i64) -> TxnReply {
        self.init_expecting(None, now_ms)
    }

    /// InitProducerId, with the producer's current id and epoch when given (KIP-360).
    fn init_expecting(&mut self, expected: Option<(i64, i16)>, now_ms: i64) -> TxnReply {
        let fresh_producer_id = self.next_producer_id;
        self.next_producer_id += 1;
        self.call(
            TxnCall::InitProducerId {
                transactional_id: ID.into(),
                timeout_ms: TIMEOUT_MS,
                fresh_producer_id,
                expected,
            },
            now_ms,
        )
        .expect("answered")
    }

    fn add(&mut self, producer: (i64, i16), partitions: &[(&str, i32)], now_ms: i64) -> TxnReply {
        self.call(
            TxnCall::AddPartitions {
                transactional_id: ID.into(),
                producer_id: producer.0,
                producer_epoch: producer.1,
                partitions: partitions
                    .iter()
                    .map(|(topic, partition)| ((*topic).to_owned(), *partition))
                    .collect(),
            },
            now_ms,
        )
        .expect("answered")
    }

    fn end(&mut self, producer: (i64, i16), commit: bool, now_ms: i64) -> TxnReply {
        self.call(
            TxnCall::EndTxn {
                transactional_id: ID.into(),
                producer_id: producer.0,
                producer_epoch: producer.1,
                commit,
                bump_epoch: false,
                fresh_producer_id: None,
            },
            now_ms,
        )
        .expect("answered")
    }

    /// EndTxn 5 and up (transaction version 2).
    fn end_bumping(&mut self, producer: (i64, i16), commit: bool, now_ms: i64) -> TxnReply {
        let fresh_producer_id = self.next_producer_id;
        self.next_producer_id += 1;
        self.call(
            TxnCall::EndTxn {
                transactional_id: ID.into(),
                producer_id: producer.0,
                producer_epoch: producer.1,
                commit,
                bump_epoch: true,
                fresh_producer_id: Some(fresh_producer_id),
            },
            now_ms,
        )
        .expect("answered")
    }

    /// The markers asked for since the last call, written.
    fn write_markers(&mut self, now_ms: i64) -> Vec<TxnOutput> {
        self.now_ms = now_ms;
        let markers = std::mem::take(&mut self.markers);
        for marker in &markers {
            let TxnOutput::WriteMarkers {
                transactional_id,
                producer_id,
                producer_epoch,
                ..
            } = marker
            else {
                unreachable!()
            };
            self.coordinator.markers_written(
                transactional_id,
                *producer_id,
                *producer_epoch,
                now_ms,
            );
        }
        self.drain();
        markers
    }

    fn state(&self) -> TxnMetadata {
        self.coordinator.transaction(ID).cloned().expect("known")
    }
}

fn producer(reply: TxnReply) -> (i64, i16) {
    match reply {
        TxnReply::ProducerId {
            error: None,
            producer_id,
            producer_epoch,
        } => (producer_id, producer_epoch),
        other => panic!("no producer id: {other:?}"),
    }
}

fn done(error: Option<ResponseError>) -> TxnReply {
    TxnReply::Done(error)
}

#[test]
fn a_transaction_commits_through_prepare_markers_and_complete() {
    let mut driver = Driver::new();
    let first = producer(driver.init(0));
    assert_eq!(first, (1_000, 0));
    // A second InitProducerId (a restarted producer) bumps the epoch.
    let me = producer(driver.init(1));
    assert_eq!(me, (1_000, 1));
    assert_eq!(driver.state().state, TxnState::Empty);

    assert_eq!(driver.add(me, &[("a", 0), ("b", 1)], 10), done(None));
    let state = driver.state();
    assert_eq!(
        (state.state, state.start_ms, state.partitions.len()),
        (TxnState::Ongoing, 10, 2)
    );
    let appended = driver.appended.len();
    assert_eq!(driver.add(me, &[("a", 0)], 11), done(None));
    assert_eq!(driver.appended.len(), appended, "nothing new: no write");

    assert_eq!(driver.end(me, true, 20), done(None));
    assert_eq!(driver.state().state, TxnState::PrepareCommit);
    // A retry while the markers are written, and the opposite outcome.
    assert_eq!(
        driver.end(me, true, 21),
        done(Some(ResponseError::ConcurrentTransactions))
    );
    assert_eq!(
        driver.end(me, false, 21),
        done(Some(ResponseError::InvalidTxnState))
    );
    let markers = driver.write_markers(30);
    assert_eq!(
        markers,
        [TxnOutput::WriteMarkers {
            transactional_id: ID.into(),
            producer_id: 1_000,
            producer_epoch: 1,
            commit: true,
            coordinator_epoch: COORDINATOR_EPOCH,
            partitions: vec![("a".into(), 0), ("b".into(), 1)],
        }]
    );
    let state = driver.state();
    assert_eq!(state.state, TxnState::CompleteCommit);
    assert!(state.partitions.is_empty());
    assert_eq!(
        driver.end(me, true, 31),
        done(None),
        "a retry of the commit"
    );
    assert_eq!(
        driver.end(me, false, 31),
        done(Some(ResponseError::InvalidTxnState))
    );
    // The next transaction starts afresh.
    assert_eq!(driver.add(me, &[("c", 0)], 40), done(None));
    let state = driver.state();
    assert_eq!(state.start_ms, 40);
    assert_eq!(state.partitions.len(), 1);
    // Every change was stored, and the records rebuild the same state.
    let mut reloaded = TxnCoordinator::new(TxnCoordinatorConfig::default(), COORDINATOR_EPOCH);
    for record in driver.appended.clone() {
        reloaded.load(record);
    }
    reloaded.finish_load();
    assert_eq!(reloaded.transaction(ID), Some(&driver.state()));
}

#[test]
fn a_new_producer_fences_and_aborts_the_ongoing_transaction_of_the_old_one() {
    let mut driver = Driver::new();
    let old = producer(driver.init(0));
    driver.add(old, &[("a", 0)], 1);
    // The new incarnation: the old one's transaction is aborted at a bumped epoch, and the
    // new one is told to retry.
    assert_eq!(
        driver.init(2),
        TxnReply::ProducerId {
            error: Some(ResponseError::ConcurrentTransactions),
            producer_id: -1,
            producer_epoch: -1
        }
    );
    let state = driver.state();
    assert_eq!(
        (state.state, state.producer_epoch),
        (TxnState::PrepareAbort, 1)
    );
    // The old producer is fenced from now on.
    assert_eq!(
        driver.end(old, true, 3),
        done(Some(ResponseError::ProducerFenced))
    );
    assert_eq!(
        driver.add(old, &[("b", 0)], 3),
        done(Some(ResponseError::ProducerFenced))
    );
    // Still aborting: retry later.
    assert!(matches!(
        driver.init(3),
        TxnReply::ProducerId {
            error: Some(ResponseError::ConcurrentTransactions),
            ..
        }
    ));
    let markers = driver.write_markers(4);
    assert!(matches!(
        markers.as_slice(),
        [TxnOutput::WriteMarkers {
            commit: false,
            producer_epoch: 1,
            ..
        }]
    ));
    assert_eq!(driver.state().state, TxnState::CompleteAbort);
    assert_eq!(producer(driver.init(5)), (1_000, 2));
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let mut driver = Driver::new();
    let me = producer(driver.init(0));
    driver.add(me, &[("a", 0)], 100);
    driver.coordinator.tick(100 + i64::from(TIMEOUT_MS));
    driver.drain();
    assert_eq!(driver.state().state, TxnState::Ongoing, "not past it yet");
    driver.coordinator.tick(101 + i64::from(TIMEOUT_MS));
    driver.drain();
    let state = driver.state();
    assert_eq!(
        (state.state, state.producer_epoch),
        (TxnState::PrepareAbort, 1)
    );
    driver.write_markers(200_000);
    assert_eq!(driver.state().state, TxnState::CompleteAbort);
    assert_eq!(
        driver.end(me, true, 200_001),
        done(Some(ResponseError::ProducerFenced))
    );
}

#[test]
fn checks_refuse_unknown_ids_wrong_producers_bad_timeouts_and_changes_in_flight() {
    let mut driver = Driver::new();
    assert_eq!(
        driver.add((5, 0), &[("a", 0)], 0),
        done(Some(ResponseError::InvalidProducerIdMapping))
    );
    let reply = driver.call(
        TxnCall::InitProducerId {
            transactional_id: ID.into(),
            timeout_ms: 900_001,
            fresh_producer_id: 1,
            expected: None,
        },
        0,
    );
    assert!(matches!(
        reply,
        Some(TxnReply::ProducerId {
            error: Some(ResponseError::InvalidTransactionTimeout),
            ..
        })
    ));
    let me = producer(driver.init(0));
    assert_eq!(
        driver.add((me.0 + 1, me.1), &[("a", 0)], 1),
        done(Some(ResponseError::InvalidProducerIdMapping))
    );
    assert_eq!(
        driver.end(me, true, 1),
        done(Some(ResponseError::InvalidTxnState)),
        "nothing to end"
    );
    // A change in flight: the next call waits its turn.
    driver.hold_appends = true;
    assert_eq!(
        driver.call(
            TxnCall::AddPartitions {
                transactional_id: ID.into(),
                producer_id: me.0,
                producer_epoch: me.1,
                partitions: vec![("a".into(), 0)],
            },
            2,
        ),
        None,
        "answered once stored"
    );
    assert_eq!(
        driver.end(me, true, 2),
        done(Some(ResponseError::ConcurrentTransactions))
    );
    // The write fails: NOT_COORDINATOR, and nothing changed.
    let held = driver.held.pop().unwrap();
    driver
        .coordinator
        .append_completed(driver.now_ms, held, Err(()));
    driver.drain();
    assert_eq!(
        driver.replies.last().map(|(_, reply)| *reply),
        Some(done(Some(ResponseError::NotCoordinator)))
    );
    assert_eq!(driver.state().state, TxnState::Empty);
}

#[test]
fn preparing_transactions_resume_their_markers_after_a_load_and_epochs_roll_over() {
    let mut loaded = TxnCoordinator::new(TxnCoordinatorConfig::default(), 9);
    let mut preparing = TxnMetadata::new(
        ID.into(),
        3,
        i16::MAX - 1,
        TIMEOUT_MS,
        TxnState::PrepareAbort,
    );
    preparing.partitions = [("a".to_owned(), 2)].into();
    preparing.start_ms = 0;
    preparing.last_update_ms = 0;
    loaded.load(TxnRecord {
        transactional_id: ID.into(),
        metadata: Some(preparing),
    });
    loaded.load(TxnRecord {
        transactional_id: "gone".into(),
        metadata: Some({
            let mut gone = TxnMetadata::new("gone".into(), 4, 0, TIMEOUT_MS, TxnState::Empty);
            gone.last_update_ms = 0;
            gone
        }),
    });
    loaded.load(TxnRecord {
        transactional_id: "gone".into(),
        metadata: None,
    });
    loaded.finish_load();
    assert!(loaded.transaction("gone").is_none(), "a tombstone forgets");
    assert_eq!(
        loaded.poll_output(),
        Some(TxnOutput::WriteMarkers {
            transactional_id: ID.into(),
            producer_id: 3,
            producer_epoch: i16::MAX - 1,
            commit: false,
            coordinator_epoch: 9,
            partitions: vec![("a".into(), 2)],
        })
    );
    let mut driver = Driver::new();
    driver.coordinator = loaded;
    driver.markers.clear();
    driver.coordinator.markers_written(ID, 3, i16::MAX - 1, 1);
    driver.drain();
    assert_eq!(driver.state().state, TxnState::CompleteAbort);
    // The epoch is exhausted: a new producer id.
    assert_eq!(producer(driver.init(2)), (1_000, 0));
}

#[test]
fn idle_transactional_ids_expire() {
    let mut driver = Driver::new();
    producer(driver.init(0));
    let expiration_ms = TxnCoordinatorConfig::default().transactional_id_expiration_ms;
    driver.coordinator.tick(expiration_ms - 1);
    driver.drain();
    assert!(driver.coordinator.transaction(ID).is_some());
    driver.coordinator.tick(expiration_ms);
    driver.drain();
    assert!(driver.coordinator.transaction(ID).is_none());
    assert_eq!(
        driver
            .appended
            .last()
            .map(|record| record.metadata.is_none()),
        Some(true)
    );
}

#[test]
fn a_completion_whose_record_failed_is_proposed_again_at_the_next_tick() {
    let mut driver = Driver::new();
    let producer = producer(driver.init(0));
    assert_eq!(driver.add(producer, &[("t", 0)], 1), done(None));
    assert_eq!(driver.end(producer, true, 2), done(None));
    // The markers are written; the Complete record's append fails.
    driver.hold_appends = true;
    driver.write_markers(3);
    let held = std::mem::take(&mut driver.held);
    assert_eq!(held.len(), 1);
    driver
        .coordinator
        .append_completed(driver.now_ms, held[0], Err(()));
    driver.drain();
    assert_eq!(driver.state().state, TxnState::PrepareCommit);
    // While markers are being written a tick leaves it alone; once written, it completes.
    driver.hold_appends = false;
    driver.coordinator.tick(4);
    driver.drain();
    assert_eq!(driver.state().state, TxnState::CompleteCommit);
    assert!(
        driver.markers.is_empty(),
        "the markers are not written again"
    );
}

impl Driver {
    /// InitProducerId with the producer's current id and epoch (KIP-360).
    fn bump(&mut self, expected: (i64, i16), now_ms: i64) -> TxnReply {
        self.init_expecting(Some(expected), now_ms)
    }
}

fn fenced() -> TxnReply {
    TxnReply::ProducerId {
        error: Some(ResponseError::ProducerFenced),
        producer_id: -1,
        producer_epoch: -1,
    }
}

/// KIP-360: a producer that sends its id and epoch bumps its own epoch; a retry of that bump
/// gets the same answer; a producer with an older epoch or another id is fenced, not given
/// the id (a zombie could otherwise fence the live producer).
#[test]
fn a_producer_bumps_its_own_epoch_and_a_zombie_is_fenced() {
    let mut driver = Driver::new();
    let first = producer(driver.init(0));
    let bumped = producer(driver.bump(first, 1));
    assert_eq!(bumped, (first.0, first.1 + 1));
    assert_eq!(
        producer(driver.bump(first, 2)),
        bumped,
        "a retry of the bump gets its answer"
    );
    assert_eq!(
        driver.bump((first.0, first.1 - 1), 3),
        fenced(),
        "an older epoch"
    );
    assert_eq!(
        driver.bump((first.0 + 7, bumped.1), 4),
        fenced(),
        "another id"
    );
    // The live producer goes on; once it bumped again, the first epoch is a zombie's.
    let again = producer(driver.bump(bumped, 5));
    assert_eq!(again, (first.0, first.1 + 2));
    assert_eq!(driver.bump(first, 6), fenced());
    assert_eq!(driver.add(again, &[("a", 0)], 7), done(None));
    // Without an id and epoch (a new producer) the epoch is bumped as ever: the ongoing
    // transaction is fenced and aborted, the retry gets the id, and the old producer's own
    // bump is then refused.
    assert!(matches!(
        driver.init(8),
        TxnReply::ProducerId {
            error: Some(ResponseError::ConcurrentTransactions),
            ..
        }
    ));
    driver.write_markers(9);
    let newest = producer(driver.init(10));
    assert_eq!(newest.0, first.0);
    assert!(newest.1 > again.1);
    assert_eq!(driver.bump(again, 11), fenced());
    assert_eq!(driver.add(newest, &[("a", 0)], 12), done(None));
}

fn producer_error(error: ResponseError) -> TxnReply {
    TxnReply::ProducerId {
        error: Some(error),
        producer_id: -1,
        producer_epoch: -1,
    }
}

#[test]
fn transaction_version_2_ends_each_transaction_at_the_next_epoch() {
    let mut driver = Driver::new();
    let me = producer(driver.init(0));
    assert_eq!(me, (1_000, 0));
    driver.add(me, &[("a", 0)], 1);
    // The end bumps the epoch; the markers carry the new one, the answer gives it.
    let next = producer(driver.end_bumping(me, true, 2));
    assert_eq!(next, (1_000, 1));
    let state = driver.state();
    assert_eq!(
        (
            state.state,
            state.producer_epoch,
            state.client_transaction_version
        ),
        (TxnState::PrepareCommit, 1, 2)
    );
    // A retry (the answer was lost) while the markers are written: not yet.
    assert_eq!(
        driver.end_bumping(me, true, 3),
        producer_error(ResponseError::ConcurrentTransactions)
    );
    let markers = driver.write_markers(4);
    assert!(matches!(
        markers.as_slice(),
        [TxnOutput::WriteMarkers {
            producer_epoch: 1,
            commit: true,
            ..
        }]
    ));
    assert_eq!(driver.state().state, TxnState::CompleteCommit);
    // Once complete, a retry gets the same answer; the opposite outcome does not.
    assert_eq!(producer(driver.end_bumping(me, true, 5)), next);
    assert_eq!(
        driver.end_bumping(me, false, 5),
        producer_error(ResponseError::InvalidTxnState)
    );
    // The next transaction runs at the new epoch; the old epoch cannot touch it.
    assert_eq!(
        driver.add(me, &[("a", 1)], 6),
        done(Some(ResponseError::ProducerFenced))
    );
    assert_eq!(driver.add(next, &[("a", 1)], 6), done(None));
    // KAFKA-17754: the first EndTxn, delayed in the network, arrives now.
    assert_eq!(
        driver.end_bumping(me, true, 7),
        producer_error(ResponseError::ProducerFenced)
    );
    assert_eq!(
        driver.end(me, true, 7),
        done(Some(ResponseError::ProducerFenced))
    );
    assert_eq!(driver.state().state, TxnState::Ongoing);
    // Its own end: aborted at the epoch after.
    assert_eq!(producer(driver.end_bumping(next, false, 8)), (1_000, 2));
    driver.write_markers(9);
    assert_eq!(driver.state().state, TxnState::CompleteAbort);
    // An abort with nothing open bumps the epoch too; a commit of nothing is refused.
    assert_eq!(
        driver.end_bumping((1_000, 2), true, 10),
        producer_error(ResponseError::InvalidTxnState)
    );
    assert_eq!(
        producer(driver.end_bumping((1_000, 2), false, 10)),
        (1_000, 3)
    );
    let markers = driver.write_markers(11);
    assert!(matches!(
        markers.as_slice(),
        [TxnOutput::WriteMarkers { producer_epoch: 3, commit: false, partitions, .. }]
            if partitions.is_empty()
    ));
    assert_eq!(driver.state().state, TxnState::CompleteAbort);
    // A failover keeps what retries need.
    let mut reloaded = TxnCoordinator::new(TxnCoordinatorConfig::default(), COORDINATOR_EPOCH);
    for record in driver.appended.clone() {
        reloaded.load(record);
    }
    reloaded.finish_load();
    assert_eq!(reloaded.transaction(ID), Some(&driver.state()));
}

#[test]
fn transaction_version_2_moves_an_exhausted_epoch_to_a_fresh_producer_id() {
    let mut driver = Driver::new();
    producer(driver.init(0));
    let mut loaded = driver.state();
    loaded.producer_epoch = i16::MAX - 1;
    let mut driver = Driver {
        coordinator: TxnCoordinator::new(TxnCoordinatorConfig::default(), COORDINATOR_EPOCH),
        ..driver
    };
    driver.coordinator.load(TxnRecord {
        transactional_id: ID.into(),
        metadata: Some(loaded),
    });
    driver.coordinator.finish_load();
    let old = (1_000, i16::MAX - 1);
    driver.add(old, &[("a", 0)], 1);
    let fresh = producer(driver.end_bumping(old, true, 2));
    assert_eq!(fresh.1, 0);
    assert_ne!(fresh.0, old.0);
    let state = driver.state();
    assert_eq!(
        (
            state.producer_id,
            state.producer_epoch,
            state.next_producer_id
        ),
        (old.0, i16::MAX, fresh.0)
    );
    // The fresh id waits for the transaction to complete (an AddPartitions is held until
    // then: `an_add_partitions_while_the_last_transaction_completes_waits_for_it`).
    assert_eq!(
        driver.end_bumping(fresh, false, 3),
        producer_error(ResponseError::ConcurrentTransactions)
    );
    let markers = driver.write_markers(4);
    assert!(matches!(
        markers.as_slice(),
        [TxnOutput::WriteMarkers {
            producer_id: 1_000,
            producer_epoch: i16::MAX,
            ..
        }]
    ));
    let state = driver.state();
    assert_eq!(
        (
            state.producer_id,
            state.producer_epoch,
            state.previous_producer_id
        ),
        (fresh.0, 0, old.0)
    );
    // A retry with the old id gets the fresh one; the old id is fenced otherwise.
    assert_eq!(producer(driver.end_bumping(old, true, 5)), fresh);
    assert_eq!(driver.add(fresh, &[("a", 0)], 6), done(None));
    assert_eq!(
        driver.end_bumping(old, true, 7),
        producer_error(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(producer(driver.end_bumping(fresh, true, 8)), (fresh.0, 1));
}

#[test]
fn after_a_timeout_abort_the_producers_end_txn_is_fenced() {
    let mut driver = Driver::new();
    let me = producer(driver.init(0));
    driver.add(me, &[("a", 0)], 1);
    // The transaction outlives its timeout: aborted at the next epoch, the producer fenced.
    driver.coordinator.tick(i64::from(TIMEOUT_MS) + 10);
    driver.drain();
    driver.write_markers(i64::from(TIMEOUT_MS) + 11);
    let state = driver.state();
    assert_eq!(
        (state.state, state.producer_epoch),
        (TxnState::CompleteAbort, 1)
    );
    // The producer's EndTxn at the epoch before is not a retry of an EndTxn: fenced.
    assert_eq!(
        driver.end_bumping(me, false, i64::from(TIMEOUT_MS) + 12),
        producer_error(ResponseError::ProducerFenced)
    );
}

/// A call's reply, once it came.
fn reply_of(driver: &Driver, call: CallId) -> Option<TxnReply> {
    driver
        .replies
        .iter()
        .find(|(id, _)| *id == call)
        .map(|(_, reply)| *reply)
}

/// Makes an AddPartitions call (of partition b-0) without expecting its reply yet: its call
/// id.
fn add_held(driver: &mut Driver, producer: (i64, i16), now_ms: i64) -> CallId {
    add_held_of(driver, producer, ("b", 0), now_ms)
}

fn add_held_of(
    driver: &mut Driver,
    producer: (i64, i16),
    (topic, partition): (&str, i32),
    now_ms: i64,
) -> CallId {
    let id = driver.next_call;
    let reply = driver.call(
        TxnCall::AddPartitions {
            transactional_id: ID.into(),
            producer_id: producer.0,
            producer_epoch: producer.1,
            partitions: vec![(topic.to_owned(), partition)],
        },
        now_ms,
    );
    assert_eq!(reply, None, "held while the last transaction completes");
    id
}

#[test]
fn an_add_partitions_while_the_last_transaction_completes_waits_for_it() {
    let mut driver = Driver::new();
    let me = producer(driver.init(0));
    assert_eq!(driver.add(me, &[("a", 0)], 1), done(None));
    assert_eq!(driver.end(me, true, 2), done(None));
    // The next transaction's first AddPartitions comes before the markers are written: it
    // waits, instead of CONCURRENT_TRANSACTIONS and the client's backoff.
    let next = add_held(&mut driver, me, 3);
    driver.write_markers(4);
    assert_eq!(reply_of(&driver, next), Some(done(None)));
    let state = driver.state();
    assert_eq!(state.state, TxnState::Ongoing);
    assert_eq!(
        state.partitions.len(),
        1,
        "the new transaction holds only its partition"
    );
    assert_eq!(state.start_ms, 4, "it started when the call went on");

    // Past the wait, the answer is Kafka's.
    assert_eq!(driver.end(me, false, 5), done(None));
    let late = add_held(&mut driver, me, 6);
    driver.coordinator.tick(6 + COMPLETION_WAIT_MS - 1);
    driver.drain();
    assert_eq!(reply_of(&driver, late), None, "still waiting");
    driver.coordinator.tick(6 + COMPLETION_WAIT_MS);
    driver.drain();
    assert_eq!(
        reply_of(&driver, late),
        Some(done(Some(ResponseError::ConcurrentTransactions)))
    );
    // A call of another producer (a zombie's) is not held: it is fenced at once.
    assert_eq!(
        driver.add((me.0, me.1 - 1), &[("a", 0)], 7),
        done(Some(ResponseError::ProducerFenced))
    );
}

#[test]
fn transaction_version_2s_fresh_producer_id_waits_for_the_completion_too() {
    let mut driver = Driver::new();
    let me = producer(driver.init(0));
    assert_eq!(driver.add(me, &[("a", 0)], 1), done(None));
    let bumped = producer(driver.end_bumping(me, true, 2));
    assert_eq!(bumped, (me.0, me.1 + 1));
    let next = add_held(&mut driver, bumped, 3);
    driver.write_markers(4);
    assert_eq!(reply_of(&driver, next), Some(done(None)));
    assert_eq!(driver.state().state, TxnState::Ongoing);
}

#[test]
fn calls_held_together_go_on_one_after_the_other_in_order() {
    let mut driver = Driver::new();
    let me = producer(driver.init(0));
    assert_eq!(driver.add(me, &[("a", 0)], 1), done(None));
    assert_eq!(driver.end(me, true, 2), done(None));
    // AddPartitionsToTxn and AddOffsetsToTxn of the next transaction, sent together.
    let first = add_held_of(&mut driver, me, ("b", 0), 3);
    let second = add_held_of(&mut driver, me, ("__consumer_offsets", 7), 3);
    driver.hold_appends = true;
    driver.write_markers(4);
    // The completion's record is being appended: both wait.
    assert_eq!(driver.held.len(), 1);
    assert_eq!(reply_of(&driver, first), None);
    driver.hold_appends = false;
    let completion = driver.held.remove(0);
    driver.coordinator.append_completed(4, completion, Ok(()));
    driver.drain();
    // The first went on at once, the second once the first's change was appended (not
    // refused because a change was in flight).
    assert_eq!(reply_of(&driver, first), Some(done(None)));
    assert_eq!(reply_of(&driver, second), Some(done(None)));
    let order: Vec<CallId> = driver
        .replies
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| [first, second].contains(id))
        .collect();
    assert_eq!(order, [first, second]);
    assert_eq!(driver.state().partitions.len(), 2);
}
