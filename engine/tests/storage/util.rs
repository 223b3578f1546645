//! Helpers shared by the storage tests.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use spate_engine::storage::backend::{ReadBuf, SimulatedStorage, Storage};
use spate_engine::storage::batch::build::{batch, NewRecord};
use spate_engine::storage::{Fetched, LogConfig, PartitionLog};

pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::block_on(future)
}

pub fn partition_dir() -> PathBuf {
    PathBuf::from("/data/topic-0")
}

/// Small segments and a small tail cache, so a few KiB exercise rolling, indexes and disk reads.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        tail_cache_bytes: 512,
        closed_segment_handles_max: 2,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

/// A batch of `count` records whose values say their position, for checking reads.
pub fn numbered_batch(first: u64, count: u64, timestamp_ms: i64) -> BytesMut {
    let records: Vec<NewRecord> = (first..first + count)
        .map(|n| NewRecord::value(format!("record-{n}"), timestamp_ms))
        .collect();
    batch(&records)
}

/// (offset, timestamp, value) of every record in the fetched batches.
pub fn decode<B: ReadBuf>(fetched: &Fetched<B>) -> Vec<(i64, i64, Option<Bytes>)> {
    decode_bytes(fetched.to_bytes())
}

pub fn decode_bytes(mut bytes: Bytes) -> Vec<(i64, i64, Option<Bytes>)> {
    RecordBatchDecoder::decode_all(&mut bytes)
        .expect("stored batches decode")
        .into_iter()
        .flat_map(|set| set.records)
        .map(|record| (record.offset, record.timestamp, record.value))
        .collect()
}

/// Every record from `offset` to the log end, read in `max_bytes` steps.
pub async fn read_all<S: Storage>(
    log: &mut PartitionLog<S>,
    mut offset: i64,
    max_bytes: usize,
) -> Vec<(i64, i64, Option<Bytes>)> {
    let mut out = Vec::new();
    while offset < log.log_end_offset() {
        let fetched = log.read(offset, max_bytes, None).await.expect("read");
        let records = decode(&fetched);
        assert!(
            !records.is_empty(),
            "a read below the log end returns at least one batch"
        );
        for record in records {
            if record.0 >= offset {
                assert_eq!(record.0, offset, "offsets are dense");
                offset += 1;
                out.push(record);
            }
        }
    }
    out
}

pub async fn open(
    storage: &SimulatedStorage,
    config: &LogConfig,
) -> PartitionLog<SimulatedStorage> {
    PartitionLog::open(storage.clone(), partition_dir(), config.clone(), 0)
        .await
        .expect("open")
        .0
}

pub fn segment_log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}
