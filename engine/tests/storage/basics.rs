//! Append, read, roll, retention and limits of one partition log.

use spate_engine::storage::backend::SimulatedStorage;
use spate_engine::storage::batch::{self, BatchError, BatchHeader, TimestampType};
use spate_engine::storage::{LogConfig, PartitionLog, StorageError};

use super::util::{block_on, decode, numbered_batch, open, partition_dir, read_all, small_config};

#[test]
fn offsets_are_assigned_densely_across_batches_in_one_append() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &small_config()).await;
        let mut two = numbered_batch(0, 2, 10);
        two.extend_from_slice(&numbered_batch(2, 3, 11));
        let info = log.append(two, 7, 100).await.unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset, info.batches_count),
            (0, 4, 2)
        );
        let info = log.append(numbered_batch(5, 1, 12), 7, 100).await.unwrap();
        assert_eq!(info.base_offset, 5);
        let fetched = log.read(0, 1 << 20, None).await.unwrap();
        let bytes = fetched.to_bytes();
        let header = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(header.partition_leader_epoch, 7, "leader epoch patched in");
        let values: Vec<_> = decode(&fetched)
            .into_iter()
            .map(|record| record.2.unwrap())
            .collect();
        assert_eq!(values.len(), 6);
        assert_eq!(&values[3][..], b"record-3");
    });
}

#[test]
fn reads_return_whole_batches_within_max_bytes_but_at_least_one() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            tail_cache_bytes: 0, // every read goes to the segment file
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        for n in 0..4 {
            log.append(numbered_batch(n * 4, 4, 0), 0, 0).await.unwrap();
        }
        let one_batch = log.read(0, 1, None).await.unwrap();
        assert_eq!(decode(&one_batch).len(), 4, "at least one whole batch");
        let batch_bytes = one_batch.size_bytes();
        let two = log.read(0, 2 * batch_bytes + 1, None).await.unwrap();
        assert_eq!(decode(&two).len(), 8);
        let middle = log.read(6, 1, None).await.unwrap();
        assert_eq!(
            decode(&middle)[0].0,
            4,
            "the batch holding offset 6 starts at 4"
        );
        let limited = log.read(0, 1 << 20, Some(8)).await.unwrap();
        assert_eq!(
            decode(&limited).len(),
            8,
            "nothing at or past the limit offset"
        );
        assert!(log.read(16, 100, None).await.unwrap().is_empty());
        assert!(matches!(
            log.read(17, 100, None).await,
            Err(StorageError::OffsetOutOfRange { offset: 17, .. })
        ));
    });
}

#[test]
fn refused_input_changes_nothing() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &small_config()).await;
        log.append(numbered_batch(0, 2, 0), 0, 0).await.unwrap();
        let mut good_then_bad = numbered_batch(0, 1, 0);
        let mut bad = numbered_batch(0, 1, 0);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        good_then_bad.extend_from_slice(&bad);
        let error = log.append(good_then_bad.clone(), 0, 0).await.unwrap_err();
        match error {
            StorageError::InvalidBatch {
                position,
                source: BatchError::CrcMismatch { .. },
            } => {
                assert_eq!(position, good_then_bad.len() / 2);
            }
            other => panic!("{other:?}"),
        }
        let error = log
            .append(bytes::BytesMut::from(&b"garbage"[..]), 0, 0)
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::InvalidBatch { .. }));
        let error = log.append(bytes::BytesMut::new(), 0, 0).await.unwrap_err();
        assert!(matches!(error, StorageError::InvalidBatch { .. }));
        let huge = batch::build::batch(&[batch::build::NewRecord::value(vec![0u8; 5000], 0)]);
        let error = log.append(huge, 0, 0).await.unwrap_err();
        assert!(matches!(error, StorageError::BatchTooLarge { .. }));
        // Two batches that each fit, together larger than a segment (4 KiB).
        let half = batch::build::batch(&[batch::build::NewRecord::value(vec![0u8; 3000], 0)]);
        let mut both = half.clone();
        both.extend_from_slice(&half);
        let error = log.append(both, 0, 0).await.unwrap_err();
        assert!(matches!(error, StorageError::RecordsTooLarge { .. }));
        assert_eq!(
            log.log_end_offset(),
            2,
            "nothing of a refused append was written"
        );
        assert_eq!(read_all(&mut log, 0, 1000).await.len(), 2);
        assert!(!log.is_poisoned());
    });
}

#[test]
fn segments_roll_by_size_and_by_time() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &small_config()).await;
        for n in 0..100 {
            log.append(numbered_batch(n * 2, 2, 0), 0, 0).await.unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 3, "{bases:?}");
        assert!(log.size_bytes() / (bases.len() as u64) <= 4096);

        let config = LogConfig {
            segment_ms: 1_000,
            ..LogConfig::default()
        };
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &config).await;
        log.append(numbered_batch(0, 1, 10_000), 0, 10_000)
            .await
            .unwrap();
        log.append(numbered_batch(1, 1, 10_500), 0, 10_500)
            .await
            .unwrap();
        assert_eq!(log.segment_count(), 1);
        log.append(numbered_batch(2, 1, 11_000), 0, 11_000)
            .await
            .unwrap();
        assert_eq!(
            log.segment_base_offsets(),
            vec![0, 2],
            "rolled when the data was 1 s old"
        );
    });
}

