//! The driver loop of one group coordinator, for any runtime: [`CoordinatorHost`] holds the
//! sans-IO [`GroupCoordinator`] of one `__consumer_offsets` partition and the requests waiting
//! for its replies; [`drive`] replays the partition into it and then runs it.
//!
//! The partition and the clock come in through [`OffsetsPartition`]: the broker implements it
//! with glommio over its shard (`runtime::groups`), the simulation with turmoil over the same
//! [`Replica`](crate::replication::Replica) its nodes replicate. Everything else (load, batched
//! appends, deadlines, which reply goes to which request) is this module, run alike by both.
//!
//! The loop: hand replies to the waiting requests, append what the coordinator asks to the
//! partition (one append at a time, in order, several gathered into a batch), and call
//! `handle_timeout` when its next deadline passes. Requests reach it through
//! [`CoordinatorHost::call`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::records::RecordBatchDecoder;
use tracing::{debug, error, info, warn};

use super::coordinator::AppendId;
use super::records::OffsetsRecord;
use super::txn_offsets::TxnBatch;
use super::{Call, CallId, CoordinatorConfig, GroupCoordinator, Output, Reply};
use crate::storage::batch::build::{batch, transactional_batch, NewRecord};
use crate::storage::batch::{control_marker, BatchHeader};

/// Appends are gathered into one batch up to this size (one append larger than this is a batch
/// of its own). Under the topic's default `max.message.bytes`.
const APPEND_BATCH_BYTES_MAX: usize = 512 << 10;
/// A record's framing in a batch, at most (length, attributes, deltas, header count).
const RECORD_OVERHEAD_BYTES: usize = 32;
/// Bytes read per step while loading a partition.
pub const LOAD_READ_BYTES: usize = 1 << 20;
/// Longest a request waits for its coordinator to finish loading before it is answered
/// COORDINATOR_LOAD_IN_PROGRESS.
const LOAD_WAIT: Duration = Duration::from_secs(5);
/// Pause before a failed load is tried again.
pub const LOAD_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Longest the driver sleeps without looking at the clock.
const IDLE_WAKE_MS: i64 = 1_000;
/// How long a commit waits for the in-sync replicas of its `__consumer_offsets` partition.
pub const COMMIT_REPLICATION_TIMEOUT_MS: i64 = 30_000;

/// The clock a host runs on: the runtime's timers and the node's wall clock.
pub trait HostClock {
    /// Milliseconds since the epoch, as the coordinator's deadlines count them.
    fn now_ms(&self) -> i64;
    /// Sleeps for `duration` on the runtime's timers.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
}

impl<T: HostClock> HostClock for &T {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        (**self).sleep(duration)
    }
}

/// The `__consumer_offsets` partition a host keeps its groups in, as its runtime reaches it.
pub trait OffsetsPartition: HostClock {
    /// The partition's log start offset.
    fn log_start_offset(&self) -> impl Future<Output = Result<i64, String>>;
    /// Whole batches from `offset` on, up to `max_bytes` (at least one batch), to the log end
    /// (not only the high watermark: a new leader's log is the group's truth), with the log
    /// end offset.
    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<(Bytes, i64), String>>;
    /// Appends one batch as the partition's leader and waits until it is durable: synced, and
    /// in a cluster on every in-sync replica (`acks=all` with `min.insync.replicas` 1, as
    /// Kafka's coordinator appends), for at most [`COMMIT_REPLICATION_TIMEOUT_MS`].
    fn append(
        &self,
        records: BytesMut,
    ) -> impl Future<Output = Result<(), (ResponseError, String)>>;
    /// Waits (at most `timeout`) until the partition's high watermark reaches `offset`:
    /// `true` once it has. A new leader's log may end with records its predecessor never
    /// committed, which a later leader may not have.
    fn wait_committed(&self, offset: i64, timeout: Duration) -> impl Future<Output = bool>;
    /// Whether the runtime is shutting down.
    fn shutting_down(&self) -> bool;
    /// Ready once the runtime starts shutting down.
    fn shutdown(&self) -> impl Future<Output = ()>;
}

