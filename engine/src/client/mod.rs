//! The Kafka client (in progress, issue 5): the pieces that carry no I/O come first.
//!
//! - [`partitioner`]: where a record goes, as the Java client and librdkafka's
//!   `murmur2_random` put it (murmur2 on the key; sticky partitions for keyless records).
//! - [`config`]: settings by Kafka's property names, with errors naming the property.
//!
//! The connections, the producer, the consumer and the admin client build on these; they will
//! run on threads the client owns, not on glommio (see docs/ARCHITECTURE.md).

pub mod config;
pub mod partitioner;
