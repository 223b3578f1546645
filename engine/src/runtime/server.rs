//! `spate serve`: the broker process. One glommio executor per shard, a channel mesh between
//! them, one listening socket every shard accepts from, signals, the data
//! directory lock and the metrics endpoint.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use tracing::{error, info, warn};

use super::connection::serve_connection;
use super::shard::{ProcessShared, Shard, ShardMessage};
use super::{ensure_memlock_limit, random_u64, RuntimeError, IO_MEMORY_BYTES};
use crate::broker::catalog::{Catalog, CATALOG_FILE_NAME};
use crate::broker::config::BrokerConfig;

/// Name of the lock file in the data directory.
pub const LOCK_FILE_NAME: &str = ".lock";
/// Messages queued between two shards before senders wait.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// How long shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often each shard checks the flush policy of its partitions.
const FLUSH_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often each shard looks for segment rolls to finish.
const ROLL_FINISH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The runtime could not start (locked memory, io_uring).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Another broker holds the data directory.
    #[error(
        "another Spate broker is using the data directory {} (its lock file {} is held); \
         stop it or choose another --data-dir",
        dir.display(), lock.display()
    )]
    DataDirLocked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The listen address is taken or cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory or catalog could not be read or written.
    #[error("data directory {}: {reason}", dir.display())]
    DataDir {
        /// The data directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Holds the data directory's lock until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates the data directory if needed and takes its lock (`flock`, released by the kernel
/// when the process exits, however it exits).
///
/// # Errors
/// [`ServeError::DataDirLocked`] when another process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, ServeError> {
    let data_dir_error = |reason: String| ServeError::DataDir {
        dir: dir.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir)
        .map_err(|error| data_dir_error(format!("cannot create it: {error}")))?;
    let lock = dir.join(LOCK_FILE_NAME);
    let file = File::create(&lock)
        .map_err(|error| data_dir_error(format!("cannot create {LOCK_FILE_NAME}: {error}")))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServeError::DataDirLocked {
            dir: dir.to_owned(),
            lock,
        });
    }
    Ok(DataDirLock { _file: file })
}

/// Reads the catalog, or makes a new one (with a new cluster id) for a new data directory.
///
/// # Errors
/// [`ServeError::DataDir`] when the file cannot be read, parsed or written.
pub fn load_catalog(config: &BrokerConfig) -> Result<Catalog, ServeError> {
    let dir = &config.data_dir;
    let path = dir.join(CATALOG_FILE_NAME);
    let _ = std::fs::remove_file(dir.join(format!("{CATALOG_FILE_NAME}.tmp")));
    let data_dir_error = |reason: String| ServeError::DataDir {
        dir: dir.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Catalog::from_toml(&text, config.topic_defaults.clone())
            .map_err(|reason| data_dir_error(format!("{CATALOG_FILE_NAME} is damaged: {reason}"))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let cluster_id = format!("{:016x}{:016x}", random_u64(), random_u64());
            let catalog = Catalog::new(cluster_id, config.topic_defaults.clone());
            super::shard::persist_catalog(dir, &catalog).map_err(|error| {
                data_dir_error(format!("cannot write {CATALOG_FILE_NAME}: {error}"))
            })?;
            Ok(catalog)
        }
        Err(error) => Err(data_dir_error(format!(
            "cannot read {CATALOG_FILE_NAME}: {error}"
        ))),
    }
}

/// Removes partition directories left behind by a topic deletion that a crash interrupted.
fn remove_deleted_partitions(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with("-delete") {
            if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                warn!(path = %entry.path().display(), %error, "could not remove a deleted partition");
            }
        }
    }
}

