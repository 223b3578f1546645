//! KIP-890 verification guards: a transactional batch that would open a transaction in a
//! partition is appended only if no transaction marker for its producer came between the
//! check that the partition is in the producer's ongoing transaction and the append.
//!
//! The leader asks the transaction coordinator whether the partition is in the producer's
//! ongoing transaction before it appends a batch that would open one (a batch of a transaction
//! already open in the partition needs no asking). The answer can be overtaken: the
//! coordinator may end the transaction (a timeout aborts it) and its marker reach the
//! partition while the batch waits for the answer. Appended after the marker, the batch would
//! open a transaction no marker will ever end, and the partition's last stable offset would
//! stand still for good (Kafka's "hanging transaction"). So, as Kafka's `VerificationGuard`:
//! the leader takes a guard from the log before asking, a marker for the producer voids it,
//! and the append of a batch that would open a transaction must bring the guard still held.
//!
//! Guards live in memory only: a reopened log (a truncation, a restart) holds none, and the
//! guards of the log before never match, because a guard names the log's generation.

use std::collections::BTreeMap;

/// How long an unused guard is kept: Kafka's longest transaction timeout
/// (`transaction.max.timeout.ms`, 15 minutes). A verification still unanswered that long has
/// long been given up by its producer.
pub const VERIFICATION_GUARD_MAX_AGE_MS: i64 = 15 * 60 * 1000;

/// A verification under way; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerificationGuard {
    generation: u64,
    id: u64,
}

/// What a leader's append checks of KIP-890 verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the caller checks transactions otherwise, or they do not concern it (tools,
    /// tests, non-transactional appends).
    Unchecked,
    /// What [`PartitionLog::start_verification`](super::PartitionLog::start_verification)
    /// gave before the coordinator was asked: a guard, or `None` when the producer's
    /// transaction was open in the partition already (it must still be at the append).
    Guard(Option<VerificationGuard>),
}

/// The guards of one partition: at most one per producer.
#[derive(Debug, Clone, Default)]
pub(super) struct VerificationGuards {
    /// By producer id: the guard's id and when it was last taken.
    guards: BTreeMap<i64, (u64, i64)>,
    next_id: u64,
}

impl VerificationGuards {
    /// The producer's guard: the one held, so that concurrent requests of one transaction
    /// share it, or a new one.
    pub(super) fn start(
        &mut self,
        producer_id: i64,
        generation: u64,
        now_ms: i64,
    ) -> VerificationGuard {
        let next_id = &mut self.next_id;
        let (id, taken_ms) = self.guards.entry(producer_id).or_insert_with(|| {
            *next_id += 1;
            (*next_id, now_ms)
        });
        // In use again: not expired while this verification runs.
        *taken_ms = now_ms;
        VerificationGuard {
            generation,
            id: *id,
        }
    }

    /// Whether `guard` is the producer's guard held now.
    pub(super) fn holds(
        &self,
        producer_id: i64,
        generation: u64,
        guard: VerificationGuard,
    ) -> bool {
        guard.generation == generation
            && self
                .guards
                .get(&producer_id)
                .is_some_and(|&(id, _)| id == guard.id)
    }

    /// A marker for the producer: its guard is void.
    pub(super) fn clear(&mut self, producer_id: i64) {
        self.guards.remove(&producer_id);
    }

    /// Forgets the guards last taken more than [`VERIFICATION_GUARD_MAX_AGE_MS`] ago.
    /// Returns how many.
    pub(super) fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.guards.len();
        self.guards
            .retain(|_, &mut (_, taken_ms)| now_ms - taken_ms < VERIFICATION_GUARD_MAX_AGE_MS);
        before - self.guards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_is_shared_until_cleared_and_never_matches_after() {
        let mut guards = VerificationGuards::default();
        let first = guards.start(7, 0, 0);
        assert_eq!(
            guards.start(7, 0, 10),
            first,
            "shared by concurrent requests"
        );
        assert!(guards.holds(7, 0, first));
        assert!(!guards.holds(8, 0, first), "another producer's");
        assert!(!guards.holds(7, 1, first), "another generation of the log");
        guards.clear(7);
        assert!(!guards.holds(7, 0, first));
        let second = guards.start(7, 0, 20);
        assert_ne!(second, first);
        assert!(!guards.holds(7, 0, first), "a void guard stays void");
        assert!(guards.holds(7, 0, second));
    }

    #[test]
    fn unused_guards_expire() {
        let mut guards = VerificationGuards::default();
        let guard = guards.start(7, 0, 1_000);
        assert_eq!(guards.expire(1_000 + VERIFICATION_GUARD_MAX_AGE_MS - 1), 0);
        assert_eq!(guards.expire(1_000 + VERIFICATION_GUARD_MAX_AGE_MS), 1);
        assert!(!guards.holds(7, 0, guard));
    }
}
