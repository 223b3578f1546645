//! The crate's error type: each layer's error, rolled up.

use crate::storage::StorageError;

/// Any error of Spate's engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the storage layer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// From the runtime (executor start-up, resource limits).
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
