//! Random sequences of log operations checked against a plain in-memory model: a `Vec` of the
//! records appended. Crashes go through the simulated storage, which drops what was not synced
//! (optionally keeping a torn prefix). After every step: nothing durable is lost, offsets are
//! dense and increasing, and every read returns exactly what was appended.

use bytes::Bytes;
use proptest::prelude::*;
use spate_engine::storage::backend::{CrashMode, SimulatedStorage};
use spate_engine::storage::batch::build::{batch, NewRecord};
use spate_engine::storage::{LogConfig, PartitionLog};

use super::util::{block_on, decode, open, read_all, small_config};

#[derive(Debug, Clone)]
enum Op {
    Append {
        values: Vec<usize>,
        timestamps: Vec<i64>,
    },
    Flush,
    Read {
        position: f64,
        max_bytes: usize,
    },
    LookupTimestamp {
        timestamp: i64,
    },
    Roll,
    Checkpoint,
    Retention {
        now_ms: i64,
    },
    DeleteRecords {
        position: f64,
    },
    Reopen,
    Crash {
        torn_seed: Option<u64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6).prop_flat_map(|count| (
            prop::collection::vec(0usize..300, count),
            prop::collection::vec(0i64..10_000, count),
        )).prop_map(|(values, timestamps)| Op::Append { values, timestamps }),
        2 => Just(Op::Flush),
        3 => (0.0f64..1.0, 1usize..3000).prop_map(|(position, max_bytes)| Op::Read { position, max_bytes }),
        1 => (0i64..11_000).prop_map(|timestamp| Op::LookupTimestamp { timestamp }),
        1 => Just(Op::Roll),
        1 => Just(Op::Checkpoint),
        1 => (0i64..12_000).prop_map(|now_ms| Op::Retention { now_ms }),
        1 => (0.0f64..1.0).prop_map(|position| Op::DeleteRecords { position }),
        1 => Just(Op::Reopen),
        2 => prop::option::of(any::<u64>()).prop_map(|torn_seed| Op::Crash { torn_seed }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelRecord {
    timestamp: i64,
    value: Bytes,
}

struct Harness {
    storage: SimulatedStorage,
    config: LogConfig,
    log: Option<PartitionLog<SimulatedStorage>>,
    /// Every record ever appended and not lost; index = offset.
    records: Vec<ModelRecord>,
    log_start_offset: i64,
    serial: u64,
}

impl Harness {
    fn log(&mut self) -> &mut PartitionLog<SimulatedStorage> {
        self.log.as_mut().expect("open")
    }

    async fn check_all(&mut self) {
        let log_start_offset = self.log_start_offset;
        let expected_end = self.records.len() as i64;
        let log = self.log.as_mut().expect("open");
        assert_eq!(
            log.log_end_offset(),
            expected_end,
            "log end matches the model"
        );
        assert_eq!(
            log.log_start_offset(),
            log_start_offset,
            "log start matches the model"
        );
        assert!(log.durable_offset() <= log.log_end_offset());
        assert!(log.recovery_point() <= log.durable_offset());
        let stored = read_all(log, log_start_offset, 700).await;
        let expected: Vec<_> = self.records[log_start_offset as usize..]
            .iter()
            .enumerate()
            .map(|(i, record)| {
                (
                    log_start_offset + i as i64,
                    record.timestamp,
                    Some(record.value.clone()),
                )
            })
            .collect();
        assert_eq!(stored, expected, "the log holds exactly what was appended");
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Append { values, timestamps } => {
                let new: Vec<ModelRecord> = values
                    .iter()
                    .zip(&timestamps)
                    .map(|(&len, &timestamp)| {
                        self.serial += 1;
                        let mut value = format!("{}:", self.serial).into_bytes();
                        value.resize(len.max(value.len()), b'v');
                        ModelRecord {
                            timestamp,
                            value: Bytes::from(value),
                        }
                    })
                    .collect();
                let encoded = batch(
                    &new.iter()
                        .map(|record| NewRecord::value(record.value.clone(), record.timestamp))
                        .collect::<Vec<_>>(),
                );
                let expected_base = self.records.len() as i64;
                let info = self.log().append(encoded, 3, 20_000).await.expect("append");
                assert_eq!(info.base_offset, expected_base);
                assert_eq!(info.last_offset, expected_base + new.len() as i64 - 1);
                self.records.extend(new);
                if info.sync_due {
                    self.log().flush(20_000).await.expect("flush");
                }
            }
            Op::Flush => {
                self.log().flush(20_000).await.expect("flush");
                assert_eq!(self.log().durable_offset(), self.records.len() as i64);
            }
            Op::Read {
                position,
                max_bytes,
            } => {
                let start = self.log_start_offset;
                let end = self.records.len() as i64;
                let offset = start + ((end - start) as f64 * position) as i64;
                let fetched = self
                    .log()
                    .read(offset, max_bytes, None)
                    .await
                    .expect("read");
                let records = decode(&fetched);
                if offset < end {
                    assert!(!records.is_empty(), "at least one batch below the log end");
                    assert!(
                        fetched.size_bytes() <= max_bytes
                            || fetched.chunks.len() == 1 && records[0].0 <= offset,
                        "over max_bytes only for a single first batch"
                    );
                }
                let first_offset = records.first().map_or(offset, |record| record.0);
                assert!(
                    first_offset <= offset,
                    "the first batch holds the offset asked for"
                );
                for (expected_offset, (record_offset, timestamp, value)) in
                    (first_offset..).zip(records)
                {
                    assert_eq!(record_offset, expected_offset, "dense offsets");
                    let model = &self.records[record_offset as usize];
                    assert_eq!(timestamp, model.timestamp);
                    assert_eq!(value.as_ref(), Some(&model.value));
                }
            }
            Op::LookupTimestamp { timestamp } => {
                let start = self.log_start_offset as usize;
                let expected = self.records[start..]
                    .iter()
                    .enumerate()
                    .find(|(_, record)| record.timestamp >= timestamp)
                    .map(|(i, record)| ((start + i) as i64, record.timestamp));
                let found = self
                    .log()
                    .offset_for_timestamp(timestamp)
                    .await
                    .expect("lookup");
                assert_eq!(found, expected, "first offset at or after {timestamp}");
            }
            Op::Roll => self.log().roll(20_000).await.expect("roll"),
            Op::Checkpoint => self.log().checkpoint(20_000).await.expect("checkpoint"),
            Op::Retention { now_ms } => {
                let before = self.log_start_offset;
                self.log().apply_retention(now_ms).await.expect("retention");
                let after = self.log().log_start_offset();
                assert!(after >= before, "the log start never moves back");
                let cutoff = now_ms - self.config.retention_ms;
                for record in &self.records[before as usize..after as usize] {
                    assert!(
                        record.timestamp < cutoff,
                        "retention deleted only expired records"
                    );
                }
                self.log_start_offset = after;
            }
            Op::DeleteRecords { position } => {
                let start = self.log_start_offset;
                let end = self.records.len() as i64;
                let before = start + ((end - start) as f64 * position) as i64;
                let new_start = self
                    .log()
                    .delete_records(before)
                    .await
                    .expect("delete records");
                assert_eq!(new_start, before.max(start));
                self.log_start_offset = new_start;
            }
            Op::Reopen => {
                self.log
                    .take()
                    .expect("open")
                    .close(20_000)
                    .await
                    .expect("close");
                self.log = Some(open(&self.storage, &self.config).await);
            }
            Op::Crash { torn_seed } => {
                let durable = self.log().durable_offset();
                let written = self.records.len() as i64;
                drop(self.log.take());
                self.storage.crash(match torn_seed {
                    Some(seed) => CrashMode::TornTail { seed },
                    None => CrashMode::DropUnsynced,
                });
                let log = open(&self.storage, &self.config).await;
                let recovered = log.log_end_offset();
                assert!(
                    recovered >= durable,
                    "durable records survive a crash ({recovered} < {durable})"
                );
                assert!(recovered <= written);
                self.records.truncate(recovered as usize);
                self.log_start_offset = self.log_start_offset.min(recovered);
                self.log = Some(log);
            }
        }
    }
}

fn run(ops: Vec<Op>, flush_every_append: bool) {
    block_on(async {
        let config = LogConfig {
            retention_ms: 1_000,
            flush_messages: if flush_every_append { 1 } else { u64::MAX },
            ..small_config()
        };
        let storage = SimulatedStorage::new();
        let log = open(&storage, &config).await;
        let mut harness = Harness {
            storage,
            config,
            log: Some(log),
            records: Vec::new(),
            log_start_offset: 0,
            serial: 0,
        };
        for op in ops {
            harness.apply(op).await;
            harness.check_all().await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_the_model(ops in prop::collection::vec(op(), 1..60), flush_every_append in any::<bool>()) {
        run(ops, flush_every_append);
    }
}
