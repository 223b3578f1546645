//! The production backend: glommio DMA files (O_DIRECT, io_uring) on a real file system.

use std::path::Path;

use spate_engine::runtime::run_local;
use spate_engine::storage::backend::{DmaStorage, StdStorage};
use spate_engine::storage::dump::dump_partition;
use spate_engine::storage::{LogConfig, PartitionLog};

use super::util::{numbered_batch, read_all};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 1024,
        tail_cache_bytes: 4096,
        ..LogConfig::default()
    }
}

#[test]
fn dma_log_appends_unaligned_batches_reads_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders-0");
    let path_for_run = path.clone();
    run_local(move || async move {
        let path = path_for_run;
        let (mut log, _) = PartitionLog::open(DmaStorage, &path, config(), 0)
            .await
            .unwrap();
        let mut expected = 0;
        for n in 0..500u64 {
            let count = 1 + n % 7; // batches of every size, none aligned
            log.append(numbered_batch(expected, count, n as i64), 0, 0)
                .await
                .unwrap();
            expected += count;
            if n % 50 == 0 {
                log.flush(0).await.unwrap();
            }
        }
        assert!(log.segment_count() > 2);
        let all = read_all(&mut log, 0, 3000).await;
        assert_eq!(all.len() as u64, expected);
        for (i, (offset, _, value)) in all.iter().enumerate() {
            assert_eq!(*offset, i as i64);
            assert_eq!(value.as_deref(), Some(format!("record-{i}").as_bytes()));
        }
        log.close(0).await.unwrap();

        let (mut log, report) = PartitionLog::open(DmaStorage, &path, config(), 0)
            .await
            .unwrap();
        assert!(report.truncations.is_empty());
        assert_eq!(log.log_end_offset() as u64, expected);
        assert_eq!(read_all(&mut log, 0, 100_000).await.len() as u64, expected);
        // Keep appending after the reopen: the partial last block was reloaded.
        log.append(numbered_batch(expected, 3, 0), 0, 0)
            .await
            .unwrap();
        log.flush(0).await.unwrap();
        drop(log); // no close: the file keeps its direct-I/O padding
    })
    .unwrap();

    let dump = futures_lite::future::block_on(dump_partition(&StdStorage, &path)).unwrap();
    for segment in &dump.segments {
        for batch in &segment.batches {
            assert!(batch.problem.is_none(), "{dump}");
        }
    }
    let path_for_run = path.clone();
    run_local(move || async move {
        let (mut log, report) = PartitionLog::open(DmaStorage, &path_for_run, config(), 0)
            .await
            .unwrap();
        assert!(
            report.truncations.is_empty(),
            "zero padding is not a torn tail: {report:?}"
        );
        let end = log.log_end_offset();
        assert_eq!(read_all(&mut log, 0, 100_000).await.len() as i64, end);
        log.close(0).await.unwrap();
    })
    .unwrap();
    assert_sizes_exact(&path);
}

fn assert_sizes_exact(dir: &Path) {
    let dump = futures_lite::future::block_on(dump_partition(&StdStorage, dir)).unwrap();
    assert!(dump.is_healthy(), "{dump}");
    for segment in dump.segments {
        let batches: u64 = segment
            .batches
            .iter()
            .map(|batch| batch.header.size_bytes() as u64)
            .sum();
        assert_eq!(segment.size_bytes, batches, "closed files carry no padding");
    }
}

#[test]
fn dma_log_cuts_a_corrupt_tail_written_by_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let path_for_run = path.clone();
    run_local(move || async move {
        let (mut log, _) = PartitionLog::open(DmaStorage, &path_for_run, config(), 0)
            .await
            .unwrap();
        for n in 0..10 {
            log.append(numbered_batch(n * 2, 2, 0), 0, 0).await.unwrap();
        }
        log.close(0).await.unwrap();
    })
    .unwrap();
    // Garbage appended by another program after a clean close: above the recovery point? No:
    // the recovery point is the log end, so the garbage starts a batch at the recovery point
    // and is cut.
    let log_path = path.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&log_path).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0xde; 100]);
    std::fs::write(&log_path, &bytes).unwrap();
    let path_for_run = path.clone();
    run_local(move || async move {
        let (log, report) = PartitionLog::open(DmaStorage, &path_for_run, config(), 0)
            .await
            .unwrap();
        assert_eq!(report.truncations.len(), 1);
        assert_eq!(report.truncations[0].position as usize, good);
        assert_eq!(log.log_end_offset(), 20);
        log.close(0).await.unwrap();
    })
    .unwrap();
    assert_eq!(std::fs::metadata(&log_path).unwrap().len() as usize, good);
}

