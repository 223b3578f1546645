//! The storage simulation over many seeds, and its determinism.

use spate_sim::run_storage_simulation;

#[test]
fn storage_simulation_holds_its_invariants_over_many_seeds() {
    let mut crashes = 0;
    let mut detected = 0;
    for seed in 0..60 {
        let summary =
            run_storage_simulation(seed, 400).unwrap_or_else(|failure| panic!("{failure}"));
        crashes += summary.crashes;
        detected += summary.corruptions_detected;
    }
    assert!(crashes > 100, "the runs exercise crashes ({crashes})");
    assert!(detected > 0, "injected corruption is detected somewhere");
}

#[test]
fn a_seed_replays_exactly() {
    let first = run_storage_simulation(7, 500).unwrap();
    let second = run_storage_simulation(7, 500).unwrap();
    assert_eq!(first, second);
    let other = run_storage_simulation(8, 500).unwrap();
    assert_ne!(first.trace_digest, other.trace_digest);
}
