//! The glommio driver of the group coordinators: one [`CoordinatorHost`] per partition of
//! `__consumer_offsets` this shard owns, each running the sans-IO
//! [`GroupCoordinator`](crate::group::GroupCoordinator) in one task.
//!
//! The task replays the partition into the coordinator, then loops: hand replies to the
//! waiting requests, append what the coordinator asks to the partition (one append at a time,
//! in order), and call `handle_timeout` when its next deadline passes. Requests reach it
//! through [`CoordinatorHost::call`], from this shard or, via the channel mesh, from others.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::records::RecordBatchDecoder;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::group::coordinator::AppendId;
use crate::group::records::OffsetsRecord;
use crate::group::{Call, CallId, GroupCoordinator, Output, Reply};
use crate::storage::batch::build::{batch, NewRecord};
use crate::storage::batch::BatchHeader;

use super::now_ms;
use super::shard::{AcksAll, PartitionOp, PartitionOutcome, Shard};

/// Appends are gathered into one batch up to this size (one append larger than this is a batch
/// of its own). Under the topic's default `max.message.bytes`.
const APPEND_BATCH_BYTES_MAX: usize = 512 << 10;
/// A record's framing in a batch, at most (length, attributes, deltas, header count).
const RECORD_OVERHEAD_BYTES: usize = 32;
/// Bytes read per step while loading a partition.
const LOAD_READ_BYTES: usize = 1 << 20;
/// Longest a request waits for its coordinator to finish loading before it is answered
/// COORDINATOR_LOAD_IN_PROGRESS.
const LOAD_WAIT: Duration = Duration::from_secs(5);
/// Longest the driver sleeps without looking at the clock.
const IDLE_WAKE_MS: i64 = 1_000;
/// How long a commit waits for the in-sync replicas of its `__consumer_offsets` partition.
const COMMIT_REPLICATION_TIMEOUT_MS: u64 = 30_000;

enum HostState {
    Loading,
    Ready(GroupCoordinator),
    Stopped,
}

/// One coordinator and the requests waiting for its replies.
pub struct CoordinatorHost {
    /// The `__consumer_offsets` partition.
    pub partition: i32,
    topic_id: Uuid,
    state: RefCell<HostState>,
    waiting: RefCell<BTreeMap<CallId, oneshot::Sender<Reply>>>,
    next_call: Cell<CallId>,
    /// Wakes the driver: a call came in or the host stopped.
    wake: Event,
    /// Wakes requests waiting for the load to finish.
    loaded: Event,
    /// Whether a driver task was started for it.
    started: Cell<bool>,
    /// Appends the coordinator asked for, in order, not yet started by the driver.
    appends: RefCell<Vec<(AppendId, Vec<OffsetsRecord>)>>,
    /// How long a request waits for the load before it is told to retry.
    load_wait: Cell<Duration>,
}

