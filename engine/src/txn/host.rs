//! The driver loop of one transaction coordinator, for any runtime: [`TxnHost`] holds the
//! sans-IO [`TxnCoordinator`] of one `__transaction_state` partition and the requests waiting
//! for its replies; [`drive`] replays the partition into it and then runs it.
//!
//! The partition, the clock and the partitions' leaders come in through [`TxnPartition`]: the
//! broker implements it with glommio over its shard (`runtime::txns`). The loop: hand replies
//! to the waiting requests, append the state changes the coordinator asks for (one at a time,
//! in order), write each ending transaction's markers (concurrently, beside the appends, each
//! retried until written) and report them, and tick the coordinator (timeouts, expiry) every
//! second. Marker writes that gave up (the partition is led at a later epoch, or the broker
//! stops) are not reported: the transaction stays prepared for the next coordinator to end.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::records::RecordBatchDecoder;
use tracing::{debug, error, info, warn};

use super::coordinator::{AppendId, CallId, TxnCall, TxnCoordinator, TxnOutput, TxnReply};
use super::records::TxnRecord;
use super::TxnCoordinatorConfig;
use crate::group::host::{HostClock, OffsetsPartition, LOAD_READ_BYTES, LOAD_RETRY_BACKOFF};
use crate::storage::batch::build::{batch, NewRecord};
use crate::storage::batch::BatchHeader;

