//! Locks that survive a panic in another thread.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, even when a thread panicked while holding it: the clients behind these
/// mutexes keep no invariant a half-finished call could break (the Rust client checks its own
/// state), and refusing every later call would turn one Python exception into a dead object.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
