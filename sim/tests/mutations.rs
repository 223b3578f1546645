//! Proof that the simulation bites: each injected bug (the `mutations` feature) is caught
//! within a bounded number of seeds, and the seeds it took are printed.
#![cfg(feature = "mutations")]

use spate_engine::mutation::{self, Mutation};
use spate_sim::{run_cluster_simulation, ClusterOptions};

/// Seeds a mutation may take to be caught.
const SEEDS_MAX: u64 = 200;

#[test]
fn every_injected_bug_is_caught() {
    let options = ClusterOptions::default();
    // `SPATE_MUTATION=LeaderSyncSkipped` tries that one alone.
    let only = std::env::var("SPATE_MUTATION").ok();
    for &injected in Mutation::ALL {
        if only
            .as_ref()
            .is_some_and(|name| *name != format!("{injected:?}"))
        {
            continue;
        }
        mutation::enable(Some(injected));
        let caught = (0..SEEDS_MAX).find_map(|seed| {
            run_cluster_simulation(seed, &options)
                .err()
                .map(|failure| (seed, failure))
        });
        mutation::enable(None);
        let (seed, failure) =
            caught.unwrap_or_else(|| panic!("{injected:?} not caught in {SEEDS_MAX} seeds"));
        println!(
            "{injected:?}: caught after {} seeds: {}",
            seed + 1,
            failure.what
        );
    }
}
