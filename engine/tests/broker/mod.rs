//! The broker as a process, driven over TCP with the `kafka-protocol` crate's client side.

mod api_versions;
mod background_sync;
mod bad_input;
mod delayed_end_txn;
mod fuzz;
pub mod idempotence;
mod lifecycle;
mod limits;
mod quotas;
mod read_ahead;
mod read_committed;
mod slow_client;
pub mod util;
