//! Idempotent producers in the partition log: retries answered with their first offsets and
//! never appended twice, sequence and epoch checks, and producer state that survives reopening,
//! crashes (snapshot plus replay), follower appends, truncation and retention.

use std::collections::BTreeMap;

use bytes::BytesMut;
use proptest::prelude::*;
use spate_engine::storage::backend::{CrashMode, SimulatedStorage, Storage};
use spate_engine::storage::batch::build::{
    marker_batch, producer_batch, transactional_batch, NewRecord,
};
use spate_engine::storage::producers::ProducerError;
use spate_engine::storage::{LogConfig, PartitionLog, StorageError, Verification};

use super::util::{block_on, open, partition_dir, read_all, small_config};

/// `count` records of producer `producer_id`, values naming their sequence numbers.
fn sequenced(producer_id: i64, epoch: i16, first_sequence: i32, count: i32) -> BytesMut {
    let records: Vec<NewRecord> = (first_sequence..first_sequence + count)
        .map(|sequence| NewRecord::value(format!("p{producer_id}-s{sequence}"), 1_000))
        .collect();
    producer_batch(&records, producer_id, epoch, first_sequence)
}

fn snapshot_offsets(storage: &SimulatedStorage) -> Vec<i64> {
    let names = block_on(storage.list(&partition_dir())).unwrap();
    let mut offsets: Vec<i64> = names
        .iter()
        .filter_map(|name| name.strip_suffix(".snapshot")?.parse().ok())
        .collect();
    offsets.sort_unstable();
    offsets
}

/// A follower's log on a disk of its own, holding a copy of all of `leader`'s batches.
async fn follower_of(
    leader: &mut PartitionLog<SimulatedStorage>,
    config: &LogConfig,
    now_ms: i64,
) -> PartitionLog<SimulatedStorage> {
    let mut follower = open(&SimulatedStorage::new(), config).await;
    let end = leader.log_end_offset();
    let mut offset = 0;
    while offset < end {
        let bytes = leader.read(offset, 1 << 20, None).await.unwrap().to_bytes();
        let info = follower
            .append_replicated(BytesMut::from(&bytes[..]), now_ms)
            .await
            .unwrap();
        offset = info.last_offset + 1;
    }
    follower
}

/// The values of every record in the log, in order.
async fn values(log: &mut PartitionLog<SimulatedStorage>) -> Vec<String> {
    read_all(log, log.log_start_offset(), 1 << 20)
        .await
        .into_iter()
        .map(|(_, _, value)| String::from_utf8(value.unwrap().to_vec()).unwrap())
        .collect()
}

#[test]
fn a_retried_batch_gets_its_first_offsets_and_is_not_appended_again() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &small_config()).await;
        let first = log.append(sequenced(7, 0, 0, 3), 0, 1_000).await.unwrap();
        let second = log.append(sequenced(7, 0, 3, 2), 0, 1_000).await.unwrap();
        assert_eq!((first.base_offset, second.base_offset), (0, 3));
        for (batch, original) in [
            (sequenced(7, 0, 0, 3), first),
            (sequenced(7, 0, 3, 2), second),
        ] {
            let retried = log.append(batch, 0, 1_000).await.unwrap();
            assert!(retried.duplicate);
            assert_eq!(
                (retried.base_offset, retried.last_offset),
                (original.base_offset, original.last_offset)
            );
        }
        assert_eq!(log.log_end_offset(), 5, "retries append nothing");
        // Another producer, and one without idempotence, are independent.
        log.append(sequenced(8, 0, 0, 1), 0, 1_000).await.unwrap();
        log.append(super::util::numbered_batch(0, 1, 1_000), 0, 1_000)
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 7);
    });
}

