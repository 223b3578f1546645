//! `storage-bench`: the storage figures that `storage-vs-fio.sh` puts next to fio's, on the
//! same disk in the same run. Prints one `name value unit` line per figure.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use spate_benches::workloads::{
    append_fsync_rate, append_throughput, batch_64k_of_1k_records, group_commit_rate,
    log_with_segments, lookup_time, newest_segments_start, record_batch, sequential_read,
};
use spate_engine::runtime::run_local;
use spate_engine::storage::backend::DmaStorage;
use spate_engine::storage::{LogConfig, PartitionLog};

#[derive(Parser)]
struct Args {
    /// Directory on the disk to measure (the one fio measured).
    #[arg(long)]
    dir: PathBuf,
    /// MiB appended and then read back for the throughput figures.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Appends in the fsync-per-append figures.
    #[arg(long, default_value_t = 2000)]
    fsync_appends: u64,
    /// GiB in the reopen figure (the issue asks for 10).
    #[arg(long, default_value_t = 2)]
    reopen_gib: u64,
}

fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    let template = batch_64k_of_1k_records();
    let batch_bytes = template.len() as u64;
    let batches = args.size_mib * (1 << 20) / batch_bytes;
    let dir = args.dir.clone();
    let t = template.clone();
    run_local(move || async move {
        let log_dir = dir.join("append");
        let (elapsed, bytes) = append_throughput(&log_dir, &t, batches).await;
        println!(
            "append_mib_per_s {:.1} MiB/s",
            bytes as f64 / elapsed.as_secs_f64() / 1048576.0
        );
        let (elapsed, bytes) = sequential_read(&log_dir, 1 << 20).await;
        println!(
            "cold_read_mib_per_s {:.1} MiB/s",
            bytes as f64 / elapsed.as_secs_f64() / 1048576.0
        );
        std::fs::remove_dir_all(&log_dir).expect("cleanup");

        for (label, template) in [("", t.clone()), ("_1k", record_batch(1, 1024))] {
            let fsync_dir = dir.join("fsync");
            let elapsed = append_fsync_rate(&fsync_dir, &template, args.fsync_appends).await;
            let single = args.fsync_appends as f64 / elapsed.as_secs_f64();
            println!("append_fsync{label}_per_s {single:.1} appends/s");
            std::fs::remove_dir_all(&fsync_dir).expect("cleanup");
            let group_dir = dir.join("group");
            let each = (args.fsync_appends / 16).max(1);
            let elapsed = group_commit_rate(&group_dir, &template, 16, each).await;
            let grouped = (16 * each) as f64 / elapsed.as_secs_f64();
            println!("group_commit{label}_16_per_s {grouped:.1} appends/s");
            println!("group_commit{label}_speedup {:.2} x", grouped / single);
            std::fs::remove_dir_all(&group_dir).expect("cleanup");
        }

        let reopen_dir = dir.join("reopen");
        let reopen_batches = args.reopen_gib * (1 << 30) / batch_bytes;
        append_throughput(&reopen_dir, &t, reopen_batches).await; // ends with a clean close
        let started = Instant::now();
        let (log, report) = PartitionLog::open(DmaStorage, &reopen_dir, LogConfig::default(), 0)
            .await
            .expect("reopen");
        println!(
            "reopen_clean_{}gib_ms {:.1} ms ({} segments, {} bytes scanned)",
            args.reopen_gib,
            started.elapsed().as_secs_f64() * 1000.0,
            report.segments,
            report.bytes_scanned
        );
        // A crash with 64 MiB, then 256 MiB, after the recovery point.
        let mut log = log;
        for unrecorded_mib in [64u64, 256] {
            for _ in 0..unrecorded_mib * (1 << 20) / batch_bytes {
                log.append(t.clone(), 0, 0).await.expect("append");
            }
            log.flush(0).await.expect("flush");
            drop(log); // no checkpoint: the recovery point stays behind
            let started = Instant::now();
            let (reopened, report) =
                PartitionLog::open(DmaStorage, &reopen_dir, LogConfig::default(), 0)
                    .await
                    .expect("reopen");
            println!(
                "reopen_after_crash_{unrecorded_mib}mib_unrecorded_ms {:.1} ms ({} bytes scanned)",
                started.elapsed().as_secs_f64() * 1000.0,
                report.bytes_scanned
            );
            log = reopened; // its open checkpointed, so the next round starts clean
        }
        log.close(0).await.expect("close");
        std::fs::remove_dir_all(&reopen_dir).expect("cleanup");
    })
    .expect("glommio executor");

    for segments in [10usize, 10_000] {
        let mut log = futures_lite::future::block_on(log_with_segments(segments));
        let first = newest_segments_start(&log, 4);
        let warm = futures_lite::future::block_on(lookup_time(&mut log, first, 20_000));
        println!(
            "lookup_{segments}_segments_us {:.2} us",
            warm.as_secs_f64() * 1e6
        );
        if segments == 10_000 {
            let start = log.log_start_offset();
            let cold = futures_lite::future::block_on(lookup_time(&mut log, start, 5_000));
            println!("lookup_cold_us {:.2} us", cold.as_secs_f64() * 1e6);
        }
    }
}
