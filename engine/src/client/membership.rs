//! A consumer's part in its group, split over two threads as in the Java client:
//!
//! - The consumer's own thread (inside `poll`) joins and syncs: JoinGroup, the leader's
//!   assignment, SyncGroup, then the committed offsets of new partitions. Joining runs the
//!   application's rebalance callbacks, so it belongs on the application's thread.
//! - A background thread, the *coordinator worker*, owns a second connection to the
//!   coordinator. It sends heartbeats every `heartbeat.interval.ms` while the member is in a
//!   generation, so that a slow application does not lose its partitions before
//!   `max.poll.interval.ms`; it sends every commit, sync and async, in the order they were
//!   made; and it leaves the group when the application stops polling for longer than
//!   `max.poll.interval.ms`, as the Java client does.
//!
//! The worker tells the consumer thread to rejoin through [`Signals`]; the consumer thread tells
//! the worker whom to heartbeat as through [`Membership::set_generation`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

use super::assignor::TopicPartition;
use super::config::ConsumerConfig;
use super::connection::Connection;
use super::error::ClientError;
use super::group::{self, Identity};

/// Called with the outcome of an asynchronous commit, on the coordinator worker's thread.
pub type CommitCallback = Box<dyn FnOnce(Result<(), ClientError>) + Send>;

/// A member id and generation: whom the member is in the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Member id.
    pub member_id: String,
    /// Generation id.
    pub generation: i32,
}

impl Generation {
    /// Who this member is, for a group call.
    pub fn identity<'a>(
        &'a self,
        group_id: &'a str,
        group_instance_id: Option<&'a str>,
    ) -> Identity<'a> {
        Identity {
            group_id,
            member_id: &self.member_id,
            generation: self.generation,
            group_instance_id,
        }
    }

    /// Outside any generation: what `assign()` consumers commit as.
    pub fn none() -> Generation {
        Generation {
            member_id: String::new(),
            generation: -1,
        }
    }
}

/// Why the consumer thread must rejoin, as found by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signals {
    /// The group is rebalancing (REBALANCE_IN_PROGRESS): rejoin, keeping the partitions.
    pub rejoin: bool,
    /// The member was removed (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, FENCED_INSTANCE_ID, or
    /// left after `max.poll.interval.ms`): its partitions are lost and its id is void.
    pub lost: bool,
}

enum Reply {
    Sync(mpsc::Sender<Result<(), ClientError>>),
    Async(Option<CommitCallback>),
}

struct Commit {
    offsets: BTreeMap<TopicPartition, i64>,
    generation: Generation,
    reply: Reply,
}

/// What the consumer thread and the worker share.
struct Shared {
    /// Whom to heartbeat as; `None` outside a generation (before a join, while rejoining).
    generation: Option<Generation>,
    signals: Signals,
    commits: VecDeque<Commit>,
    /// When the application last called poll.
    last_poll: Instant,
    closing: bool,
}