impl std::fmt::Debug for CoordinatorHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorHost")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl CoordinatorHost {
    /// A host that is loading; [`drive`] loads and runs it.
    pub fn new(topic_id: Uuid, partition: i32) -> CoordinatorHost {
        CoordinatorHost {
            partition,
            topic_id,
            state: RefCell::new(HostState::Loading),
            waiting: RefCell::new(BTreeMap::new()),
            next_call: Cell::new(0),
            wake: Event::new(),
            loaded: Event::new(),
            started: Cell::new(false),
            appends: RefCell::new(Vec::new()),
            load_wait: Cell::new(LOAD_WAIT),
        }
    }

    /// Runs `call` and waits for its reply. While the partition loads the reply is
    /// COORDINATOR_LOAD_IN_PROGRESS; once stopped, COORDINATOR_NOT_AVAILABLE (clients retry).
    pub async fn call(&self, call: Call) -> Reply {
        let lost = Reply::unavailable(&call, ResponseError::CoordinatorNotAvailable);
        self.wait_loaded().await;
        let receiver = {
            let mut state = self.state.borrow_mut();
            let coordinator = match &mut *state {
                HostState::Loading => {
                    return Reply::unavailable(&call, ResponseError::CoordinatorLoadInProgress)
                }
                HostState::Stopped => return lost,
                HostState::Ready(coordinator) => coordinator,
            };
            let id = self.next_call.get();
            self.next_call.set(id + 1);
            let (sender, receiver) = oneshot::channel();
            self.waiting.borrow_mut().insert(id, sender);
            coordinator.handle_call(now_ms(), id, call);
            receiver
        };
        // Answers that need no write go out now, not after the write in progress.
        if self.dispatch_outputs() {
            self.wake.notify(1);
        }
        receiver.await.unwrap_or(lost)
    }

    /// Waits a little for a loading coordinator, so that the first request after the topic is
    /// created or the broker starts is answered rather than sent back to retry.
    async fn wait_loaded(&self) {
        let deadline = std::time::Instant::now() + self.load_wait.get();
        while matches!(*self.state.borrow(), HostState::Loading) {
            let listener = self.loaded.listen();
            if !matches!(*self.state.borrow(), HostState::Loading) {
                return;
            }
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return;
            };
            futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
        }
    }

    /// Marks it started; `false` if it already was.
    pub fn mark_started(&self) -> bool {
        !self.started.replace(true)
    }

    /// Stops the coordinator: waiting requests get COORDINATOR_NOT_AVAILABLE.
    pub fn stop(&self, reason: &'static str) {
        debug!(
            partition = self.partition,
            reason, "group coordinator stopped"
        );
        *self.state.borrow_mut() = HostState::Stopped;
        self.waiting.borrow_mut().clear();
        self.wake.notify(usize::MAX);
        self.loaded.notify(usize::MAX);
    }

    fn is_stopped(&self) -> bool {
        matches!(*self.state.borrow(), HostState::Stopped)
    }

    /// Sends the coordinator's replies to their requests and queues the appends it asks for;
    /// returns whether any append was queued.
    fn dispatch_outputs(&self) -> bool {
        let mut queued = false;
        let mut state = self.state.borrow_mut();
        let HostState::Ready(coordinator) = &mut *state else {
            return false;
        };
        while let Some(output) = coordinator.poll_output() {
            match output {
                Output::Reply(call, reply) => {
                    if let Some(sender) = self.waiting.borrow_mut().remove(&call) {
                        let _ = sender.send(reply);
                    }
                }
                Output::Append { id, records } => {
                    self.appends.borrow_mut().push((id, records));
                    queued = true;
                }
            }
        }
        queued
    }

    fn with_coordinator<T>(&self, f: impl FnOnce(&mut GroupCoordinator) -> T) -> Option<T> {
        match &mut *self.state.borrow_mut() {
            HostState::Ready(coordinator) => Some(f(coordinator)),
            _ => None,
        }
    }
}