/// An append the coordinator asked for: its id, records and, for transactional offsets, the
/// producer's batch fields.
type QueuedAppend = (AppendId, Vec<OffsetsRecord>, Option<TxnBatch>);

enum HostState {
    Loading,
    Ready(Box<GroupCoordinator>),
    Stopped,
}

/// One coordinator and the requests waiting for its replies.
pub struct CoordinatorHost {
    /// The `__consumer_offsets` partition.
    pub partition: i32,
    config: CoordinatorConfig,
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
    appends: RefCell<Vec<QueuedAppend>>,
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
    pub fn new(partition: i32, config: CoordinatorConfig) -> CoordinatorHost {
        CoordinatorHost {
            partition,
            config,
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
    pub async fn call(&self, clock: &impl HostClock, call: Call) -> Reply {
        let lost = Reply::unavailable(&call, ResponseError::CoordinatorNotAvailable);
        self.wait_loaded(clock).await;
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
            coordinator.handle_call(clock.now_ms(), id, call);
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
    async fn wait_loaded(&self, clock: &impl HostClock) {
        let loaded = async {
            while self.is_loading() {
                let listener = self.loaded.listen();
                if !self.is_loading() {
                    return;
                }
                listener.await;
            }
        };
        futures_lite::future::or(loaded, clock.sleep(self.load_wait.get())).await;
    }

    /// Marks it started; `false` if it already was.
    pub fn mark_started(&self) -> bool {
        !self.started.replace(true)
    }

    /// Stops the coordinator: waiting requests get COORDINATOR_NOT_AVAILABLE, the driver
    /// returns.
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

    fn is_loading(&self) -> bool {
        matches!(*self.state.borrow(), HostState::Loading)
    }

    /// Whether it was stopped (or its load failed).
    pub fn is_stopped(&self) -> bool {
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
                Output::Append {
                    id,
                    records,
                    transaction,
                } => {
                    self.appends.borrow_mut().push((id, records, transaction));
                    queued = true;
                }
            }
        }
        queued
    }

    /// Runs `f` on the coordinator once it is loaded and until it stops.
    pub fn with_coordinator<T>(&self, f: impl FnOnce(&mut GroupCoordinator) -> T) -> Option<T> {
        match &mut *self.state.borrow_mut() {
            HostState::Ready(coordinator) => Some(f(coordinator)),
            _ => None,
        }
    }
}

/// Loads the partition into a new coordinator, then runs it until the runtime shuts down or
/// the host is stopped.
pub async fn drive(host: Rc<CoordinatorHost>, partition: impl OffsetsPartition) {
    let started_ms = partition.now_ms();
    // A failed read (a bad read the CRC caught, say) is tried again: a coordinator that gave
    // up would leave its groups without one for as long as this broker leads the partition.
    let (coordinator, loaded_end) = loop {
        match load(&host, &partition).await {
            Ok(loaded) => break loaded,
            Err(error) => {
                error!(partition = host.partition, %error, "cannot load group coordinator; trying again");
                if host.is_stopped() || partition.shutting_down() {
                    host.stop("load failed");
                    return;
                }
                partition.sleep(LOAD_RETRY_BACKOFF).await;
            }
        }
    };
    // Nothing is answered from records above the high watermark: a generation or an
    // assignment its predecessor stored but never committed may be lost with this leader, and
    // then handed out again by the next (found by the simulation: seed 11469 of a soak gave
    // one generation's partitions to two members). Requests meanwhile wait, then are told to
    // retry.
    while !partition
        .wait_committed(loaded_end, Duration::from_millis(IDLE_WAKE_MS as u64))
        .await
    {
        if host.is_stopped() || partition.shutting_down() {
            return;
        }
    }
    if host.is_stopped() {
        return;
    }
    let groups = coordinator.groups().len();
    *host.state.borrow_mut() = HostState::Ready(Box::new(coordinator));
    host.loaded.notify(usize::MAX);
    let elapsed_ms = partition.now_ms().saturating_sub(started_ms);
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
        let now = partition.now_ms();
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
            let results = append(&host, &partition, &appends).await;
            let now = partition.now_ms();
            host.with_coordinator(|coordinator| {
                for ((id, _, _), result) in appends.iter().zip(results) {
                    coordinator.append_completed(now, *id, result);
                }
            });
            continue;
        }
        if host.is_stopped() {
            return;
        }
        if partition.shutting_down() {
            host.stop("shutting down");
            return;
        }
        let now = partition.now_ms();
        let deadline = host
            .with_coordinator(|coordinator| coordinator.poll_timeout())
            .flatten();
        if deadline.is_some_and(|deadline| deadline <= now) {
            continue;
        }
        let sleep_ms = deadline
            .map_or(IDLE_WAKE_MS, |deadline| deadline - now)
            .clamp(1, IDLE_WAKE_MS);
        futures_lite::future::or(
            async {
                woken.await;
            },
            futures_lite::future::or(
                partition.sleep(Duration::from_millis(sleep_ms as u64)),
                partition.shutdown(),
            ),
        )
        .await;
    }
}

