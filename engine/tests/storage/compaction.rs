//! Log compaction against a map model: after cleaning, every key's latest record is still
//! there (tombstones until their horizon), nothing cleaned holds an older record of a key,
//! offsets are unchanged, and a power cut at any step of a pass loses nothing and leaves no
//! duplicate.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use proptest::prelude::*;
use spate_engine::storage::backend::{CrashMode, SimulatedStorage};
use spate_engine::storage::batch::build::{self, NewRecord};
use spate_engine::storage::batch::BatchHeader;
use spate_engine::storage::compaction::{CleanRequest, Unpaced};
use spate_engine::storage::{CleanupPolicy, LogConfig, PartitionLog, Ratio, StorageError};

use super::util::{block_on, open, partition_dir};

fn compacted_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        segment_bytes: 4096,
        index_interval_bytes: 256,
        tail_cache_bytes: 512,
        closed_segment_handles_max: 2,
        retention_ms: -1,
        delete_retention_ms: 1_000,
        min_cleanable_dirty_ratio: Ratio(0.0),
        ..LogConfig::default()
    }
}

fn keyed(key: &str, value: Option<&str>, timestamp_ms: i64) -> NewRecord {
    NewRecord {
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: value.map(|value| Bytes::copy_from_slice(value.as_bytes())),
        timestamp_ms,
        headers: Vec::new(),
    }
}

fn request(now_ms: i64) -> CleanRequest {
    CleanRequest {
        now_ms,
        upper_bound_offset: i64::MAX,
        offset_map_bytes_max: 1 << 20,
        force: true,
    }
}

/// Appends one record of `key` (a tombstone when `value` is `None`).
async fn put(
    log: &mut PartitionLog<SimulatedStorage>,
    key: &str,
    value: Option<&str>,
    timestamp_ms: i64,
    now_ms: i64,
) {
    log.append(build::batch(&[keyed(key, value, timestamp_ms)]), 0, now_ms)
        .await
        .unwrap();
}

/// Closes the active segment and finishes the roll, as the broker's background finisher does
/// soon after: the cleaner takes only finished segments.
async fn roll(log: &mut PartitionLog<SimulatedStorage>, now_ms: i64) {
    log.roll(now_ms).await.unwrap();
    log.finish_rolls().await.unwrap();
}

/// One forced pass at `now_ms`, which must clean something.
async fn clean_now(
    log: &mut PartitionLog<SimulatedStorage>,
    now_ms: i64,
) -> spate_engine::storage::compaction::CleanReport {
    log.clean(&request(now_ms), &mut Unpaced)
        .await
        .unwrap()
        .expect("something to clean")
}

/// Every record from the log start to the end: (offset, key, value), skipping record-less
/// batches as a consumer does.
async fn read_records(
    log: &mut PartitionLog<SimulatedStorage>,
) -> Vec<(i64, Bytes, Option<Bytes>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let mut bytes = log
            .read(offset, 1 << 16, None)
            .await
            .expect("read")
            .to_bytes();
        assert!(!bytes.is_empty(), "a read below the end returns a batch");
        let mut next = offset;
        let mut view = &bytes[..];
        while !view.is_empty() {
            let header = BatchHeader::parse(view).expect("whole batches");
            next = next.max(header.next_offset());
            view = &view[header.size_bytes()..];
        }
        for set in RecordBatchDecoder::decode_all(&mut bytes).expect("batches decode") {
            for record in set.records {
                if record.offset >= offset && !record.control {
                    out.push((record.offset, record.key.expect("keyed"), record.value));
                }
            }
        }
        assert!(next > offset, "reads move forward");
        offset = next;
    }
    out
}

