//! Workloads for the storage benchmarks.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use spate_engine::storage::backend::{DmaStorage, SimulatedStorage, Storage};
use spate_engine::storage::batch::build::{batch, NewRecord};
use spate_engine::storage::{Durability, LogConfig, PartitionLog, SharedLog};

/// One batch of `records` records of `record_bytes` bytes each, as a producer would send it.
pub fn record_batch(records: usize, record_bytes: usize) -> BytesMut {
    let value = Bytes::from(vec![b'v'; record_bytes]);
    let records: Vec<NewRecord> = (0..records)
        .map(|i| NewRecord::value(value.clone(), 1_700_000_000_000 + i as i64))
        .collect();
    batch(&records)
}

/// A 64 KiB batch of 1 KiB records: 63 records fill 64 KiB with the v2 overheads.
pub fn batch_64k_of_1k_records() -> BytesMut {
    record_batch(63, 1024)
}

/// Appends `batches` copies of `template` without syncing; returns the time taken (the final
/// flush included) and the bytes appended.
pub async fn append_throughput(
    dir: &std::path::Path,
    template: &BytesMut,
    batches: u64,
) -> (Duration, u64) {
    let config = LogConfig {
        tail_cache_bytes: 1 << 20,
        ..LogConfig::default()
    };
    let (mut log, _) = PartitionLog::open(DmaStorage, dir, config, 0)
        .await
        .expect("open");
    let started = Instant::now();
    for _ in 0..batches {
        log.append(template.clone(), 0, 0).await.expect("append");
    }
    log.flush(0).await.expect("flush");
    let elapsed = started.elapsed();
    log.close(0).await.expect("close");
    (elapsed, batches * template.len() as u64)
}

/// Appends `appends` copies of `template` from one writer, each followed by an fsync.
pub async fn append_fsync_rate(
    dir: &std::path::Path,
    template: &BytesMut,
    appends: u64,
) -> Duration {
    let (mut log, _) = PartitionLog::open(DmaStorage, dir, LogConfig::default(), 0)
        .await
        .expect("open");
    // The requests as they would arrive from the network, prepared outside the timed loop.
    let requests: Vec<BytesMut> = (0..appends).map(|_| template.clone()).collect();
    let started = Instant::now();
    for request in requests {
        log.append(request, 0, 0).await.expect("append");
        log.flush(0).await.expect("flush");
    }
    let elapsed = started.elapsed();
    log.close(0).await.expect("close");
    elapsed
}

/// `writers` concurrent tasks each append `appends_each` copies of `template` and wait for
/// durability (group commit). Returns the time taken and the fsyncs saved per append.
pub async fn group_commit_rate(
    dir: &std::path::Path,
    template: &BytesMut,
    writers: u64,
    appends_each: u64,
) -> Duration {
    let (log, _) = PartitionLog::open(DmaStorage, dir, LogConfig::default(), 0)
        .await
        .expect("open");
    let log = Rc::new(SharedLog::new(log));
    let done = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let log = log.clone();
            let template = template.clone();
            let done = done.clone();
            glommio::spawn_local(async move {
                for _ in 0..appends_each {
                    log.append(template.clone(), 0, 0, Durability::Synced)
                        .await
                        .expect("append");
                    done.set(done.get() + 1);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let elapsed = started.elapsed();
    assert_eq!(done.get(), writers * appends_each);
    let log = Rc::try_unwrap(log)
        .map_err(|_| "tasks done")
        .expect("sole owner");
    log.into_inner().close(0).await.expect("close");
    elapsed
}

/// Reads the whole log in `dir` from offset 0 in `max_bytes` fetches, from disk (the tail cache
/// is off). Returns the time taken and the bytes read.
pub async fn sequential_read(dir: &std::path::Path, max_bytes: usize) -> (Duration, u64) {
    let config = LogConfig {
        tail_cache_bytes: 0,
        ..LogConfig::default()
    };
    let (mut log, _) = PartitionLog::open(DmaStorage, dir, config, 0)
        .await
        .expect("open");
    let end = log.log_end_offset();
    let started = Instant::now();
    let mut offset = 0;
    let mut bytes = 0u64;
    while offset < end {
        let fetched = log.read(offset, max_bytes, None).await.expect("read");
        bytes += fetched.size_bytes() as u64;
        let last_chunk = fetched
            .chunks
            .last()
            .expect("a read below the end returns data");
        offset = last_offset_in(last_chunk) + 1;
    }
    let elapsed = started.elapsed();
    log.close(0).await.expect("close");
    (elapsed, bytes)
}

/// Offset of the last record in a run of whole batches.
pub fn last_offset_in(batches: &[u8]) -> i64 {
    use spate_engine::storage::batch::{peek_base_offset_and_size, BatchHeader};
    let mut position = 0;
    let mut last = -1;
    while position < batches.len() {
        let (_, size) = peek_base_offset_and_size(&batches[position..]).expect("batch");
        let header = BatchHeader::parse(&batches[position..]).expect("header");
        last = header.last_offset();
        position += size;
    }
    last
}

/// A simulated-storage log with `segments` segments of tiny batches, for lookup benchmarks.
pub async fn log_with_segments(segments: usize) -> PartitionLog<SimulatedStorage> {
    let storage = SimulatedStorage::new();
    let config = LogConfig {
        segment_bytes: 512,
        index_interval_bytes: 128,
        tail_cache_bytes: 0,
        ..LogConfig::default()
    };
    let (mut log, _) = PartitionLog::open(storage, "/bench/p", config, 0)
        .await
        .expect("open");
    let template = record_batch(4, 16);
    while log.segment_count() < segments {
        log.append(template.clone(), 0, 0).await.expect("append");
    }
    log
}

/// Average time of one lookup (a read of one batch) of a random offset in
/// `[first_offset, log end)`, over `lookups` lookups.
pub async fn lookup_time<S: Storage>(
    log: &mut PartitionLog<S>,
    first_offset: i64,
    lookups: u64,
) -> Duration {
    let end = log.log_end_offset();
    let span = (end - first_offset).max(1) as u64;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let started = Instant::now();
    for _ in 0..lookups {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = first_offset + (state % span) as i64;
        let fetched = log.read(offset, 1, None).await.expect("read");
        assert!(!fetched.is_empty());
    }
    started.elapsed() / lookups.max(1) as u32
}

/// Base offset of the `count`-th newest segment: lookups from there stay within the segments
/// kept open, as a consumer near the tail does.
pub fn newest_segments_start<S: Storage>(log: &PartitionLog<S>, count: usize) -> i64 {
    let bases = log.segment_base_offsets();
    bases[bases.len().saturating_sub(count)]
}

/// A batch of `records` records of `record_bytes`-byte values, each keyed by one of
/// `distinct_keys` keys chosen from `first` on (`key-<n mod distinct_keys>`), as a producer
/// updating `distinct_keys` entities sends them.
pub fn keyed_batch(
    first: u64,
    records: usize,
    record_bytes: usize,
    distinct_keys: u64,
) -> BytesMut {
    let value = Bytes::from(vec![b'v'; record_bytes]);
    let records: Vec<NewRecord> = (0..records as u64)
        .map(|i| NewRecord {
            key: Some(Bytes::from(format!(
                "key-{:08}",
                (first + i).wrapping_mul(2_654_435_761) % distinct_keys
            ))),
            value: Some(value.clone()),
            timestamp_ms: 1_700_000_000_000 + (first + i) as i64,
            headers: Vec::new(),
        })
        .collect();
    batch(&records)
}
