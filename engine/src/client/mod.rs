//! The Kafka client behind `spate produce|consume|bench`, the Python package and libspate.
//! It runs on the caller's threads and threads of its own, with blocking sockets, not on
//! glommio (see docs/ARCHITECTURE.md), so that bindings work where glommio cannot.
//!
//! - [`producer`]: batches per partition, a sender thread, pipelined Produce requests,
//!   retries that keep each partition's order.
//! - [`consumer`]: assigned partitions or a group subscription; fetches from each leader.
//! - [`membership`], [`group`], [`assignor`]: the group protocol (joins, heartbeats, commits,
//!   the range, roundrobin and cooperative-sticky assignors).
//! - [`admin`]: topics, configs, partitions, groups and their offsets, records.
//! - [`partitioner`]: where a record goes, as the Java client and librdkafka's
//!   `murmur2_random` put it (murmur2 on the key; sticky partitions for keyless records).
//! - [`config`]: settings by Kafka's property names, with errors naming the property.
//! - [`connection`]: one blocking connection, API versions negotiated with the broker.
//! - [`arena`]: where bindings copy the bytes their callers lend them.
//! - [`error`]: what can go wrong, as [`ClientError`].

mod aborted;
pub mod admin;
pub mod arena;
pub mod assignor;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod membership;
pub mod partitioner;
pub mod producer;
mod sequencer;
pub mod transaction;

pub use aborted::AbortedFilter;
pub use error::ClientError;
