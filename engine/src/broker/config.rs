//! The broker's settings: a flag for each (`spate serve --help`), the same keys in a TOML file
//! (`--config spate.toml`), and a documented default. Flags win over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::topic_config::{broker_key, check_value};
use crate::group::{CoordinatorConfig, OFFSETS_TOPIC_PARTITIONS_DEFAULT};
use crate::limits;
use crate::txn::TRANSACTION_TOPIC_PARTITIONS_DEFAULT;

/// Settings as given on the command line or in the config file; unset ones take defaults.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Address to accept Kafka clients on [default: 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Address given to clients in metadata [default: the listen address].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised_listen: Option<String>,
    /// Directory for the logs and the catalog [default: ./spate-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Executors (one thread per core), each owning a share of the partitions [default: the
    /// number of CPUs].
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// This broker's id (Kafka's node.id) [default: 1].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<i32>,
    /// The metadata quorum's voters, `ID@HOST:PORT,...` (Kafka's controller.quorum.voters); this
    /// node's own entry is the address its controller listens on for its peers. Every node of
    /// a cluster is given the same list [default: none, a single-node cluster without a
    /// quorum].
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub controller_quorum: Option<String>,
    /// What this node of a cluster is (Kafka's process.roles): `broker,controller` (KRaft's
    /// combined mode), `controller` (a quorum voter that holds no partitions) or `broker` (not
    /// a voter: it fetches the metadata from the controllers) [default: broker,controller for
    /// a node in the quorum list, broker for one that is not].
    #[arg(long, value_name = "ROLES")]
    pub process_roles: Option<String>,
    /// How long the active controller waits for a broker's heartbeat before fencing it
    /// (broker.session.timeout.ms) [default: 9000].
    #[arg(long, value_name = "MS")]
    pub broker_session_timeout_ms: Option<i64>,
    /// How often a broker heartbeats to the active controller (broker.heartbeat.interval.ms)
    /// [default: 2000].
    #[arg(long, value_name = "MS")]
    pub broker_heartbeat_interval_ms: Option<i64>,
    /// How many metadata records a quorum member applies between two snapshots of the
    /// metadata, after each of which its log is truncated [default: 10000].
    #[arg(long, value_name = "RECORDS")]
    pub metadata_snapshot_interval_records: Option<u64>,
    /// How long a follower may go without catching up with its leader's log end before it
    /// leaves the ISR (replica.lag.time.max.ms) [default: 30000].
    #[arg(long, value_name = "MS")]
    pub replica_lag_time_max_ms: Option<i64>,
    /// How often the active controller moves leadership back to preferred replicas that are
    /// in sync again (leader.imbalance.check.interval.seconds) [default: 300000].
    #[arg(long, value_name = "MS")]
    pub leader_imbalance_check_interval_ms: Option<i64>,
    /// Address for the Prometheus metrics endpoint, `/metrics` [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Create a topic when a client asks for metadata of or produces to a missing one
    /// (auto.create.topics.enable) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of automatically created topics and of CreateTopics without a count
    /// (num.partitions) [default: 1].
    #[arg(long, value_name = "N")]
    pub num_partitions: Option<i32>,
    /// Largest request frame accepted, refused before it is read (socket.request.max.bytes)
    /// [default: 104857600].
    #[arg(long, value_name = "BYTES")]
    pub socket_request_max_bytes: Option<usize>,
    /// Most client connections open at once (max.connections) [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most client connections from one IP address (max.connections.per.ip) [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Most partitions a single broker holds, over all topics; CreateTopics and
    /// CreatePartitions beyond it are refused with INVALID_PARTITIONS [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_partitions_per_broker: Option<usize>,
    /// Requests read ahead and queued per connection before the broker stops reading from it
    /// [default: 32].
    #[arg(long, value_name = "N")]
    pub max_inflight_requests_per_connection: Option<usize>,
    /// How often retention deletes old segments (log.retention.check.interval.ms)
    /// [default: 300000].
    #[arg(long, value_name = "MS")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Run the log cleaner, which compacts topics with cleanup.policy=compact
    /// (log.cleaner.enable) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub log_cleaner_enable: Option<bool>,
    /// How long the cleaner sleeps when no log needs cleaning (log.cleaner.backoff.ms)
    /// [default: 15000].
    #[arg(long, value_name = "MS")]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// Memory for the cleaner's key-to-offset maps, shared by the cores
    /// (log.cleaner.dedupe.buffer.size) [default: 134217728, 128 MiB].
    #[arg(long, value_name = "BYTES")]
    pub log_cleaner_dedupe_buffer_size: Option<usize>,
    /// Most bytes per second the cleaner reads and writes, over all cores; 0 for no limit
    /// (log.cleaner.io.max.bytes.per.second) [default: 52428800, 50 MiB/s: with direct I/O
    /// and no page cache, an unpaced cleaner saturates the disk and produce latency suffers].
    #[arg(long, value_name = "BYTES")]
    pub log_cleaner_io_max_bytes_per_second: Option<u64>,
    /// Forget an idempotent producer whose last batch's timestamp is this old
    /// (producer.id.expiration.ms); checked with retention [default: 86400000, 1 day].
    #[arg(long, value_name = "MS")]
    pub producer_id_expiration_ms: Option<i64>,
    /// Sync a partition in the background as soon as this many bytes were appended since its
    /// last sync, whatever the topic's flush settings, so that no fsync (a segment roll's, an
    /// acks=all wait's, the next background one) has much to write; 0 for never (Spate only)
    /// [default: 1048576, 1 MiB].
    #[arg(long, value_name = "BYTES")]
    pub log_background_sync_bytes: Option<u64>,
    /// How long an empty group's first rebalance waits for more members to join
    /// (group.initial.rebalance.delay.ms) [default: 3000].
    #[arg(long, value_name = "MS")]
    pub group_initial_rebalance_delay_ms: Option<i64>,
    /// Shortest session timeout a consumer may ask for (group.min.session.timeout.ms)
    /// [default: 6000].
    #[arg(long, value_name = "MS")]
    pub group_min_session_timeout_ms: Option<i32>,
    /// Longest session timeout a consumer may ask for (group.max.session.timeout.ms)
    /// [default: 1800000].
    #[arg(long, value_name = "MS")]
    pub group_max_session_timeout_ms: Option<i32>,
    /// Most members in one group (group.max.size) [default: 2147483647].
    #[arg(long, value_name = "N")]
    pub group_max_size: Option<usize>,
    /// Partitions of `__consumer_offsets`, fixed once the topic exists
    /// (offsets.topic.num.partitions) [default: 50].
    #[arg(long, value_name = "N")]
    pub offsets_topic_num_partitions: Option<i32>,
    /// Partitions of `__transaction_state`, fixed once the topic exists
    /// (transaction.state.log.num.partitions) [default: 50].
    #[arg(long, value_name = "N")]
    pub transaction_state_log_num_partitions: Option<i32>,
    /// How long the offsets of a group without members are kept (offsets.retention.minutes)
    /// [default: 10080, 7 days].
    #[arg(long, value_name = "MINUTES")]
    pub offsets_retention_minutes: Option<i64>,
    /// How often expired offsets are looked for (offsets.retention.check.interval.ms)
    /// [default: 600000].
    #[arg(long, value_name = "MS")]
    pub offsets_retention_check_interval_ms: Option<i64>,
    /// Longest metadata string of a committed offset (offset.metadata.max.bytes)
    /// [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub offset_metadata_max_bytes: Option<usize>,
    /// A default for every topic, with Kafka's broker-level name, repeatable:
    /// `--topic-default log.retention.ms=3600000`. In the file: a `[topic_defaults]` table.
    /// Names: log.cleanup.policy, log.flush.interval.messages, log.flush.interval.ms,
    /// log.index.interval.bytes, message.max.bytes, log.message.timestamp.type,
    /// min.insync.replicas, log.retention.bytes, log.retention.ms, log.segment.bytes,
    /// log.index.size.max.bytes, log.roll.ms.
    #[arg(long = "topic-default", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    #[serde(skip)]
    pub topic_default: Vec<(String, String)>,
    /// Topic defaults from the config file.
    #[arg(skip)]
    #[serde(default)]
    pub topic_defaults: BTreeMap<String, String>,
}