#[test]
fn log_append_time_overwrites_the_max_timestamp() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        let info = log
            .append(numbered_batch(0, 3, 5), 0, 123_456)
            .await
            .unwrap();
        assert_eq!(info.log_append_time_ms, 123_456);
        let bytes = log.read(0, 1000, None).await.unwrap().to_bytes();
        let validated = batch::validate(&bytes).expect("CRC rewritten after the patch");
        assert_eq!(validated.header.max_timestamp, 123_456);
        assert_eq!(
            validated.header.timestamp_type(),
            TimestampType::LogAppendTime
        );
        assert_eq!(
            log.offset_for_timestamp(123_000).await.unwrap(),
            Some((0, 123_456))
        );
    });
}

#[test]
fn retention_by_time_by_size_and_forever() {
    block_on(async {
        let fill = |config: LogConfig| async move {
            let storage = SimulatedStorage::new();
            let mut log = open(&storage, &config).await;
            for n in 0..200i64 {
                log.append(numbered_batch(n as u64 * 2, 2, n * 100), 0, n * 100)
                    .await
                    .unwrap();
            }
            // As the broker's background finisher does: retention takes finished rolls only.
            log.finish_rolls().await.unwrap();
            log
        };
        // Forever.
        let mut log = fill(small_config()).await;
        assert_eq!(log.apply_retention(1_000_000).await.unwrap(), 0);
        assert_eq!(log.log_start_offset(), 0);

        // By time: records older than 5 s at now = 20 s, i.e. timestamps below 15 000.
        let mut log = fill(LogConfig {
            retention_ms: 5_000,
            ..small_config()
        })
        .await;
        let segments_before = log.segment_count();
        let deleted = log.apply_retention(20_000).await.unwrap();
        assert!(deleted > 0 && log.segment_count() == segments_before - deleted);
        let start = log.log_start_offset();
        assert_eq!(start, log.segment_base_offsets()[0]);
        let first_kept = read_all(&mut log, start, 100).await[0].1;
        assert!(
            first_kept < 15_000 + 100 * 20,
            "no more than needed is deleted"
        );
        let (_, timestamp) = log.offset_for_timestamp(0).await.unwrap().unwrap();
        assert_eq!(timestamp, first_kept);

        // By size: keep at most ~3 segments' worth.
        let mut log = fill(LogConfig {
            retention_bytes: 3 * 4096,
            ..small_config()
        })
        .await;
        log.apply_retention(0).await.unwrap();
        // Kafka's rule: a segment goes while the rest alone still reaches retention_bytes.
        let sizes_oldest_first = log.size_bytes();
        assert!(
            sizes_oldest_first <= 3 * 4096 + 4096,
            "{sizes_oldest_first}"
        );
        let oldest_segment_bytes = 4096 - 200; // segments fill to within one batch of 4096
        assert!(
            sizes_oldest_first - oldest_segment_bytes < 3 * 4096,
            "deletes all it should"
        );
        assert!(sizes_oldest_first >= 3 * 4096, "deletes only what it must");
        let start = log.log_start_offset();
        assert_eq!(
            read_all(&mut log, start, 4096).await.len() as i64,
            400 - start
        );
    });
}

#[test]
fn delete_records_moves_the_start_durably() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = small_config();
        let mut log = open(&storage, &config).await;
        for n in 0..100 {
            log.append(numbered_batch(n * 2, 2, 0), 0, 0).await.unwrap();
        }
        log.finish_rolls().await.unwrap();
        let segments = log.segment_count();
        assert_eq!(log.delete_records(101).await.unwrap(), 101);
        assert!(
            log.segment_count() < segments,
            "segments wholly below the start are deleted"
        );
        assert!(matches!(
            log.read(100, 10, None).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let first = decode(&log.read(101, 10, None).await.unwrap())[0].0;
        assert_eq!(first, 100, "the batch holding 101 is returned whole");
        assert_eq!(
            log.delete_records(50).await.unwrap(),
            101,
            "never moves back"
        );
        assert!(matches!(
            log.delete_records(201).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        drop(log); // crash: the new start was made durable before returning
        let (log, _) = PartitionLog::open(storage, partition_dir(), config, 0)
            .await
            .unwrap();
        assert_eq!(log.log_start_offset(), 101);
    });
}

#[test]
fn clean_reopen_trusts_everything_and_scans_almost_nothing() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            segment_bytes: 64 * 1024,
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        for n in 0..500 {
            log.append(numbered_batch(n * 4, 4, n as i64), 0, 0)
                .await
                .unwrap();
        }
        let segments = log.segment_count();
        log.close(0).await.unwrap();
        let (mut log, report) =
            PartitionLog::open(storage.clone(), partition_dir(), config.clone(), 0)
                .await
                .unwrap();
        assert_eq!(report.segments, segments);
        assert_eq!(report.segments_trusted, segments - 1);
        assert_eq!(report.indexes_rebuilt, 0);
        assert!(report.bytes_scanned <= 2 * 256 + 200, "{report:?}");

        // After a crash, recovery walks about the data after the recovery point only.
        for n in 500..520 {
            log.append(numbered_batch(n * 4, 4, n as i64), 0, 0)
                .await
                .unwrap();
        }
        log.flush(0).await.unwrap();
        let unrecorded_batches = (log.log_end_offset() - log.recovery_point()) as u64 / 4;
        assert!(unrecorded_batches > 0);
        drop(log);
        let (log, report) = PartitionLog::open(storage, partition_dir(), config, 0)
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 2080);
        let batch_bytes = numbered_batch(2000, 4, 0).len() as u64 + 1;
        let after_recovery_point = unrecorded_batches * batch_bytes;
        assert!(
            report.bytes_scanned >= after_recovery_point - unrecorded_batches,
            "{report:?}"
        );
        assert!(
            report.bytes_scanned <= after_recovery_point + 256 + batch_bytes,
            "{report:?} for {after_recovery_point} bytes after the recovery point"
        );
    });
}