#[test]
fn gaps_and_fenced_epochs_are_refused_and_write_nothing() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &small_config()).await;
        log.append(sequenced(1, 2, 0, 2), 0, 1_000).await.unwrap();
        let gap = log.append(sequenced(1, 2, 5, 1), 0, 1_000).await;
        assert!(matches!(
            gap,
            Err(StorageError::Producer(ProducerError::OutOfOrderSequence {
                expected: 2,
                found: 5,
                ..
            }))
        ));
        let fenced = log.append(sequenced(1, 1, 2, 1), 0, 1_000).await;
        assert!(matches!(
            fenced,
            Err(StorageError::Producer(
                ProducerError::InvalidProducerEpoch {
                    current: 2,
                    found: 1,
                    ..
                }
            ))
        ));
        // Two batches of a producer in one append are refused whole (Kafka takes one batch
        // per partition from a producer), even when both are in order, and so is a new batch
        // followed by a retry, which would otherwise be answered as the retry alone.
        let mut both = sequenced(1, 2, 2, 1);
        both.extend_from_slice(&sequenced(1, 2, 3, 1));
        assert!(matches!(
            log.append(both, 0, 1_000).await,
            Err(StorageError::Producer(ProducerError::SeveralBatches {
                batches: 2,
                ..
            }))
        ));
        let mut new_then_retry = sequenced(1, 2, 2, 1);
        new_then_retry.extend_from_slice(&sequenced(1, 2, 1, 1));
        assert!(log.append(new_then_retry, 0, 1_000).await.is_err());
        assert_eq!(log.log_end_offset(), 2);
        assert!(!log.is_poisoned(), "refused input does not poison the log");
        // A new epoch starts again at 0.
        log.append(sequenced(1, 3, 0, 1), 0, 1_000).await.unwrap();
        assert_eq!(values(&mut log).await, ["p1-s0", "p1-s1", "p1-s0"]);
    });
}

#[test]
fn producer_state_survives_reopening_and_crashes() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = small_config();
        let mut log = open(&storage, &config).await;
        let mut sequence = 0;
        // Enough to roll several segments: each roll writes a snapshot.
        while log.segment_count() < 4 {
            log.append(sequenced(3, 0, sequence, 4), 0, 1_000)
                .await
                .unwrap();
            sequence += 4;
        }
        let last = sequence - 4;
        log.close(2_000).await.unwrap();
        let snapshots = snapshot_offsets(&storage);
        assert!(
            !snapshots.is_empty() && snapshots.len() <= 3,
            "{snapshots:?}"
        );

        // A clean reopen loads the snapshot at the log end.
        let mut log = open(&storage, &config).await;
        let retried = log
            .append(sequenced(3, 0, last, 4), 0, 3_000)
            .await
            .unwrap();
        assert!(retried.duplicate);
        // Unsynced appends after the last snapshot are lost in a crash, and so is their state:
        // their retry is appended again, exactly once.
        let lost = log
            .append(sequenced(3, 0, sequence, 4), 0, 3_000)
            .await
            .unwrap();
        assert!(!lost.duplicate);
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let mut log = open(&storage, &config).await;
        assert_eq!(log.log_end_offset(), lost.base_offset);
        let again = log
            .append(sequenced(3, 0, sequence, 4), 0, 4_000)
            .await
            .unwrap();
        assert!(!again.duplicate);
        assert_eq!(again.base_offset, lost.base_offset);
        assert!(
            log.append(sequenced(3, 0, sequence, 4), 0, 4_000)
                .await
                .unwrap()
                .duplicate
        );
        log.flush(4_000).await.unwrap();

        // Synced appends after the last snapshot are replayed from the log after a crash.
        let synced = log
            .append(sequenced(3, 0, sequence + 4, 2), 0, 5_000)
            .await
            .unwrap();
        log.flush(5_000).await.unwrap();
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let mut log = open(&storage, &config).await;
        let retried = log
            .append(sequenced(3, 0, sequence + 4, 2), 0, 6_000)
            .await
            .unwrap();
        assert!(retried.duplicate);
        assert_eq!(retried.base_offset, synced.base_offset);
        let expected: Vec<String> = (0..sequence + 6).map(|s| format!("p3-s{s}")).collect();
        assert_eq!(values(&mut log).await, expected);
    });
}

/// A log with ten batches of producer 4 (sequences 0..40), closed, so snapshotted.
async fn closed_log_of_producer_4(storage: &SimulatedStorage, config: &LogConfig) {
    let mut log = open(storage, config).await;
    for sequence in (0..40).step_by(4) {
        log.append(sequenced(4, 0, sequence, 4), 0, 1_000)
            .await
            .unwrap();
    }
    log.close(2_000).await.unwrap();
}

