//! Several `spate serve` processes forming one cluster on loopback.

mod chaos;
mod idempotence;
mod quorum;
mod reassignment;
mod replication;
mod roles;
mod topics;
mod transactions;
