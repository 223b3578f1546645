//! The log's side of replication: the leader epoch cache and its file, a follower's appends of
//! its leader's batches, and truncation to an offset, across reopens and crashes.

use bytes::BytesMut;
use spate_engine::replication::epoch_cache::{EpochEnd, LEADER_EPOCH_FILE_NAME};
use spate_engine::replication::EpochEntry;
use spate_engine::storage::backend::{CrashMode, SimulatedStorage, Storage};
use spate_engine::storage::{LogConfig, PartitionLog, SharedLog, StorageError};

use super::util::{block_on, numbered_batch, open, partition_dir, read_all, small_config};

/// Small segments: the 66 records of [`leader_log`] span several.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        ..small_config()
    }
}

fn entries(log: &PartitionLog<SimulatedStorage>) -> Vec<(i32, i64)> {
    log.leader_epochs()
        .entries()
        .iter()
        .map(|entry| (entry.epoch, entry.start_offset))
        .collect()
}

/// Leader epochs 0 (offsets 0..30), 2 (30..60, across segments) and 5 (60..66).
async fn leader_log(storage: &SimulatedStorage) -> PartitionLog<SimulatedStorage> {
    let mut log = open(storage, &config()).await;
    for (epoch, batches) in [(0, 10_u64), (2, 10), (5, 2)] {
        log.open_leader_epoch(epoch).await.unwrap();
        for _ in 0..batches {
            let first = log.log_end_offset() as u64;
            log.append(numbered_batch(first, 3, 1_000), epoch, 1_000)
                .await
                .unwrap();
        }
    }
    log
}

/// Every batch from `offset` on, as a leader's Fetch would send them.
async fn batches_from(log: &mut PartitionLog<SimulatedStorage>, offset: i64) -> BytesMut {
    let mut out = BytesMut::new();
    let mut next = offset;
    while next < log.log_end_offset() {
        let fetched = log.read(next, 1 << 20, None).await.unwrap();
        let bytes = fetched.to_bytes();
        out.extend_from_slice(&bytes);
        next = fetched_end(&bytes);
    }
    out
}

/// The offset after the last batch in `bytes`.
fn fetched_end(bytes: &[u8]) -> i64 {
    let mut position = 0;
    let mut end = 0;
    while position < bytes.len() {
        let base = i64::from_be_bytes(bytes[position..position + 8].try_into().unwrap());
        let length = i32::from_be_bytes(bytes[position + 8..position + 12].try_into().unwrap());
        let last_delta =
            i32::from_be_bytes(bytes[position + 23..position + 27].try_into().unwrap());
        end = base + i64::from(last_delta) + 1;
        position += 12 + length as usize;
    }
    end
}

#[test]
fn leader_appends_record_each_epochs_start_and_the_file_survives_reopening() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let log = leader_log(&storage).await;
        assert_eq!(entries(&log), [(0, 0), (2, 30), (5, 60)]);
        assert!(log.segment_count() > 1);
        let epochs = log.leader_epochs();
        assert_eq!(
            epochs.end_offset_for(2, log.log_end_offset()),
            EpochEnd {
                epoch: 2,
                end_offset: 60
            }
        );
        assert_eq!(
            epochs.end_offset_for(4, log.log_end_offset()).epoch,
            2,
            "an epoch this log skipped answers with the one before it"
        );
        log.close(2_000).await.unwrap();
        let log = open(&storage, &config()).await;
        assert_eq!(entries(&log), [(0, 0), (2, 30), (5, 60)]);
    });
}

#[test]
fn a_missing_or_damaged_epoch_file_is_rebuilt_from_the_batches() {
    block_on(async {
        let storage = SimulatedStorage::new();
        leader_log(&storage).await.close(2_000).await.unwrap();
        let file = partition_dir().join(LEADER_EPOCH_FILE_NAME);
        storage.remove(&file).await.unwrap();
        let log = open(&storage, &config()).await;
        assert_eq!(entries(&log), [(0, 0), (2, 30), (5, 60)]);
        log.close(3_000).await.unwrap();
        storage.corrupt_byte(&file, 2, 0xff);
        let log = open(&storage, &config()).await;
        assert_eq!(entries(&log), [(0, 0), (2, 30), (5, 60)]);
    });
}

