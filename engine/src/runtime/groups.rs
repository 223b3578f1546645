//! The glommio side of the group coordinators: [`ShardOffsets`], the
//! [`OffsetsPartition`](crate::group::host::OffsetsPartition) of a shard's
//! `__consumer_offsets` partition, over which [`drive`] runs the runtime-agnostic
//! [`CoordinatorHost`] (`crate::group::host`), one per partition the shard leads. Requests reach
//! a host through [`CoordinatorHost::call`] with [`GlommioClock`], from this shard or, via the
//! channel mesh, from others.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use uuid::Uuid;

pub use crate::group::host::CoordinatorHost;
use crate::group::host::{
    HostClock, OffsetsPartition, COMMIT_REPLICATION_TIMEOUT_MS, LOAD_READ_BYTES,
};

use super::now_ms;
use super::shard::{AcksAll, PartitionOp, PartitionOutcome, Shard};

/// The broker's clock: the system clock and glommio's timers.
#[derive(Debug, Clone, Copy)]
pub struct GlommioClock;

impl HostClock for GlommioClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}

/// One `__consumer_offsets` (or `__transaction_state`) partition of this shard, reached
/// through the shard's partition operations as a request's would be.
pub struct ShardOffsets {
    pub(super) shard: Rc<Shard>,
    pub(super) topic_id: Uuid,
    pub(super) partition: i32,
    /// For a coordinator made afresh at each leader epoch (a transaction coordinator): the
    /// epoch it was loaded at. Its appends are refused once the partition is led at another
    /// epoch, so that a coordinator being stopped never writes into the log its successor
    /// loaded. `None` for a group coordinator, which the same leader keeps across epochs.
    pub(super) leader_epoch: Option<i32>,
}

impl ShardOffsets {
    async fn execute(&self, op: PartitionOp) -> Result<PartitionOutcome, (ResponseError, String)> {
        self.shard
            .execute(self.topic_id, self.partition, op)
            .await
            .map_err(|error| (error.code, format!("{:?}", error.message)))
    }

    /// Whether this shard still leads the partition at [`ShardOffsets::leader_epoch`] (always,
    /// without one).
    pub(super) fn leads_at_coordinator_epoch(&self) -> bool {
        let Some(epoch) = self.leader_epoch else {
            return true;
        };
        self.shard
            .role_of(&self.shard.catalog(), self.topic_id, self.partition)
            == Some((true, epoch))
    }
}

impl HostClock for ShardOffsets {
    fn now_ms(&self) -> i64 {
        GlommioClock.now_ms()
    }

    async fn sleep(&self, duration: Duration) {
        GlommioClock.sleep(duration).await;
    }
}

impl OffsetsPartition for ShardOffsets {
    async fn log_start_offset(&self) -> Result<i64, String> {
        let listed = self
            .execute(PartitionOp::ListOffset {
                timestamp: -2,
                read_committed: false,
                current_leader_epoch: -1,
                replica: false,
            })
            .await
            .map_err(|(code, message)| format!("{code:?}: {message}"))?;
        match listed {
            PartitionOutcome::Offset { offset, .. } => Ok(offset),
            _ => Err("unexpected answer to ListOffsets".into()),
        }
    }

    async fn read(&self, offset: i64, max_bytes: usize) -> Result<(Bytes, i64), String> {
        debug_assert!(max_bytes <= LOAD_READ_BYTES);
        let fetched = self
            .execute(PartitionOp::Fetch {
                to_log_end: true,
                offset,
                max_bytes,
                current_leader_epoch: -1,
                read_committed: false,
            })
            .await
            .map_err(|(code, message)| format!("{code:?}: {message}"))?;
        match fetched {
            // Read to the log end, the answer's high watermark is the log end.
            PartitionOutcome::Fetched {
                records,
                high_watermark,
                ..
            } => Ok((records, high_watermark)),
            _ => Err("unexpected answer to Fetch".into()),
        }
    }

    async fn append(&self, records: BytesMut) -> Result<(), (ResponseError, String)> {
        // In a cluster a commit is answered once every in-sync replica has it, as Kafka's
        // coordinator appends with acks=all: it must survive the leader.
        let acks_all = self.shard.in_cluster().then_some(AcksAll {
            min_insync_replicas: 1,
            timeout_ms: COMMIT_REPLICATION_TIMEOUT_MS as u64,
        });
        self.execute(PartitionOp::Produce {
            records: records.freeze(),
            acks_all,
            verify: None,
            leader_epoch: self.leader_epoch,
        })
        .await
        .map(|_| ())
    }

    async fn wait_committed(&self, offset: i64, timeout: Duration) -> bool {
        // The latest offset a consumer may read is the high watermark (the log end on a
        // single node).
        let high_watermark = async || match self
            .execute(PartitionOp::ListOffset {
                timestamp: -1,
                read_committed: false,
                current_leader_epoch: -1,
                replica: false,
            })
            .await
        {
            Ok(PartitionOutcome::Offset { offset, .. }) => offset,
            _ => -1,
        };
        if high_watermark().await >= offset {
            return true;
        }
        // Any append or high watermark move ends the wait; then look again.
        let _ = self
            .execute(PartitionOp::WaitForData {
                offset: offset - 1,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                replica: false,
            })
            .await;
        high_watermark().await >= offset
    }

    fn shutting_down(&self) -> bool {
        self.shard.shutting_down.get()
    }

    async fn shutdown(&self) {
        let listener = self.shard.shutdown_event.listen();
        if self.shard.shutting_down.get() {
            return;
        }
        listener.await;
    }
}

/// Loads `host`'s partition and runs it until the shard shuts down or the host is stopped.
pub async fn drive(shard: Rc<Shard>, topic_id: Uuid, host: Rc<CoordinatorHost>) {
    let partition = ShardOffsets {
        shard,
        topic_id,
        partition: host.partition,
        leader_epoch: None,
    };
    crate::group::host::drive(host, partition).await;
}