#[test]
fn a_key_written_three_times_keeps_only_its_last_value() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = compacted_config();
        let mut log = open(&storage, &config).await;
        let writes = [
            ("alice", "alice@one.example"),
            ("bob", "bob@one.example"),
            ("alice", "alice@two.example"),
            ("carol", "carol@one.example"),
            ("alice", "alice@three.example"),
        ];
        for (n, (key, value)) in writes.iter().enumerate() {
            put(&mut log, key, Some(value), n as i64, 0).await;
        }
        roll(&mut log, 10).await;
        let report = clean_now(&mut log, 10).await;
        assert_eq!(report.records_removed, 2);
        assert_eq!((report.first_dirty_offset, report.end_offset), (0, 5));
        let records = read_records(&mut log).await;
        let expected = [
            (1, "bob", "bob@one.example"),
            (3, "carol", "carol@one.example"),
            (4, "alice", "alice@three.example"),
        ];
        let found: Vec<_> = records
            .iter()
            .map(|(offset, key, value)| (*offset, key.clone(), value.clone().unwrap()))
            .collect();
        let expected: Vec<_> = expected
            .iter()
            .map(|(offset, key, value)| (*offset, Bytes::from(*key), Bytes::from(*value)))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(log.log_end_offset(), 5, "offsets are preserved");
        // Survives a reopen, and a second pass has nothing to do.
        log.close(20).await.unwrap();
        let mut log = open(&storage, &config).await;
        assert_eq!(read_records(&mut log).await, records);
        assert_eq!(log.first_dirty_offset(), 5);
        assert!(log
            .clean(&request(20), &mut Unpaced)
            .await
            .unwrap()
            .is_none());
    });
}

#[test]
fn a_compacted_log_refuses_records_without_a_key() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &compacted_config()).await;
        let result = log
            .append(build::batch(&[NewRecord::value("no key", 0)]), 0, 0)
            .await;
        assert!(
            matches!(result, Err(StorageError::KeylessRecord { .. })),
            "{result:?}"
        );
        assert_eq!(log.log_end_offset(), 0);
    });
}

#[test]
fn nothing_at_or_above_the_upper_bound_or_in_the_active_segment_is_cleaned() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &compacted_config()).await;
        for n in 0..4 {
            put(&mut log, "k", Some(&format!("v{n}")), n, 0).await;
            roll(&mut log, n).await;
        }
        put(&mut log, "k", Some("active"), 9, 0).await;
        // Only the segments below offset 2 may be cleaned.
        let bounded = CleanRequest {
            upper_bound_offset: 2,
            ..request(10)
        };
        let report = log.clean(&bounded, &mut Unpaced).await.unwrap().unwrap();
        assert_eq!(report.end_offset, 2);
        let offsets: Vec<i64> = read_records(&mut log).await.iter().map(|r| r.0).collect();
        assert_eq!(offsets, [1, 2, 3, 4]);
        let report = clean_now(&mut log, 10).await;
        assert_eq!(report.end_offset, 4, "the active segment stays dirty");
        let offsets: Vec<i64> = read_records(&mut log).await.iter().map(|r| r.0).collect();
        assert_eq!(offsets, [3, 4]);
    });
}

#[test]
fn tombstones_stay_for_delete_retention_then_go() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &compacted_config()).await;
        put(&mut log, "k", Some("v"), 0, 0).await;
        put(&mut log, "k", None, 1, 0).await;
        roll(&mut log, 5).await;
        log.clean(&request(100), &mut Unpaced).await.unwrap();
        let records = read_records(&mut log).await;
        assert_eq!(
            records,
            [(1, Bytes::from("k"), None)],
            "the tombstone stays"
        );
        // Something new to clean, before the horizon (100 + 1000): the tombstone stays.
        put(&mut log, "other", Some("x"), 2, 0).await;
        roll(&mut log, 6).await;
        log.clean(&request(500), &mut Unpaced).await.unwrap();
        assert_eq!(read_records(&mut log).await.len(), 2);
        put(&mut log, "other", Some("y"), 3, 0).await;
        roll(&mut log, 7).await;
        log.clean(&request(1_100), &mut Unpaced).await.unwrap();
        let records = read_records(&mut log).await;
        assert_eq!(records, [(3, Bytes::from("other"), Some(Bytes::from("y")))]);
    });
}