#[test]
fn a_crash_that_loses_a_new_epochs_batches_drops_the_epoch() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &config()).await;
        log.open_leader_epoch(1).await.unwrap();
        log.append(numbered_batch(0, 3, 1_000), 1, 1_000)
            .await
            .unwrap();
        log.flush(1_000).await.unwrap();
        // Epoch 3's batch is written but never synced; the cache file is then written by a
        // checkpoint-free path (a new leader epoch), so it names epoch 3 already.
        log.append(numbered_batch(3, 3, 1_000), 3, 1_000)
            .await
            .unwrap();
        log.open_leader_epoch(4).await.unwrap();
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let log = open(&storage, &config()).await;
        assert_eq!(log.log_end_offset(), 3);
        assert_eq!(
            entries(&log),
            [(1, 0)],
            "no epoch past the recovered log end"
        );
    });
}

#[test]
fn a_follower_appends_its_leaders_batches_unchanged() {
    block_on(async {
        let leader_storage = SimulatedStorage::new();
        let mut leader = leader_log(&leader_storage).await;
        let follower_storage = SimulatedStorage::new();
        let mut follower = open(&follower_storage, &config()).await;

        let all = batches_from(&mut leader, 0).await;
        let first_batch_bytes = {
            let length = i32::from_be_bytes(all[8..12].try_into().unwrap());
            12 + length as usize
        };
        // A gap is refused and changes nothing.
        let later = batches_from(&mut leader, 30).await;
        let refused = follower.append_replicated(later, 1_000).await;
        assert!(
            matches!(
                refused,
                Err(StorageError::NotContiguous {
                    expected: 0,
                    found: 30
                })
            ),
            "{refused:?}"
        );
        assert_eq!(follower.log_end_offset(), 0);

        follower
            .append_replicated(BytesMut::from(&all[..first_batch_bytes]), 1_000)
            .await
            .unwrap();
        follower
            .append_replicated(BytesMut::from(&all[first_batch_bytes..]), 1_000)
            .await
            .unwrap();
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(
            batches_from(&mut follower, 0).await,
            all,
            "byte for byte the leader's batches"
        );
        assert_eq!(entries(&follower), [(0, 0), (2, 30), (5, 60)]);
        assert_eq!(
            read_all(&mut follower, 0, 1 << 20).await,
            read_all(&mut leader, 0, 1 << 20).await
        );
    });
}

#[test]
fn truncation_cuts_whole_batches_in_any_segment_and_drops_later_epochs() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = leader_log(&storage).await;
        let segments_before = log.segment_count();

        // Inside the active segment's last epoch, mid-batch: the whole batch goes.
        assert_eq!(log.truncate_to(64, 2_000).await.unwrap(), 63);
        assert_eq!(entries(&log), [(0, 0), (2, 30), (5, 60)]);
        // Back into epoch 2, several segments earlier: epoch 5 is forgotten.
        assert_eq!(log.truncate_to(45, 2_000).await.unwrap(), 45);
        assert_eq!(log.log_end_offset(), 45);
        assert_eq!(entries(&log), [(0, 0), (2, 30)]);
        assert!(log.segment_count() < segments_before);
        let kept = read_all(&mut log, 0, 1 << 20).await;
        assert_eq!(kept.len(), 45);
        // Past the end: nothing to do. Below the start: refused.
        assert_eq!(log.truncate_to(100, 2_000).await.unwrap(), 45);

        // The log goes on from the cut, and a new epoch starts there.
        log.open_leader_epoch(7).await.unwrap();
        log.append(numbered_batch(45, 3, 1_000), 7, 2_000)
            .await
            .unwrap();
        assert_eq!(entries(&log), [(0, 0), (2, 30), (7, 45)]);

        // All of it durable and consistent after a crash.
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let mut log = open(&storage, &config()).await;
        assert!(log.log_end_offset() >= 45);
        assert_eq!(read_all(&mut log, 0, 1 << 20).await[..45], kept[..]);
        let expected: &[(i32, i64)] = if log.log_end_offset() == 45 {
            &[(0, 0), (2, 30)]
        } else {
            &[(0, 0), (2, 30), (7, 45)]
        };
        assert_eq!(entries(&log), expected);
    });
}