/// Parses `ID@HOST:PORT,...`: positive, distinct ids, resolvable addresses, in id order.
pub fn parse_quorum(text: &str) -> Result<Vec<(u64, SocketAddr)>, String> {
    use std::net::ToSocketAddrs;
    let mut voters: Vec<(u64, SocketAddr)> = Vec::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (id, address) = entry
            .split_once('@')
            .ok_or_else(|| format!("{entry:?} is not ID@HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|&id| id > 0 && id <= i32::MAX as u64)
            .ok_or_else(|| format!("{id:?} in {entry:?} is not a positive node id"))?;
        let address = address
            .to_socket_addrs()
            .map_err(|error| format!("cannot resolve {address:?}: {error}"))?
            .next()
            .ok_or_else(|| format!("{address:?} resolves to no address"))?;
        if voters.iter().any(|&(known, _)| known == id) {
            return Err(format!("node id {id} appears twice"));
        }
        voters.push((id, address));
    }
    if voters.is_empty() {
        return Err("no voters".into());
    }
    voters.sort_unstable();
    Ok(voters)
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// The broker's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// See [`ServeSettings::listen`].
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    /// Port clients are told to connect to.
    pub advertised_port: i32,
    /// See [`ServeSettings::data_dir`].
    pub data_dir: PathBuf,
    /// See [`ServeSettings::cores`].
    pub cores: usize,
    /// See [`ServeSettings::node_id`].
    pub node_id: i32,
    /// The quorum's voters by node id (empty: a single-node cluster without a quorum). See
    /// [`ServeSettings::controller_quorum`].
    pub controller_quorum: Vec<(u64, SocketAddr)>,
    /// See [`ServeSettings::process_roles`]; both on a single node.
    pub roles: ProcessRoles,
    /// See [`ServeSettings::broker_session_timeout_ms`].
    pub broker_session_timeout_ms: i64,
    /// See [`ServeSettings::broker_heartbeat_interval_ms`].
    pub broker_heartbeat_interval_ms: i64,
    /// See [`ServeSettings::metadata_snapshot_interval_records`].
    pub metadata_snapshot_interval_records: u64,
    /// See [`ServeSettings::replica_lag_time_max_ms`].
    pub replica_lag_time_max_ms: i64,
    /// See [`ServeSettings::leader_imbalance_check_interval_ms`].
    pub leader_imbalance_check_interval_ms: i64,
    /// See [`ServeSettings::metrics_listen`].
    pub metrics_listen: Option<SocketAddr>,
    /// See [`ServeSettings::auto_create_topics`].
    pub auto_create_topics: bool,
    /// See [`ServeSettings::num_partitions`].
    pub num_partitions: i32,
    /// See [`ServeSettings::socket_request_max_bytes`].
    pub socket_request_max_bytes: usize,
    /// See [`ServeSettings::max_connections`].
    pub max_connections: usize,
    /// See [`ServeSettings::max_connections_per_ip`].
    pub max_connections_per_ip: usize,
    /// See [`ServeSettings::max_partitions_per_broker`].
    pub max_partitions_per_broker: usize,
    /// See [`ServeSettings::max_inflight_requests_per_connection`].
    pub max_inflight_requests_per_connection: usize,
    /// See [`ServeSettings::log_retention_check_interval_ms`].
    pub log_retention_check_interval_ms: u64,
    /// See [`ServeSettings::producer_id_expiration_ms`].
    pub producer_id_expiration_ms: i64,
    /// See [`ServeSettings::log_background_sync_bytes`]; `u64::MAX` for never.
    pub log_background_sync_bytes: u64,
    /// See [`ServeSettings::log_cleaner_enable`].
    pub log_cleaner_enable: bool,
    /// See [`ServeSettings::log_cleaner_backoff_ms`].
    pub log_cleaner_backoff_ms: u64,
    /// See [`ServeSettings::log_cleaner_dedupe_buffer_size`].
    pub log_cleaner_dedupe_buffer_size: usize,
    /// See [`ServeSettings::log_cleaner_io_max_bytes_per_second`].
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// Static topic defaults by broker-level name.
    pub topic_defaults: BTreeMap<String, String>,
    /// The group coordinators' settings.
    pub groups: CoordinatorConfig,
    /// See [`ServeSettings::offsets_topic_num_partitions`].
    pub offsets_topic_num_partitions: i32,
    /// See [`ServeSettings::transaction_state_log_num_partitions`].
    pub transaction_state_log_num_partitions: i32,
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("config file {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting has a value that cannot work.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting.
        name: String,
        /// Why.
        reason: String,
    },
}

impl ServeSettings {
    /// Reads settings from a TOML file.
    ///
    /// # Errors
    /// [`ConfigFileError`] when it cannot be read or parsed.
    pub fn from_file(path: &Path) -> Result<ServeSettings, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigFileError::Parse {
            path: path.to_owned(),
            reason: error.to_string(),
        })
    }

    /// These settings where set, `base` where not.
    pub fn over(self, base: ServeSettings) -> ServeSettings {
        let mut topic_defaults = base.topic_defaults;
        topic_defaults.extend(base.topic_default);
        topic_defaults.extend(self.topic_defaults);
        topic_defaults.extend(self.topic_default);
        ServeSettings {
            listen: self.listen.or(base.listen),
            advertised_listen: self.advertised_listen.or(base.advertised_listen),
            data_dir: self.data_dir.or(base.data_dir),
            cores: self.cores.or(base.cores),
            node_id: self.node_id.or(base.node_id),
            controller_quorum: self.controller_quorum.or(base.controller_quorum),
            process_roles: self.process_roles.or(base.process_roles),
            broker_session_timeout_ms: self
                .broker_session_timeout_ms
                .or(base.broker_session_timeout_ms),
            broker_heartbeat_interval_ms: self
                .broker_heartbeat_interval_ms
                .or(base.broker_heartbeat_interval_ms),
            metadata_snapshot_interval_records: self
                .metadata_snapshot_interval_records
                .or(base.metadata_snapshot_interval_records),
            replica_lag_time_max_ms: self
                .replica_lag_time_max_ms
                .or(base.replica_lag_time_max_ms),
            leader_imbalance_check_interval_ms: self
                .leader_imbalance_check_interval_ms
                .or(base.leader_imbalance_check_interval_ms),
            metrics_listen: self.metrics_listen.or(base.metrics_listen),
            auto_create_topics: self.auto_create_topics.or(base.auto_create_topics),
            num_partitions: self.num_partitions.or(base.num_partitions),
            socket_request_max_bytes: self
                .socket_request_max_bytes
                .or(base.socket_request_max_bytes),
            max_connections: self.max_connections.or(base.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(base.max_connections_per_ip),
            max_partitions_per_broker: self
                .max_partitions_per_broker
                .or(base.max_partitions_per_broker),
            max_inflight_requests_per_connection: self
                .max_inflight_requests_per_connection
                .or(base.max_inflight_requests_per_connection),
            log_retention_check_interval_ms: self
                .log_retention_check_interval_ms
                .or(base.log_retention_check_interval_ms),
            producer_id_expiration_ms: self
                .producer_id_expiration_ms
                .or(base.producer_id_expiration_ms),
            log_background_sync_bytes: self
                .log_background_sync_bytes
                .or(base.log_background_sync_bytes),
            log_cleaner_enable: self.log_cleaner_enable.or(base.log_cleaner_enable),
            log_cleaner_backoff_ms: self.log_cleaner_backoff_ms.or(base.log_cleaner_backoff_ms),
            log_cleaner_dedupe_buffer_size: self
                .log_cleaner_dedupe_buffer_size
                .or(base.log_cleaner_dedupe_buffer_size),
            log_cleaner_io_max_bytes_per_second: self
                .log_cleaner_io_max_bytes_per_second
                .or(base.log_cleaner_io_max_bytes_per_second),
            group_initial_rebalance_delay_ms: self
                .group_initial_rebalance_delay_ms
                .or(base.group_initial_rebalance_delay_ms),
            group_min_session_timeout_ms: self
                .group_min_session_timeout_ms
                .or(base.group_min_session_timeout_ms),
            group_max_session_timeout_ms: self
                .group_max_session_timeout_ms
                .or(base.group_max_session_timeout_ms),
            group_max_size: self.group_max_size.or(base.group_max_size),
            offsets_topic_num_partitions: self
                .offsets_topic_num_partitions
                .or(base.offsets_topic_num_partitions),
            transaction_state_log_num_partitions: self
                .transaction_state_log_num_partitions
                .or(base.transaction_state_log_num_partitions),
            offsets_retention_minutes: self
                .offsets_retention_minutes
                .or(base.offsets_retention_minutes),
            offsets_retention_check_interval_ms: self
                .offsets_retention_check_interval_ms
                .or(base.offsets_retention_check_interval_ms),
            offset_metadata_max_bytes: self
                .offset_metadata_max_bytes
                .or(base.offset_metadata_max_bytes),
            topic_default: Vec::new(),
            topic_defaults,
        }
    }

    /// Resolves defaults and checks the values.
    ///
    /// # Errors
    /// [`ConfigFileError::Invalid`] naming the bad setting.
    pub fn resolve(self) -> Result<BrokerConfig, ConfigFileError> {
        let invalid = |name: &str, reason: String| ConfigFileError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092)));
        let (advertised_host, advertised_port) = match &self.advertised_listen {
            Some(text) => {
                let (host, port) = text.rsplit_once(':').ok_or_else(|| {
                    invalid("advertised_listen", format!("{text:?} is not HOST:PORT"))
                })?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| invalid("advertised_listen", format!("bad port in {text:?}")))?;
                (host.trim_matches(['[', ']']).to_owned(), i32::from(port))
            }
            None if listen.ip().is_unspecified() => {
                ("127.0.0.1".to_owned(), i32::from(listen.port()))
            }
            None => (listen.ip().to_string(), i32::from(listen.port())),
        };
        let cores = self.cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if cores == 0 || cores > 1024 {
            return Err(invalid(
                "cores",
                format!("{cores} is not between 1 and 1024"),
            ));
        }
        let num_partitions = self.num_partitions.unwrap_or(1);
        if num_partitions < 1 {
            return Err(invalid("num_partitions", "must be at least 1".into()));
        }
        let socket_request_max_bytes = self
            .socket_request_max_bytes
            .unwrap_or(limits::SOCKET_REQUEST_MAX_BYTES_DEFAULT);
        if socket_request_max_bytes < 1024 || socket_request_max_bytes > i32::MAX as usize {
            return Err(invalid(
                "socket_request_max_bytes",
                "must be between 1024 and 2147483647".into(),
            ));
        }
        let max_inflight = self
            .max_inflight_requests_per_connection
            .unwrap_or(limits::MAX_INFLIGHT_REQUESTS_PER_CONNECTION_DEFAULT);
        if max_inflight == 0 {
            return Err(invalid(
                "max_inflight_requests_per_connection",
                "must be at least 1".into(),
            ));
        }
        let groups = self
            .group_settings()
            .map_err(|(name, reason)| invalid(name, reason))?;
        let mut topic_defaults = self.topic_defaults;
        topic_defaults.extend(self.topic_default);
        for (name, value) in &topic_defaults {
            let key = broker_key(name).ok_or_else(|| {
                invalid(
                    &format!("topic default {name}"),
                    "not a broker-level topic config name (see spate serve --help)".into(),
                )
            })?;
            check_value(key, name, value)
                .map_err(|error| invalid(&format!("topic default {name}"), error.to_string()))?;
        }
        let offsets_topic_num_partitions = self
            .offsets_topic_num_partitions
            .unwrap_or(OFFSETS_TOPIC_PARTITIONS_DEFAULT);
        let transaction_state_log_num_partitions = self
            .transaction_state_log_num_partitions
            .unwrap_or(TRANSACTION_TOPIC_PARTITIONS_DEFAULT);
        for (name, partitions) in [
            ("offsets_topic_num_partitions", offsets_topic_num_partitions),
            (
                "transaction_state_log_num_partitions",
                transaction_state_log_num_partitions,
            ),
        ] {
            if !(1..=limits::PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
                return Err(invalid(
                    name,
                    format!("must be between 1 and {}", limits::PARTITIONS_PER_TOPIC_MAX),
                ));
            }
        }
        let node_id = self.node_id.unwrap_or(1);
        let controller_quorum = match &self.controller_quorum {
            None => Vec::new(),
            Some(text) => {
                parse_quorum(text).map_err(|reason| invalid("controller_quorum", reason))?
            }
        };
        let voter = controller_quorum
            .iter()
            .any(|&(id, _)| i64::from(node_id) == id as i64);
        let roles = match self.process_roles.as_deref() {
            None if controller_quorum.is_empty() || voter => ProcessRoles::BOTH,
            None => ProcessRoles::BROKER,
            Some(text) => {
                ProcessRoles::parse(text).map_err(|reason| invalid("process_roles", reason))?
            }
        };
        if controller_quorum.is_empty() && roles != ProcessRoles::BOTH {
            return Err(invalid(
                "process_roles",
                "a node without --controller-quorum is a single-node cluster, both broker and \
                 controller"
                    .into(),
            ));
        }
        if roles.controller && !controller_quorum.is_empty() && !voter {
            return Err(invalid(
                "controller_quorum",
                format!(
                    "this node's id {node_id} (--node-id) is not one of the voters, so it \
                     cannot be a controller (--process-roles broker makes it a broker only)"
                ),
            ));
        }
        if !roles.controller && voter {
            return Err(invalid(
                "process_roles",
                format!("node {node_id} is a voter of the quorum, so it must be a controller"),
            ));
        }
        let broker_session_timeout_ms = self.broker_session_timeout_ms.unwrap_or(9_000);
        let broker_heartbeat_interval_ms = self.broker_heartbeat_interval_ms.unwrap_or(2_000);
        if broker_heartbeat_interval_ms < 1
            || broker_heartbeat_interval_ms >= broker_session_timeout_ms
        {
            return Err(invalid(
                "broker_heartbeat_interval_ms",
                "must be at least 1 and below broker_session_timeout_ms".into(),
            ));
        }
        let metadata_snapshot_interval_records =
            self.metadata_snapshot_interval_records.unwrap_or(10_000);
        if metadata_snapshot_interval_records < 1 {
            return Err(invalid(
                "metadata_snapshot_interval_records",
                "must be at least 1".into(),
            ));
        }
        let replica_lag_time_max_ms = self.replica_lag_time_max_ms.unwrap_or(30_000);
        if replica_lag_time_max_ms < 1 {
            return Err(invalid(
                "replica_lag_time_max_ms",
                "must be at least 1".into(),
            ));
        }
        let leader_imbalance_check_interval_ms =
            self.leader_imbalance_check_interval_ms.unwrap_or(300_000);
        if leader_imbalance_check_interval_ms < 1 {
            return Err(invalid(
                "leader_imbalance_check_interval_ms",
                "must be at least 1".into(),
            ));
        }
        let producer_id_expiration_ms = self
            .producer_id_expiration_ms
            .unwrap_or(limits::PRODUCER_ID_EXPIRATION_MS_DEFAULT);
        if producer_id_expiration_ms < 1 {
            return Err(invalid(
                "producer_id_expiration_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(BrokerConfig {
            groups,
            replica_lag_time_max_ms,
            leader_imbalance_check_interval_ms,
            controller_quorum,
            roles,
            broker_session_timeout_ms,
            broker_heartbeat_interval_ms,
            metadata_snapshot_interval_records,
            offsets_topic_num_partitions,
            transaction_state_log_num_partitions,
            listen,
            advertised_host,
            advertised_port,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("spate-data")),
            cores,
            node_id,
            metrics_listen: self.metrics_listen,
            auto_create_topics: self.auto_create_topics.unwrap_or(true),
            num_partitions,
            socket_request_max_bytes,
            max_connections: self
                .max_connections
                .unwrap_or(limits::MAX_CONNECTIONS_DEFAULT)
                .max(1),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(limits::MAX_CONNECTIONS_PER_IP_DEFAULT)
                .max(1),
            max_partitions_per_broker: self
                .max_partitions_per_broker
                .unwrap_or(limits::PARTITIONS_PER_BROKER_MAX_DEFAULT)
                .max(1),
            max_inflight_requests_per_connection: max_inflight,
            log_retention_check_interval_ms: self
                .log_retention_check_interval_ms
                .unwrap_or(limits::LOG_RETENTION_CHECK_INTERVAL_MS_DEFAULT)
                .max(100),
            producer_id_expiration_ms,
            log_background_sync_bytes: match self.log_background_sync_bytes {
                None => limits::LOG_BACKGROUND_SYNC_BYTES_DEFAULT,
                Some(0) => u64::MAX,
                Some(bytes) => bytes,
            },
            log_cleaner_enable: self.log_cleaner_enable.unwrap_or(true),
            log_cleaner_backoff_ms: self
                .log_cleaner_backoff_ms
                .unwrap_or(limits::LOG_CLEANER_BACKOFF_MS_DEFAULT)
                .max(10),
            log_cleaner_dedupe_buffer_size: self
                .log_cleaner_dedupe_buffer_size
                .unwrap_or(limits::LOG_CLEANER_DEDUPE_BUFFER_SIZE_DEFAULT)
                .max(1 << 20),
            log_cleaner_io_max_bytes_per_second: match self.log_cleaner_io_max_bytes_per_second {
                None => limits::LOG_CLEANER_IO_BYTES_PER_SECOND_DEFAULT,
                Some(0) => u64::MAX,
                Some(rate) => rate,
            },
            topic_defaults,
        })
    }
}