#[test]
fn a_damaged_snapshot_is_dropped_and_the_state_rebuilt_from_the_log() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = small_config();
        closed_log_of_producer_4(&storage, &config).await;
        for offset in snapshot_offsets(&storage) {
            let path = partition_dir().join(format!("{offset:020}.snapshot"));
            let file = storage
                .open(&path, spate_engine::storage::backend::OpenMode::Existing)
                .await
                .unwrap();
            use spate_engine::storage::backend::StorageFile;
            file.write_at(10, b"garbage").await.unwrap();
            file.sync().await.unwrap();
        }
        let mut log = open(&storage, &config).await;
        assert!(
            log.append(sequenced(4, 0, 36, 4), 0, 3_000)
                .await
                .unwrap()
                .duplicate
        );
        assert!(log.append(sequenced(4, 0, 40, 1), 0, 3_000).await.is_ok());
    });
}

/// A follower truncates below every snapshot, and the power goes at each step of the
/// truncation in turn (its reopen included, which replaces the snapshots past the cut): every
/// time, the reopened log knows the producer's batches it holds.
#[test]
fn a_power_cut_at_any_step_of_a_truncation_below_every_snapshot_keeps_the_producers() {
    block_on(async {
        let config = LogConfig {
            segment_bytes: 1024,
            ..small_config()
        };
        let mut completed = false;
        for budget in 0..400 {
            let storage = SimulatedStorage::new();
            let mut log = open(&storage, &config).await;
            for round in 0..12 {
                log.append(sequenced(6, 0, round * 3, 3), 0, 1_000)
                    .await
                    .unwrap();
                if round % 4 == 3 {
                    log.checkpoint(1_000).await.unwrap();
                }
            }
            log.checkpoint(1_500).await.unwrap();
            let snapshots = snapshot_offsets(&storage);
            assert!(!snapshots.is_empty() && snapshots.iter().all(|&offset| offset > 6));
            storage.cut_power_after(Some(budget));
            let result = log.truncate_to(6, 2_000).await;
            drop(log);
            storage.crash(CrashMode::DropUnsynced);
            storage.cut_power_after(None);
            let mut log = open(&storage, &config).await;
            let end = log.log_end_offset();
            assert!(
                (6..=36).contains(&end) && end % 3 == 0,
                "power cut after {budget}: {end}"
            );
            // The last batch in the log (3 records, sequence = offset) is recognised.
            let last = i32::try_from(end - 3).unwrap();
            let retried = log.append(sequenced(6, 0, last, 3), 0, 3_000).await;
            let retried = retried.unwrap_or_else(|error| {
                panic!("power cut after {budget} steps, log end {end}: {error}")
            });
            assert!(
                retried.duplicate,
                "power cut after {budget} steps, log end {end}"
            );
            assert_eq!(retried.base_offset, end - 3);
            if result.is_ok() {
                assert_eq!(end, 6);
                completed = true;
                break;
            }
        }
        assert!(completed, "the truncation completes with enough steps");
    });
}

/// No usable snapshot and a damaged batch in the log: the open still succeeds (the damage is
/// reported to whoever reads it), and the producers are forgotten rather than kept with
/// stale sequences, so the producer's next batch is accepted.
#[test]
fn a_damaged_batch_during_the_replay_forgets_the_producers() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = small_config();
        closed_log_of_producer_4(&storage, &config).await;
        for offset in snapshot_offsets(&storage) {
            let path = partition_dir().join(format!("{offset:020}.snapshot"));
            storage.corrupt_byte(&path, 8, 0x01);
        }
        storage.corrupt_byte(
            &super::util::segment_log_path(&partition_dir(), 0),
            100,
            0x80,
        );
        let mut log = open(&storage, &config).await;
        assert!(log.producer_states().is_empty());
        assert!(log.append(sequenced(4, 0, 40, 1), 0, 3_000).await.is_ok());
    });
}