/// A topic no longer written to still loses its tombstones: the cleaned part's earliest
/// delete horizon is kept (across a restart too) and makes a pass due once it passes, with
/// nothing dirty. After that pass nothing more is due.
#[test]
fn tombstones_go_after_their_horizon_without_new_writes() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = compacted_config();
        let mut log = open(&storage, &config).await;
        put(&mut log, "k", Some("v"), 0, 0).await;
        put(&mut log, "k", None, 1, 0).await;
        put(&mut log, "kept", Some("w"), 2, 0).await;
        roll(&mut log, 5).await;
        clean_now(&mut log, 100).await;
        assert_eq!(log.tombstone_horizon_ms(), Some(1_100));
        let unforced = |now_ms| CleanRequest {
            force: false,
            ..request(now_ms)
        };
        assert_eq!(log.dirtiness(&unforced(1_099)), None, "nothing due yet");
        log.close(200).await.unwrap();
        let mut log = open(&storage, &config).await;
        assert_eq!(
            log.tombstone_horizon_ms(),
            Some(1_100),
            "kept across a restart"
        );
        let due = log.dirtiness(&unforced(1_100)).expect("tombstones due");
        assert!(due.tombstones_due && due.dirty_bytes == 0, "{due:?}");
        let report = log
            .clean(&unforced(1_100), &mut Unpaced)
            .await
            .unwrap()
            .expect("a pass for the tombstone");
        assert_eq!(report.records_removed, 1);
        assert_eq!(
            read_records(&mut log).await,
            [(2, Bytes::from("kept"), Some(Bytes::from("w")))]
        );
        assert_eq!(log.tombstone_horizon_ms(), None);
        assert_eq!(log.dirtiness(&unforced(5_000)), None, "nothing more is due");
    });
}

/// A truncation below the first dirty offset lowers it on disk too: records written again
/// at the cut offsets are dirty after a restart, not taken as cleaned.
#[test]
fn a_truncation_lowers_the_cleaner_checkpoint_on_disk() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = compacted_config();
        let mut log = open(&storage, &config).await;
        for n in 0..6 {
            put(&mut log, &format!("k{n}"), Some("v"), n, 0).await;
        }
        roll(&mut log, 10).await;
        clean_now(&mut log, 10).await;
        assert_eq!(log.first_dirty_offset(), 6);
        assert_eq!(log.truncate_to(3, 20).await.unwrap(), 3);
        assert_eq!(log.first_dirty_offset(), 3);
        for n in 3..8 {
            put(&mut log, "again", Some("w"), n, 30).await;
        }
        log.close(40).await.unwrap();
        let log = open(&storage, &config).await;
        assert_eq!(
            log.first_dirty_offset(),
            3,
            "the offsets written again are dirty"
        );
    });
}

#[test]
fn a_producers_last_batch_stays_even_when_emptied() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = compacted_config();
        let mut log = open(&storage, &config).await;
        log.append(
            build::producer_batch(&[keyed("k", Some("1"), 0)], 7, 0, 0),
            0,
            0,
        )
        .await
        .unwrap();
        put(&mut log, "k", Some("2"), 1, 0).await;
        roll(&mut log, 5).await;
        log.clean(&request(10), &mut Unpaced).await.unwrap();
        // Its batch stays, emptied, so that producer state rebuilt from the log knows it.
        let bytes = log.read(0, 1 << 16, None).await.unwrap().to_bytes();
        let header = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(
            (
                header.base_offset,
                header.producer_id,
                header.base_sequence,
                header.records_count
            ),
            (0, 7, 0, 0)
        );
        assert_eq!(read_records(&mut log).await.len(), 1);
        let retry = log
            .append(
                build::producer_batch(&[keyed("k", Some("1"), 0)], 7, 0, 0),
                0,
                30,
            )
            .await
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.base_offset, 0);
    });
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u8, Option<u16>)>),
    Roll,
    Clean {
        now_ms: i64,
        map_bytes_max: usize,
        read_window_bytes: usize,
    },
    CleanWithPowerCut {
        now_ms: i64,
        budget: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0u8..12, prop::option::weighted(0.85, any::<u16>())), 1..6)
            .prop_map(Op::Append),
        2 => Just(Op::Roll),
        2 => (
            0i64..5_000,
            prop_oneof![Just(1usize << 20), Just(200usize)],
            prop_oneof![Just(4usize << 20), Just(100usize), Just(1usize)],
        )
            .prop_map(|(now_ms, map_bytes_max, read_window_bytes)| Op::Clean {
                now_ms,
                map_bytes_max,
                read_window_bytes,
            }),
        2 => (0i64..5_000, 0u64..40).prop_map(|(now_ms, budget)| Op::CleanWithPowerCut { now_ms, budget }),
        1 => Just(Op::Reopen),
    ]
}

