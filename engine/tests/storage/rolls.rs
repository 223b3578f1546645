//! Segment rolls finished without holding the log (`storage::roll_finish`): what the append
//! path does, what a sync seals, what a crash at any step leaves.

use spate_engine::storage::backend::{CrashMode, SimulatedStorage};
use spate_engine::storage::{Installed, LogConfig, PartitionLog, RollFinish, SharedLog};

use super::util::{block_on, numbered_batch, open, partition_dir, read_all, segment_log_path};

/// Segments of about four 10-record batches; nothing synced unless asked.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        tail_cache_bytes: 0,
        closed_segment_handles_max: 1,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

/// Appends `batches` batches of ten records, numbered from offset `first`.
async fn append_batches(log: &mut PartitionLog<SimulatedStorage>, first: u64, batches: u64) {
    for batch in 0..batches {
        log.append(numbered_batch(first + batch * 10, 10, 1_000), 0, 1_000)
            .await
            .expect("append");
    }
}

fn staged_files(storage: &SimulatedStorage) -> Vec<String> {
    storage
        .paths()
        .iter()
        .map(|path| path.display().to_string())
        .filter(|path| path.ends_with(".roll.tmp"))
        .collect()
}

#[test]
fn a_roll_syncs_nothing_on_the_append_path_and_its_finish_checkpoints_it() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &config()).await;
        append_batches(&mut log, 0, 3).await;
        assert_eq!(log.segment_count(), 1);
        let syncs_before = storage.sync_count();
        append_batches(&mut log, 30, 3).await;
        assert!(log.segment_count() > 1, "the appends rolled");
        assert_eq!(storage.sync_count(), syncs_before, "a roll syncs nothing");
        assert!(log.has_unfinished_rolls());
        let rolled_at = log.segment_base_offsets()[1];
        assert_eq!(
            log.recovery_point(),
            0,
            "the checkpoint waits for the finish"
        );
        // The index file is still the one the open's checkpoint wrote, without entries.
        let index = partition_dir().join(format!("{:020}.index", 0));
        let index_len_before = storage.durable_len(&index).expect("written at open");
        // The closed segment reads from its in-memory index, even with its handle evicted.
        assert_eq!(read_all(&mut log, 0, 1 << 20).await.len(), 60);

        let shared = SharedLog::new(log);
        shared.finish_rolls().await.expect("finish");
        let log = shared.into_inner();
        assert!(!log.has_unfinished_rolls());
        assert!(storage
            .durable_len(&index)
            .is_some_and(|len| len > index_len_before));
        assert_eq!(log.recovery_point(), rolled_at);
        assert!(log.durable_offset() >= rolled_at);
        assert!(staged_files(&storage).is_empty());
        drop(log);

        // The checkpoint says so: a crash that loses everything unsynced keeps the closed
        // segment, trusted without a walk.
        storage.crash(CrashMode::DropUnsynced);
        let (mut log, report) =
            PartitionLog::open(storage.clone(), partition_dir(), config(), 2_000)
                .await
                .expect("reopen");
        assert_eq!(report.recovery_point, rolled_at);
        assert_eq!(report.segments_trusted, 1);
        assert_eq!(log.log_end_offset(), rolled_at);
        assert_eq!(
            read_all(&mut log, 0, 1 << 20).await.len(),
            rolled_at as usize
        );
    });
}

#[test]
fn unsynced_bytes_count_what_no_completed_sync_covered() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &config()).await;
        assert_eq!(log.unsynced_bytes(), 0);
        append_batches(&mut log, 0, 6).await;
        assert!(log.has_unfinished_rolls());
        assert_eq!(log.unsynced_bytes(), log.size_bytes());
        log.flush(1_000).await.expect("flush");
        assert_eq!(log.unsynced_bytes(), 0);
        // A sync covers what was appended when it began, not what came during it.
        append_batches(&mut log, 60, 1).await;
        let ticket = log.begin_sync().expect("begin");
        let before = log.size_bytes();
        append_batches(&mut log, 70, 1).await;
        let during = log.size_bytes() - before;
        let result = ticket.run().await;
        log.complete_sync(ticket, result, 1_000).expect("sync");
        assert_eq!(log.unsynced_bytes(), during);
    });
}

#[test]
fn a_durability_wait_after_a_roll_seals_it() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &config()).await;
        append_batches(&mut log, 0, 8).await;
        assert!(log.has_unfinished_rolls());
        log.flush(1_000).await.expect("flush");
        let end = log.log_end_offset();
        assert_eq!(log.durable_offset(), end);
        assert!(log.recovery_point() < end, "no checkpoint yet");
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let (mut log, report) =
            PartitionLog::open(storage.clone(), partition_dir(), config(), 2_000)
                .await
                .expect("reopen");
        assert!(report.truncations.is_empty(), "{report:?}");
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&mut log, 0, 1 << 20).await.len(), end as usize);
    });
}

/// The roll created the next segment before the closed one was synced: a crash can keep the
/// new file and lose the closed segment's tail. Nothing from there on was durable, so recovery
/// cuts there, removing the later segments, instead of refusing the gap.
#[test]
fn a_crash_before_the_closed_segment_is_synced_cuts_the_segments_after_it() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &config()).await;
        append_batches(&mut log, 0, 2).await;
        log.flush(1_000).await.expect("flush");
        let durable = log.durable_offset();
        append_batches(&mut log, 20, 8).await;
        assert!(log.segment_count() >= 3);
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let (mut log, report) =
            PartitionLog::open(storage.clone(), partition_dir(), config(), 2_000)
                .await
                .expect("a lost tail above the recovery point is cut, not refused");
        assert_eq!(log.log_end_offset(), durable);
        assert!(report.segments_removed >= 2, "{report:?}");
        assert_eq!(read_all(&mut log, 0, 1 << 20).await.len(), durable as usize);
        assert!(!storage
            .paths()
            .contains(&segment_log_path(&partition_dir(), 40)));
    });
}