/// No usable snapshot, and a read of the replay that fails its CRC check once (a byte flipped
/// on the way, the disk intact): the batch is read again, so the producers and the aborted
/// transactions are kept. Forgetting them would serve an aborted transaction's records to
/// `read_committed` readers as committed (found by the cluster simulation, seed 5134).
#[test]
fn a_bad_read_during_the_replay_is_read_again() {
    block_on(async {
        let storage = SimulatedStorage::new();
        // Small segments: the first is closed and below the recovery point, so that only the
        // replay reads it.
        let config = LogConfig {
            segment_bytes: 512,
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        // (A leader epoch cache file, so that none is rebuilt from the log at the open.)
        log.open_leader_epoch(0).await.unwrap();
        for sequence in 0..10 {
            log.append(transactional(1, 0, sequence), 0, 1_000)
                .await
                .unwrap();
        }
        log.append_marker(1, 0, 0, false, 0, 1_000).await.unwrap();
        log.append(sequenced(4, 0, 0, 4), 0, 1_000).await.unwrap();
        log.close(2_000).await.unwrap();
        for offset in snapshot_offsets(&storage) {
            let path = partition_dir().join(format!("{offset:020}.snapshot"));
            storage.corrupt_byte(&path, 8, 0x01);
        }
        // In the transactional batch's records: covered by its CRC.
        storage.flip_next_read(
            &super::util::segment_log_path(&partition_dir(), 0),
            70,
            0x80,
        );
        let mut log = open(&storage, &config).await;
        let aborted: Vec<_> = log
            .producer_states()
            .aborted_transactions()
            .copied()
            .collect();
        assert_eq!(aborted.len(), 1, "{aborted:?}");
        assert_eq!((aborted[0].producer_id, aborted[0].first_offset), (1, 0));
        assert!(
            log.append(sequenced(4, 0, 0, 4), 0, 3_000)
                .await
                .unwrap()
                .duplicate
        );
    });
}

#[test]
fn followers_derive_the_same_state_and_truncation_forgets_what_it_cut() {
    block_on(async {
        let leader_storage = SimulatedStorage::new();
        let config = LogConfig {
            segment_bytes: 1024,
            ..small_config()
        };
        let mut leader = open(&leader_storage, &config).await;
        for sequence in (0..30).step_by(3) {
            leader
                .append(sequenced(5, 0, sequence, 3), 0, 1_000)
                .await
                .unwrap();
        }
        let mut follower = follower_of(&mut leader, &config, 1_000).await;
        assert_eq!(follower.producer_states(), leader.producer_states());

        // The follower becomes leader: a retry of the last batch is recognised there.
        let retried = follower
            .append(sequenced(5, 0, 27, 3), 1, 2_000)
            .await
            .unwrap();
        assert!(retried.duplicate);
        assert_eq!(retried.base_offset, 27);

        // Cutting the last two batches forgets them: their retries are new again.
        follower.truncate_to(24, 3_000).await.unwrap();
        assert!(matches!(
            follower.append(sequenced(5, 0, 27, 3), 1, 3_000).await,
            Err(StorageError::Producer(ProducerError::OutOfOrderSequence {
                expected: 24,
                ..
            }))
        ));
        let appended = follower
            .append(sequenced(5, 0, 24, 3), 1, 3_000)
            .await
            .unwrap();
        assert!(!appended.duplicate);
        assert_eq!(appended.base_offset, 24);
    });
}

#[test]
fn retention_and_expiry_forget_producers() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            producer_id_expiration_ms: 10_000,
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        log.append(sequenced(1, 0, 0, 1), 0, 1_000).await.unwrap();
        for sequence in (0..60).step_by(4) {
            log.append(sequenced(2, 0, sequence, 4), 0, 1_000)
                .await
                .unwrap();
        }
        let new_start = log.log_end_offset() - 1;
        log.delete_records(new_start).await.unwrap();
        assert!(
            log.producer_states().get(1).is_none(),
            "its batches are gone"
        );
        assert!(log.producer_states().get(2).is_some());
        // The batches carry timestamp 1000: expired once 10 s older.
        log.apply_retention(10_999).await.unwrap();
        assert!(log.producer_states().get(2).is_some());
        log.apply_retention(11_000).await.unwrap();
        assert!(log.producer_states().is_empty());
        // A forgotten producer may start at any sequence.
        assert!(log
            .append(sequenced(2, 0, 1_000, 1), 0, 11_000)
            .await
            .is_ok());
    });
}