/// The offset of every tombstone in the log, with its batch's delete horizon.
async fn tombstone_horizons(log: &mut PartitionLog<SimulatedStorage>) -> Vec<(i64, Option<i64>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 1 << 16, None).await.unwrap().to_bytes();
        let mut view = &bytes[..];
        while !view.is_empty() {
            let header = BatchHeader::parse(view).unwrap();
            let mut batch = Bytes::copy_from_slice(&view[..header.size_bytes()]);
            for set in RecordBatchDecoder::decode_all(&mut batch).unwrap() {
                for record in set.records {
                    if record.value.is_none() && record.offset >= offset {
                        out.push((record.offset, header.delete_horizon_ms()));
                    }
                }
            }
            offset = offset.max(header.next_offset());
            view = &view[header.size_bytes()..];
        }
    }
    out
}

/// Reads in windows of a chosen size (smaller than a batch, or a few batches).
struct WindowPacer {
    read_window_bytes: usize,
}

impl spate_engine::storage::compaction::Pacer for WindowPacer {
    async fn pace(&mut self, _bytes: u64) {}

    fn read_window_bytes(&self) -> usize {
        self.read_window_bytes
    }
}

/// What the model knows: every record appended, by offset.
#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<i64, (Bytes, Option<Bytes>)>,
}

impl Model {
    /// Checks what the log returns against the model. `first_dirty` is the log's cleaner
    /// checkpoint; `tombstones_may_go` allows a key's latest tombstone to be missing.
    fn check(&self, read: &[(i64, Bytes, Option<Bytes>)], first_dirty: i64) {
        let mut previous = -1;
        for (offset, key, value) in read {
            assert!(
                *offset > previous,
                "offsets increase, no duplicate: {read:?}"
            );
            previous = *offset;
            assert_eq!(
                self.records.get(offset),
                Some(&(key.clone(), value.clone())),
                "record at {offset} is what was appended there"
            );
            if *offset < first_dirty {
                let superseded = self
                    .records
                    .range(offset + 1..first_dirty)
                    .any(|(_, (other, _))| other == key);
                assert!(
                    !superseded,
                    "cleaned part holds an old record of {key:?} at {offset}"
                );
            }
        }
        let mut latest: BTreeMap<&Bytes, (i64, &Option<Bytes>)> = BTreeMap::new();
        for (offset, (key, value)) in &self.records {
            latest.insert(key, (*offset, value));
        }
        for (key, (offset, value)) in latest {
            let found = read.iter().any(|(at, _, _)| *at == offset);
            assert!(
                found || value.is_none(),
                "the latest record of {key:?} at {offset} is lost: {read:?}"
            );
        }
    }
}

