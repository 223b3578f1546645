//! The log cleaner of one shard: compacts the shard's partitions whose `cleanup.policy`
//! includes `compact`, dirtiest first, one pass each, with its I/O paced to the shard's share
//! of `log.cleaner.io.max.bytes.per.second`. The cleaning itself is
//! [`crate::storage::compaction`]; this module only chooses and paces.

use std::cmp::Ordering;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::now_ms;
use super::shard::Shard;
use crate::storage::compaction::{CleanRequest, Pacer};

/// Paces the cleaner to a byte rate, and yields after every window so that the shard's
/// requests go first.
#[derive(Debug)]
pub struct RatePacer {
    bytes_per_second: u64,
    started: Instant,
    bytes: u64,
}

impl RatePacer {
    /// A pacer of `bytes_per_second`; `u64::MAX` only yields.
    pub fn new(bytes_per_second: u64) -> RatePacer {
        RatePacer {
            bytes_per_second: bytes_per_second.max(1),
            started: Instant::now(),
            bytes: 0,
        }
    }
}

impl Pacer for RatePacer {
    fn read_window_bytes(&self) -> usize {
        // A paced cleaner reads 1 MiB at a time, so that an append's write waits behind at
        // most that much of its reading.
        if self.bytes_per_second == u64::MAX {
            4 << 20
        } else {
            1 << 20
        }
    }

    async fn pace(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes_per_second != u64::MAX {
            let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_second as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                glommio::timer::sleep(due - elapsed).await;
            }
        }
        // The cleaner runs in a task queue of its own with few shares: after each window it
        // lets requests, in the default queue, go first.
        glommio::executor().yield_task_queue_now().await;
    }
}

impl Shard {
    /// Runs one cleaner pass over each of this shard's compacted partitions that is dirty
    /// enough, dirtiest first. Returns the passes that cleaned something.
    pub async fn clean_logs(self: &Rc<Self>) -> usize {
        let cores = self.config.cores.max(1);
        let offset_map_bytes_max = self.config.log_cleaner_dedupe_buffer_size / cores;
        let rate = match self.config.log_cleaner_io_max_bytes_per_second {
            u64::MAX => u64::MAX,
            rate => (rate / cores as u64).max(1),
        };
        let mut candidates = Vec::new();
        for partition in self.owned_partitions() {
            let request = CleanRequest {
                now_ms: now_ms(),
                // Records above the high watermark may still be cut by a new leader.
                upper_bound_offset: partition.replica.readable_end(i64::MAX),
                offset_map_bytes_max,
                force: false,
            };
            let dirtiness = partition
                .replica
                .log
                .with_log(async |log| log.dirtiness(&request))
                .await;
            if let Some(dirtiness) = dirtiness {
                candidates.push((dirtiness, request, partition));
            }
        }
        candidates.sort_by(|(a, _, _), (b, _, _)| {
            b.overdue
                .cmp(&a.overdue)
                .then(b.ratio().partial_cmp(&a.ratio()).unwrap_or(Ordering::Equal))
        });
        let mut passes = 0;
        for (_, request, partition) in candidates {
            if self.shutting_down.get() {
                break;
            }
            // Deleted or moved away while earlier passes ran.
            let still_owned = self
                .owned_partitions()
                .iter()
                .any(|owned| Rc::ptr_eq(owned, &partition));
            if !still_owned {
                continue;
            }
            let mut pacer = RatePacer::new(rate);
            let result = partition.replica.log.clean(&request, &mut pacer).await;
            let topic = partition.replica.topic();
            let index = partition.replica.index();
            match result {
                Ok(Some(report)) if !report.abandoned => {
                    passes += 1;
                    info!(
                        %topic, partition = index,
                        bytes_before = report.bytes_before,
                        bytes_after = report.bytes_after,
                        records_removed = report.records_removed,
                        "compacted"
                    );
                }
                Ok(_) => {}
                Err(error) => error!(%topic, partition = index, %error, "compaction failed"),
            }
        }
        passes
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;

    use super::*;
    use crate::runtime::run_local;
    use crate::storage::backend::SimulatedStorage;
    use crate::storage::batch::build::{self, NewRecord};
    use crate::storage::{CleanupPolicy, LogConfig, PartitionLog};

    /// `log.cleaner.io.max.bytes.per.second` holds: a pass over 4 MiB at 4 MiB/s does its
    /// reads and writes (all of which it reports to the pacer) no faster than the rate. Only a
    /// lower bound on time is checked, which a slow machine cannot break.
    #[test]
    fn a_paced_pass_reads_and_writes_no_faster_than_its_rate() {
        const RATE_BYTES_PER_SECOND: u64 = 4 << 20;
        let (io_bytes, bytes_before, elapsed) = run_local(|| async {
            let storage = SimulatedStorage::new();
            let config = LogConfig {
                cleanup_policy: CleanupPolicy::COMPACT,
                segment_bytes: 1 << 20,
                ..LogConfig::default()
            };
            let (mut log, _) = PartitionLog::open(storage, Path::new("/data/t-0"), config, 0)
                .await
                .unwrap();
            let value = Bytes::from(vec![b'v'; 1000]);
            for n in 0..4096_i64 {
                let record = NewRecord {
                    key: Some(Bytes::from(format!("key-{}", n % 64))),
                    value: Some(value.clone()),
                    timestamp_ms: n,
                    headers: Vec::new(),
                };
                log.append(build::batch(&[record]), 0, n).await.unwrap();
            }
            log.roll(5000).await.unwrap();
            log.finish_rolls().await.unwrap();
            let request = CleanRequest {
                now_ms: 5000,
                upper_bound_offset: i64::MAX,
                offset_map_bytes_max: 1 << 20,
                force: true,
            };
            let mut pacer = RatePacer::new(RATE_BYTES_PER_SECOND);
            let started = Instant::now();
            let report = log.clean(&request, &mut pacer).await.unwrap().unwrap();
            let elapsed = started.elapsed();
            assert!(!report.abandoned);
            assert!(
                pacer.bytes >= report.bytes_before + report.bytes_after,
                "every byte read once and written is reported"
            );
            (pacer.bytes, report.bytes_before, elapsed)
        })
        .unwrap();
        assert!(bytes_before > 4 << 20, "{bytes_before}");
        let rate = io_bytes as f64 / elapsed.as_secs_f64();
        assert!(
            rate <= RATE_BYTES_PER_SECOND as f64,
            "{io_bytes} bytes in {elapsed:?}: {rate:.0} bytes/s"
        );
    }
}