/// How long a port in use is retried before giving up (see [`bind_listener`]).
const LISTEN_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// The broker's one listening socket on `address` (port 0 resolved by the kernel), which every
/// shard accepts from through a duplicate of its descriptor.
///
/// One socket rather than one per shard with SO_REUSEPORT: a reuse-port group can be joined by
/// any other process of the same user binding the same port (a second broker, a test picking
/// the same "free" port), which would then silently take a share of this broker's
/// connections. A plain socket makes the second bind fail instead. SO_REUSEADDR lets a
/// restarted broker listen while connections of the previous process linger in TIME_WAIT.
fn bind_listener(address: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let listen_error = |source| ServeError::Listen { address, source };
    let domain = if address.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    // A broker that just died may still hold its port for a moment: its listening sockets
    // have accepts pending in io_uring, and the kernel tears a dead process's rings down
    // after the process is gone. A restart right after a crash waits for that.
    let deadline = std::time::Instant::now() + LISTEN_RETRY;
    loop {
        let socket =
            Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(listen_error)?;
        socket.set_reuse_address(true).map_err(listen_error)?;
        match socket.bind(&SockAddr::from(address)) {
            Ok(()) => {
                socket.listen(1024).map_err(listen_error)?;
                // Non-blocking for good: the shards' handles share the socket's file status
                // flags, and glommio's accept tries a non-blocking accept first by setting
                // O_NONBLOCK and then restoring the flags it found. With a blocking socket, one
                // shard's restore could land inside another's attempt and block that shard's
                // thread in accept(2). (io_uring's accept still waits for a connection.)
                socket.set_nonblocking(true).map_err(listen_error)?;
                return Ok(socket.into());
            }
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(source) => return Err(listen_error(source)),
        }
    }
}

/// The listening sockets the shards take at start-up: one handle on the Kafka socket each, and
/// the metrics socket for the controller shard. Once taken, a shard's handle is its own, so a
/// stopping shard closing it is what stops the broker accepting.
struct Listeners {
    kafka: Mutex<Vec<std::net::TcpListener>>,
    metrics: Mutex<Option<std::net::TcpListener>>,
    /// The metadata quorum's peer port, with `--controller-quorum`.
    controller: Mutex<Option<std::net::TcpListener>>,
}

impl Listeners {
    fn new(
        kafka: std::net::TcpListener,
        metrics: Option<std::net::TcpListener>,
        shards: usize,
        address: SocketAddr,
    ) -> Result<Listeners, ServeError> {
        let mut handles = Vec::with_capacity(shards);
        for _ in 1..shards {
            handles.push(
                kafka
                    .try_clone()
                    .map_err(|source| ServeError::Listen { address, source })?,
            );
        }
        handles.push(kafka);
        Ok(Listeners {
            kafka: Mutex::new(handles),
            metrics: Mutex::new(metrics),
            controller: Mutex::new(None),
        })
    }

    fn take_controller(&self) -> Option<TcpListener> {
        let listener = self.controller.lock().ok()?.take()?;
        Some(into_glommio(listener))
    }

    fn take_kafka(&self) -> Option<TcpListener> {
        let listener = self.kafka.lock().ok()?.pop()?;
        Some(into_glommio(listener))
    }

    fn take_metrics(&self) -> Option<TcpListener> {
        let listener = self.metrics.lock().ok()?.take()?;
        Some(into_glommio(listener))
    }
}

fn into_glommio(listener: std::net::TcpListener) -> TcpListener {
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a listening TCP socket we own and hand over whole.
    unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// Runs the broker until SIGINT or SIGTERM, then stops accepting, finishes in-flight
/// requests, syncs and checkpoints every partition and returns.
///
/// # Errors
/// [`ServeError`] when it cannot start.
pub fn serve(config: BrokerConfig) -> Result<(), ServeError> {
    // The handlers come first: a signal that arrives while the broker starts (its port may
    // already accept connections) asks for a clean stop instead of killing the process.
    let process = Arc::new(ProcessShared::default());
    install_signal_handlers(Arc::clone(&process));
    let broker = start_with(config, Placement::PinnedWhenCoresSuffice, process)?;
    broker.wait()
}

/// Where a broker's shard threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Shard `i` pinned to CPU `i` when the machine has a CPU per shard (`spate serve`).
    PinnedWhenCoresSuffice,
    /// Wherever the kernel puts them: for brokers sharing a process with an application, or
    /// several brokers in one process.
    Unbound,
}

