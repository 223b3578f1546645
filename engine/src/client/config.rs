//! Client settings by Kafka's property names (`bootstrap.servers`, `acks`, `linger.ms`,
//! `group.id`, `auto.offset.reset`, ...), so that users carry their settings over from the Java
//! client or librdkafka. Unknown names and bad values are errors that name the property.

use std::collections::BTreeMap;

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not a property this client knows.
    #[error("unknown property {0:?}")]
    Unknown(String),
    /// A value the property does not take.
    #[error("invalid value {value:?} for {name}: {reason}")]
    Invalid {
        /// The property.
        name: String,
        /// The value given.
        value: String,
        /// What it takes.
        reason: String,
    },
    /// A property every client needs is missing.
    #[error("{0} is required")]
    Missing(&'static str),
}

/// `acks`: how many replicas acknowledge a write before the producer counts it delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `0`: no acknowledgement at all.
    None,
    /// `1`: the leader.
    Leader,
    /// `all` or `-1`: every in-sync replica.
    All,
}

impl Acks {
    /// The value on the wire.
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// `compression.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `none`.
    None,
    /// `gzip`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

/// `auto.offset.reset`: where a consumer starts without a committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// `earliest` (also librdkafka's `smallest`, `beginning`).
    Earliest,
    /// `latest` (also `largest`, `end`).
    Latest,
    /// `none` (also `error`): the consumer gets an error.
    None,
}

/// `partition.assignment.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// `range`.
    Range,
    /// `roundrobin`.
    RoundRobin,
    /// `cooperative-sticky`.
    CooperativeSticky,
}

impl Assignor {
    /// The protocol name in JoinGroup, as every client spells it.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// Settings shared by every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonConfig {
    /// `bootstrap.servers`: `HOST:PORT` of brokers to start from.
    pub bootstrap_servers: Vec<String>,
    /// `client.id`.
    pub client_id: String,
    /// `request.timeout.ms`.
    pub request_timeout_ms: u64,
    /// `retry.backoff.ms`.
    pub retry_backoff_ms: u64,
    /// `metadata.max.age.ms`.
    pub metadata_max_age_ms: u64,
}

/// A producer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// `acks` (default `all`, as the Java client 3.0+).
    pub acks: Acks,
    /// `linger.ms` (default 5, as the Java client 4.0 and librdkafka).
    pub linger_ms: u64,
    /// `batch.size`: bytes of records per partition batch (default 1,000,000, librdkafka's:
    /// the Java client's 16 KiB caps throughput at small records, while `linger.ms` bounds
    /// how long a batch waits either way).
    pub batch_size: usize,
    /// `compression.type`.
    pub compression: Compression,
    /// `retries`.
    pub retries: u32,
    /// `delivery.timeout.ms`: the longest a record may wait for delivery, retries included.
    pub delivery_timeout_ms: u64,
    /// `max.in.flight.requests.per.connection`.
    pub max_in_flight_requests_per_connection: usize,
    /// `buffer.memory`: bytes of records waiting to be sent before `send` blocks.
    pub buffer_memory: usize,
    /// `max.request.size`.
    pub max_request_size: usize,
    /// `enable.idempotence` (default on, as the Java client 3.0+, unless `acks`,
    /// `max.in.flight.requests.per.connection` or `retries` were set to values it cannot work
    /// with): producer id and sequence numbers, so a retried batch is stored once.
    pub enable_idempotence: bool,
    /// `transactional.id`: makes the producer transactional (see
    /// [`super::producer::Producer::init_transactions`]); needs idempotence.
    pub transactional_id: Option<String>,
    /// `transaction.timeout.ms` (default 60,000): how long the coordinator lets a transaction
    /// stay open before it aborts it.
    pub transaction_timeout_ms: i32,
}