/// Loads the partition into a new coordinator, then runs it until the shard shuts down or the
/// host is stopped.
pub async fn drive(shard: Rc<Shard>, host: Rc<CoordinatorHost>) {
    let started = std::time::Instant::now();
    let coordinator = match load(&shard, &host).await {
        Ok(coordinator) => coordinator,
        Err(error) => {
            error!(partition = host.partition, %error, "cannot load group coordinator");
            host.stop("load failed");
            return;
        }
    };
    if host.is_stopped() {
        return;
    }
    let groups = coordinator.groups().len();
    *host.state.borrow_mut() = HostState::Ready(coordinator);
    host.loaded.notify(usize::MAX);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if groups > 0 {
        info!(
            partition = host.partition,
            groups, elapsed_ms, "group coordinator loaded"
        );
    } else {
        debug!(
            partition = host.partition,
            elapsed_ms, "group coordinator loaded"
        );
    }
    loop {
        let woken = host.wake.listen();
        // Deadlines first, on every pass, so that a steady stream of commits cannot hold
        // back session expiry or the end of a rebalance.
        let now = now_ms();
        let due = host
            .with_coordinator(|coordinator| coordinator.poll_timeout())
            .flatten()
            .is_some_and(|deadline| deadline <= now);
        if due {
            host.with_coordinator(|coordinator| coordinator.handle_timeout(now));
        }
        host.dispatch_outputs();
        let appends = std::mem::take(&mut *host.appends.borrow_mut());
        if !appends.is_empty() {
            let results = append(&shard, &host, &appends).await;
            let now = now_ms();
            host.with_coordinator(|coordinator| {
                for ((id, _), result) in appends.iter().zip(results) {
                    coordinator.append_completed(now, *id, result);
                }
            });
            continue;
        }
        if host.is_stopped() {
            return;
        }
        if shard.shutting_down.get() {
            host.stop("shutting down");
            return;
        }
        let now = now_ms();
        let deadline = host
            .with_coordinator(|coordinator| coordinator.poll_timeout())
            .flatten();
        if deadline.is_some_and(|deadline| deadline <= now) {
            continue;
        }
        let sleep_ms = deadline
            .map_or(IDLE_WAKE_MS, |deadline| deadline - now)
            .clamp(1, IDLE_WAKE_MS);
        let shutdown = shard.shutdown_event.listen();
        if shard.shutting_down.get() {
            continue;
        }
        futures_lite::future::or(
            async {
                woken.await;
            },
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(Duration::from_millis(sleep_ms as u64)).await;
                },
                async {
                    shutdown.await;
                },
            ),
        )
        .await;
    }
}

/// Appends the coordinator's appends to the partition, in order, several to a batch when they
/// fit (they then share a write and a sync) but never one split across batches: each append
/// succeeds or fails whole, and its result is the result of its batch.
async fn append(
    shard: &Rc<Shard>,
    host: &CoordinatorHost,
    appends: &[(AppendId, Vec<OffsetsRecord>)],
) -> Vec<Result<(), ResponseError>> {
    let now = now_ms();
    let mut results = Vec::with_capacity(appends.len());
    let mut batch_records: Vec<NewRecord> = Vec::new();
    let mut batch_bytes = 0;
    let mut batch_appends = 0;
    for (index, (_, records)) in appends.iter().enumerate() {
        let mut size = 0;
        for record in records {
            let key = record.key();
            let value = record.value();
            size += key.len() + value.as_ref().map_or(0, Bytes::len) + RECORD_OVERHEAD_BYTES;
            batch_records.push(NewRecord {
                key: Some(key),
                value,
                timestamp_ms: now,
                headers: Vec::new(),
            });
        }
        batch_bytes += size;
        batch_appends += 1;
        let next_fits = appends.get(index + 1).is_some_and(|(_, next)| {
            batch_bytes + approximate_size(next) <= APPEND_BATCH_BYTES_MAX
        });
        if next_fits {
            continue;
        }
        // In a cluster a commit is answered once every in-sync replica has it, as Kafka's
        // coordinator appends with acks=all: it must survive the leader.
        let acks_all = shard.in_cluster().then_some(AcksAll {
            min_insync_replicas: 1,
            timeout_ms: COMMIT_REPLICATION_TIMEOUT_MS,
        });
        let op = PartitionOp::Produce {
            records: batch(&std::mem::take(&mut batch_records)).freeze(),
            acks_all,
        };
        let result = match shard.execute(host.topic_id, host.partition, op).await {
            Ok(_) => Ok(()),
            Err(error) => {
                warn!(partition = host.partition, error = ?error.message, "group coordinator append failed");
                Err(error.code)
            }
        };
        results.extend(std::iter::repeat_n(result, batch_appends));
        batch_bytes = 0;
        batch_appends = 0;
    }
    assert_eq!(results.len(), appends.len());
    results
}

fn approximate_size(records: &[OffsetsRecord]) -> usize {
    records
        .iter()
        .map(|record| {
            record.key().len()
                + record.value().as_ref().map_or(0, Bytes::len)
                + RECORD_OVERHEAD_BYTES
        })
        .sum()
}

