//! The storage simulation: one partition log, a seeded workload, seeded faults, a model.

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use spate_engine::storage::backend::{CrashMode, SimulatedStorage};
use spate_engine::storage::batch::build::{batch, NewRecord};
use spate_engine::storage::{Installed, LogConfig, PartitionLog, RollFinish, StorageError};

use crate::SimRng;

/// What a successful run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Records acknowledged by append.
    pub records_appended: u64,
    /// Simulated power losses.
    pub crashes: u64,
    /// Corruptions injected into durable bytes.
    pub corruptions_injected: u64,
    /// Reads that reported corruption instead of returning data.
    pub corruptions_detected: u64,
    /// A digest of every observable outcome, equal for equal seeds.
    pub trace_digest: u64,
}

/// An invariant that broke, with the seed that replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFailure {
    /// Replays the run.
    pub seed: u64,
    /// Step at which the invariant broke.
    pub step: u64,
    /// What broke.
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation failed at step {}: {} (replay with: spate-sim --seed {})",
            self.step, self.message, self.seed
        )
    }
}

struct Sim {
    rng: SimRng,
    seed: u64,
    step: u64,
    now_ms: i64,
    storage: SimulatedStorage,
    config: LogConfig,
    log: Option<PartitionLog<SimulatedStorage>>,
    /// Value of every record appended and not lost; index = offset.
    model: Vec<Bytes>,
    log_start_offset: i64,
    /// Whether this seed injects media corruption (swarm testing: half the seeds do not, so that
    /// the strict durability check applies to them throughout).
    corruption_enabled: bool,
    trace: bool,
    /// Durable bytes were corrupted on purpose: reads may report corruption, and a crash may cut
    /// the log at a damaged batch, losing records after it.
    corrupted: bool,
    /// A background roll finish in progress, advanced one step at a time between the other
    /// steps, as appends and crashes race it in the broker.
    roll_finish: Option<FinishStep>,
    summary: SimSummary,
}

/// Where the simulated background roll finish is.
enum FinishStep {
    /// Taken from the log; its files are to be staged.
    Begun(RollFinish<SimulatedStorage>),
    /// Staged, with the staging's outcome; to be installed.
    Staged(RollFinish<SimulatedStorage>, std::io::Result<()>),
    /// Installed to the end; the directory is to be synced.
    Finished(RollFinish<SimulatedStorage>),
}

fn dir() -> PathBuf {
    PathBuf::from("/sim/topic-0")
}

/// Runs `steps` steps of the storage simulation for `seed`.
///
/// # Errors
/// The first broken invariant, as a [`SimFailure`] naming the seed.
pub fn run_storage_simulation(seed: u64, steps: u64) -> Result<SimSummary, SimFailure> {
    run_storage_simulation_traced(seed, steps, false)
}

/// As [`run_storage_simulation`], printing every step to standard error when `trace` is set.
///
/// # Errors
/// The first broken invariant, as a [`SimFailure`] naming the seed.
pub fn run_storage_simulation_traced(
    seed: u64,
    steps: u64,
    trace: bool,
) -> Result<SimSummary, SimFailure> {
    futures_lite::future::block_on(async {
        let mut rng = SimRng::new(seed);
        let config = swarm_config(&mut rng);
        let corruption_enabled = rng.chance(50);
        let storage = SimulatedStorage::new();
        let log = PartitionLog::open(storage.clone(), dir(), config.clone(), 0)
            .await
            .map_err(|error| SimFailure {
                seed,
                step: 0,
                message: format!("open failed: {error}"),
            })?
            .0;
        let mut sim = Sim {
            rng,
            seed,
            step: 0,
            now_ms: 1_000_000,
            storage,
            config,
            log: Some(log),
            model: Vec::new(),
            log_start_offset: 0,
            corruption_enabled,
            trace,
            corrupted: false,
            roll_finish: None,
            summary: SimSummary::default(),
        };
        for step in 0..steps {
            sim.step = step;
            sim.now_ms += sim.rng.below(50) as i64;
            sim.step_once().await?;
        }
        Ok(sim.summary)
    })
}

/// Settings drawn from the seed, so that different seeds stress different corners.
fn swarm_config(rng: &mut SimRng) -> LogConfig {
    LogConfig {
        segment_bytes: [4096, 16384, 65536][rng.below(3) as usize],
        index_interval_bytes: [64, 512, 4096][rng.below(3) as usize],
        flush_messages: [1, 10, u64::MAX][rng.below(3) as usize],
        retention_ms: [-1, 2_000, 20_000][rng.below(3) as usize],
        tail_cache_bytes: [0, 1024, 1 << 20][rng.below(3) as usize],
        closed_segment_handles_max: 1 + rng.below(4) as usize,
        ..LogConfig::default()
    }
}

