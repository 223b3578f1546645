//! `spate-sim`: run seeded simulations; a failure prints the seed that replays it.
//!
//! - `spate-sim --seed N [--trace]`: replays one cluster seed (3 or 5 nodes under turmoil,
//!   faults chosen by the seed), printing every event with `--trace`.
//! - `spate-sim --seeds 100000 --jobs 2`: a soak over many seeds, in parallel.
//! - `spate-sim storage ...`: the partition-log simulation.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::{Parser, Subcommand};
use spate_sim::{run_cluster_simulation, run_storage_simulation_traced, ClusterOptions};

#[derive(Parser)]
#[command(
    name = "spate-sim",
    about = "Deterministic fault simulation of Spate",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Nodes running the metadata quorum under turmoil, with network, crash and clock faults.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Run this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Otherwise, run this many seeds starting at --first-seed.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Seeds run at once (threads).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print every event (use with --seed to replay a failure).
    #[arg(long)]
    trace: bool,
    /// Simulated seconds with faults.
    #[arg(long, default_value_t = 30)]
    fault_secs: u64,
    /// Simulated seconds of healing before liveness is checked.
    #[arg(long, default_value_t = 20)]
    heal_secs: u64,
}

#[derive(Subcommand)]
enum Command {
    /// The partition log over simulated storage: appends, reads, retention, crashes, corruption.
    Storage {
        /// Run this one seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Otherwise, run this many seeds starting at --first-seed.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed of the range.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// Print every step (use with --seed to replay a failure).
        #[arg(long)]
        trace: bool,
        /// Steps per seed.
        #[arg(long, default_value_t = 2_000)]
        steps: u64,
    },
}

fn seed_list(seed: Option<u64>, first_seed: u64, seeds: u64) -> Vec<u64> {
    match seed {
        Some(seed) => vec![seed],
        None => (first_seed..first_seed + seeds).collect(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        None => {
            let cluster = args.cluster;
            let options = ClusterOptions {
                fault_secs: cluster.fault_secs,
                heal_secs: cluster.heal_secs,
                echo_trace: cluster.trace,
            };
            let seeds = seed_list(cluster.seed, cluster.first_seed, cluster.seeds);
            run_cluster(&seeds, cluster.jobs.max(1), &options)
        }
        Some(Command::Storage {
            seed,
            seeds,
            first_seed,
            trace,
            steps,
        }) => run_storage(&seed_list(seed, first_seed, seeds), steps, trace),
    }
}

fn run_cluster(seeds: &[u64], jobs: usize, options: &ClusterOptions) -> ExitCode {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let simulated_ms = AtomicU64::new(0);
    let output = Mutex::new(());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(&seed) = seeds.get(index) else {
                    return;
                };
                let outcome = run_cluster_simulation(seed, options);
                let _printing = output.lock();
                match outcome {
                    Ok(summary) => {
                        simulated_ms.fetch_add(summary.simulated_ms, Ordering::SeqCst);
                        println!(
                            "seed {seed}: ok, {} nodes, faults {:?}: {} injected ({} crashes, \
                             {} controlled shutdowns), {} terms, {} topics acknowledged, \
                             {} records sent, {} acknowledged (acks=all), {} consumed by the \
                             group in {} generations with {} commits, {} transactions \
                             committed and {} aborted ({} and {} records in the log), {} \
                             events, digest {:016x}",
                            summary.nodes,
                            summary.faults_enabled,
                            summary.faults_injected,
                            summary.crashes,
                            summary.controlled_shutdowns,
                            summary.terms,
                            summary.topics_acknowledged,
                            summary.records_sent,
                            summary.records_acknowledged,
                            summary.records_consumed,
                            summary.group_generations,
                            summary.commits_acknowledged,
                            summary.transactions_committed,
                            summary.transactions_aborted,
                            summary.transactional_records_committed,
                            summary.transactional_records_aborted,
                            summary.events,
                            summary.trace_digest
                        );
                    }
                    Err(failure) => {
                        println!("{failure}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let failed = failed.load(Ordering::SeqCst);
    let wall_s = started.elapsed().as_secs_f64();
    let simulated_h = simulated_ms.load(Ordering::SeqCst) as f64 / 3_600_000.0;
    println!(
        "{} passed, {failed} failed; {simulated_h:.2} simulated cluster-hours in {wall_s:.1} s \
         ({:.2} cluster-hours per wall-minute)",
        seeds.len() as u64 - failed,
        simulated_h / (wall_s / 60.0)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_storage(seeds: &[u64], steps: u64, trace: bool) -> ExitCode {
    let mut failed = 0;
    for &seed in seeds {
        match run_storage_simulation_traced(seed, steps, trace) {
            Ok(summary) => println!(
                "seed {seed}: ok, {} records, {} crashes, {} corruptions injected, {} detected, digest {:016x}",
                summary.records_appended,
                summary.crashes,
                summary.corruptions_injected,
                summary.corruptions_detected,
                summary.trace_digest
            ),
            Err(failure) => {
                println!("seed {seed}: FAILED: {failure}");
                failed += 1;
            }
        }
    }
    println!("{} passed, {failed} failed", seeds.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
