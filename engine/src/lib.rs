//! # Spate engine
//!
//! Spate is an event streaming platform that speaks the Apache Kafka wire protocol. This crate
//! holds its engine: the durable partition log ([`storage`]), the glommio runtime
//! ([`runtime`]), and on them the broker ([`broker`]), the sans-IO replication
//! ([`replication`]), metadata quorum ([`quorum`]) and consumer groups ([`group`]), and the
//! client ([`client`]). [`history`] checks what producers were told against what replicas
//! hold, for the cluster tests and the simulation.
//!
//! ```
//! use bytes::BytesMut;
//! use spate_engine::storage::backend::SimulatedStorage;
//! use spate_engine::storage::batch::build::{batch, NewRecord};
//! use spate_engine::storage::{LogConfig, PartitionLog};
//!
//! futures_lite::future::block_on(async {
//!     let storage = SimulatedStorage::new();
//!     let (mut log, _report) =
//!         PartitionLog::open(storage, "/data/orders-0", LogConfig::default(), 0).await?;
//!     let info = log.append(batch(&[NewRecord::value("hello", 1_000)]), 0, 1_000).await?;
//!     assert_eq!(info.base_offset, 0);
//!     log.flush(1_000).await?;
//!     let fetched = log.read(0, 1 << 20, None).await?;
//!     assert!(!fetched.is_empty());
//!     Ok::<_, spate_engine::storage::StorageError>(())
//! })
//! .unwrap();
//! ```

/// Whether the injected bug `Mutation::$name` is on: always `false` unless the `mutations`
/// feature is built in ([`mutation`] then says).
macro_rules! mutated {
    ($name:ident) => {{
        #[cfg(feature = "mutations")]
        let on = crate::mutation::is_enabled(crate::mutation::Mutation::$name);
        #[cfg(not(feature = "mutations"))]
        let on = false;
        on
    }};
}

pub mod broker;
pub mod client;
pub mod error;
pub mod group;
pub mod history;
pub mod limits;
#[cfg(feature = "mutations")]
pub mod mutation;
pub mod protocol;
pub mod quorum;
pub mod replication;
pub mod rng;
pub mod runtime;
pub mod storage;
pub mod txn;

pub use error::{Error, Result};
