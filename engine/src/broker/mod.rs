//! The broker: Kafka request handling on top of the partition logs. The catalog of topics and
//! their configs, topic name rules, the mapping of internal errors to Kafka error codes, the
//! broker's settings and metrics, and one handler module per group of APIs. The glommio side
//! (sockets, shards, channels) is in [`crate::runtime`].

pub mod catalog;
pub mod config;
pub mod errors;
pub mod handlers;
pub mod metrics;
pub mod names;
pub mod quotas;
pub mod topic_config;