#[test]
fn producers_idle_past_the_expiration_are_forgotten_when_the_log_opens() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            producer_id_expiration_ms: 10_000,
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        log.append(sequenced(1, 0, 0, 1), 0, 1_000).await.unwrap();
        log.close(2_000).await.unwrap();
        let reopen =
            |now_ms| PartitionLog::open(storage.clone(), partition_dir(), config.clone(), now_ms);
        let (log, _) = reopen(10_999).await.unwrap();
        assert!(log.producer_states().get(1).is_some());
        log.close(10_999).await.unwrap();
        let (log, _) = reopen(11_000).await.unwrap();
        assert!(log.producer_states().is_empty(), "its batch is 10 s old");
    });
}

/// What a producer does next in the model test.
#[derive(Debug, Clone)]
enum Step {
    /// Send the next batch of this many records.
    Send(i32),
    /// Retry the batch sent this many batches ago (0 = the last one), as after a lost answer;
    /// at most 4 back, since Kafka's producers keep at most 5 batches in flight.
    Retry(usize),
    /// Sync everything.
    Flush,
    /// Crash, losing unsynced writes, and reopen.
    Crash,
    /// Close cleanly and reopen.
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1..5i32).prop_map(Step::Send),
        4 => (0..5usize).prop_map(Step::Retry),
        1 => Just(Step::Flush),
        1 => Just(Step::Crash),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// An idempotent producer that retries any of its last five batches, across crashes and
    /// reopens: every sequence number the log holds is there once, in order, and a retry of a
    /// batch still in the log is answered with its offsets.
    #[test]
    fn retries_never_duplicate(steps in proptest::collection::vec(step(), 1..60)) {
        block_on(async {
            let storage = SimulatedStorage::new();
            let config = LogConfig { segment_bytes: 1024, ..small_config() };
            let mut log = open(&storage, &config).await;
            // (first sequence, count, (first offset, last offset)) of every batch in the log.
            let mut sent: Vec<(i32, i32, (i64, i64))> = Vec::new();
            let mut next_sequence = 0;
            let mut now_ms = 1_000;
            for step in steps {
                now_ms += 10;
                match step {
                    Step::Send(count) => {
                        let info = log
                            .append(sequenced(9, 0, next_sequence, count), 0, now_ms)
                            .await
                            .unwrap();
                        prop_assert!(!info.duplicate);
                        sent.push((next_sequence, count, (info.base_offset, info.last_offset)));
                        next_sequence += count;
                    }
                    Step::Retry(back) if back < sent.len() => {
                        let index = sent.len() - 1 - back;
                        let (first, count, offsets) = sent[index];
                        let result = log.append(sequenced(9, 0, first, count), 0, now_ms).await;
                        match result {
                            Ok(info) if info.duplicate => {
                                prop_assert_eq!((info.base_offset, info.last_offset), offsets);
                            }
                            Ok(_) => prop_assert!(false, "{:?} appended twice", sent[index]),
                            Err(StorageError::Producer(ProducerError::OutOfOrderSequence { .. })) => {
                                prop_assert!(index + 5 <= sent.len(), "retry of a kept batch refused");
                            }
                            Err(error) => prop_assert!(false, "{error}"),
                        }
                    }
                    Step::Retry(_) => {}
                    Step::Flush => log.flush(now_ms).await.unwrap(),
                    Step::Crash => {
                        drop(log);
                        storage.crash(CrashMode::DropUnsynced);
                        log = open(&storage, &config).await;
                        let end = log.log_end_offset();
                        // The producer goes on after what survived, as a client whose
                        // unanswered batches are retried in order.
                        sent.retain(|(_, _, (_, last))| *last < end);
                        next_sequence = sent.last().map_or(0, |(first, count, _)| first + count);
                        if sent.is_empty() {
                            // Nothing of the producer survived: it is unknown, and must not
                            // restart below what an earlier incarnation of the log held.
                            prop_assert_eq!(end, 0);
                        }
                    }
                    Step::Reopen => {
                        log.close(now_ms).await.unwrap();
                        log = open(&storage, &config).await;
                    }
                }
            }
            let expected: Vec<String> = sent
                .iter()
                .flat_map(|(first, count, _)| (*first..first + count).map(|s| format!("p9-s{s}")))
                .collect();
            prop_assert_eq!(values(&mut log).await, expected);
            Ok(())
        })?;
    }
}