/// The process dies with rolls unfinished but the machine keeps running, so their closed
/// segments' bytes are still in its cache: the next open's checkpoint counts them durable,
/// so it must sync them first, or a power cut after it would lose them below the recovery
/// point.
#[test]
fn an_open_after_a_process_crash_syncs_what_it_checkpoints() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &config()).await;
        append_batches(&mut log, 0, 8).await;
        assert!(log.segment_count() >= 2);
        drop(log);
        let (log, _) = PartitionLog::open(storage.clone(), partition_dir(), config(), 2_000)
            .await
            .expect("reopen");
        assert_eq!(log.log_end_offset(), 80);
        assert_eq!(log.recovery_point(), 80);
        drop(log);
        storage.crash(CrashMode::DropUnsynced);
        let (mut log, _) = PartitionLog::open(storage.clone(), partition_dir(), config(), 3_000)
            .await
            .expect("reopen after the power cut");
        assert_eq!(log.log_end_offset(), 80);
        assert_eq!(read_all(&mut log, 0, 1 << 20).await.len(), 80);
    });
}

#[test]
fn a_power_cut_at_any_step_of_a_roll_finish_keeps_every_durable_record() {
    block_on(async {
        let mut completed = false;
        for budget in 0..200 {
            let storage = SimulatedStorage::new();
            let mut log = open(&storage, &config()).await;
            append_batches(&mut log, 0, 5).await;
            log.flush(1_000).await.expect("flush");
            append_batches(&mut log, 50, 6).await;
            let shared = SharedLog::new(log);
            storage.cut_power_after(Some(budget));
            let finished = shared.finish_rolls().await;
            let log = shared.into_inner();
            let durable = log.durable_offset();
            let unfinished = log.has_unfinished_rolls();
            drop(log);
            storage.crash(CrashMode::DropUnsynced);
            storage.cut_power_after(None);
            let (mut log, _) =
                PartitionLog::open(storage.clone(), partition_dir(), config(), 2_000)
                    .await
                    .unwrap_or_else(|error| panic!("power cut after {budget} steps: {error}"));
            let end = log.log_end_offset();
            assert!(
                end >= durable,
                "power cut after {budget} steps: the log ends at {end}, {durable} were durable"
            );
            let records = read_all(&mut log, 0, 1 << 20).await;
            assert_eq!(records.len() as i64, end, "power cut after {budget} steps");
            assert!(
                staged_files(&storage).is_empty(),
                "open removes staged files"
            );
            if finished.is_ok() && !unfinished {
                completed = true;
                break;
            }
        }
        assert!(completed, "the finish completes with enough steps");
    });
}

/// A log that rolled, with its first roll's finish taken and staged, not installed yet.
async fn log_with_a_staged_finish(
    storage: &SimulatedStorage,
) -> (
    PartitionLog<SimulatedStorage>,
    RollFinish<SimulatedStorage>,
    std::io::Result<()>,
) {
    let mut log = open(storage, &config()).await;
    append_batches(&mut log, 0, 6).await;
    let finish = log
        .begin_roll_finish()
        .expect("begin")
        .expect("a roll to finish");
    let staged = finish.stage().await;
    (log, finish, staged)
}

#[test]
fn a_finish_staged_before_a_checkpoint_is_dropped() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let (mut log, finish, staged) = log_with_a_staged_finish(&storage).await;
        assert!(!staged_files(&storage).is_empty());
        log.checkpoint(1_000).await.expect("checkpoint");
        let installed = log.install_roll_finish(finish, staged).await;
        assert!(matches!(installed, Ok(Installed::Stale)));
        assert!(staged_files(&storage).is_empty(), "dropped files removed");
        assert!(!log.has_unfinished_rolls(), "the checkpoint finished it");
        assert_eq!(log.recovery_point(), log.log_end_offset());
    });
}

#[test]
fn a_finish_staged_before_a_truncation_is_dropped() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let (mut log, finish, staged) = log_with_a_staged_finish(&storage).await;
        log.truncate_to(15, 1_000).await.expect("truncate");
        let installed = log.install_roll_finish(finish, staged).await;
        assert!(matches!(installed, Ok(Installed::Stale)));
        append_batches(&mut log, 100, 6).await;
        let shared = SharedLog::new(log);
        shared.finish_rolls().await.expect("finish");
        let log = shared.into_inner();
        assert!(!log.has_unfinished_rolls());
        log.close(2_000).await.expect("close");
        let (mut log, report) =
            PartitionLog::open(storage.clone(), partition_dir(), config(), 3_000)
                .await
                .expect("reopen");
        assert_eq!(report.indexes_rebuilt, 0, "{report:?}");
        assert_eq!(read_all(&mut log, 0, 1 << 20).await.len(), 10 + 60);
    });
}

#[test]
fn retention_waits_for_a_roll_to_finish() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            retention_bytes: 0,
            ..config()
        };
        let mut log = open(&storage, &config).await;
        append_batches(&mut log, 0, 12).await;
        let segments = log.segment_count();
        assert!(segments >= 3);
        assert_eq!(log.apply_retention(1_000).await.expect("retention"), 0);
        let shared = SharedLog::new(log);
        shared.finish_rolls().await.expect("finish");
        let mut log = shared.into_inner();
        assert_eq!(
            log.apply_retention(1_000).await.expect("retention"),
            segments - 1
        );
        assert_eq!(log.segment_count(), 1);
    });
}