fn run(ops: Vec<Op>) {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = compacted_config();
        let mut log = open(&storage, &config).await;
        let mut model = Model::default();
        let mut timestamp = 0;
        // The latest time a pass ran at, and the end of what the last completed pass cleaned
        // with its time.
        let mut latest_pass_ms = i64::MIN;
        for op in ops {
            let mut completed_pass = None;
            match op {
                Op::Append(records) => {
                    let built: Vec<NewRecord> = records
                        .iter()
                        .map(|(key, value)| {
                            timestamp += 1;
                            NewRecord {
                                key: Some(Bytes::from(format!("key-{key}"))),
                                value: value.map(|value| Bytes::from(format!("value-{value}"))),
                                timestamp_ms: timestamp,
                                headers: Vec::new(),
                            }
                        })
                        .collect();
                    let info = log
                        .append(build::batch(&built), 0, timestamp)
                        .await
                        .unwrap();
                    for (n, record) in built.into_iter().enumerate() {
                        model.records.insert(
                            info.base_offset + n as i64,
                            (record.key.unwrap(), record.value),
                        );
                    }
                    log.flush(timestamp).await.unwrap();
                }
                Op::Roll => roll(&mut log, timestamp).await,
                Op::Clean {
                    now_ms,
                    map_bytes_max,
                    read_window_bytes,
                } => {
                    let request = CleanRequest {
                        offset_map_bytes_max: map_bytes_max,
                        ..request(now_ms)
                    };
                    let mut pacer = WindowPacer { read_window_bytes };
                    latest_pass_ms = latest_pass_ms.max(now_ms);
                    let report = log.clean(&request, &mut pacer).await.unwrap();
                    if let Some(report) = report.filter(|report| !report.abandoned) {
                        completed_pass = Some((report.end_offset, now_ms));
                    }
                }
                Op::CleanWithPowerCut { now_ms, budget } => {
                    latest_pass_ms = latest_pass_ms.max(now_ms);
                    storage.cut_power_after(Some(budget));
                    let _ = log.clean(&request(now_ms), &mut Unpaced).await;
                    drop(log);
                    storage.crash(CrashMode::DropUnsynced);
                    storage.cut_power_after(None);
                    log = PartitionLog::open(storage.clone(), partition_dir(), config.clone(), 0)
                        .await
                        .unwrap_or_else(|error| panic!("power cut after {budget}: {error}"))
                        .0;
                }
                Op::Reopen => {
                    log.close(timestamp).await.unwrap();
                    log = open(&storage, &config).await;
                }
            }
            let first_dirty = log.first_dirty_offset();
            let read = read_records(&mut log).await;
            model.check(&read, first_dirty);
            // Tombstones: each one cleaned has a delete horizon at most delete.retention.ms
            // after a pass's time, and none whose horizon passed outlives a completed pass.
            for (offset, horizon) in tombstone_horizons(&mut log).await {
                if offset < first_dirty {
                    let horizon = horizon.unwrap_or_else(|| {
                        panic!("the cleaned tombstone at {offset} has no delete horizon")
                    });
                    assert!(horizon <= latest_pass_ms + config.delete_retention_ms);
                }
                if let Some((end_offset, now_ms)) = completed_pass {
                    assert!(
                        offset >= end_offset || horizon.is_none_or(|horizon| horizon > now_ms),
                        "the tombstone at {offset} outlived its horizon {horizon:?} at {now_ms}"
                    );
                }
            }
            assert_eq!(
                log.log_end_offset(),
                model.records.keys().next_back().map_or(0, |last| last + 1)
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn compaction_matches_the_map_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

#[test]
fn large_batches_and_many_segments_clean_in_groups() {
    let mut ops = Vec::new();
    for round in 0..30u16 {
        let records: Vec<(u8, Option<u16>)> = (0..5)
            .map(|n| ((round as u8 + n) % 7, Some(round)))
            .collect();
        ops.push(Op::Append(records));
        if round % 3 == 0 {
            ops.push(Op::Roll);
        }
    }
    ops.push(Op::Roll);
    ops.push(Op::Clean {
        now_ms: 10,
        map_bytes_max: 1 << 20,
        read_window_bytes: 100,
    });
    ops.push(Op::Reopen);
    run(ops);
}

#[test]
fn a_power_cut_at_every_step_of_a_pass_loses_nothing() {
    block_on(async {
        let mut completed = false;
        for budget in 0..200 {
            let storage = SimulatedStorage::new();
            let config = compacted_config();
            let mut log = open(&storage, &config).await;
            let mut model = Model::default();
            for n in 0..60i64 {
                let key = Bytes::from(format!("key-{}", n % 9));
                let value = Bytes::from(format!("value-{n}"));
                let record = NewRecord {
                    key: Some(key.clone()),
                    value: Some(value.clone()),
                    timestamp_ms: n,
                    headers: Vec::new(),
                };
                let info = log.append(build::batch(&[record]), 0, n).await.unwrap();
                model.records.insert(info.base_offset, (key, Some(value)));
                if n % 10 == 9 {
                    roll(&mut log, n).await;
                }
            }
            log.flush(100).await.unwrap();
            let before = read_records(&mut log).await;
            storage.cut_power_after(Some(budget));
            let result = log.clean(&request(100), &mut Unpaced).await;
            drop(log);
            storage.crash(CrashMode::DropUnsynced);
            storage.cut_power_after(None);
            let mut log = PartitionLog::open(storage.clone(), partition_dir(), config.clone(), 0)
                .await
                .unwrap_or_else(|error| panic!("power cut after {budget}: {error}"))
                .0;
            let after = read_records(&mut log).await;
            model.check(&after, log.first_dirty_offset());
            assert!(after.len() <= before.len());
            if result.is_ok() {
                assert!(budget > 20, "a pass is many steps; done after {budget}");
                completed = true;
                assert!(
                    after.len() < before.len(),
                    "a completed pass removed records"
                );
                break;
            }
            // The pass can run again after the crash and complete.
            log.clean(&request(100), &mut Unpaced).await.unwrap();
            let cleaned = read_records(&mut log).await;
            model.check(&cleaned, log.first_dirty_offset());
            assert_eq!(cleaned.len(), 9, "the latest record of each key");
        }
        assert!(completed, "the pass completes with enough steps");
    });
}

#[test]
fn an_aborted_transaction_neither_supersedes_nor_stays_and_markers_stay() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &compacted_config()).await;
        put(&mut log, "k", Some("committed"), 0, 0).await;
        log.append(
            build::transactional_batch(&[keyed("k", Some("aborted"), 1)], 5, 0, 0),
            0,
            1,
        )
        .await
        .unwrap();
        log.append_marker(5, 0, 0, false, 0, 2).await.unwrap();
        log.append(
            build::transactional_batch(&[keyed("j", Some("committed too"), 3)], 5, 0, 1),
            0,
            3,
        )
        .await
        .unwrap();
        log.append_marker(5, 0, 0, true, 0, 4).await.unwrap();
        roll(&mut log, 5).await;
        clean_now(&mut log, 10).await;
        let records = read_records(&mut log).await;
        let values: Vec<_> = records
            .iter()
            .map(|(offset, key, value)| (*offset, key.clone(), value.clone().unwrap()))
            .collect();
        assert_eq!(
            values,
            [
                (0, Bytes::from("k"), Bytes::from("committed")),
                (3, Bytes::from("j"), Bytes::from("committed too")),
            ]
        );
        // Both markers are still there.
        let mut bytes = log.read(0, 1 << 16, None).await.unwrap().to_bytes();
        let markers = RecordBatchDecoder::decode_all(&mut bytes)
            .unwrap()
            .into_iter()
            .flat_map(|set| set.records)
            .filter(|record| record.control)
            .count();
        assert_eq!(markers, 2);
    });
}