/// One transactional record of `producer_id` at `sequence`.
fn transactional(producer_id: i64, epoch: i16, sequence: i32) -> BytesMut {
    let record = NewRecord::value(format!("t{producer_id}-s{sequence}"), 1_000);
    transactional_batch(&[record], producer_id, epoch, sequence)
}

#[test]
fn transactions_hold_the_stable_offset_and_their_aborts_survive_reopening_and_replication() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            segment_bytes: 1024,
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        // Producer 1 writes a transaction and aborts it; producer 2 one it commits; producer
        // 3's stays open. Plain records between them.
        log.append(transactional(1, 0, 0), 0, 1_000).await.unwrap();
        log.append(transactional(2, 0, 0), 0, 1_000).await.unwrap();
        log.append(super::util::numbered_batch(0, 1, 1_000), 0, 1_000)
            .await
            .unwrap();
        log.append(transactional(1, 0, 1), 0, 1_000).await.unwrap();
        assert_eq!(log.first_unstable_offset(), Some(0));
        let (abort, aborted) = log.append_marker(1, 0, 0, false, 0, 2_000).await.unwrap();
        assert_eq!(abort.base_offset, 4);
        assert_eq!(
            aborted.map(|txn| (txn.first_offset, txn.last_offset, txn.aborted)),
            Some((0, 4, true))
        );
        assert_eq!(log.first_unstable_offset(), Some(1), "2's is still open");
        let (_, committed) = log.append_marker(2, 0, 0, true, 0, 2_000).await.unwrap();
        assert!(committed.is_some_and(|txn| !txn.aborted));
        assert_eq!(log.first_unstable_offset(), None);
        log.append(transactional(3, 0, 0), 0, 3_000).await.unwrap();
        assert_eq!(log.first_unstable_offset(), Some(6));
        let aborted_in = |log: &PartitionLog<SimulatedStorage>| {
            log.producer_states()
                .aborted_overlapping(0, log.log_end_offset())
                .iter()
                .map(|txn| (txn.producer_id, txn.first_offset, txn.last_offset))
                .collect::<Vec<_>>()
        };
        assert_eq!(aborted_in(&log), [(1, 0, 4)]);

        // Refused: a client's control batch, a plain batch of an open transaction, a marker
        // of an older coordinator epoch.
        let forged = marker_batch(3, 0, 0, true, 3_000);
        assert!(matches!(
            log.append(forged, 0, 3_000).await,
            Err(StorageError::Producer(
                ProducerError::ControlBatchFromClient { .. }
            ))
        ));
        assert!(matches!(
            log.append(sequenced(3, 0, 1, 1), 0, 3_000).await,
            Err(StorageError::Producer(
                ProducerError::InvalidTxnState { .. }
            ))
        ));
        log.append_marker(2, 0, 5, true, 0, 3_000).await.unwrap();
        assert!(matches!(
            log.append_marker(2, 0, 4, true, 0, 3_000).await,
            Err(StorageError::Producer(
                ProducerError::CoordinatorFenced { .. }
            ))
        ));
        let end = log.log_end_offset();

        // A follower derives the same, from the batches alone.
        let follower = follower_of(&mut log, &config, 3_000).await;
        assert_eq!(follower.producer_states(), log.producer_states());

        // Reopened after a clean close (snapshot) and after a crash (replay of the synced
        // log from an older snapshot), the open transaction and the abort are still known.
        log.close(4_000).await.unwrap();
        let mut log = open(&storage, &config).await;
        assert_eq!(log.first_unstable_offset(), Some(6));
        assert_eq!(aborted_in(&log), [(1, 0, 4)]);
        log.append_marker(3, 0, 5, false, 0, 5_000).await.unwrap();
        log.flush(5_000).await.unwrap();
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let log = open(&storage, &config).await;
        assert_eq!(log.first_unstable_offset(), None);
        assert_eq!(aborted_in(&log), [(1, 0, 4), (3, 6, end)]);
    });
}