#[test]
fn truncation_below_the_log_start_is_refused() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = leader_log(&storage).await;
        log.delete_records(33).await.unwrap();
        assert_eq!(
            log.leader_epochs().entries()[0],
            EpochEntry {
                epoch: 2,
                start_offset: 33
            },
            "the cache starts where the log does"
        );
        assert!(matches!(
            log.truncate_to(10, 2_000).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.log_end_offset(), 66, "unchanged");
        assert_eq!(log.truncate_to(33, 2_000).await.unwrap(), 33);
        assert_eq!(log.log_start_offset(), 33);
        assert_eq!(log.log_end_offset(), 33);
    });
}

/// Power lost after each single write, sync, truncation, creation or removal of a truncation
/// in turn: every time, the log reopens, keeps everything below the cut, and its epoch cache
/// names exactly the epochs of the batches it holds (an epoch cut from the cache while its
/// batches survive would make the follower answer for a log it does not have).
#[test]
fn a_power_cut_at_any_step_of_a_truncation_leaves_a_consistent_log() {
    block_on(async {
        let mut completed = false;
        for budget in 0..200 {
            let storage = SimulatedStorage::new();
            let mut log = leader_log(&storage).await;
            // Everything durable and checkpointed, so that only the truncation's own steps
            // decide what a crash keeps.
            log.checkpoint(1_500).await.unwrap();
            let kept = read_all(&mut log, 0, 1 << 20).await[..45].to_vec();
            storage.cut_power_after(Some(budget));
            let result = log.truncate_to(45, 2_000).await;
            drop(log);
            storage.crash(CrashMode::DropUnsynced);
            storage.cut_power_after(None);
            let (mut log, _) =
                PartitionLog::open(storage.clone(), partition_dir(), config(), 3_000)
                    .await
                    .unwrap_or_else(|error| panic!("power cut after {budget} steps: {error}"));
            let end = log.log_end_offset();
            // Later segments go newest first, so the log may end at any segment boundary
            // between the cut and its old end; a follower truncates again from there.
            assert!(
                (45..=66).contains(&end),
                "power cut after {budget} steps: the log ends at {end}"
            );
            assert_eq!(read_all(&mut log, 0, 1 << 20).await[..45], kept[..]);
            let expected: &[(i32, i64)] = if end > 60 {
                &[(0, 0), (2, 30), (5, 60)]
            } else {
                &[(0, 0), (2, 30)]
            };
            assert_eq!(entries(&log), expected, "power cut after {budget} steps");
            if result.is_ok() {
                assert_eq!(end, 45);
                completed = true;
                break;
            }
        }
        assert!(completed, "the truncation completes with enough steps");
    });
}

/// A leader that opened an epoch and wrote nothing in it, then became a follower: truncating
/// at its log end must forget that epoch, or its fetches would keep naming it.
#[test]
fn truncating_at_the_log_end_forgets_an_epoch_opened_there() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = leader_log(&storage).await;
        log.open_leader_epoch(9).await.unwrap();
        assert_eq!(log.leader_epochs().latest_epoch(), Some(9));
        assert_eq!(log.truncate_to(66, 2_000).await.unwrap(), 66);
        assert_eq!(entries(&log), [(0, 0), (2, 30), (5, 60)]);
        log.close(3_000).await.unwrap();
        let log = open(&storage, &config()).await;
        assert_eq!(entries(&log), [(0, 0), (2, 30), (5, 60)], "and on disk");
    });
}