/// The transaction markers in the log's first batches, as (offset, commit).
async fn markers(log: &mut PartitionLog<SimulatedStorage>) -> Vec<(i64, bool)> {
    let mut bytes = log.read(0, 1 << 20, None).await.unwrap().to_bytes();
    RecordBatchDecoder::decode_all(&mut bytes)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .filter(|record| record.control)
        .map(|record| (record.offset, record.key.unwrap()[3] == 1))
        .collect()
}

/// As Kafka: a commit marker whose transaction has no batch left (every record superseded,
/// and the producer no longer remembers the batches) gets a delete horizon, and goes in a
/// pass after it; markers of transactions with batches left, and the producer's last one,
/// stay. The log reopens with no transaction open.
#[test]
fn commit_markers_of_emptied_transactions_go_after_their_horizon() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = compacted_config();
        let mut log = open(&storage, &config).await;
        // Seven transactions of producer 5, each writing k and committing: data at 2i, marker
        // at 2i + 1. Its sequence state remembers the last five batches (2 to 6).
        for i in 0..7 {
            let value = format!("v{i}");
            log.append(
                build::transactional_batch(&[keyed("k", Some(&value), 2 * i)], 5, 0, i as i32),
                0,
                2 * i,
            )
            .await
            .unwrap();
            log.append_marker(5, 0, 0, true, 0, 2 * i + 1)
                .await
                .unwrap();
        }
        roll(&mut log, 20).await;
        clean_now(&mut log, 10).await;
        assert_eq!(
            read_records(&mut log).await,
            [(12, Bytes::from("k"), Some(Bytes::from("v6")))]
        );
        let all: Vec<(i64, bool)> = (0..7).map(|i| (2 * i + 1, true)).collect();
        assert_eq!(
            markers(&mut log).await,
            all,
            "before the horizon every marker stays"
        );
        assert_eq!(
            log.tombstone_horizon_ms(),
            Some(1_010),
            "the markers' horizon"
        );
        let unforced = CleanRequest {
            force: false,
            ..request(1_010)
        };
        log.clean(&unforced, &mut Unpaced)
            .await
            .unwrap()
            .expect("a pass is due at the markers' horizon");
        assert_eq!(
            markers(&mut log).await,
            all[2..],
            "the first two transactions' markers went"
        );
        assert_eq!(read_records(&mut log).await.len(), 1);
        log.close(1_020).await.unwrap();
        let mut log = open(&storage, &config).await;
        assert_eq!(
            log.first_unstable_offset(),
            None,
            "no transaction looks open"
        );
        assert_eq!(markers(&mut log).await, all[2..]);
    });
}