/// A broker started with [`start`]: serving until [`RunningBroker::stop`] (or a signal
/// handler, for `spate serve`) asks it to stop. Dropping it stops it too.
pub struct RunningBroker {
    listen: SocketAddr,
    data_dir: PathBuf,
    process: Arc<ProcessShared>,
    handles: Vec<glommio::ExecutorJoinHandle<Result<(), ServeError>>>,
    lock: Option<DataDirLock>,
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl RunningBroker {
    /// The address the broker listens on (port 0 resolved).
    pub fn listen_address(&self) -> SocketAddr {
        self.listen
    }

    /// The data directory, made absolute.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops accepting, finishes in-flight requests, syncs and checkpoints every partition,
    /// and returns once every shard has stopped.
    ///
    /// # Errors
    /// The first error a shard stopped with.
    pub fn stop(self) -> Result<(), ServeError> {
        self.process
            .shutdown_requested
            .store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Waits until the broker stops (after a signal, [`RunningBroker::stop`] from elsewhere, or
    /// a shard failing).
    ///
    /// # Errors
    /// The first error a shard stopped with.
    pub fn wait(mut self) -> Result<(), ServeError> {
        let mut failed = None;
        for handle in std::mem::take(&mut self.handles) {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failed.get_or_insert(error);
                }
                Err(error) => {
                    failed.get_or_insert(ServeError::Runtime(RuntimeError::Executor(
                        error.to_string(),
                    )));
                }
            }
        }
        drop(self.lock.take());
        match failed {
            Some(error) => Err(error),
            None => {
                info!(listen = %self.listen, "Spate broker stopped");
                Ok(())
            }
        }
    }
}

impl Drop for RunningBroker {
    /// A broker dropped without [`RunningBroker::stop`] or [`RunningBroker::wait`] stops here:
    /// it must not go on serving after its data directory's lock is released.
    fn drop(&mut self) {
        if self.handles.is_empty() {
            return;
        }
        self.process
            .shutdown_requested
            .store(true, Ordering::SeqCst);
        for handle in std::mem::take(&mut self.handles) {
            let _ = handle.join();
        }
    }
}

/// Starts a broker on threads of its own (one glommio executor per shard) and returns once
/// every shard listens, or with the error that stopped one. Installs no signal handler.
///
/// # Errors
/// [`ServeError`] when it cannot start: locked memory, the data directory (missing rights,
/// held by another broker, damaged catalog), the listen address.
pub fn start(config: BrokerConfig, placement: Placement) -> Result<RunningBroker, ServeError> {
    start_with(config, placement, Arc::new(ProcessShared::default()))
}

/// [`start`] with the process-wide state given, so that signal handlers can be installed on it
/// before the broker listens.
fn start_with(
    mut config: BrokerConfig,
    placement: Placement,
    process: Arc<ProcessShared>,
) -> Result<RunningBroker, ServeError> {
    ensure_memlock_limit(config.cores)?;
    if let Some((before, after)) = super::raise_open_files_limit() {
        info!(before, after, "raised the open files limit (RLIMIT_NOFILE)");
    }
    let lock = lock_data_dir(&config.data_dir)?;
    config.data_dir =
        std::fs::canonicalize(&config.data_dir).map_err(|error| ServeError::DataDir {
            dir: config.data_dir.clone(),
            reason: error.to_string(),
        })?;
    remove_deleted_partitions(&config.data_dir);
    let mut catalog = load_catalog(&config)?;
    if !config.controller_quorum.is_empty() {
        // A cluster node serves the topics of the cluster's metadata, which its quorum member
        // publishes once it has applied its log; none of its own.
        catalog = catalog.with_cluster_metadata(
            &crate::quorum::admin::cluster_id_of(&config.controller_quorum),
            Vec::new(),
            crate::broker::catalog::ClusterLayout::default(),
        );
    }
    let catalog = Arc::new(catalog);
    let kafka = bind_listener(config.listen)?;
    config.listen = kafka.local_addr().map_err(|source| ServeError::Listen {
        address: config.listen,
        source,
    })?;
    if config.advertised_port == 0 {
        config.advertised_port = i32::from(config.listen.port());
    }
    let metrics = match config.metrics_listen {
        Some(address) => {
            let listener = bind_listener(address)?;
            config.metrics_listen = Some(
                listener
                    .local_addr()
                    .map_err(|source| ServeError::Listen { address, source })?,
            );
            Some(listener)
        }
        None => None,
    };
    let listeners = Listeners::new(kafka, metrics, config.cores, config.listen)?;
    let own_quorum_address = config
        .controller_quorum
        .iter()
        .find(|(id, _)| i64::try_from(*id).ok() == Some(i64::from(config.node_id)))
        .map(|&(_, address)| address);
    if let Some(address) = own_quorum_address {
        let controller = bind_listener(address)?;
        if let Ok(mut slot) = listeners.controller.lock() {
            *slot = Some(controller);
        }
    }
    let listeners = Arc::new(listeners);
    let config = Arc::new(config);

    let mesh = MeshBuilder::<ShardMessage, _>::full(config.cores, MESH_CHANNEL_CAPACITY);
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut handles = Vec::new();
    for index in 0..config.cores {
        let placement = if placement == Placement::PinnedWhenCoresSuffice && config.cores <= cpus {
            glommio::Placement::Fixed(index)
        } else {
            glommio::Placement::Unbound
        };
        let (mesh, shard_config, shard_process, catalog, listeners) = (
            mesh.clone(),
            Arc::clone(&config),
            Arc::clone(&process),
            Arc::clone(&catalog),
            Arc::clone(&listeners),
        );
        let spawned = glommio::LocalExecutorBuilder::new(placement)
            .io_memory(IO_MEMORY_BYTES)
            .name(&format!("spate-shard-{index}"))
            .spawn(move || async move {
                let process = shard_process;
                let result = run_shard(
                    mesh,
                    shard_config,
                    Arc::clone(&process),
                    catalog,
                    &listeners,
                )
                .await;
                if result.is_err() {
                    // Stop the other shards instead of leaving them serving a broker that is
                    // missing a shard, and do not let them wait for this one to drain.
                    process.shards_failed.fetch_add(1, Ordering::SeqCst);
                    process.shutdown_requested.store(true, Ordering::SeqCst);
                    process.shards_drained.fetch_add(1, Ordering::SeqCst);
                }
                result
            });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                // Only when the OS refuses a thread. The shards already started stay blocked
                // joining the mesh, waiting for this one; their threads are left behind.
                process.shutdown_requested.store(true, Ordering::SeqCst);
                drop(handles);
                return Err(ServeError::Runtime(RuntimeError::Executor(
                    error.to_string(),
                )));
            }
        }
    }
    info!(
        listen = %config.listen, data_dir = %config.data_dir.display(), cores = config.cores,
        "Spate broker starting"
    );
    let broker = RunningBroker {
        listen: config.listen,
        data_dir: config.data_dir.clone(),
        process: Arc::clone(&process),
        handles,
        lock: Some(lock),
    };
    while process.shards_ready.load(Ordering::SeqCst) < config.cores {
        if process.shards_failed.load(Ordering::SeqCst) > 0 {
            return match broker.wait() {
                Err(error) => Err(error),
                Ok(()) => Err(ServeError::Runtime(RuntimeError::Executor(
                    "a shard stopped while starting".into(),
                ))),
            };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(broker)
}

fn install_signal_handlers(process: Arc<ProcessShared>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(error) => {
            error!(%error, "cannot install signal handlers; stop the broker with SIGKILL");
            return;
        }
    };
    std::thread::Builder::new()
        .name("spate-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if process.shutdown_requested.swap(true, Ordering::SeqCst) {
                    warn!(signal, "already shutting down");
                } else {
                    info!(signal, "shutting down: finishing in-flight requests");
                }
            }
        })
        .expect("the signal thread starts");
}