/// Longest a request waits for its coordinator to finish loading before it is answered
/// COORDINATOR_LOAD_IN_PROGRESS.
const LOAD_WAIT: Duration = Duration::from_secs(5);
/// How often the coordinator looks for timed-out transactions and expired ids (Kafka's
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms` is 10 s).
const TICK_MS: i64 = 1_000;

/// One transaction's markers to write, as the coordinator asked for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMarkers {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer whose transaction ends.
    pub producer_id: i64,
    /// Its epoch, as the markers carry it.
    pub producer_epoch: i16,
    /// Commit (else abort).
    pub commit: bool,
    /// The coordinator's epoch.
    pub coordinator_epoch: i32,
    /// The partitions to write a marker to.
    pub partitions: Vec<super::state::TxnPartition>,
}

/// The `__transaction_state` partition a host keeps its transactional ids in, and the way to
/// the leaders of the partitions transactions write to.
pub trait TxnPartition: OffsetsPartition {
    /// Writes `markers` to each of their partitions, retrying (with a pause) until every
    /// partition has its marker or no longer needs it (deleted, or the marker is refused as
    /// stale): `true` then. `false` when it gave up first, because the coordinator lost its
    /// partition (a later leader epoch) or the runtime shuts down: the transaction is not
    /// complete, and the next coordinator writes its markers again.
    fn write_markers(&self, markers: &TxnMarkers) -> impl Future<Output = bool>;
}

enum HostState {
    Loading,
    Ready(Box<TxnCoordinator>),
    Stopped,
}

/// One transaction coordinator and the requests waiting for its replies.
pub struct TxnHost {
    /// The `__transaction_state` partition.
    pub partition: i32,
    /// Its leader epoch: the coordinator's epoch.
    pub coordinator_epoch: i32,
    config: TxnCoordinatorConfig,
    state: RefCell<HostState>,
    waiting: RefCell<BTreeMap<CallId, oneshot::Sender<TxnReply>>>,
    next_call: Cell<CallId>,
    /// Wakes the driver: a call came in or the host stopped.
    wake: Event,
    /// Wakes requests waiting for the load to finish.
    loaded: Event,
    started: Cell<bool>,
}

impl std::fmt::Debug for TxnHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnHost")
            .field("partition", &self.partition)
            .field("coordinator_epoch", &self.coordinator_epoch)
            .finish_non_exhaustive()
    }
}

fn unavailable(call: &TxnCall, error: ResponseError) -> TxnReply {
    match call {
        TxnCall::InitProducerId { .. } => TxnReply::ProducerId {
            error: Some(error),
            producer_id: -1,
            producer_epoch: -1,
        },
        _ => TxnReply::Done(Some(error)),
    }
}

impl TxnHost {
    /// A host that is loading; [`drive`] loads and runs it.
    pub fn new(partition: i32, coordinator_epoch: i32, config: TxnCoordinatorConfig) -> TxnHost {
        TxnHost {
            partition,
            coordinator_epoch,
            config,
            state: RefCell::new(HostState::Loading),
            waiting: RefCell::new(BTreeMap::new()),
            next_call: Cell::new(0),
            wake: Event::new(),
            loaded: Event::new(),
            started: Cell::new(false),
        }
    }

    /// Runs `call` and waits for its reply. While the partition loads the reply is
    /// COORDINATOR_LOAD_IN_PROGRESS; once stopped, NOT_COORDINATOR (clients look the
    /// coordinator up again).
    pub async fn call(&self, clock: &impl HostClock, call: TxnCall) -> TxnReply {
        let lost = unavailable(&call, ResponseError::NotCoordinator);
        let loaded = async {
            while matches!(*self.state.borrow(), HostState::Loading) {
                let listener = self.loaded.listen();
                if !matches!(*self.state.borrow(), HostState::Loading) {
                    return;
                }
                listener.await;
            }
        };
        futures_lite::future::or(loaded, clock.sleep(LOAD_WAIT)).await;
        let receiver = {
            let mut state = self.state.borrow_mut();
            let coordinator = match &mut *state {
                HostState::Loading => {
                    return unavailable(&call, ResponseError::CoordinatorLoadInProgress)
                }
                HostState::Stopped => return lost,
                HostState::Ready(coordinator) => coordinator,
            };
            let id = self.next_call.get();
            self.next_call.set(id + 1);
            let (sender, receiver) = oneshot::channel();
            self.waiting.borrow_mut().insert(id, sender);
            coordinator.handle_call(id, call, clock.now_ms());
            receiver
        };
        self.wake.notify(1);
        receiver.await.unwrap_or(lost)
    }

    /// Marks it started; `false` if it already was.
    pub fn mark_started(&self) -> bool {
        !self.started.replace(true)
    }

    /// Stops the coordinator: waiting requests get NOT_COORDINATOR, the driver returns.
    pub fn stop(&self, reason: &'static str) {
        debug!(
            partition = self.partition,
            reason, "transaction coordinator stopped"
        );
        *self.state.borrow_mut() = HostState::Stopped;
        self.waiting.borrow_mut().clear();
        self.wake.notify(usize::MAX);
        self.loaded.notify(usize::MAX);
    }

    /// Whether it was stopped (or its load failed).
    pub fn is_stopped(&self) -> bool {
        matches!(*self.state.borrow(), HostState::Stopped)
    }

    /// Runs `f` on the coordinator once it is loaded and until it stops.
    pub fn with_coordinator<T>(&self, f: impl FnOnce(&mut TxnCoordinator) -> T) -> Option<T> {
        match &mut *self.state.borrow_mut() {
            HostState::Ready(coordinator) => Some(f(coordinator)),
            _ => None,
        }
    }

    /// Sends the coordinator's replies to their requests; returns the appends and marker
    /// writes it asks for.
    fn take_outputs(&self) -> (Vec<(AppendId, TxnRecord)>, Vec<TxnMarkers>) {
        let mut appends = Vec::new();
        let mut markers = Vec::new();
        let mut state = self.state.borrow_mut();
        let HostState::Ready(coordinator) = &mut *state else {
            return (appends, markers);
        };
        while let Some(output) = coordinator.poll_output() {
            match output {
                TxnOutput::Reply(call, reply) => {
                    if let Some(sender) = self.waiting.borrow_mut().remove(&call) {
                        let _ = sender.send(reply);
                    }
                }
                TxnOutput::Append { id, record } => appends.push((id, record)),
                TxnOutput::WriteMarkers {
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    commit,
                    coordinator_epoch,
                    partitions,
                } => markers.push(TxnMarkers {
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    commit,
                    coordinator_epoch,
                    partitions,
                }),
            }
        }
        (appends, markers)
    }
}

/// A transaction's marker writes: the markers, and whether they were all written.
type MarkerWrite<'a> = Pin<Box<dyn Future<Output = (TxnMarkers, bool)> + 'a>>;

/// A state change being appended, with its id.
type StateAppend<'a> = Pin<Box<dyn Future<Output = (AppendId, Result<(), ()>)> + 'a>>;

/// Loads the partition into a new coordinator, then runs it until the runtime shuts down or
/// the host is stopped.
pub async fn drive(host: Rc<TxnHost>, partition: impl TxnPartition) {
    let started_ms = partition.now_ms();
    // A failed read (a bad read the CRC caught, say) is tried again: a coordinator that gave
    // up would leave its groups without one for as long as this broker leads the partition.
    let (coordinator, loaded_end) = loop {
        match load(&host, &partition).await {
            Ok(loaded) => break loaded,
            Err(error) => {
                error!(partition = host.partition, %error, "cannot load transaction coordinator; trying again");
                if host.is_stopped() || partition.shutting_down() {
                    host.stop("load failed");
                    return;
                }
                partition.sleep(LOAD_RETRY_BACKOFF).await;
            }
        }
    };
    // As the group coordinator: nothing is answered from records above the high watermark,
    // which a later leader may not have.
    while !partition
        .wait_committed(loaded_end, Duration::from_millis(TICK_MS as u64))
        .await
    {
        if host.is_stopped() || partition.shutting_down() {
            return;
        }
    }
    if host.is_stopped() {
        return;
    }
    let transactions = coordinator.transactions().count();
    *host.state.borrow_mut() = HostState::Ready(Box::new(coordinator));
    host.loaded.notify(usize::MAX);
    let elapsed_ms = partition.now_ms().saturating_sub(started_ms);
    if transactions > 0 {
        info!(
            partition = host.partition,
            coordinator_epoch = host.coordinator_epoch,
            transactions,
            elapsed_ms,
            "transaction coordinator loaded"
        );
    } else {
        debug!(
            partition = host.partition,
            coordinator_epoch = host.coordinator_epoch,
            elapsed_ms,
            "transaction coordinator loaded"
        );
    }
    let partition = &partition;
    let host_ref: &TxnHost = &host;
    let mut writes: Vec<MarkerWrite<'_>> = Vec::new();
    // State changes are appended one at a time, in the coordinator's order, while marker
    // writes go on (an append waits for the in-sync replicas, markers for other partitions'
    // leaders: neither waits for the other).
    let mut queued_appends: VecDeque<(AppendId, TxnRecord)> = VecDeque::new();
    let mut appending: Option<StateAppend<'_>> = None;
    let mut next_tick_ms = partition.now_ms() + TICK_MS;
    loop {
        let woken = host.wake.listen();
        let now = partition.now_ms();
        if now >= next_tick_ms {
            host.with_coordinator(|coordinator| coordinator.tick(now));
            next_tick_ms = now + TICK_MS;
        }
        let (appends, markers) = host.take_outputs();
        for markers in markers {
            debug!(
                transactional_id = markers.transactional_id,
                commit = markers.commit,
                partitions = markers.partitions.len(),
                "writing transaction markers"
            );
            writes.push(Box::pin(async move {
                let written = partition.write_markers(&markers).await;
                (markers, written)
            }));
        }
        queued_appends.extend(appends);
        if host.is_stopped() || partition.shutting_down() {
            // An append in flight is never dropped half done, and its requests get their
            // answers; what is queued behind it is not started (the next coordinator finds
            // the transactions as the log has them).
            if let Some(append) = appending.take() {
                let (id, result) = append.await;
                let now = partition.now_ms();
                host.with_coordinator(|coordinator| coordinator.append_completed(now, id, result));
                drop(host.take_outputs());
            }
            if !host.is_stopped() {
                host.stop("shutting down");
            }
            return;
        }
        if appending.is_none() {
            if let Some((id, record)) = queued_appends.pop_front() {
                appending = Some(Box::pin(async move {
                    (id, append(host_ref, partition, &record).await)
                }));
            }
        }
        let sleep_ms = (next_tick_ms - partition.now_ms()).clamp(1, TICK_MS);
        let event = futures_lite::future::or(
            async {
                woken.await;
                DriveEvent::Woken
            },
            futures_lite::future::or(
                async {
                    futures_lite::future::or(
                        partition.sleep(Duration::from_millis(sleep_ms as u64)),
                        partition.shutdown(),
                    )
                    .await;
                    DriveEvent::Woken
                },
                std::future::poll_fn(|context| {
                    if let Some(append) = appending.as_mut() {
                        if let Poll::Ready((id, result)) = append.as_mut().poll(context) {
                            return Poll::Ready(DriveEvent::Appended(id, result));
                        }
                    }
                    for (index, write) in writes.iter_mut().enumerate() {
                        if let Poll::Ready((markers, written)) = write.as_mut().poll(context) {
                            return Poll::Ready(DriveEvent::MarkerWritesEnded {
                                index,
                                markers,
                                written,
                            });
                        }
                    }
                    Poll::Pending
                }),
            ),
        )
        .await;
        match event {
            DriveEvent::Woken => {}
            DriveEvent::Appended(id, result) => {
                appending = None;
                let now = partition.now_ms();
                host.with_coordinator(|coordinator| coordinator.append_completed(now, id, result));
            }
            DriveEvent::MarkerWritesEnded {
                index,
                markers,
                written,
            } => {
                drop(writes.swap_remove(index));
                if !written {
                    // Given up (the partition's leadership moved on, or the broker stops):
                    // the transaction is not complete; this host is about to stop, and the
                    // next coordinator writes the markers again.
                    debug!(
                        transactional_id = markers.transactional_id,
                        "transaction markers not all written"
                    );
                    continue;
                }
                let now = partition.now_ms();
                host.with_coordinator(|coordinator| {
                    coordinator.markers_written(
                        &markers.transactional_id,
                        markers.producer_id,
                        markers.producer_epoch,
                        now,
                    );
                });
            }
        }
    }
}

/// What woke [`drive`]'s loop.
enum DriveEvent {
    /// A call, a tick or shutdown: look at the outputs and the time.
    Woken,
    /// The state append in flight completed.
    Appended(AppendId, Result<(), ()>),
    /// The marker writes at `index` in the list ended: all `written`, or given up.
    MarkerWritesEnded {
        index: usize,
        markers: TxnMarkers,
        written: bool,
    },
}

/// Appends one state change, as one record in one batch.
async fn append(
    host: &TxnHost,
    partition: &impl TxnPartition,
    record: &TxnRecord,
) -> Result<(), ()> {
    let records = batch(&[NewRecord {
        key: Some(record.encode_key()),
        value: record.encode_value(),
        timestamp_ms: partition.now_ms(),
        headers: Vec::new(),
    }]);
    partition.append(records).await.map_err(|(code, message)| {
        warn!(partition = host.partition, ?code, error = %message, "transaction state append failed");
    })
}

/// Replays the partition from its log start to its log end into a new coordinator; returns
/// it with the offset after the last record loaded.
async fn load(
    host: &TxnHost,
    partition: &impl TxnPartition,
) -> Result<(TxnCoordinator, i64), String> {
    let mut coordinator = TxnCoordinator::new(host.config, host.coordinator_epoch);
    let mut next = partition.log_start_offset().await?;
    let mut skipped = 0usize;
    loop {
        let (records, log_end_offset) = partition.read(next, LOAD_READ_BYTES).await?;
        if records.is_empty() {
            break;
        }
        let mut rest: Bytes = records;
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
                        let Some(key) = record.key.as_deref() else {
                            skipped += 1;
                            continue;
                        };
                        match TxnRecord::decode(key, record.value.as_deref()) {
                            Ok(decoded) => coordinator.load(decoded),
                            Err(_) => skipped += 1,
                        }
                    }
                }
                Err(error) => {
                    let base_offset = header.base_offset;
                    warn!(partition = host.partition, base_offset, %error, "skipping an unreadable batch of __transaction_state");
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
            skipped, "skipped records of __transaction_state this broker cannot read"
        );
    }
    coordinator.finish_load();
    Ok((coordinator, next))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::*;
    use crate::group::host::tests::MemoryOffsets;
    use crate::runtime::run_local;
    use crate::storage::backend::{CrashMode, SimulatedStorage};
    use crate::txn::state::TxnState;

    thread_local! {
        /// The markers the hosts of a test wrote, in order.
        static MARKERS: RefCell<Vec<TxnMarkers>> = const { RefCell::new(Vec::new()) };
    }

    impl TxnPartition for &MemoryOffsets {
        async fn write_markers(&self, markers: &TxnMarkers) -> bool {
            MARKERS.with(|written| written.borrow_mut().push(markers.clone()));
            true
        }
    }

    fn init(id: &str) -> TxnCall {
        init_with(id, 1000)
    }

    /// InitProducerId of `id`, giving it `fresh_producer_id` if it has none.
    fn init_with(id: &str, fresh_producer_id: i64) -> TxnCall {
        TxnCall::InitProducerId {
            transactional_id: id.into(),
            timeout_ms: 60_000,
            fresh_producer_id,
            expected: None,
        }
    }

    /// AddPartitionsToTxn of `out`'s `partitions` for `id`'s producer at epoch 0.
    fn add_out(id: &str, producer_id: i64, partitions: &[i32]) -> TxnCall {
        TxnCall::AddPartitions {
            transactional_id: id.into(),
            producer_id,
            producer_epoch: 0,
            partitions: partitions
                .iter()
                .map(|&partition| ("out".to_owned(), partition))
                .collect(),
        }
    }

    /// EndTxn (commit, version 4 and below) of `id`'s producer at epoch 0.
    fn commit(id: &str, producer_id: i64) -> TxnCall {
        TxnCall::EndTxn {
            transactional_id: id.into(),
            producer_id,
            producer_epoch: 0,
            commit: true,
            bump_epoch: false,
            fresh_producer_id: None,
        }
    }

    #[test]
    fn a_transaction_runs_through_the_host_and_a_new_host_loads_its_state_from_the_partition() {
        run_local(|| async {
            let storage = SimulatedStorage::new();
            let partition = &*Box::leak(Box::new(MemoryOffsets::open(&storage).await));
            let host = Rc::new(TxnHost::new(0, 3, TxnCoordinatorConfig::default()));
            glommio::spawn_local(drive(Rc::clone(&host), partition)).detach();
            assert_eq!(
                host.call(partition, init("t1")).await,
                TxnReply::ProducerId {
                    error: None,
                    producer_id: 1000,
                    producer_epoch: 0
                }
            );
            assert_eq!(
                host.call(partition, add_out("t1", 1000, &[0, 1])).await,
                TxnReply::Done(None)
            );
            let verify = |index| TxnCall::Verify {
                transactional_id: "t1".into(),
                producer_id: 1000,
                producer_epoch: 0,
                partitions: vec![("out".into(), index)],
            };
            assert_eq!(host.call(partition, verify(1)).await, TxnReply::Done(None));
            assert_eq!(
                host.call(partition, verify(2)).await,
                TxnReply::Done(Some(ResponseError::InvalidTxnState))
            );
            assert_eq!(
                host.call(partition, commit("t1", 1000)).await,
                TxnReply::Done(None)
            );
            // The markers are written, then the transaction completes.
            let completed = async {
                loop {
                    let state = host.with_coordinator(|coordinator| {
                        coordinator.transaction("t1").unwrap().state
                    });
                    if state == Some(TxnState::CompleteCommit) {
                        return;
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            };
            futures_lite::future::or(completed, async {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                panic!("the transaction did not complete");
            })
            .await;
            let markers = MARKERS.with(|written| written.borrow().clone());
            assert_eq!(
                markers,
                vec![TxnMarkers {
                    transactional_id: "t1".into(),
                    producer_id: 1000,
                    producer_epoch: 0,
                    commit: true,
                    coordinator_epoch: 3,
                    partitions: vec![("out".into(), 0), ("out".into(), 1)],
                }]
            );
            host.stop("test");

            // Each state change was synced before it was answered: a crash keeps them.
            drop(partition.take_log());
            storage.crash(CrashMode::DropUnsynced);
            let reopened = &*Box::leak(Box::new(MemoryOffsets::open(&storage).await));
            let loaded = Rc::new(TxnHost::new(0, 4, TxnCoordinatorConfig::default()));
            glommio::spawn_local(drive(Rc::clone(&loaded), reopened)).detach();
            // The next incarnation of the producer gets the next epoch.
            assert_eq!(
                loaded.call(reopened, init("t1")).await,
                TxnReply::ProducerId {
                    error: None,
                    producer_id: 1000,
                    producer_epoch: 1
                }
            );
            loaded.stop("test");
        })
        .unwrap();
    }

    /// A partition whose appends and marker writes wait until the test opens them.
    struct Gated<'a> {
        inner: &'a MemoryOffsets,
        appends_open: Cell<bool>,
        markers_open: Cell<bool>,
        /// Marker writes give up (as when the coordinator's partition moves on).
        markers_give_up: Cell<bool>,
        opened: Event,
        markers_done: RefCell<Vec<String>>,
    }

    impl<'a> Gated<'a> {
        fn over(inner: &'a MemoryOffsets) -> Gated<'a> {
            Gated {
                inner,
                appends_open: Cell::new(true),
                markers_open: Cell::new(true),
                markers_give_up: Cell::new(false),
                opened: Event::new(),
                markers_done: RefCell::new(Vec::new()),
            }
        }
    }

    impl Gated<'_> {
        async fn wait_until(&self, open: impl Fn(&Self) -> bool) {
            loop {
                let listener = self.opened.listen();
                if open(self) {
                    return;
                }
                listener.await;
            }
        }

        fn open(&self, gate: &Cell<bool>, open: bool) {
            gate.set(open);
            self.opened.notify(usize::MAX);
        }
    }

    impl HostClock for Gated<'_> {
        fn now_ms(&self) -> i64 {
            self.inner.now_ms()
        }

        async fn sleep(&self, duration: Duration) {
            self.inner.sleep(duration).await;
        }
    }

    impl OffsetsPartition for &Gated<'_> {
        async fn log_start_offset(&self) -> Result<i64, String> {
            self.inner.log_start_offset().await
        }

        async fn read(&self, offset: i64, max_bytes: usize) -> Result<(Bytes, i64), String> {
            self.inner.read(offset, max_bytes).await
        }

        async fn append(&self, records: BytesMut) -> Result<(), (ResponseError, String)> {
            self.wait_until(|gated| gated.appends_open.get()).await;
            self.inner.append(records).await
        }

        async fn wait_committed(&self, offset: i64, timeout: Duration) -> bool {
            self.inner.wait_committed(offset, timeout).await
        }

        fn shutting_down(&self) -> bool {
            false
        }

        async fn shutdown(&self) {
            std::future::pending::<()>().await;
        }
    }

    impl TxnPartition for &Gated<'_> {
        async fn write_markers(&self, markers: &TxnMarkers) -> bool {
            self.wait_until(|gated| gated.markers_open.get()).await;
            if self.markers_give_up.get() {
                return false;
            }
            self.markers_done
                .borrow_mut()
                .push(markers.transactional_id.clone());
            true
        }
    }

    /// A host started over a partition with every gate open.
    async fn gated_host() -> (&'static Gated<'static>, Rc<TxnHost>) {
        let storage = SimulatedStorage::new();
        let inner = &*Box::leak(Box::new(MemoryOffsets::open(&storage).await));
        let partition = &*Box::leak(Box::new(Gated::over(inner)));
        let host = Rc::new(TxnHost::new(0, 3, TxnCoordinatorConfig::default()));
        glommio::spawn_local(drive(Rc::clone(&host), partition)).detach();
        (partition, host)
    }

    #[test]
    fn markers_are_written_while_a_state_append_waits() {
        run_local(|| async {
            let (partition, host) = gated_host().await;
            partition.markers_open.set(false);
            for (id, fresh) in [("t1", 1000), ("t2", 2000)] {
                assert!(matches!(
                    host.call(partition, init_with(id, fresh)).await,
                    TxnReply::ProducerId { error: None, .. }
                ));
                assert_eq!(
                    host.call(partition, add_out(id, fresh, &[0])).await,
                    TxnReply::Done(None)
                );
            }
            // t1 is prepared; its markers wait at the gate.
            assert_eq!(
                host.call(partition, commit("t1", 1000)).await,
                TxnReply::Done(None)
            );
            // t2's Prepare append waits at the other gate.
            partition.open(&partition.appends_open, false);
            let t2_ended = glommio::spawn_local({
                let host = Rc::clone(&host);
                async move { host.call(partition, commit("t2", 2000)).await }
            });
            glommio::timer::sleep(Duration::from_millis(50)).await;
            // t1's markers are written while t2's append still waits.
            partition.open(&partition.markers_open, true);
            let written = async {
                while partition.markers_done.borrow().is_empty() {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            };
            futures_lite::future::or(written, async {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                panic!("t1's markers waited for t2's append");
            })
            .await;
            assert_eq!(*partition.markers_done.borrow(), ["t1"]);
            // Then t2 completes as well.
            partition.open(&partition.appends_open, true);
            assert_eq!(t2_ended.await, TxnReply::Done(None));
            host.stop("test");
        })
        .unwrap();
    }

    #[test]
    fn a_transaction_whose_marker_writes_gave_up_is_not_completed() {
        run_local(|| async {
            let (partition, host) = gated_host().await;
            partition.markers_give_up.set(true);
            assert!(matches!(
                host.call(partition, init("t1")).await,
                TxnReply::ProducerId { error: None, .. }
            ));
            assert_eq!(
                host.call(partition, add_out("t1", 1000, &[0])).await,
                TxnReply::Done(None)
            );
            assert_eq!(
                host.call(partition, commit("t1", 1000)).await,
                TxnReply::Done(None)
            );
            // Past a tick or two: a completion without its markers would leave the partition
            // with a transaction nobody ends (a hanging transaction).
            glommio::timer::sleep(Duration::from_millis(2_500)).await;
            let state =
                host.with_coordinator(|coordinator| coordinator.transaction("t1").unwrap().state);
            assert_eq!(state, Some(TxnState::PrepareCommit));
            assert!(partition.markers_done.borrow().is_empty());
            host.stop("test");
        })
        .unwrap();
    }
}