impl Sim {
    fn fail(&self, message: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.seed,
            step: self.step,
            message: message.into(),
        }
    }

    fn mix(&mut self, value: u64) {
        let digest = &mut self.summary.trace_digest;
        *digest = (*digest ^ value).wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn log(&mut self) -> &mut PartitionLog<SimulatedStorage> {
        self.log.as_mut().expect("the log is open between steps")
    }

    async fn step_once(&mut self) -> Result<(), SimFailure> {
        let now_ms = self.now_ms;
        let choice = self.rng.below(100);
        if self.trace {
            let log = self.log.as_ref().expect("open");
            eprintln!(
                "step {} choice {choice}: start {} end {} durable {} recovery point {} segments {:?}",
                self.step,
                log.log_start_offset(),
                log.log_end_offset(),
                log.durable_offset(),
                log.recovery_point(),
                log.segment_base_offsets()
            );
        }
        match choice {
            0..=49 => self.append().await?,
            50..=59 => {
                self.log()
                    .flush(now_ms)
                    .await
                    .map_err(|error| self.fail(format!("flush: {error}")))?;
            }
            60..=71 => self.read().await?,
            72..=79 => {
                // Now and then the whole finish at once, else one step of it.
                let steps = if self.rng.chance(20) { 16 } else { 1 };
                for _ in 0..steps {
                    self.advance_roll_finish().await?;
                }
            }
            80..=82 => self
                .log()
                .roll(now_ms)
                .await
                .map_err(|error| self.fail(format!("roll: {error}")))?,
            83..=86 => {
                self.log()
                    .apply_retention(now_ms)
                    .await
                    .map_err(|error| self.fail(format!("retention: {error}")))?;
                self.log_start_offset = self.log().log_start_offset();
            }
            87..=88 => {
                let span = self.model.len() as i64 - self.log_start_offset;
                let before = self.log_start_offset + self.rng.below(span as u64 + 1) as i64;
                let start = self
                    .log()
                    .delete_records(before)
                    .await
                    .map_err(|error| self.fail(format!("delete_records: {error}")))?;
                self.log_start_offset = start;
            }
            89..=96 => self.crash().await?,
            _ => {
                if self.corruption_enabled {
                    self.corrupt()
                }
            }
        }
        self.check().await
    }

    async fn append(&mut self) -> Result<(), SimFailure> {
        let count = 1 + self.rng.below(8);
        let values: Vec<Bytes> = (0..count)
            .map(|i| {
                let len = self.rng.below(200) as usize;
                let mut value = format!("{}-{i}:", self.model.len()).into_bytes();
                value.resize(value.len() + len, b'a' + (i % 26) as u8);
                Bytes::from(value)
            })
            .collect();
        let now_ms = self.now_ms;
        let encoded = batch(
            &values
                .iter()
                .map(|value| NewRecord::value(value.clone(), now_ms))
                .collect::<Vec<_>>(),
        );
        let info = self
            .log()
            .append(encoded, 1, now_ms)
            .await
            .map_err(|error| self.fail(format!("append: {error}")))?;
        if info.base_offset != self.model.len() as i64 {
            return Err(self.fail(format!(
                "append got base offset {} where {} was next",
                info.base_offset,
                self.model.len()
            )));
        }
        if info.sync_due {
            self.log()
                .flush(now_ms)
                .await
                .map_err(|error| self.fail(format!("flush: {error}")))?;
        }
        self.summary.records_appended += count;
        self.mix(info.base_offset as u64);
        self.model.extend(values);
        Ok(())
    }

    async fn read(&mut self) -> Result<(), SimFailure> {
        let end = self.model.len() as i64;
        let span = (end - self.log_start_offset) as u64;
        let offset = self.log_start_offset + self.rng.below(span + 1) as i64;
        let max_bytes = 1 + self.rng.below(4096) as usize;
        match self.log().read(offset, max_bytes, None).await {
            Ok(fetched) => {
                let mut bytes = fetched.to_bytes();
                let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|error| {
                    self.fail(format!("read returned undecodable bytes: {error}"))
                })?;
                let records: Vec<_> = sets.into_iter().flat_map(|set| set.records).collect();
                if offset < end && records.is_empty() {
                    return Err(
                        self.fail(format!("read at {offset} below the end returned nothing"))
                    );
                }
                if let Some(first) = records.first() {
                    if first.offset > offset {
                        return Err(self.fail("read skipped the offset asked for"));
                    }
                }
                for (expected, record) in (records.first().map_or(0, |r| r.offset)..).zip(&records)
                {
                    if record.offset != expected {
                        return Err(self.fail(format!(
                            "offsets not dense: {} after {}",
                            record.offset,
                            expected - 1
                        )));
                    }
                    let model = self.model.get(record.offset as usize);
                    if record.value.as_ref() != model {
                        return Err(
                            self.fail(format!("offset {} holds the wrong value", record.offset))
                        );
                    }
                }
                self.mix(records.len() as u64);
                Ok(())
            }
            Err(StorageError::Corrupt { .. }) if self.corrupted => {
                self.summary.corruptions_detected += 1;
                Ok(())
            }
            Err(error) => Err(self.fail(format!("read at {offset}: {error}"))),
        }
    }

    /// Takes the background roll finish one step further; see `storage::roll_finish`.
    async fn advance_roll_finish(&mut self) -> Result<(), SimFailure> {
        self.roll_finish = match self.roll_finish.take() {
            None => self
                .log()
                .begin_roll_finish()
                .map_err(|error| self.fail(format!("begin roll finish: {error}")))?
                .map(FinishStep::Begun),
            Some(FinishStep::Begun(finish)) => {
                let staged = finish.stage().await;
                Some(FinishStep::Staged(finish, staged))
            }
            Some(FinishStep::Staged(finish, staged)) => {
                let installed = self
                    .log()
                    .install_roll_finish(finish, staged)
                    .await
                    .map_err(|error| self.fail(format!("install roll finish: {error}")))?;
                self.mix(match installed {
                    Installed::Next(_) => 1,
                    Installed::Finished(_) => 2,
                    Installed::Stale => 3,
                });
                match installed {
                    Installed::Next(finish) => Some(FinishStep::Begun(finish)),
                    Installed::Finished(finish) => Some(FinishStep::Finished(finish)),
                    Installed::Stale => None,
                }
            }
            Some(FinishStep::Finished(finish)) => {
                finish
                    .settle()
                    .await
                    .map_err(|error| self.fail(format!("settle roll finish: {error}")))?;
                None
            }
        };
        Ok(())
    }

    async fn crash(&mut self) -> Result<(), SimFailure> {
        let durable = self.log().durable_offset();
        self.roll_finish = None;
        drop(self.log.take());
        let mode = if self.rng.chance(50) {
            CrashMode::TornTail {
                seed: self.rng.next_u64(),
            }
        } else {
            CrashMode::DropUnsynced
        };
        self.storage.crash(mode);
        self.summary.crashes += 1;
        let opened = PartitionLog::open(
            self.storage.clone(),
            dir(),
            self.config.clone(),
            self.now_ms,
        )
        .await;
        let log = match opened {
            Ok((log, _)) => log,
            Err(StorageError::Corrupt { .. }) if self.corrupted => {
                // A header corrupted below the recovery point stops the log from opening, as it
                // must. The run cannot go on from here: start over on a fresh disk.
                self.summary.corruptions_detected += 1;
                self.restart_fresh().await?;
                return Ok(());
            }
            Err(error) => return Err(self.fail(format!("reopen after crash: {error}"))),
        };
        let recovered = log.log_end_offset();
        if recovered < durable && !self.corrupted {
            return Err(self.fail(format!(
                "crash lost durable records: log ends at {recovered}, {durable} were durable"
            )));
        }
        if recovered > self.model.len() as i64 {
            return Err(self.fail("recovered more records than were appended"));
        }
        self.model.truncate(recovered as usize);
        self.log_start_offset = log.log_start_offset();
        self.mix(recovered as u64);
        self.log = Some(log);
        Ok(())
    }

    async fn restart_fresh(&mut self) -> Result<(), SimFailure> {
        self.storage = SimulatedStorage::new();
        let (log, _) = PartitionLog::open(
            self.storage.clone(),
            dir(),
            self.config.clone(),
            self.now_ms,
        )
        .await
        .map_err(|error| self.fail(format!("open: {error}")))?;
        self.log = Some(log);
        self.model.clear();
        self.log_start_offset = 0;
        self.corrupted = false;
        Ok(())
    }

    fn corrupt(&mut self) {
        let paths: Vec<PathBuf> = self
            .storage
            .paths()
            .into_iter()
            .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
            .collect();
        if paths.is_empty() {
            return;
        }
        let path = paths[self.rng.below(paths.len() as u64) as usize].clone();
        let Some(len) = self.storage.durable_len(&path).filter(|&len| len > 0) else {
            return;
        };
        let position = self.rng.below(len as u64) as usize;
        self.storage
            .corrupt_byte(&path, position, 1 << self.rng.below(8));
        self.corrupted = true;
        self.summary.corruptions_injected += 1;
    }

    async fn check(&mut self) -> Result<(), SimFailure> {
        let end = self.model.len() as i64;
        let start = self.log_start_offset;
        let log = self.log.as_ref().expect("open");
        if log.log_end_offset() != end {
            return Err(self.fail(format!(
                "log end {} but the model has {end}",
                log.log_end_offset()
            )));
        }
        if log.log_start_offset() != start {
            return Err(self.fail(format!(
                "log start {} but the model has {start}",
                log.log_start_offset()
            )));
        }
        if !(log.recovery_point() <= log.durable_offset() && log.durable_offset() <= end) {
            return Err(self.fail("recovery point <= durable offset <= log end broken"));
        }
        Ok(())
    }
}