#[test]
fn tail_reads_come_from_memory() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &small_config()).await;
        for n in 0..10 {
            log.append(numbered_batch(n * 2, 2, 0), 0, 0).await.unwrap();
        }
        let fetched = log.read(18, 1000, None).await.unwrap();
        assert!(matches!(
            fetched.chunks[0],
            spate_engine::storage::Chunk::Memory(_)
        ));
        let fetched = log.read(0, 1000, None).await.unwrap();
        assert!(matches!(
            fetched.chunks[0],
            spate_engine::storage::Chunk::Disk(_)
        ));
    });
}

#[test]
fn flush_policy_asks_for_syncs_by_count_and_by_age() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let by_count = LogConfig {
            flush_messages: 5,
            ..small_config()
        };
        let mut log = open(&storage, &by_count).await;
        assert!(
            !log.append(numbered_batch(0, 2, 0), 0, 0)
                .await
                .unwrap()
                .sync_due
        );
        assert!(
            !log.append(numbered_batch(2, 2, 0), 0, 0)
                .await
                .unwrap()
                .sync_due
        );
        assert!(
            log.append(numbered_batch(4, 2, 0), 0, 0)
                .await
                .unwrap()
                .sync_due
        );
        log.flush(0).await.unwrap();
        assert_eq!(log.durable_offset(), 6);
        assert!(!log.sync_due(0), "nothing unsynced after a flush");
        // Under steady load a sync never reaches the log end: what it covered counts as synced
        // all the same, so only the records appended during it wait for the next one.
        log.append(numbered_batch(6, 5, 0), 0, 0).await.unwrap();
        let ticket = log.begin_sync().unwrap();
        log.append(numbered_batch(11, 2, 0), 0, 0).await.unwrap();
        let result = ticket.run().await;
        log.complete_sync(ticket, result, 0).unwrap();
        assert_eq!(log.unsynced_records(), 2);
        assert!(!log.sync_due(0), "2 records unsynced, the policy says 5");
        assert!(
            log.append(numbered_batch(13, 3, 0), 0, 0)
                .await
                .unwrap()
                .sync_due
        );

        let by_age = LogConfig {
            flush_ms: 100,
            ..small_config()
        };
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &by_age).await; // opened at time 0
        assert!(
            !log.append(numbered_batch(0, 1, 0), 0, 50)
                .await
                .unwrap()
                .sync_due
        );
        assert!(!log.sync_due(99));
        assert!(log.sync_due(100), "the last sync is 100 ms old");
        assert!(
            log.append(numbered_batch(1, 1, 0), 0, 150)
                .await
                .unwrap()
                .sync_due
        );
        log.flush(150).await.unwrap();
        assert!(!log.sync_due(249));
    });
}

#[test]
fn segments_roll_when_the_offset_index_is_full() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            segment_bytes: 1 << 20,
            index_interval_bytes: 64,
            segment_index_bytes: 3 * 8, // three offset index entries per segment
            ..small_config()
        };
        let mut log = open(&storage, &config).await;
        for n in 0..40 {
            log.append(numbered_batch(n, 1, 0), 0, 0).await.unwrap();
        }
        let segments = log.segment_count();
        assert!(segments >= 5, "{segments} segments");
        assert!(
            log.size_bytes() < 40 * 200,
            "rolled for the index, not for size"
        );
        log.close(0).await.unwrap();
        let (mut log, report) = PartitionLog::open(storage, partition_dir(), config, 0)
            .await
            .unwrap();
        assert_eq!(report.segments, segments);
        assert_eq!(read_all(&mut log, 0, 100).await.len(), 40);
    });
}
