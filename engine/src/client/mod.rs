//! The Kafka client (in progress, issue 5): the pieces that carry no I/O come first.
//!
//! - [`partitioner`]: where a record goes, as the Java client and librdkafka's
//!   `murmur2_random` put it (murmur2 on the key; sticky partitions for keyless records).
//! - [`config`]: settings by Kafka's property names, with errors naming the property.
//! - [`connection`]: one blocking connection, API versions negotiated with the broker.
//! - [`admin`]: topics (create, delete, describe) and the cluster.
//!
//! The producer and the consumer build on these; the client runs on the caller's or its own
//! threads with blocking sockets, not on glommio (see docs/ARCHITECTURE.md).

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

pub use error::ClientError;