#[test]
fn a_marker_voids_the_verification_of_a_batch_that_would_open_a_transaction() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = small_config();
        let mut log = open(&storage, &config).await;
        let unverified = |result: Result<_, StorageError>| {
            matches!(
                result,
                Err(StorageError::Producer(ProducerError::Unverified {
                    producer_id: 1
                }))
            )
        };
        // A batch that opens a transaction needs a guard; once it is open, the next batches
        // need none (and the coordinator is not asked again).
        let guard = log.start_verification(1, 0, 1_000);
        assert!(guard.is_some());
        assert_eq!(
            log.start_verification(1, 0, 1_000),
            guard,
            "concurrent requests share it"
        );
        assert!(unverified(
            log.append_verified(transactional(1, 0, 0), 0, 1_000, Verification::Guard(None))
                .await
        ));
        log.append_verified(transactional(1, 0, 0), 0, 1_000, Verification::Guard(guard))
            .await
            .unwrap();
        assert_eq!(log.start_verification(1, 0, 1_000), None);
        log.append_verified(transactional(1, 0, 1), 0, 1_000, Verification::Guard(None))
            .await
            .unwrap();
        // A batch of that transaction still waiting for the coordinator's answer when the
        // coordinator aborts it (a timeout): the marker comes first, and the batch would open
        // a transaction no marker ends.
        let in_flight = log.start_verification(1, 0, 2_000);
        assert_eq!(in_flight, None);
        log.append_marker(1, 0, 0, false, 0, 2_000).await.unwrap();
        assert!(unverified(
            log.append_verified(
                transactional(1, 0, 2),
                0,
                2_000,
                Verification::Guard(in_flight)
            )
            .await
        ));
        // The same with a guard: the next transaction's first batch, verified, and a marker
        // (the coordinator aborting that transaction) overtaking it.
        let guard = log.start_verification(1, 0, 3_000);
        assert!(guard.is_some());
        log.append_marker(1, 0, 0, false, 0, 3_000).await.unwrap();
        assert!(unverified(
            log.append_verified(transactional(1, 0, 2), 0, 3_000, Verification::Guard(guard))
                .await
        ));
        assert_eq!(log.first_unstable_offset(), None, "nothing left open");
        // A fresh guard works; one taken before a truncation does not after it.
        let before_truncation = log.start_verification(1, 0, 4_000);
        let end = log.log_end_offset();
        log.append(super::util::numbered_batch(0, 1, 4_000), 0, 4_000)
            .await
            .unwrap();
        log.truncate_to(end, 4_000).await.unwrap();
        assert!(unverified(
            log.append_verified(
                transactional(1, 0, 2),
                0,
                4_000,
                Verification::Guard(before_truncation)
            )
            .await
        ));
        let guard = log.start_verification(1, 0, 4_000);
        log.append_verified(transactional(1, 0, 2), 0, 4_000, Verification::Guard(guard))
            .await
            .unwrap();
        assert!(log.first_unstable_offset().is_some());
        // Appends that check nothing (tools, followers) are unchanged.
        log.append_marker(1, 0, 0, true, 0, 5_000).await.unwrap();
        log.append(transactional(1, 0, 3), 0, 5_000).await.unwrap();
    });
}

/// A step of the transactional producers' model test.
#[derive(Debug, Clone)]
enum TxnStep {
    /// Producer `0` writes a transactional record.
    Write(i64),
    /// The coordinator ends producer `0`'s transaction: commit when `1`.
    End(i64, bool),
    /// A record without a producer.
    Plain,
    Flush,
    Crash,
    Reopen,
}