#[test]
fn an_open_transaction_stops_the_cleaner_below_it() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &compacted_config()).await;
        put(&mut log, "k", Some("1"), 0, 0).await;
        roll(&mut log, 1).await;
        log.append(
            build::transactional_batch(&[keyed("k", Some("open"), 1)], 5, 0, 0),
            0,
            1,
        )
        .await
        .unwrap();
        roll(&mut log, 2).await;
        put(&mut log, "k", Some("3"), 2, 2).await;
        roll(&mut log, 3).await;
        // Only the segment below the open transaction may be cleaned: nothing supersedes
        // offset 0 there.
        let report = clean_now(&mut log, 10).await;
        assert_eq!(report.end_offset, 1);
        assert_eq!(read_records(&mut log).await.len(), 3);
    });
}

/// Counts the bytes the cleaner says it read and wrote.
#[derive(Default)]
struct CountingPacer {
    bytes: u64,
}

impl spate_engine::storage::compaction::Pacer for CountingPacer {
    async fn pace(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
}

#[test]
fn the_cleaner_reports_its_io_to_the_pacer() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &compacted_config()).await;
        for n in 0..40 {
            let value = format!("value-{n}-{}", "x".repeat(100));
            log.append(
                build::batch(&[keyed(&format!("k{}", n % 4), Some(&value), n)]),
                0,
                n,
            )
            .await
            .unwrap();
        }
        roll(&mut log, 50).await;
        let size_before = log.size_bytes();
        let mut pacer = CountingPacer::default();
        let report = log.clean(&request(60), &mut pacer).await.unwrap().unwrap();
        // The dirty segment is read once for the map, the output written once, and only the
        // batches holding a latest record (the last four) are read again.
        assert!(
            pacer.bytes >= size_before + report.bytes_after,
            "{} < {size_before} + {}",
            pacer.bytes,
            report.bytes_after
        );
        assert!(
            pacer.bytes < size_before + 2 * report.bytes_after,
            "superseded batches were read again: {} bytes of I/O for {size_before} cleaned to {}",
            pacer.bytes,
            report.bytes_after
        );
    });
}

#[test]
fn dirty_ratio_and_compaction_lags_decide_when_a_pass_runs() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            min_cleanable_dirty_ratio: Ratio(0.5),
            min_compaction_lag_ms: 1_000,
            max_compaction_lag_ms: 10_000,
            ..compacted_config()
        };
        let mut log = open(&storage, &config).await;
        for n in 0..4 {
            log.append(
                build::batch(&[keyed("k", Some(&format!("v{n}")), 100 * n)]),
                0,
                0,
            )
            .await
            .unwrap();
            roll(&mut log, 100 * n).await;
        }
        let unforced = |now_ms| CleanRequest {
            force: false,
            ..request(now_ms)
        };
        // At 1000 the newest segments (timestamps 100..300) are younger than the lag.
        let dirtiness = log.dirtiness(&unforced(1_000)).unwrap();
        assert_eq!(dirtiness.end_offset, 1, "only the segment old enough");
        log.clean(&unforced(1_350), &mut Unpaced)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(log.first_dirty_offset(), 4);
        // One dirty segment of four: below the ratio, so no pass...
        put(&mut log, "k", Some("v4"), 400, 0).await;
        roll(&mut log, 400).await;
        let dirtiness = log.dirtiness(&unforced(2_000)).unwrap();
        assert!(dirtiness.ratio() < 0.5, "{dirtiness:?}");
        assert!(log
            .clean(&unforced(2_000), &mut Unpaced)
            .await
            .unwrap()
            .is_none());
        // ...until the oldest dirty record is older than max.compaction.lag.ms.
        let overdue = log.dirtiness(&unforced(20_000)).unwrap();
        assert!(overdue.overdue);
        assert!(log
            .clean(&unforced(20_000), &mut Unpaced)
            .await
            .unwrap()
            .is_some());
        let records = read_records(&mut log).await;
        assert_eq!(records.len(), 1);
    });
}

