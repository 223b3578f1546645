//! `spate-sim`: run seeded simulations; a failure prints the seed that replays it.

use std::process::ExitCode;

use clap::Parser;
use spate_sim::run_storage_simulation_traced;

#[derive(Parser)]
#[command(
    name = "spate-sim",
    about = "Deterministic fault simulation of Spate's storage"
)]
struct Args {
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let mut failed = 0;
    for &seed in &seeds {
        match run_storage_simulation_traced(seed, args.steps, args.trace) {
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
