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