/// A consumer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// `group.id`: `None` for a consumer that only assigns partitions.
    pub group_id: Option<String>,
    /// `group.instance.id`: static membership.
    pub group_instance_id: Option<String>,
    /// `auto.offset.reset`.
    pub auto_offset_reset: OffsetReset,
    /// `enable.auto.commit`.
    pub enable_auto_commit: bool,
    /// `auto.commit.interval.ms`.
    pub auto_commit_interval_ms: u64,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `max.poll.interval.ms`: the rebalance timeout.
    pub max_poll_interval_ms: i32,
    /// `partition.assignment.strategy`, in preference order.
    pub assignors: Vec<Assignor>,
    /// `fetch.min.bytes`.
    pub fetch_min_bytes: i32,
    /// `fetch.max.bytes`.
    pub fetch_max_bytes: i32,
    /// `fetch.max.wait.ms`.
    pub fetch_max_wait_ms: i32,
    /// `max.partition.fetch.bytes`.
    pub max_partition_fetch_bytes: i32,
    /// `max.poll.records`.
    pub max_poll_records: usize,
    /// `isolation.level` `read_committed`: read only committed transactions' records, up to
    /// the last stable offset (default `read_uncommitted`, as the Java client).
    pub read_committed: bool,
}

/// Properties given by name, consumed as each is read so that leftovers are unknown names.
struct Properties(BTreeMap<String, String>);

impl Properties {
    fn new<I, K, V>(properties: I) -> Properties
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Properties(
            properties
                .into_iter()
                .map(|(name, value)| {
                    (
                        name.into().trim().to_owned(),
                        value.into().trim().to_owned(),
                    )
                })
                .collect(),
        )
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    fn parse<T: std::str::FromStr>(
        &mut self,
        name: &str,
        default: T,
        valid: impl Fn(&T) -> bool,
        takes: &str,
    ) -> Result<T, ConfigError> {
        let Some(value) = self.take(name) else {
            return Ok(default);
        };
        match value.parse::<T>() {
            Ok(parsed) if valid(&parsed) => Ok(parsed),
            _ => Err(invalid(name, &value, takes)),
        }
    }

    fn boolean(&mut self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.take(name) {
            None => Ok(default),
            Some(value) => match value.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(invalid(name, &value, "true or false")),
            },
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
        match self.0.into_keys().next() {
            Some(name) => Err(ConfigError::Unknown(name)),
            None => Ok(()),
        }
    }
}

fn invalid(name: &str, value: &str, takes: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: format!("takes {takes}"),
    }
}

impl CommonConfig {
    fn read(properties: &mut Properties) -> Result<CommonConfig, ConfigError> {
        let servers = properties
            .take("bootstrap.servers")
            .ok_or(ConfigError::Missing("bootstrap.servers"))?;
        let bootstrap_servers: Vec<String> = servers
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .map(str::to_owned)
            .collect();
        if bootstrap_servers.is_empty()
            || bootstrap_servers.iter().any(|server| {
                server
                    .rsplit_once(':')
                    .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            })
        {
            return Err(invalid(
                "bootstrap.servers",
                &servers,
                "HOST:PORT[,HOST:PORT...]",
            ));
        }
        let positive = |value: &u64| *value > 0;
        Ok(CommonConfig {
            bootstrap_servers,
            client_id: properties
                .take("client.id")
                .unwrap_or_else(|| "spate".to_owned()),
            request_timeout_ms: properties.parse(
                "request.timeout.ms",
                30_000,
                positive,
                "a positive number of ms",
            )?,
            retry_backoff_ms: properties.parse(
                "retry.backoff.ms",
                100,
                |_| true,
                "a number of ms",
            )?,
            metadata_max_age_ms: properties.parse(
                "metadata.max.age.ms",
                300_000,
                positive,
                "a positive number of ms",
            )?,
        })
    }
}

impl CommonConfig {
    /// Reads the shared settings alone (an admin client's).
    ///
    /// # Errors
    /// [`ConfigError`] for a missing `bootstrap.servers`, an unknown name or a bad value.
    pub fn from_properties<I, K, V>(properties: I) -> Result<CommonConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut properties = Properties::new(properties);
        let config = CommonConfig::read(&mut properties)?;
        properties.finish()?;
        Ok(config)
    }
}

