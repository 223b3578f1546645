//! `cleaner-bench`: the log cleaner's throughput, which `compaction-vs-fio.sh` puts next to
//! fio's sequential read on the same disk. Writes a log of 1 KiB records whose keys are 1%
//! distinct, closes it, reopens it and times one cleaner pass over all of it (through the
//! real `PartitionLog` on the glommio DMA backend: the map pass, the rewrite with its reads of
//! the batches that keep a record, the swap). Prints one `name value unit` line per figure.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use spate_benches::workloads::keyed_batch;
use spate_engine::runtime::run_local;
use spate_engine::storage::backend::DmaStorage;
use spate_engine::storage::compaction::{CleanRequest, Unpaced};
use spate_engine::storage::{CleanupPolicy, LogConfig, PartitionLog};

#[derive(Parser)]
struct Args {
    /// Directory on the disk to measure (the one fio measured).
    #[arg(long)]
    dir: PathBuf,
    /// MiB of dirty log to clean.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Distinct keys, in percent of the records.
    #[arg(long, default_value_t = 1.0)]
    distinct_percent: f64,
}

const RECORDS_PER_BATCH: usize = 63;
const RECORD_BYTES: usize = 1024;

fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    let records = args.size_mib * (1 << 20) / (RECORD_BYTES as u64 + 30);
    let distinct_keys = ((records as f64 * args.distinct_percent / 100.0) as u64).max(1);
    let dir = args.dir.join("compacted");
    run_local(move || async move {
        let config = LogConfig {
            cleanup_policy: CleanupPolicy::COMPACT,
            segment_bytes: 128 << 20,
            ..LogConfig::default()
        };
        let (mut log, _) = PartitionLog::open(DmaStorage, &dir, config.clone(), 0)
            .await
            .expect("open");
        let mut written = 0;
        while written < records {
            let batch = keyed_batch(written, RECORDS_PER_BATCH, RECORD_BYTES, distinct_keys);
            log.append(batch, 0, 0).await.expect("append");
            written += RECORDS_PER_BATCH as u64;
        }
        log.roll(0).await.expect("roll");
        log.close(0).await.expect("close");
        let (mut log, _) = PartitionLog::open(DmaStorage, &dir, config, 0)
            .await
            .expect("reopen");
        let request = CleanRequest {
            now_ms: 0,
            upper_bound_offset: i64::MAX,
            offset_map_bytes_max: 128 << 20,
            force: true,
        };
        let started = Instant::now();
        let report = log
            .clean(&request, &mut Unpaced)
            .await
            .expect("clean")
            .expect("something to clean");
        let elapsed = started.elapsed().as_secs_f64();
        assert!(!report.abandoned);
        println!(
            "clean_mib_per_s {:.1} MiB/s",
            report.bytes_before as f64 / elapsed / 1048576.0
        );
        println!("clean_records_removed {} records", report.records_removed);
        println!(
            "clean_bytes_after_mib {:.1} MiB",
            report.bytes_after as f64 / 1048576.0
        );
        log.close(0).await.expect("close");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    })
    .expect("glommio executor");
}