#[test]
fn dma_write_buffer_handles_big_batches_interleaved_reads_and_group_commit() {
    use std::rc::Rc;

    use spate_engine::storage::batch::build::{batch, NewRecord};
    use spate_engine::storage::{Durability, SharedLog};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed-0");
    let path_for_run = path.clone();
    run_local(move || async move {
        let config = LogConfig {
            segment_bytes: 4 << 20,
            tail_cache_bytes: 0, // every read goes through the file and its write buffer
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(DmaStorage, &path_for_run, config.clone(), 0)
            .await
            .unwrap();
        let log = Rc::new(SharedLog::new(log));
        // Eight writers: small batches, and batches larger than the write buffer.
        let tasks: Vec<_> = (0..8u64)
            .map(|writer| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for round in 0..20u64 {
                        let value_bytes = if (writer + round) % 7 == 0 {
                            300 << 10
                        } else {
                            100
                        };
                        let records: Vec<NewRecord> = (0..3)
                            .map(|i| {
                                let mut value = format!("w{writer}-r{round}-{i}-").into_bytes();
                                value.resize(value_bytes, b'x');
                                NewRecord::value(value, 0)
                            })
                            .collect();
                        let durability = if round % 2 == 0 {
                            Durability::Synced
                        } else {
                            Durability::Written
                        };
                        let info = log.append(batch(&records), 0, 0, durability).await.unwrap();
                        // Read back what was just appended, through the write buffer.
                        let fetched = log.read(info.base_offset, 1, None).await.unwrap();
                        let got = super::util::decode(&fetched);
                        assert_eq!(got[0].0, info.base_offset);
                        assert!(got[0]
                            .2
                            .as_ref()
                            .unwrap()
                            .starts_with(format!("w{writer}-r{round}-0-").as_bytes()));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let Ok(log) = Rc::try_unwrap(log) else {
            panic!("every task is done");
        };
        let mut log = log.into_inner();
        assert_eq!(log.log_end_offset(), 8 * 20 * 3);
        let before = read_all(&mut log, 0, 1 << 20).await;
        log.close(0).await.unwrap();
        let (mut log, report) = PartitionLog::open(DmaStorage, &path_for_run, config, 0)
            .await
            .unwrap();
        assert!(report.truncations.is_empty());
        assert_eq!(read_all(&mut log, 0, 1 << 20).await, before);
        log.close(0).await.unwrap();
    })
    .unwrap();
    assert_sizes_exact(&path);
}

/// Truncation on the production backend: the cut lands mid-block, in an earlier segment, and
/// appends, reads and a reopen carry on from it.
#[test]
fn dma_log_truncates_into_an_earlier_segment_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders-0");
    run_local(move || async move {
        let (mut log, _) = PartitionLog::open(DmaStorage, &path, config(), 0)
            .await
            .unwrap();
        log.open_leader_epoch(1).await.unwrap();
        let mut expected = 0;
        for n in 0..1000u64 {
            let count = 1 + n % 5;
            log.append(numbered_batch(expected, count, 0), 1, 0)
                .await
                .unwrap();
            expected += count;
        }
        let segments = log.segment_count();
        assert!(segments > 3);
        let before = read_all(&mut log, 0, 100_000).await;
        let cut = log.truncate_to(expected as i64 / 3, 0).await.unwrap();
        assert!(cut <= expected as i64 / 3 && cut > expected as i64 / 3 - 5);
        assert!(log.segment_count() < segments);
        log.open_leader_epoch(2).await.unwrap();
        log.append(numbered_batch(cut as u64, 4, 0), 2, 0)
            .await
            .unwrap();
        let after = read_all(&mut log, 0, 100_000).await;
        assert_eq!(after[..cut as usize], before[..cut as usize]);
        assert_eq!(after.len() as i64, cut + 4);
        log.close(0).await.unwrap();
        let (mut log, report) = PartitionLog::open(DmaStorage, &path, config(), 0)
            .await
            .unwrap();
        assert!(report.truncations.is_empty(), "{report:?}");
        assert_eq!(read_all(&mut log, 0, 100_000).await, after);
        let epochs: Vec<(i32, i64)> = log
            .leader_epochs()
            .entries()
            .iter()
            .map(|entry| (entry.epoch, entry.start_offset))
            .collect();
        assert_eq!(epochs, [(1, 0), (2, cut)]);
        log.close(0).await.unwrap();
    })
    .unwrap();
}