fn txn_step() -> impl Strategy<Value = TxnStep> {
    prop_oneof![
        6 => (1..4i64).prop_map(TxnStep::Write),
        3 => (1..4i64, any::<bool>()).prop_map(|(producer, commit)| TxnStep::End(producer, commit)),
        2 => Just(TxnStep::Plain),
        1 => Just(TxnStep::Flush),
        1 => Just(TxnStep::Crash),
        1 => Just(TxnStep::Reopen),
    ]
}

/// What the log holds, in order: (offset, producer, `None` for a record, `Some(commit)` for a
/// marker).
type TxnEvents = Vec<(i64, i64, Option<bool>)>;

/// Aborted transactions as (producer, first offset, marker offset).
type AbortedModel = Vec<(i64, i64, i64)>;

/// The model's view of `events`: each producer's open transaction's first offset, and the
/// aborted transactions.
fn txn_model(events: &TxnEvents) -> (BTreeMap<i64, i64>, AbortedModel) {
    let mut open = BTreeMap::new();
    let mut aborted = Vec::new();
    for &(offset, producer, marker) in events {
        match marker {
            None => {
                open.entry(producer).or_insert(offset);
            }
            Some(commit) => {
                if let Some(first) = open.remove(&producer) {
                    if !commit {
                        aborted.push((producer, first, offset));
                    }
                }
            }
        }
    }
    (open, aborted)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Transactional producers and their markers, across crashes and reopens: the first
    /// unstable offset and the aborted transactions always match a model of what the log
    /// holds, and a follower copying the log derives the same state.
    #[test]
    fn transaction_state_follows_the_log(steps in proptest::collection::vec(txn_step(), 1..60)) {
        block_on(async {
            let storage = SimulatedStorage::new();
            let config = LogConfig { segment_bytes: 1024, ..small_config() };
            let mut log = open(&storage, &config).await;
            let mut events: TxnEvents = Vec::new();
            let mut now_ms = 1_000;
            for step in steps {
                now_ms += 10;
                match step {
                    TxnStep::Write(producer) => {
                        let sequence = events
                            .iter()
                            .filter(|(_, p, marker)| *p == producer && marker.is_none())
                            .count() as i32;
                        let info = log
                            .append(transactional(producer, 0, sequence), 0, now_ms)
                            .await
                            .unwrap();
                        events.push((info.base_offset, producer, None));
                    }
                    TxnStep::End(producer, commit) => {
                        let (info, _) = log
                            .append_marker(producer, 0, 0, commit, 0, now_ms)
                            .await
                            .unwrap();
                        events.push((info.base_offset, producer, Some(commit)));
                    }
                    TxnStep::Plain => {
                        let info = log
                            .append(super::util::numbered_batch(0, 1, now_ms), 0, now_ms)
                            .await
                            .unwrap();
                        events.push((info.base_offset, -1, None));
                    }
                    TxnStep::Flush => log.flush(now_ms).await.unwrap(),
                    TxnStep::Crash => {
                        drop(log);
                        storage.crash(CrashMode::DropUnsynced);
                        log = open(&storage, &config).await;
                        let end = log.log_end_offset();
                        events.retain(|(offset, _, _)| *offset < end);
                    }
                    TxnStep::Reopen => {
                        log.close(now_ms).await.unwrap();
                        log = open(&storage, &config).await;
                    }
                }
                let transactional_events: TxnEvents =
                    events.iter().copied().filter(|(_, p, _)| *p >= 0).collect();
                let (open_txns, aborted) = txn_model(&transactional_events);
                prop_assert_eq!(log.first_unstable_offset(), open_txns.values().min().copied());
                let found: AbortedModel = log
                    .producer_states()
                    .aborted_overlapping(0, log.log_end_offset())
                    .iter()
                    .map(|txn| (txn.producer_id, txn.first_offset, txn.last_offset))
                    .collect();
                prop_assert_eq!(found, aborted);
            }
            let end = log.log_end_offset();
            let follower = follower_of(&mut log, &config, now_ms).await;
            prop_assert_eq!(
                follower.first_unstable_offset(),
                log.first_unstable_offset()
            );
            prop_assert_eq!(
                follower.producer_states().aborted_overlapping(0, end),
                log.producer_states().aborted_overlapping(0, end)
            );
            Ok(())
        })?;
    }
}