struct State {
    shared: Mutex<Shared>,
    wake: Condvar,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic on the other thread cannot leave `Shared` half-updated: every change is one
        // assignment, so the data behind a poisoned lock is still good.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The group side of a consumer with a `group.id`. See the module docs.
pub struct Membership {
    config: ConsumerConfig,
    group_id: String,
    state: Arc<State>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Membership")
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts the coordinator worker for `config`'s group.
    ///
    /// # Panics
    /// When `config` has no `group.id`.
    pub fn start(config: &ConsumerConfig) -> Membership {
        let group_id = config
            .group_id
            .clone()
            .expect("a membership needs a group.id");
        let state = Arc::new(State {
            shared: Mutex::new(Shared {
                generation: None,
                signals: Signals::default(),
                commits: VecDeque::new(),
                last_poll: Instant::now(),
                closing: false,
            }),
            wake: Condvar::new(),
        });
        let worker = {
            let state = Arc::clone(&state);
            let config = config.clone();
            let group_id = group_id.clone();
            std::thread::Builder::new()
                .name(format!("spate-group-{group_id}"))
                .spawn(move || Worker::new(config, group_id, state).run())
                .expect("spawning the coordinator worker thread")
        };
        Membership {
            config: config.clone(),
            group_id,
            state,
            worker: Some(worker),
        }
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Records that the application polled (for `max.poll.interval.ms`).
    pub fn polled(&self) {
        self.state.lock().last_poll = Instant::now();
    }

    /// Takes the worker's rejoin signals, clearing them.
    pub fn take_signals(&self) -> Signals {
        std::mem::take(&mut self.state.lock().signals)
    }

    /// Whom the worker heartbeats and commits as; `None` stops the heartbeats (before a join).
    pub fn set_generation(&self, generation: Option<Generation>) {
        self.state.lock().generation = generation;
        self.state.wake.notify_all();
    }

    /// Commits `offsets` as `generation` and waits for the answer.
    ///
    /// # Errors
    /// The coordinator's refusal (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID:
    /// the member is not in the generation any more), or the last retriable error when the
    /// coordinator could not be reached within `request.timeout.ms`.
    pub fn commit_sync(
        &self,
        offsets: BTreeMap<TopicPartition, i64>,
        generation: Generation,
    ) -> Result<(), ClientError> {
        let (sender, receiver) = mpsc::channel();
        self.enqueue(Commit {
            offsets,
            generation,
            reply: Reply::Sync(sender),
        });
        receiver.recv().unwrap_or_else(|_| {
            Err(ClientError::Protocol(
                "the coordinator worker stopped".into(),
            ))
        })
    }

    /// Queues a commit of `offsets`; `callback`, if any, gets the outcome on the worker thread.
    pub fn commit_async(
        &self,
        offsets: BTreeMap<TopicPartition, i64>,
        generation: Generation,
        callback: Option<CommitCallback>,
    ) {
        self.enqueue(Commit {
            offsets,
            generation,
            reply: Reply::Async(callback),
        });
    }

    fn enqueue(&self, commit: Commit) {
        self.state.lock().commits.push_back(commit);
        self.state.wake.notify_all();
    }

    /// A connection to the group's coordinator, found through the bootstrap servers, retried
    /// while the coordinator is loading or moving, until `request.timeout.ms`.
    ///
    /// # Errors
    /// The last error when no coordinator answered in time.
    pub fn connect_coordinator(&self) -> Result<Connection, ClientError> {
        connect_coordinator(&self.config, &self.group_id)
    }

    /// Stops the worker after it has sent every queued commit.
    pub fn stop(&mut self) {
        self.state.lock().closing = true;
        self.state.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            // A worker that panicked has nothing left to flush; its panic was printed.
            let _ = worker.join();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a group error means "find the coordinator again and retry".
pub fn is_coordinator_error(error: &ClientError) -> bool {
    error.is_disconnect()
        || error.is(ResponseError::NotCoordinator)
        || error.is(ResponseError::CoordinatorNotAvailable)
        || error.is(ResponseError::CoordinatorLoadInProgress)
}

/// See [`Membership::connect_coordinator`].
fn connect_coordinator(config: &ConsumerConfig, group_id: &str) -> Result<Connection, ClientError> {
    let deadline = Instant::now() + Duration::from_millis(config.common.request_timeout_ms);
    let backoff = Duration::from_millis(config.common.retry_backoff_ms.max(10));
    let timeout = Duration::from_millis(config.common.request_timeout_ms);
    loop {
        let attempt = Connection::open_any(&config.common).and_then(|mut bootstrap| {
            let address = group::find_coordinator(&mut bootstrap, group_id)?;
            if address == bootstrap.address() {
                return Ok(bootstrap);
            }
            Connection::open(&address, &config.common.client_id, timeout)
        });
        match attempt {
            Ok(connection) => return Ok(connection),
            Err(error) if is_coordinator_error(&error) && Instant::now() + backoff < deadline => {
                std::thread::sleep(backoff);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The coordinator worker. See the module docs.
struct Worker {
    config: ConsumerConfig,
    group_id: String,
    state: Arc<State>,
    connection: Option<Connection>,
    next_heartbeat: Instant,
}

impl Worker {
    fn new(config: ConsumerConfig, group_id: String, state: Arc<State>) -> Worker {
        Worker {
            config,
            group_id,
            state,
            connection: None,
            next_heartbeat: Instant::now(),
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_interval_ms.max(1))
    }

    fn run(mut self) {
        loop {
            let (commit, heartbeat_as, poll_expired) = {
                let mut shared = self.state.lock();
                loop {
                    if !shared.commits.is_empty() || shared.closing {
                        break;
                    }
                    let now = Instant::now();
                    if shared.generation.is_some() && now >= self.next_heartbeat {
                        break;
                    }
                    let wait = if shared.generation.is_some() {
                        self.next_heartbeat - now
                    } else {
                        Duration::from_secs(3600)
                    };
                    shared = self
                        .state
                        .wake
                        .wait_timeout(shared, wait)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                let commit = shared.commits.pop_front();
                if commit.is_none() && shared.closing {
                    return;
                }
                let max_poll_interval = Duration::from_millis(
                    u64::try_from(self.config.max_poll_interval_ms).unwrap_or(0),
                );
                let poll_expired =
                    shared.generation.is_some() && shared.last_poll.elapsed() > max_poll_interval;
                (commit, shared.generation.clone(), poll_expired)
            };
            if let Some(commit) = commit {
                self.commit(commit);
                continue;
            }
            let Some(generation) = heartbeat_as else {
                continue;
            };
            self.next_heartbeat = Instant::now() + self.heartbeat_interval();
            if poll_expired {
                self.leave_after_poll_timeout(&generation);
            } else {
                self.heartbeat(&generation);
            }
        }
    }

    /// Runs `call` on the coordinator connection, connecting first if needed, and drops the
    /// connection after a coordinator error so the next call finds the coordinator again.
    fn on_coordinator<T>(
        &mut self,
        call: impl FnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => connect_coordinator(&self.config, &self.group_id)?,
        };
        let result = call(&mut connection);
        match &result {
            Err(error) if is_coordinator_error(error) => {}
            _ => self.connection = Some(connection),
        }
        result
    }

    fn heartbeat(&mut self, generation: &Generation) {
        let identity_generation = generation.clone();
        let group_id = self.group_id.clone();
        let instance = self.config.group_instance_id.clone();
        let result = self.on_coordinator(|connection| {
            group::heartbeat(
                connection,
                identity_generation.identity(&group_id, instance.as_deref()),
            )
        });
        let Err(error) = result else { return };
        let mut shared = self.state.lock();
        // Only a verdict on the generation still current counts: the consumer thread may have
        // rejoined while this heartbeat was out.
        if shared.generation.as_ref() != Some(generation) {
            return;
        }
        if error.is(ResponseError::RebalanceInProgress) {
            shared.signals.rejoin = true;
        } else if error.is(ResponseError::UnknownMemberId)
            || error.is(ResponseError::IllegalGeneration)
            || error.is(ResponseError::FencedInstanceId)
        {
            shared.signals.lost = true;
            shared.generation = None;
        }
        // Coordinator errors: the next heartbeat finds the coordinator again.
    }

    fn leave_after_poll_timeout(&mut self, generation: &Generation) {
        tracing::warn!(
            group = %self.group_id,
            max_poll_interval_ms = self.config.max_poll_interval_ms,
            "the application did not poll within max.poll.interval.ms; leaving the group so \
             that its partitions go to other members"
        );
        let group_id = self.group_id.clone();
        let member = generation.clone();
        let instance = self.config.group_instance_id.clone();
        // A static member keeps its place; it only stops heartbeating (Java does the same).
        if instance.is_none() {
            let _ = self.on_coordinator(|connection| {
                group::leave_group(connection, member.identity(&group_id, None))
            });
        }
        let mut shared = self.state.lock();
        if shared.generation.as_ref() == Some(generation) {
            shared.generation = None;
            shared.signals.lost = true;
        }
    }

    fn commit(&mut self, commit: Commit) {
        let deadline =
            Instant::now() + Duration::from_millis(self.config.common.request_timeout_ms);
        let backoff = Duration::from_millis(self.config.common.retry_backoff_ms.max(10));
        let result = loop {
            let generation = commit.generation.clone();
            let group_id = self.group_id.clone();
            let instance = self.config.group_instance_id.clone();
            let offsets = &commit.offsets;
            let result = self.on_coordinator(|connection| {
                group::commit_offsets(
                    connection,
                    generation.identity(&group_id, instance.as_deref()),
                    offsets,
                )
            });
            match result {
                Err(error)
                    if is_coordinator_error(&error) && Instant::now() + backoff < deadline =>
                {
                    std::thread::sleep(backoff);
                }
                other => break other,
            }
        };
        if let Err(error) = &result {
            if error.is(ResponseError::RebalanceInProgress) {
                self.state.lock().signals.rejoin = true;
            }
        }
        match commit.reply {
            Reply::Sync(sender) => {
                // The consumer gave up waiting only if it is gone; nobody is left to tell.
                let _ = sender.send(result);
            }
            Reply::Async(Some(callback)) => callback(result),
            Reply::Async(None) => {
                if let Err(error) = result {
                    tracing::warn!(group = %self.group_id, %error, "asynchronous commit failed");
                }
            }
        }
    }
}