/// The epoch rebuild reads headers that were never CRC-checked on open: one whose offsets
/// make no sense is reported as corruption, not trusted (and not a panic).
#[test]
fn an_epoch_rebuild_refuses_a_damaged_batch_header() {
    block_on(async {
        let storage = SimulatedStorage::new();
        leader_log(&storage).await.close(2_000).await.unwrap();
        storage
            .remove(&partition_dir().join(LEADER_EPOCH_FILE_NAME))
            .await
            .unwrap();
        // The first batch's base offset becomes negative.
        storage.corrupt_byte(&super::util::segment_log_path(&partition_dir(), 0), 0, 0x80);
        let opened = PartitionLog::open(storage.clone(), partition_dir(), config(), 3_000).await;
        assert!(
            matches!(opened, Err(StorageError::Corrupt { .. })),
            "{:?}",
            opened.map(|_| ())
        );
    });
}

/// A durability wait whose fsync straddles a truncation: the fsync proves nothing about the
/// truncated log, and the waiter learns its records are gone.
#[test]
fn a_durability_wait_across_a_truncation_reports_the_records_gone() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = leader_log(&storage).await;
        log.flush(1_500).await.unwrap();
        log.append(numbered_batch(66, 3, 1_000), 5, 1_600)
            .await
            .unwrap();
        let shared = SharedLog::new(log);
        let waiter = shared.wait_durable(69, 2_000);
        let truncation = shared.with_log(async |log| log.truncate_to(45, 2_000).await);
        let (waited, truncated) = futures_lite::future::zip(waiter, truncation).await;
        assert_eq!(truncated.unwrap(), 45);
        assert!(
            matches!(
                waited,
                Err(StorageError::Truncated {
                    offset: 69,
                    log_end_offset: 45
                })
            ),
            "{waited:?}"
        );
        let log = shared.into_inner();
        assert_eq!(log.durable_offset(), 45);
        assert_eq!(log.log_end_offset(), 45);
    });
}

#[test]
fn a_reset_empties_the_log_and_starts_it_at_the_leaders_start() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = leader_log(&storage).await;
        assert!(log.segment_count() > 1);
        log.reset_to(500, 2_000).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
        assert_eq!(log.segment_count(), 1);
        assert!(entries(&log).is_empty(), "no epoch covers an empty log");
        // The leader's batches from 500 on follow.
        let leader_storage = SimulatedStorage::new();
        let mut leader = open(&leader_storage, &config()).await;
        leader.delete_records(0).await.unwrap();
        leader.reset_to(500, 2_000).await.unwrap();
        leader.open_leader_epoch(7).await.unwrap();
        leader
            .append(numbered_batch(500, 3, 1_000), 7, 1_000)
            .await
            .unwrap();
        log.append_replicated(batches_from(&mut leader, 500).await, 2_000)
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 503);
        assert_eq!(entries(&log), [(7, 500)]);
        log.flush(2_000).await.unwrap();
        drop(log);
        let (log, _) = PartitionLog::open(storage.clone(), partition_dir(), config(), 3_000)
            .await
            .unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 503));
        assert_eq!(entries(&log), [(7, 500)]);
    });
}

#[test]
fn a_power_cut_at_any_step_of_a_reset_leaves_a_log_to_reset_again() {
    block_on(async {
        let mut completed = false;
        for budget in 0..200 {
            let storage = SimulatedStorage::new();
            let mut log = leader_log(&storage).await;
            log.checkpoint(1_500).await.unwrap();
            storage.cut_power_after(Some(budget));
            let result = log.reset_to(500, 2_000).await;
            drop(log);
            storage.crash(CrashMode::DropUnsynced);
            storage.cut_power_after(None);
            let (log, _) = PartitionLog::open(storage.clone(), partition_dir(), config(), 3_000)
                .await
                .unwrap_or_else(|error| panic!("power cut after {budget} steps: {error}"));
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            // Either the old log, whole or with its oldest segments gone and its start at its
            // end, or the reset log: a follower still below its leader's start resets again.
            assert!(
                (start, end) == (0, 66)
                    || (start == end && end <= 66)
                    || (start, end) == (500, 500),
                "power cut after {budget} steps: offsets {start}..{end}"
            );
            if result.is_ok() {
                assert_eq!((start, end), (500, 500));
                completed = true;
                break;
            }
        }
        assert!(completed, "the reset completes with enough steps");
    });
}
