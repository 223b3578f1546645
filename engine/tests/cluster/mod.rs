//! Several `spate serve` processes forming one cluster on loopback.

mod quorum;
mod replication;
mod topics;