#[test]
fn a_pass_swaps_in_what_retention_left_while_it_ran() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = LogConfig {
            cleanup_policy: spate_engine::storage::CleanupPolicy {
                delete: true,
                compact: true,
            },
            ..compacted_config()
        };
        let mut log = open(&storage, &config).await;
        let mut model = Model::default();
        for n in 0..40i64 {
            let key = Bytes::from(format!("key-{}", n % 5));
            let value = Bytes::from(format!("value-{n}-{}", "x".repeat(300)));
            let record = NewRecord {
                key: Some(key.clone()),
                value: Some(value.clone()),
                timestamp_ms: n,
                headers: Vec::new(),
            };
            let info = log.append(build::batch(&[record]), 0, n).await.unwrap();
            model.records.insert(info.base_offset, (key, Some(value)));
        }
        roll(&mut log, 50).await;
        let segments = log.segment_base_offsets();
        assert!(segments.len() > 3, "{segments:?}");
        let plan = log.plan_clean(&request(60)).await.unwrap().unwrap();
        let output = plan.execute(&mut Unpaced).await.unwrap();
        // Meanwhile the first segment goes (DeleteRecords past it, then retention).
        log.delete_records(segments[1]).await.unwrap();
        assert_eq!(log.segment_base_offsets()[0], segments[1]);
        let report = log.finish_clean(plan, output).await.unwrap();
        assert!(!report.abandoned, "{report:?}");
        assert_eq!(log.first_dirty_offset(), report.end_offset);
        let kept: BTreeMap<i64, (Bytes, Option<Bytes>)> = model
            .records
            .range(segments[1]..)
            .map(|(offset, record)| (*offset, record.clone()))
            .collect();
        let model = Model { records: kept };
        let read = read_records(&mut log).await;
        model.check(&read, log.first_dirty_offset());
        assert_eq!(read.len(), 5, "the latest record of each key");
    });
}

#[test]
fn a_retired_log_swaps_nothing_in() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &compacted_config()).await;
        for n in 0..4 {
            put(&mut log, "k", Some(&format!("v{n}")), n, 0).await;
            roll(&mut log, n).await;
        }
        let before = read_records(&mut log).await;
        let plan = log.plan_clean(&request(10)).await.unwrap().unwrap();
        let output = plan.execute(&mut Unpaced).await.unwrap();
        log.retire();
        let report = log.finish_clean(plan, output).await.unwrap();
        assert!(report.abandoned);
        assert_eq!(read_records(&mut log).await, before);
        log.close(20).await.unwrap();
        // The cleaned files it left are removed at the next open.
        let log = open(&storage, &compacted_config()).await;
        assert!(storage
            .paths()
            .iter()
            .all(|path| !path.to_string_lossy().ends_with(".cleaned")));
        drop(log);
    });
}

/// A batch's partition leader epoch is outside its CRC, and the cleaner copies it into the
/// cleaned segment: a read that flips it fails the pass (tried again later) instead of
/// writing an epoch nobody wrote, which a follower fetching the batch would take into its
/// own leader epoch cache.
#[test]
fn a_bad_read_of_a_leader_epoch_fails_the_pass_instead_of_being_cleaned_in() {
    use spate_engine::storage::backend::read_whole_file;
    block_on(async {
        let storage = SimulatedStorage::new();
        let config = compacted_config();
        let mut log = open(&storage, &config).await;
        log.open_leader_epoch(3).await.unwrap();
        for (n, key) in ["alice", "bob", "alice", "carol"].iter().enumerate() {
            log.append(build::batch(&[keyed(key, Some("value"), n as i64)]), 3, 0)
                .await
                .unwrap();
        }
        roll(&mut log, 10).await;
        let path = super::util::segment_log_path(&partition_dir(), 0);
        let bytes = read_whole_file(&storage, &path).await.unwrap();
        // Bob's batch (offset 1), which the pass keeps: its epoch field, after the base
        // offset and the batch length.
        let second = BatchHeader::parse(&bytes).unwrap().size_bytes();
        storage.flip_next_read(&path, second + 12, 0x5A);
        let error = log.clean(&request(10), &mut Unpaced).await.unwrap_err();
        assert!(
            error.to_string().contains("partition leader epoch"),
            "{error}"
        );
        let report = clean_now(&mut log, 10).await;
        assert_eq!(report.records_removed, 1);
        // Every batch serves its true epoch (reads check it against the cache too).
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let served = log.read(offset, 1 << 16, None).await.unwrap().to_bytes();
            let header = BatchHeader::parse(&served).unwrap();
            assert_eq!(
                header.partition_leader_epoch, 3,
                "at {}",
                header.base_offset
            );
            offset = header.next_offset();
        }
    });
}