/// Appends the coordinator's appends to the partition, in order, several to a batch when they
/// fit (they then share a write and a sync) but never one split across batches: each append
/// succeeds or fails whole, and its result is the result of its batch. Transactional offsets
/// go in a batch of their own, the producer's.
async fn append(
    host: &CoordinatorHost,
    partition: &impl OffsetsPartition,
    appends: &[QueuedAppend],
) -> Vec<Result<(), ResponseError>> {
    let now = partition.now_ms();
    let mut results = Vec::with_capacity(appends.len());
    let mut batch_records: Vec<NewRecord> = Vec::new();
    let mut batch_bytes = 0;
    let mut batch_appends = 0;
    for (index, (_, records, transaction)) in appends.iter().enumerate() {
        for record in records {
            let key = record.key();
            let value = record.value();
            batch_bytes += key.len() + value.as_ref().map_or(0, Bytes::len) + RECORD_OVERHEAD_BYTES;
            batch_records.push(NewRecord {
                key: Some(key),
                value,
                timestamp_ms: now,
                headers: Vec::new(),
            });
        }
        batch_appends += 1;
        let next_fits = transaction.is_none()
            && appends
                .get(index + 1)
                .is_some_and(|(_, next, next_transaction)| {
                    next_transaction.is_none()
                        && batch_bytes + approximate_size(next) <= APPEND_BATCH_BYTES_MAX
                });
        if next_fits {
            continue;
        }
        let records = std::mem::take(&mut batch_records);
        let records = match transaction {
            Some(transaction) => transactional_batch(
                &records,
                transaction.producer_id,
                transaction.producer_epoch,
                transaction.base_sequence,
            ),
            None => batch(&records),
        };
        let result = match partition.append(records).await {
            Ok(()) => Ok(()),
            Err((code, message)) => {
                warn!(partition = host.partition, error = ?message, "group coordinator append failed");
                Err(code)
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

/// Replays the partition from its log start to its log end into a new coordinator; returns
/// it with the offset after the last record loaded.
async fn load(
    host: &CoordinatorHost,
    partition: &impl OffsetsPartition,
) -> Result<(GroupCoordinator, i64), String> {
    let mut coordinator = GroupCoordinator::new(host.config.clone());
    let mut next = partition.log_start_offset().await?;
    let mut skipped = 0usize;
    loop {
        let (records, log_end_offset) = partition.read(next, LOAD_READ_BYTES).await?;
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
            if header.is_control() {
                // A transaction's marker: its offsets become committed, or are dropped.
                match control_marker(&one) {
                    Ok(marker) => coordinator.load_marker(header.producer_id, marker.commit),
                    Err(_) => skipped += 1,
                }
                next = header.next_offset();
                continue;
            }
            match RecordBatchDecoder::decode(&mut one) {
                Ok(set) => {
                    let mut decoded_records = Vec::with_capacity(set.records.len());
                    for record in set.records {
                        let decoded =
                            OffsetsRecord::decode(record.key.as_deref(), record.value.as_deref());
                        match decoded {
                            Ok(decoded) => decoded_records.push(decoded),
                            Err(_) => skipped += 1,
                        }
                    }
                    if header.is_transactional() {
                        let batch = TxnBatch {
                            producer_id: header.producer_id,
                            producer_epoch: header.producer_epoch,
                            base_sequence: header.base_sequence,
                        };
                        let spanned = usize::try_from(header.last_offset_delta)
                            .map_or(decoded_records.len(), |delta| delta + 1);
                        coordinator.load_transactional(batch, spanned, decoded_records);
                    } else {
                        for decoded in decoded_records {
                            coordinator.load(decoded);
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
        if next >= log_end_offset {
            break;
        }
    }
    if skipped > 0 {
        warn!(
            partition = host.partition,
            skipped, "skipped records of __consumer_offsets this broker cannot read"
        );
    }
    coordinator.finish_load(partition.now_ms());
    Ok((coordinator, next))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::group::calls::{CommitRequest, FetchedOffset, MemberRef};
    use crate::runtime::groups::GlommioClock;
    use crate::runtime::run_local;
    use crate::storage::backend::{CrashMode, SimulatedStorage};
    use crate::storage::{LogConfig, PartitionLog};

    /// A partition log on simulated storage; appends are synced before they are answered.
    pub(crate) struct MemoryOffsets {
        log: RefCell<Option<PartitionLog<SimulatedStorage>>>,
        appends: Cell<usize>,
    }

    impl MemoryOffsets {
        pub(crate) async fn open(storage: &SimulatedStorage) -> MemoryOffsets {
            let (log, _) = PartitionLog::open(
                storage.clone(),
                "/data/__consumer_offsets-0",
                LogConfig::default(),
                0,
            )
            .await
            .unwrap();
            MemoryOffsets {
                log: RefCell::new(Some(log)),
                appends: Cell::new(0),
            }
        }

        pub(crate) fn take_log(&self) -> PartitionLog<SimulatedStorage> {
            self.log.borrow_mut().take().unwrap()
        }
    }

    impl HostClock for MemoryOffsets {
        fn now_ms(&self) -> i64 {
            GlommioClock.now_ms()
        }

        async fn sleep(&self, duration: Duration) {
            GlommioClock.sleep(duration).await;
        }
    }

    // The log is taken out of its cell around each await: the test's tasks run one at a time.
    impl OffsetsPartition for &MemoryOffsets {
        async fn log_start_offset(&self) -> Result<i64, String> {
            Ok(self.log.borrow().as_ref().unwrap().log_start_offset())
        }

        async fn read(&self, offset: i64, max_bytes: usize) -> Result<(Bytes, i64), String> {
            let mut log = self.take_log();
            let end = log.log_end_offset();
            let read = if offset >= end {
                Ok(Bytes::new())
            } else {
                log.read(offset, max_bytes, Some(end))
                    .await
                    .map(|fetched| fetched.to_bytes())
                    .map_err(|error| error.to_string())
            };
            *self.log.borrow_mut() = Some(log);
            read.map(|records| (records, end))
        }

        async fn append(&self, records: BytesMut) -> Result<(), (ResponseError, String)> {
            self.appends.set(self.appends.get() + 1);
            let mut log = self.take_log();
            let mut appended = log.append(records, 0, self.now_ms()).await.map(|_| ());
            if appended.is_ok() {
                appended = log.flush(self.now_ms()).await;
            }
            *self.log.borrow_mut() = Some(log);
            appended.map_err(|error| (ResponseError::KafkaStorageError, error.to_string()))
        }

        async fn wait_committed(&self, _offset: i64, _timeout: Duration) -> bool {
            // A single log: everything in it is committed.
            true
        }

        fn shutting_down(&self) -> bool {
            false
        }

        async fn shutdown(&self) {
            std::future::pending::<()>().await;
        }
    }

    fn commit(partition: i32, offset: i64) -> Call {
        Call::Commit(CommitRequest {
            member: MemberRef {
                group_id: "standalone".into(),
                member_id: String::new(),
                group_instance_id: None,
                generation_id: -1,
            },
            offsets: vec![("t".into(), partition, offset, -1, None)],
            retention_ms: -1,
        })
    }

    fn fetch_offsets() -> Call {
        Call::FetchOffsets {
            group_id: "standalone".into(),
            partitions: Some(vec![("t".into(), 0), ("t".into(), 1)]),
        }
    }

    fn fetched(partition: i32, offset: i64) -> FetchedOffset {
        FetchedOffset {
            topic: "t".into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            pending_transaction: false,
        }
    }

    #[test]
    fn commits_are_appended_durably_and_a_new_host_loads_them_from_the_partition() {
        run_local(|| async {
            let storage = SimulatedStorage::new();
            let offsets = MemoryOffsets::open(&storage).await;
            let offsets = &*Box::leak(Box::new(offsets));
            let host = Rc::new(CoordinatorHost::new(0, CoordinatorConfig::default()));
            glommio::spawn_local(drive(Rc::clone(&host), offsets)).detach();
            assert_eq!(
                host.call(offsets, commit(0, 42)).await,
                Reply::Commit(vec![None])
            );
            // Commits that arrive together are written together.
            let calls: Vec<_> = [(0, 50), (1, 7)]
                .into_iter()
                .map(|(partition, offset)| {
                    let host = Rc::clone(&host);
                    glommio::spawn_local(async move {
                        host.call(offsets, commit(partition, offset)).await
                    })
                })
                .collect();
            for call in calls {
                assert_eq!(call.await, Reply::Commit(vec![None]));
            }
            assert!(offsets.appends.get() <= 3);
            host.stop("test");
            assert_eq!(
                host.call(offsets, fetch_offsets()).await,
                Reply::FetchOffsets(Some(ResponseError::CoordinatorNotAvailable), Vec::new())
            );

            // Every commit was synced before it was answered: a crash keeps them all.
            drop(offsets.take_log());
            storage.crash(CrashMode::DropUnsynced);
            let reopened = &*Box::leak(Box::new(MemoryOffsets::open(&storage).await));
            let loaded = Rc::new(CoordinatorHost::new(0, CoordinatorConfig::default()));
            glommio::spawn_local(drive(Rc::clone(&loaded), reopened)).detach();
            assert_eq!(
                loaded.call(reopened, fetch_offsets()).await,
                Reply::FetchOffsets(None, vec![fetched(0, 50), fetched(1, 7)])
            );
            loaded.stop("test");
        })
        .unwrap();
    }

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
            let clock = GlommioClock;
            let host = Rc::new(CoordinatorHost::new(0, CoordinatorConfig::default()));
            host.load_wait.set(Duration::from_millis(30));
            assert_eq!(
                host.call(&clock, heartbeat()).await,
                Reply::Heartbeat(Some(ResponseError::CoordinatorLoadInProgress))
            );
            // A request waiting when the load finishes is answered by the coordinator.
            host.load_wait.set(Duration::from_secs(30));
            let waiting = glommio::spawn_local({
                let host = Rc::clone(&host);
                async move { host.call(&GlommioClock, heartbeat()).await }
            });
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let mut coordinator = GroupCoordinator::new(CoordinatorConfig::default());
            coordinator.finish_load(0);
            *host.state.borrow_mut() = HostState::Ready(Box::new(coordinator));
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
                host.call(&clock, heartbeat()).await,
                Reply::Heartbeat(Some(ResponseError::CoordinatorNotAvailable))
            );
        })
        .unwrap();
    }
}