async fn run_shard(
    mesh: MeshBuilder<ShardMessage, glommio::channels::channel_mesh::Full>,
    config: Arc<BrokerConfig>,
    process: Arc<ProcessShared>,
    catalog: Arc<Catalog>,
    listeners: &Listeners,
) -> Result<(), ServeError> {
    let (senders, mut receivers) = mesh.join().await.map_err(|_| {
        ServeError::Runtime(RuntimeError::Executor("cannot join the shard mesh".into()))
    })?;
    let shard = Rc::new(Shard::new(
        Arc::clone(&config),
        Arc::clone(&process),
        senders,
    ));
    // Partitions open before this shard takes requests from others, so that a request routed
    // here during start-up finds its partition instead of UNKNOWN_TOPIC_OR_PARTITION.
    shard.apply_catalog(catalog).await;
    for (_, receiver) in receivers.streams() {
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                let shard = Rc::clone(&shard);
                glommio::spawn_local(async move { shard.handle_message(message).await }).detach();
            }
        })
        .detach();
    }
    let listener = listeners.take_kafka().ok_or_else(|| {
        ServeError::Runtime(RuntimeError::Executor(
            "no listening socket left for this shard".into(),
        ))
    })?;
    if shard.is_controller() {
        if let Some(controller_listener) = listeners.take_controller() {
            super::quorum::spawn(
                &shard,
                config.controller_quorum.clone(),
                controller_listener,
            );
        } else if !config.controller_quorum.is_empty() && !config.roles.controller {
            super::metadata_observer::spawn(&shard, config.controller_quorum.clone());
        }
        if let Some(metrics_listener) = listeners.take_metrics() {
            glommio::spawn_local(serve_metrics(Rc::clone(&shard), metrics_listener)).detach();
        }
        info!(listen = %config.listen, "Spate broker ready");
    }
    process.shards_ready.fetch_add(1, Ordering::SeqCst);
    spawn_background_work(&shard);

    let shutdown = shard.shutdown_event.listen();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if shard.shutting_down.get() {
            break;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            (&mut shutdown).await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Err(error)) => {
                warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Some(Ok(stream)) => stream,
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let Some(slot) = ConnectionSlot::take(&shard, peer.ip()) else {
            shard.metrics.borrow_mut().connections_refused += 1;
            warn!(%peer, "connection refused: connection limit reached");
            continue;
        };
        {
            let mut metrics = shard.metrics.borrow_mut();
            metrics.connections_accepted += 1;
            metrics.connections_open += 1;
        }
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            serve_connection(Rc::clone(&shard), stream, peer).await;
            drop(slot);
            shard.metrics.borrow_mut().connections_open -= 1;
        })
        .detach();
    }
    drop(listener);

    let grace_end = Instant::now() + SHUTDOWN_GRACE;
    let open_connections = || shard.metrics.borrow().connections_open;
    while open_connections() > 0 && Instant::now() < grace_end {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if open_connections() > 0 {
        warn!(
            open = open_connections(),
            "connections still open after the grace period"
        );
    }
    // Other shards may still route in-flight requests here: keep serving them until every
    // shard has drained its connections, then close the logs.
    process.shards_drained.fetch_add(1, Ordering::SeqCst);
    while process.shards_drained.load(Ordering::SeqCst) < shard.shards {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    shard.close_partitions().await;
    Ok(())
}

fn spawn_background_work(shard: &Rc<Shard>) {
    let watcher = Rc::clone(shard);
    glommio::spawn_local(async move {
        while !watcher.process.shutdown_requested.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        if !watcher.config.controller_quorum.is_empty() {
            // A cluster node first hands its leaderships over (the quorum driver's controlled
            // shutdown), bounded in case the driver is not running.
            let bound = Duration::from_millis(
                u64::try_from(watcher.config.broker_session_timeout_ms).unwrap_or(0) + 2_000,
            );
            let began = std::time::Instant::now();
            while !watcher
                .process
                .controlled_shutdown_done
                .load(Ordering::SeqCst)
                && began.elapsed() < bound
            {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
        watcher.begin_shutdown();
    })
    .detach();
    let flusher = Rc::clone(shard);
    glommio::spawn_local(async move {
        while flusher.sleep_unless_shutdown(FLUSH_CHECK_INTERVAL).await {
            flusher.flush_due().await;
        }
    })
    .detach();
    let finisher = Rc::clone(shard);
    glommio::spawn_local(async move {
        while finisher
            .sleep_unless_shutdown(ROLL_FINISH_CHECK_INTERVAL)
            .await
        {
            finisher.finish_rolls().await;
        }
    })
    .detach();
    if !shard.config.controller_quorum.is_empty() {
        // Lagging followers leave the ISR within a quarter of replica.lag.time.max.ms.
        let replication = Rc::clone(shard);
        let interval = Duration::from_millis(
            u64::try_from(shard.config.replica_lag_time_max_ms / 4)
                .unwrap_or(1)
                .max(1),
        );
        glommio::spawn_local(async move {
            while replication.sleep_unless_shutdown(interval).await {
                replication.tick_replication();
            }
        })
        .detach();
    }
    if shard.config.log_cleaner_enable {
        let cleaner = Rc::clone(shard);
        // Its own task queue, with a twentieth of the default queue's shares: requests come
        // first, and the cleaner takes what they leave.
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(50),
            glommio::Latency::NotImportant,
            "log-cleaner",
        );
        glommio::spawn_local_into(
            async move {
                let backoff = Duration::from_millis(cleaner.config.log_cleaner_backoff_ms);
                loop {
                    let passes = cleaner.clean_logs().await;
                    // Keep going while there is work; sleep when there is none.
                    let going_on = if passes == 0 {
                        cleaner.sleep_unless_shutdown(backoff).await
                    } else {
                        !cleaner.shutting_down.get()
                    };
                    if !going_on {
                        break;
                    }
                }
            },
            queue,
        )
        .expect("the cleaner's task queue was just created")
        .detach();
    }
    let retention = Rc::clone(shard);
    glommio::spawn_local(async move {
        let interval = Duration::from_millis(retention.config.log_retention_check_interval_ms);
        while retention.sleep_unless_shutdown(interval).await {
            retention.apply_retention().await;
        }
    })
    .detach();
}

/// A connection counted against the limits, released on drop.
struct ConnectionSlot {
    process: Arc<ProcessShared>,
    ip: std::net::IpAddr,
}

impl ConnectionSlot {
    fn take(shard: &Shard, ip: std::net::IpAddr) -> Option<ConnectionSlot> {
        let process = &shard.process;
        let mut per_ip = process.connections_per_ip.lock().expect("not poisoned");
        let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
        let total: usize = per_ip.values().sum();
        if from_ip >= shard.config.max_connections_per_ip || total >= shard.config.max_connections {
            return None;
        }
        per_ip.insert(ip, from_ip + 1);
        Some(ConnectionSlot {
            process: Arc::clone(process),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_ip = self
            .process
            .connections_per_ip
            .lock()
            .expect("not poisoned");
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The Prometheus endpoint: `GET /metrics` answers every shard's counters, merged.
async fn serve_metrics(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        if shard.shutting_down.get() {
            return;
        }
        let Ok(mut stream) = listener.accept().await else {
            continue;
        };
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            let mut request = Vec::new();
            let mut chunk = [0_u8; 1024];
            while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < 8192 {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => request.extend_from_slice(&chunk[..read]),
                }
            }
            let wanted = request.starts_with(b"GET /metrics ") || request.starts_with(b"GET / ");
            let (status, body) = if wanted {
                ("200 OK", shard.collect_metrics().await.render_prometheus())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}
