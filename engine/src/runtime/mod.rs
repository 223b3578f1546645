//! The glommio driver: executors, resource limits, the clock.
//!
//! This is the only layer that starts threads, reads the clock and raises process limits. The
//! storage layer takes `now_ms` as an argument and reaches files only through
//! [`crate::storage::backend::Storage`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod alloc;
mod broker_connections;
mod cleaner;

mod connection;
pub mod groups;
mod metadata_observer;
mod producer_ids;
pub mod quorum;
mod replica_fetcher;
pub mod server;
pub mod shard;
pub mod txns;

pub use server::{serve, ServeError};

/// Locked memory glommio needs per executor (its io_uring rings and registered buffers).
pub const MEMLOCK_BYTES_PER_EXECUTOR: u64 = 512 * 1024;
/// I/O memory given to each executor: small, so that the locked-memory limit is easy to meet;
/// larger DMA buffers come from the ordinary allocator.
pub const IO_MEMORY_BYTES: usize = 256 * 1024;

/// Errors starting the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The locked-memory limit is too low for glommio and could not be raised.
    #[error(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {current_bytes} bytes but Spate needs \
         {needed_bytes} bytes ({per_executor} per core) and could not raise it: raise it with \
         `ulimit -l {needed_kib}` in the shell, `LimitMEMLOCK={needed_bytes}` in a systemd unit, \
         or `--ulimit memlock={needed_bytes}` for a container"
    )]
    MemlockTooLow {
        /// The soft limit in force.
        current_bytes: u64,
        /// What is needed.
        needed_bytes: u64,
        /// Needed, in KiB, for `ulimit -l`.
        needed_kib: u64,
        /// Needed per executor.
        per_executor: u64,
    },
    /// glommio could not start an executor.
    #[error("could not start a glommio executor: {0}")]
    Executor(String),
}

/// Makes sure the locked-memory limit allows `executors` glommio executors, raising the soft
/// limit up to the hard limit (or beyond, when privileged) if needed.
///
/// # Errors
/// [`RuntimeError::MemlockTooLow`] with instructions when the limit cannot be raised.
pub fn ensure_memlock_limit(executors: usize) -> Result<(), RuntimeError> {
    let needed_bytes = MEMLOCK_BYTES_PER_EXECUTOR * executors.max(1) as u64 + (1 << 20);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(()); // Cannot tell; let glommio report what it finds.
    }
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed_bytes {
        return Ok(());
    }
    let raised_max = if limit.rlim_max == libc::RLIM_INFINITY || limit.rlim_max >= needed_bytes {
        limit.rlim_max
    } else {
        needed_bytes
    };
    let raised = libc::rlimit {
        rlim_cur: needed_bytes,
        rlim_max: raised_max,
    };
    // SAFETY: setrlimit reads the struct we pass; failure is reported through the return value.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
        return Ok(());
    }
    Err(RuntimeError::MemlockTooLow {
        current_bytes: limit.rlim_cur,
        needed_bytes,
        needed_kib: needed_bytes.div_ceil(1024),
        per_executor: MEMLOCK_BYTES_PER_EXECUTOR,
    })
}

/// Raises the soft limit on open files to the hard limit, as servers with a file per
/// partition segment and a socket per connection do (Go's runtime does it for every
/// program): a shell's usual soft limit of 1,024 would refuse files past about a thousand
/// partitions while the hard limit allows far more. Returns the soft limit before and after,
/// when it was raised.
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    // The kernel refuses more than `fs.nr_open` (1,048,576 by default) even for an
    // unlimited hard limit.
    let wanted = if limit.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_max
    };
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= wanted {
        return None;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass; failure is reported through the return value.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0)
        .then_some((limit.rlim_cur, wanted))
}

/// Runs the future made by `make_future` to completion on a new glommio executor on a new
/// thread, and returns its output. Each executor gets its own thread: glommio keeps per-thread
/// reactor state, and a second executor on a thread that already ran one fails its I/O.
///
/// # Errors
/// [`RuntimeError`] when the locked-memory limit is too low or glommio cannot start.
pub fn run_local<T, F, Fut>(make_future: F) -> Result<T, RuntimeError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    ensure_memlock_limit(1)?;
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(IO_MEMORY_BYTES)
        .name("spate")
        .spawn(make_future)
        .map_err(|error| RuntimeError::Executor(error.to_string()))?;
    handle
        .join()
        .map_err(|error| RuntimeError::Executor(error.to_string()))
}

/// Milliseconds since the Unix epoch, from the system clock. Only drivers call this; the state
/// machines take time as an argument.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A random (version 4) UUID, from [`random_u64`].
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(
        [random_u64().to_le_bytes(), random_u64().to_le_bytes()]
            .concat()
            .try_into()
            .expect("16 bytes"),
    )
    .into_uuid()
}

/// A random number for ids (topic ids, the cluster id): the standard library's per-process
/// random hash keys, mixed with a counter and the clock. Only drivers call this; the state
/// machines take randomness as an argument.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish()
}
