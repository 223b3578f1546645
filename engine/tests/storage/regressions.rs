//! Regressions found by `spate-sim` (seeds 6, 64, 107 and 148 of the storage simulation):
//! corruption of header fields that the CRC does not cover (base offset) or that a trusted walk
//! does not CRC-check (last offset delta) made reads return nothing, or recovery invent offsets,
//! instead of reporting corruption.

use spate_engine::storage::backend::SimulatedStorage;
use spate_engine::storage::{LogConfig, PartitionLog, StorageError};

use super::util::{block_on, numbered_batch, open, partition_dir, segment_log_path, small_config};

fn uncached() -> LogConfig {
    LogConfig {
        tail_cache_bytes: 0,
        segment_bytes: 1 << 20,
        ..small_config()
    }
}

#[test]
fn corrupt_base_offset_is_reported_by_read() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &uncached()).await;
        for n in 0..4 {
            log.append(numbered_batch(n * 3, 3, 0), 0, 0).await.unwrap();
        }
        storage.corrupt_byte(&segment_log_path(&partition_dir(), 0), 7, 0x40); // base offset
        let error = log.read(1, 1 << 20, None).await.unwrap_err();
        assert!(
            matches!(error, StorageError::Corrupt { position: 0, .. }),
            "{error:?}"
        );
    });
}

#[test]
fn corrupt_last_offset_delta_is_reported_by_read() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &uncached()).await;
        for n in 0..4 {
            log.append(numbered_batch(n * 3, 3, 0), 0, 0).await.unwrap();
        }
        storage.corrupt_byte(&segment_log_path(&partition_dir(), 0), 26, 0x20); // delta 2 -> 34
        let error = log.read(1, 1 << 20, None).await.unwrap_err();
        assert!(
            matches!(error, StorageError::Corrupt { position: 0, .. }),
            "{error:?}"
        );
    });
}

#[test]
fn trusted_batch_crossing_the_recovery_point_refuses_to_open() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &uncached()).await;
        log.append(numbered_batch(0, 3, 0), 0, 0).await.unwrap();
        log.checkpoint(0).await.unwrap(); // recovery point 3
        log.append(numbered_batch(3, 3, 0), 0, 0).await.unwrap();
        log.flush(0).await.unwrap();
        drop(log);
        storage.corrupt_byte(&segment_log_path(&partition_dir(), 0), 26, 0x20); // 0..3 -> 0..35
        let result = PartitionLog::open(storage, partition_dir(), uncached(), 0).await;
        let Err(error) = result else {
            panic!("recovery must not invent offsets from a damaged trusted header");
        };
        assert!(
            matches!(error, StorageError::Corrupt { position: 0, .. }),
            "{error:?}"
        );
    });
}