impl ProducerConfig {
    /// Reads a producer's settings.
    ///
    /// # Errors
    /// [`ConfigError`] for a missing `bootstrap.servers`, an unknown name or a bad value.
    pub fn from_properties<I, K, V>(properties: I) -> Result<ProducerConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut properties = Properties::new(properties);
        let common = CommonConfig::read(&mut properties)?;
        let acks = match properties.take("acks") {
            None => Acks::All,
            Some(value) => match value.as_str() {
                "0" => Acks::None,
                "1" => Acks::Leader,
                "all" | "-1" => Acks::All,
                _ => return Err(invalid("acks", &value, "0, 1, all or -1")),
            },
        };
        let compression = match properties.take("compression.type") {
            None => Compression::None,
            Some(value) => match value.as_str() {
                "none" => Compression::None,
                "gzip" => Compression::Gzip,
                "snappy" => Compression::Snappy,
                "lz4" => Compression::Lz4,
                "zstd" => Compression::Zstd,
                _ => {
                    return Err(invalid(
                        "compression.type",
                        &value,
                        "none, gzip, snappy, lz4 or zstd",
                    ))
                }
            },
        };
        let idempotence_asked = match properties.take("enable.idempotence") {
            None => None,
            Some(value) => match value.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => return Err(invalid("enable.idempotence", &value, "true or false")),
            },
        };
        let mut config = ProducerConfig {
            common,
            acks,
            linger_ms: properties.parse("linger.ms", 5, |_| true, "a number of ms")?,
            batch_size: properties.parse(
                "batch.size",
                1_000_000,
                |size| *size > 0,
                "a positive number of bytes",
            )?,
            compression,
            retries: properties.parse("retries", i32::MAX as u32, |_| true, "a number")?,
            delivery_timeout_ms: properties.parse(
                "delivery.timeout.ms",
                120_000,
                |ms| *ms > 0,
                "a positive number of ms",
            )?,
            max_in_flight_requests_per_connection: properties.parse(
                "max.in.flight.requests.per.connection",
                5,
                |count| *count > 0,
                "a positive number",
            )?,
            buffer_memory: properties.parse(
                "buffer.memory",
                32 << 20,
                |bytes| *bytes > 0,
                "a positive number of bytes",
            )?,
            max_request_size: properties.parse(
                "max.request.size",
                1 << 20,
                |bytes| *bytes > 0,
                "a positive number of bytes",
            )?,
            enable_idempotence: false,
            transactional_id: properties.take("transactional.id"),
            transaction_timeout_ms: properties.parse(
                "transaction.timeout.ms",
                60_000,
                |ms| *ms > 0,
                "a positive number of ms",
            )?,
        };
        properties.finish()?;
        // As the Java client 3.2+: idempotence is on unless turned off or unless settings it
        // cannot work with were given (then it is off when not asked for, refused when asked).
        let conflict = if config.acks != Acks::All {
            Some(("acks", "all"))
        } else if config.max_in_flight_requests_per_connection > 5 {
            Some(("max.in.flight.requests.per.connection", "at most 5"))
        } else if config.retries == 0 {
            Some(("retries", "above 0"))
        } else {
            None
        };
        config.enable_idempotence = match (idempotence_asked, conflict) {
            (Some(true), Some((name, wanted))) => {
                return Err(ConfigError::Invalid {
                    name: "enable.idempotence".into(),
                    value: "true".into(),
                    reason: format!("idempotence needs {name} {wanted}"),
                })
            }
            (Some(asked), _) => asked,
            (None, conflict) => conflict.is_none(),
        };
        if config.transactional_id.is_some() && !config.enable_idempotence {
            // As the Java client: a transactional producer is an idempotent one.
            return Err(ConfigError::Invalid {
                name: "transactional.id".into(),
                value: config.transactional_id.clone().unwrap_or_default(),
                reason: match conflict {
                    Some((name, wanted)) => format!("transactions need {name} {wanted}"),
                    None => "transactions need enable.idempotence".into(),
                },
            });
        }
        Ok(config)
    }
}

