//! The simulation's only source of randomness: SplitMix64 from a seed.

/// A small deterministic generator (the engine's SplitMix64). Never seeded from the clock or
/// the thread RNG.
#[derive(Debug, Clone)]
pub struct SimRng(spate_engine::rng::SplitMix64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(spate_engine::rng::SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..bound`.
    ///
    /// # Panics
    /// If `bound` is zero.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0.below(bound)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        let first: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(SimRng::new(43).next_u64(), first[0]);
    }
}
