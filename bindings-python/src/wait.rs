//! Blocking waits that Ctrl-C can interrupt: the GIL is released while waiting, and Python's
//! signal handlers run between slices of at most [`SLICE`].

use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// Longest stretch waited without looking at signals.
pub const SLICE: Duration = Duration::from_millis(100);

/// Calls `step` with slices of the wait (GIL released) until it gives a value or `timeout`
/// (`None`: no limit) has passed, running Python's signal handlers in between; an exception
/// they raise (KeyboardInterrupt) ends the wait. `step` gets at least one call, with a zero
/// slice when `timeout` is zero.
pub fn interruptibly<T, F>(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut step: F,
) -> PyResult<Option<T>>
where
    T: Send,
    F: FnMut(Duration) -> Option<T> + Send,
{
    // A timeout too long to add to now is no limit.
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    loop {
        let slice = match deadline {
            None => SLICE,
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(SLICE),
        };
        if let Some(value) = py.detach(|| step(slice)) {
            return Ok(Some(value));
        }
        py.check_signals()?;
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Ok(None);
        }
    }
}