impl ConsumerConfig {
    /// Reads a consumer's settings.
    ///
    /// # Errors
    /// [`ConfigError`] for a missing `bootstrap.servers`, an unknown name or a bad value.
    pub fn from_properties<I, K, V>(properties: I) -> Result<ConsumerConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut properties = Properties::new(properties);
        let common = CommonConfig::read(&mut properties)?;
        let read_committed = match properties.take("isolation.level") {
            None => false,
            Some(value) => match value.as_str() {
                "read_committed" => true,
                "read_uncommitted" => false,
                _ => {
                    return Err(invalid(
                        "isolation.level",
                        &value,
                        "read_committed or read_uncommitted",
                    ))
                }
            },
        };
        let auto_offset_reset = match properties.take("auto.offset.reset") {
            None => OffsetReset::Latest,
            Some(value) => match value.as_str() {
                "earliest" | "smallest" | "beginning" => OffsetReset::Earliest,
                "latest" | "largest" | "end" => OffsetReset::Latest,
                "none" | "error" => OffsetReset::None,
                _ => {
                    return Err(invalid(
                        "auto.offset.reset",
                        &value,
                        "earliest, latest or none",
                    ))
                }
            },
        };
        let assignors = match properties.take("partition.assignment.strategy") {
            None => vec![Assignor::Range, Assignor::RoundRobin],
            Some(value) => value
                .split(',')
                .map(str::trim)
                .map(|name| match name {
                    "range" => Ok(Assignor::Range),
                    "roundrobin" => Ok(Assignor::RoundRobin),
                    "cooperative-sticky" => Ok(Assignor::CooperativeSticky),
                    _ => Err(invalid(
                        "partition.assignment.strategy",
                        &value,
                        "range, roundrobin or cooperative-sticky, comma-separated",
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let group_id = properties
            .take("group.id")
            .filter(|group| !group.is_empty());
        let config = ConsumerConfig {
            common,
            group_instance_id: properties
                .take("group.instance.id")
                .filter(|id| !id.is_empty()),
            auto_offset_reset,
            enable_auto_commit: properties.boolean("enable.auto.commit", group_id.is_some())?,
            auto_commit_interval_ms: properties.parse(
                "auto.commit.interval.ms",
                5_000,
                |ms| *ms > 0,
                "a positive number of ms",
            )?,
            session_timeout_ms: properties.parse(
                "session.timeout.ms",
                45_000,
                |ms| *ms > 0,
                "a positive number of ms",
            )?,
            heartbeat_interval_ms: properties.parse(
                "heartbeat.interval.ms",
                3_000,
                |ms| *ms > 0,
                "a positive number of ms",
            )?,
            max_poll_interval_ms: properties.parse(
                "max.poll.interval.ms",
                300_000,
                |ms| *ms > 0,
                "a positive number of ms",
            )?,
            assignors,
            fetch_min_bytes: properties.parse(
                "fetch.min.bytes",
                1,
                |bytes| *bytes > 0,
                "a positive number of bytes",
            )?,
            fetch_max_bytes: properties.parse(
                "fetch.max.bytes",
                52_428_800,
                |bytes| *bytes > 0,
                "a positive number of bytes",
            )?,
            fetch_max_wait_ms: properties.parse(
                "fetch.max.wait.ms",
                500,
                |ms| *ms >= 0,
                "a number of ms",
            )?,
            max_partition_fetch_bytes: properties.parse(
                "max.partition.fetch.bytes",
                1_048_576,
                |bytes| *bytes > 0,
                "a positive number of bytes",
            )?,
            max_poll_records: properties.parse(
                "max.poll.records",
                500,
                |count| *count > 0,
                "a positive number",
            )?,
            group_id,
            read_committed,
        };
        if config.heartbeat_interval_ms >= config.session_timeout_ms as u64 {
            return Err(ConfigError::Invalid {
                name: "heartbeat.interval.ms".into(),
                value: config.heartbeat_interval_ms.to_string(),
                reason: format!(
                    "must be lower than session.timeout.ms ({})",
                    config.session_timeout_ms
                ),
            });
        }
        properties.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_settings_by_kafka_names() {
        let config = ProducerConfig::from_properties([
            ("bootstrap.servers", "a:9092, b:9093"),
            ("acks", "1"),
            ("linger.ms", "20"),
            ("compression.type", "zstd"),
        ])
        .unwrap();
        assert_eq!(config.common.bootstrap_servers, ["a:9092", "b:9093"]);
        assert_eq!((config.acks, config.linger_ms), (Acks::Leader, 20));
        assert_eq!(config.compression, Compression::Zstd);
        assert_eq!(config.batch_size, 1_000_000);
        let defaults = ProducerConfig::from_properties([("bootstrap.servers", "a:1")]).unwrap();
        assert_eq!(defaults.acks, Acks::All);
        assert_eq!(defaults.acks.wire(), -1);
    }

    #[test]
    fn consumer_settings_by_kafka_names() {
        let config = ConsumerConfig::from_properties([
            ("bootstrap.servers", "127.0.0.1:9092"),
            ("group.id", "billing"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ])
        .unwrap();
        assert_eq!(config.group_id.as_deref(), Some("billing"));
        assert_eq!(config.auto_offset_reset, OffsetReset::Earliest);
        assert_eq!(config.assignors, [Assignor::CooperativeSticky]);
        assert!(config.enable_auto_commit, "on by default with a group");
        let alone = ConsumerConfig::from_properties([("bootstrap.servers", "h:1")]).unwrap();
        assert!(!alone.enable_auto_commit && alone.group_id.is_none());
    }

    #[test]
    fn errors_name_the_property() {
        let error =
            ProducerConfig::from_properties([("bootstrap.servers", "h:1"), ("lingr.ms", "5")]);
        assert_eq!(error, Err(ConfigError::Unknown("lingr.ms".into())));
        let error = ProducerConfig::from_properties([("bootstrap.servers", "h:1"), ("acks", "2")]);
        assert!(matches!(error, Err(ConfigError::Invalid { ref name, .. }) if name == "acks"));
        let error =
            ProducerConfig::from_properties([("bootstrap.servers", "h:1"), ("linger.ms", "-1")]);
        assert!(matches!(error, Err(ConfigError::Invalid { ref name, .. }) if name == "linger.ms"));
        assert_eq!(
            ProducerConfig::from_properties([("acks", "1")]),
            Err(ConfigError::Missing("bootstrap.servers"))
        );
        assert!(ProducerConfig::from_properties([("bootstrap.servers", "nohost")]).is_err());
        let idempotence = |properties: &[(&str, &str)]| {
            let mut all = vec![("bootstrap.servers", "h:1")];
            all.extend_from_slice(properties);
            ProducerConfig::from_properties(all.iter().copied())
                .map(|config| config.enable_idempotence)
        };
        assert_eq!(idempotence(&[]), Ok(true), "on by default");
        assert_eq!(idempotence(&[("enable.idempotence", "false")]), Ok(false));
        assert_eq!(
            idempotence(&[("acks", "1")]),
            Ok(false),
            "off when acks says so"
        );
        assert_eq!(idempotence(&[("acks", "all"), ("retries", "0")]), Ok(false));
        assert!(idempotence(&[("acks", "1"), ("enable.idempotence", "true")]).is_err());
        // A transactional producer is an idempotent one.
        assert!(idempotence(&[("transactional.id", "t"), ("acks", "1")]).is_err());
        assert!(
            idempotence(&[("transactional.id", "t"), ("enable.idempotence", "false")]).is_err()
        );
        assert_eq!(idempotence(&[("transactional.id", "t")]), Ok(true));
        assert!(idempotence(&[
            ("max.in.flight.requests.per.connection", "6"),
            ("enable.idempotence", "true")
        ])
        .is_err());
        let error = ConsumerConfig::from_properties([
            ("bootstrap.servers", "h:1"),
            ("session.timeout.ms", "3000"),
            ("heartbeat.interval.ms", "3000"),
        ]);
        assert!(
            matches!(error, Err(ConfigError::Invalid { ref name, .. }) if name == "heartbeat.interval.ms")
        );
        let message = ConfigError::Unknown("x".into()).to_string();
        assert!(message.contains("unknown property"));
    }
}