/// Replays the partition from its log start into a new coordinator.
async fn load(shard: &Rc<Shard>, host: &CoordinatorHost) -> Result<GroupCoordinator, String> {
    let mut coordinator = GroupCoordinator::new(shard.config.groups.clone());
    let start = shard
        .execute(
            host.topic_id,
            host.partition,
            PartitionOp::ListOffset {
                timestamp: -2,
                current_leader_epoch: -1,
                replica: false,
            },
        )
        .await
        .map_err(|error| format!("{:?}: {:?}", error.code, error.message))?;
    let PartitionOutcome::Offset {
        offset: mut next, ..
    } = start
    else {
        return Err("unexpected answer to ListOffsets".into());
    };
    let mut skipped = 0usize;
    loop {
        let fetched = shard
            .execute(
                host.topic_id,
                host.partition,
                PartitionOp::Fetch {
                    to_log_end: true,
                    offset: next,
                    max_bytes: LOAD_READ_BYTES,
                    current_leader_epoch: -1,
                },
            )
            .await
            .map_err(|error| format!("{:?}: {:?}", error.code, error.message))?;
        let PartitionOutcome::Fetched {
            records,
            high_watermark,
            ..
        } = fetched
        else {
            return Err("unexpected answer to Fetch".into());
        };
        if records.is_empty() {
            break;
        }
        let mut rest = records;
        while !rest.is_empty() {
            let header = BatchHeader::parse(&rest)
                .map_err(|error| format!("malformed batch at offset {next}: {error}"))?;
            if header.size_bytes() > rest.len() {
                break;
            }
            let mut one = rest.split_to(header.size_bytes());
            match RecordBatchDecoder::decode(&mut one) {
                Ok(set) => {
                    for record in set.records {
                        let decoded =
                            OffsetsRecord::decode(record.key.as_deref(), record.value.as_deref());
                        match decoded {
                            Ok(decoded) => coordinator.load(decoded),
                            Err(_) => skipped += 1,
                        }
                    }
                }
                Err(error) => {
                    let base_offset = header.base_offset;
                    warn!(partition = host.partition, base_offset, %error, "skipping an unreadable batch of __consumer_offsets");
                }
            }
            next = header.next_offset();
        }
        if next >= high_watermark {
            break;
        }
    }
    if skipped > 0 {
        warn!(
            partition = host.partition,
            skipped, "skipped records of __consumer_offsets this broker cannot read"
        );
    }
    coordinator.finish_load(now_ms());
    Ok(coordinator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::calls::MemberRef;
    use crate::group::CoordinatorConfig;
    use crate::runtime::run_local;

    fn heartbeat() -> Call {
        Call::Heartbeat(MemberRef {
            group_id: "g".into(),
            member_id: "m".into(),
            group_instance_id: None,
            generation_id: 1,
        })
    }

    #[test]
    fn requests_wait_for_the_load_then_are_told_to_retry_and_a_stopped_host_is_unavailable() {
        run_local(|| async {
            let host = Rc::new(CoordinatorHost::new(Uuid::nil(), 0));
            host.load_wait.set(Duration::from_millis(30));
            assert_eq!(
                host.call(heartbeat()).await,
                Reply::Heartbeat(Some(ResponseError::CoordinatorLoadInProgress))
            );
            // A request waiting when the load finishes is answered by the coordinator.
            host.load_wait.set(Duration::from_secs(30));
            let waiting = glommio::spawn_local({
                let host = Rc::clone(&host);
                async move { host.call(heartbeat()).await }
            });
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let mut coordinator = GroupCoordinator::new(CoordinatorConfig::default());
            coordinator.finish_load(0);
            *host.state.borrow_mut() = HostState::Ready(coordinator);
            host.loaded.notify(usize::MAX);
            // Nothing drives this host, so hand the reply over as the driver would.
            let answer = futures_lite::future::or(waiting, async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    host.dispatch_outputs();
                }
            })
            .await;
            assert_eq!(
                answer,
                Reply::Heartbeat(Some(ResponseError::UnknownMemberId))
            );
            host.stop("test");
            assert_eq!(
                host.call(heartbeat()).await,
                Reply::Heartbeat(Some(ResponseError::CoordinatorNotAvailable))
            );
        })
        .unwrap();
    }
}