impl ServeSettings {
    fn group_settings(&self) -> Result<CoordinatorConfig, (&'static str, String)> {
        let defaults = CoordinatorConfig::default();
        let config = CoordinatorConfig {
            group_min_session_timeout_ms: self
                .group_min_session_timeout_ms
                .unwrap_or(defaults.group_min_session_timeout_ms),
            group_max_session_timeout_ms: self
                .group_max_session_timeout_ms
                .unwrap_or(defaults.group_max_session_timeout_ms),
            group_initial_rebalance_delay_ms: self
                .group_initial_rebalance_delay_ms
                .unwrap_or(defaults.group_initial_rebalance_delay_ms),
            group_max_size: self.group_max_size.unwrap_or(defaults.group_max_size),
            offsets_retention_ms: self
                .offsets_retention_minutes
                .map_or(defaults.offsets_retention_ms, |minutes| {
                    minutes.saturating_mul(60_000)
                }),
            offsets_retention_check_interval_ms: self
                .offsets_retention_check_interval_ms
                .unwrap_or(defaults.offsets_retention_check_interval_ms),
            offset_metadata_max_bytes: self
                .offset_metadata_max_bytes
                .unwrap_or(defaults.offset_metadata_max_bytes),
        };
        if config.group_min_session_timeout_ms < 1
            || config.group_min_session_timeout_ms > config.group_max_session_timeout_ms
        {
            return Err((
                "group_min_session_timeout_ms",
                "must be at least 1 and at most group_max_session_timeout_ms".into(),
            ));
        }
        if config.group_initial_rebalance_delay_ms < 0 {
            return Err((
                "group_initial_rebalance_delay_ms",
                "must not be negative".into(),
            ));
        }
        if config.offset_metadata_max_bytes > i16::MAX as usize {
            return Err((
                "offset_metadata_max_bytes",
                "must be at most 32767 (a Kafka string)".into(),
            ));
        }
        if config.group_max_size == 0 {
            return Err(("group_max_size", "must be at least 1".into()));
        }
        if config.offsets_retention_ms < 1 {
            return Err(("offsets_retention_minutes", "must be at least 1".into()));
        }
        if config.offsets_retention_check_interval_ms < 1 {
            return Err((
                "offsets_retention_check_interval_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_roles_follow_the_quorum_list() {
        let quorum = Some("1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093".to_string());
        let node = |id: i32, roles: Option<&str>| ServeSettings {
            node_id: Some(id),
            controller_quorum: quorum.clone(),
            process_roles: roles.map(str::to_string),
            ..ServeSettings::default()
        };
        assert_eq!(node(1, None).resolve().unwrap().roles, ProcessRoles::BOTH);
        assert_eq!(node(4, None).resolve().unwrap().roles, ProcessRoles::BROKER);
        let controller = node(2, Some("controller")).resolve().unwrap().roles;
        assert!(controller.controller && !controller.broker);
        assert_eq!(
            node(3, Some(" broker , controller"))
                .resolve()
                .unwrap()
                .roles,
            ProcessRoles::BOTH
        );
        for (id, roles) in [(4, "controller"), (1, "broker"), (1, "observer"), (1, "")] {
            assert!(node(id, Some(roles)).resolve().is_err(), "{id} {roles:?}");
        }
        let single = ServeSettings {
            process_roles: Some("broker".into()),
            ..ServeSettings::default()
        };
        assert!(single.resolve().is_err(), "a single node is both");
        assert_eq!(
            ServeSettings::default().resolve().unwrap().roles,
            ProcessRoles::BOTH
        );
    }

    #[test]
    fn defaults_file_and_flags() {
        let config = ServeSettings::default().resolve().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("spate-data"));
        assert_eq!(
            (config.advertised_host.as_str(), config.advertised_port),
            ("127.0.0.1", 9092)
        );
        let file: ServeSettings = toml::from_str(
            "listen = \"0.0.0.0:9093\"\ncores = 2\n[topic_defaults]\n\"log.retention.ms\" = \"1000\"\n",
        )
        .unwrap();
        let flags = ServeSettings {
            cores: Some(1),
            topic_default: vec![("log.segment.bytes".into(), "4096".into())],
            ..ServeSettings::default()
        };
        let config = flags.over(file).resolve().unwrap();
        assert_eq!(config.cores, 1);
        assert_eq!(config.listen.port(), 9093);
        assert_eq!(config.advertised_host, "127.0.0.1");
        assert_eq!(config.topic_defaults.len(), 2);
        assert!(toml::from_str::<ServeSettings>("listn = \"x\"").is_err());
        let bad = ServeSettings {
            topic_default: vec![("retention.ms".into(), "1".into())],
            ..ServeSettings::default()
        };
        assert!(bad.resolve().is_err());
        let groups = ServeSettings {
            group_initial_rebalance_delay_ms: Some(0),
            offsets_retention_minutes: Some(2),
            ..ServeSettings::default()
        }
        .resolve()
        .unwrap()
        .groups;
        assert_eq!(groups.group_initial_rebalance_delay_ms, 0);
        assert_eq!(groups.offsets_retention_ms, 120_000);
        let bad = ServeSettings {
            group_min_session_timeout_ms: Some(10_000),
            group_max_session_timeout_ms: Some(5_000),
            ..ServeSettings::default()
        };
        assert!(bad.resolve().is_err());
        let background_sync = |bytes: Option<u64>| {
            ServeSettings {
                log_background_sync_bytes: bytes,
                ..ServeSettings::default()
            }
            .resolve()
            .unwrap()
            .log_background_sync_bytes
        };
        assert_eq!(background_sync(None), 1 << 20);
        assert_eq!(background_sync(Some(0)), u64::MAX, "0 is never");
        assert_eq!(background_sync(Some(1 << 20)), 1 << 20);
        let file: ServeSettings = toml::from_str("log_background_sync_bytes = 0\n").unwrap();
        assert_eq!(file.resolve().unwrap().log_background_sync_bytes, u64::MAX);
    }
}

/// What a node of a cluster does (Kafka's `process.roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRoles {
    /// It holds partitions and serves clients.
    pub broker: bool,
    /// It is a voter of the metadata quorum (and the active controller when it leads).
    pub controller: bool,
}

impl ProcessRoles {
    /// KRaft's combined mode, and a single node.
    pub const BOTH: ProcessRoles = ProcessRoles {
        broker: true,
        controller: true,
    };
    /// A broker fetching the metadata from the controllers.
    pub const BROKER: ProcessRoles = ProcessRoles {
        broker: true,
        controller: false,
    };

    /// Reads `broker`, `controller` or both, comma separated.
    ///
    /// # Errors
    /// A sentence for anything else.
    pub fn parse(text: &str) -> Result<ProcessRoles, String> {
        let mut roles = ProcessRoles {
            broker: false,
            controller: false,
        };
        for role in text.split(',').map(str::trim) {
            match role {
                "broker" => roles.broker = true,
                "controller" => roles.controller = true,
                other => {
                    return Err(format!(
                        "unknown role {other:?}: give broker, controller or broker,controller"
                    ))
                }
            }
        }
        if !roles.broker && !roles.controller {
            return Err("give broker, controller or broker,controller".into());
        }
        Ok(roles)
    }
}
