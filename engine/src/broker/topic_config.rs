//! Topic configs: Kafka's names and defaults, the broker-level names that set their defaults,
//! and their resolution into a [`LogConfig`].
//!
//! A value comes from the first layer that sets it: the topic's own override
//! (`retention.ms`), a dynamic broker override set with AlterConfigs (`log.retention.ms`), the
//! broker's static setting from its flags or config file, or Kafka's default.

use std::collections::BTreeMap;

use crate::limits;
use crate::storage::batch::TimestampType;
use crate::storage::{CleanupPolicy, LogConfig, Ratio};

/// How a config value is parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// A 64-bit integer at least `min`.
    Long {
        /// Smallest value accepted.
        min: i64,
    },
    /// A 32-bit integer at least `min`.
    Int {
        /// Smallest value accepted.
        min: i64,
    },
    /// One of a fixed list of words.
    Choice(&'static [&'static str]),
    /// A number between 0 and 1.
    Ratio,
}

/// One topic config.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    /// The topic-level name (`retention.ms`).
    pub topic_name: &'static str,
    /// The broker-level name that sets its default (`log.retention.ms`).
    pub broker_name: &'static str,
    /// Type and range.
    pub kind: ConfigKind,
    /// Kafka's default.
    pub default: &'static str,
    /// What it does, for DescribeConfigs documentation.
    pub doc: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";

/// Every topic config Spate implements.
pub const TOPIC_CONFIGS: &[ConfigKey] = &[
    ConfigKey {
        topic_name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        kind: ConfigKind::Choice(&["delete", "compact", "compact,delete", "delete,compact"]),
        default: "delete",
        doc: "What happens to old segments: \"delete\" them past retention, \"compact\" them \
              to the latest record of each key, or both.",
    },
    ConfigKey {
        topic_name: "delete.retention.ms",
        broker_name: "log.cleaner.delete.retention.ms",
        kind: ConfigKind::Long { min: 0 },
        default: "86400000",
        doc: "How long a tombstone stays in a compacted topic once the cleaner first kept it.",
    },
    ConfigKey {
        topic_name: "flush.messages",
        broker_name: "log.flush.interval.messages",
        kind: ConfigKind::Long { min: 1 },
        default: LONG_MAX,
        doc: "Sync the log after this many records.",
    },
    ConfigKey {
        topic_name: "flush.ms",
        broker_name: "log.flush.interval.ms",
        kind: ConfigKind::Long { min: 0 },
        default: LONG_MAX,
        doc: "Sync the log when the last sync is this old.",
    },
    ConfigKey {
        topic_name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        kind: ConfigKind::Int { min: 1 },
        default: "4096",
        doc: "Bytes of log between two offset index entries.",
    },
    ConfigKey {
        topic_name: "max.message.bytes",
        broker_name: "message.max.bytes",
        kind: ConfigKind::Int { min: 62 },
        default: "1048588",
        doc: "Largest record batch accepted.",
    },
    ConfigKey {
        topic_name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        kind: ConfigKind::Choice(&["CreateTime", "LogAppendTime"]),
        default: "CreateTime",
        doc: "Whether record timestamps are the producer's or the broker's.",
    },
    ConfigKey {
        topic_name: "max.compaction.lag.ms",
        broker_name: "log.cleaner.max.compaction.lag.ms",
        kind: ConfigKind::Long { min: 1 },
        default: LONG_MAX,
        doc: "Records older than this are compacted whatever the dirty ratio.",
    },
    ConfigKey {
        topic_name: "min.cleanable.dirty.ratio",
        broker_name: "log.cleaner.min.cleanable.ratio",
        kind: ConfigKind::Ratio,
        default: "0.5",
        doc: "Compact once this share of the log is dirty (not compacted yet).",
    },
    ConfigKey {
        topic_name: "min.compaction.lag.ms",
        broker_name: "log.cleaner.min.compaction.lag.ms",
        kind: ConfigKind::Long { min: 0 },
        default: "0",
        doc: "Records younger than this are not compacted.",
    },
    ConfigKey {
        topic_name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        kind: ConfigKind::Int { min: 1 },
        default: "1",
        doc: "Replicas that must have a write for acks=all to succeed.",
    },
    ConfigKey {
        topic_name: "retention.bytes",
        broker_name: "log.retention.bytes",
        kind: ConfigKind::Long { min: -1 },
        default: "-1",
        doc: "Delete old segments while a partition is larger than this; -1 for no limit.",
    },
    ConfigKey {
        topic_name: "retention.ms",
        broker_name: "log.retention.ms",
        kind: ConfigKind::Long { min: -1 },
        default: "604800000",
        doc: "Delete segments whose newest record is older than this; -1 keeps them forever.",
    },
    ConfigKey {
        topic_name: "segment.bytes",
        broker_name: "log.segment.bytes",
        kind: ConfigKind::Int {
            min: limits::SEGMENT_BYTES_MIN as i64,
        },
        default: "1073741824",
        doc: "Roll to a new segment file at this size.",
    },
    ConfigKey {
        topic_name: "segment.index.bytes",
        broker_name: "log.index.size.max.bytes",
        kind: ConfigKind::Int { min: 16 },
        default: "10485760",
        doc: "Roll when a segment's offset index reaches this size.",
    },
    ConfigKey {
        topic_name: "segment.ms",
        broker_name: "log.roll.ms",
        kind: ConfigKind::Long { min: 1 },
        default: "604800000",
        doc: "Roll to a new segment file when the active one is this old.",
    },
];

/// A config name or value that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not a config Spate knows.
    #[error("unknown config {0:?}")]
    Unknown(String),
    /// A value that does not parse or is out of range.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidValue {
        /// Config name.
        name: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// The topic config called `name`.
pub fn topic_key(name: &str) -> Option<&'static ConfigKey> {
    TOPIC_CONFIGS.iter().find(|key| key.topic_name == name)
}

/// The topic config whose broker-level default is called `name`.
pub fn broker_key(name: &str) -> Option<&'static ConfigKey> {
    TOPIC_CONFIGS.iter().find(|key| key.broker_name == name)
}

/// Checks one value against its key.
///
/// # Errors
/// [`ConfigError::InvalidValue`].
pub fn check_value(key: &ConfigKey, name: &str, value: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidValue {
        name: name.to_owned(),
        value: value.to_owned(),
        reason,
    };
    match key.kind {
        ConfigKind::Long { min } | ConfigKind::Int { min } => {
            let parsed: i64 = value
                .trim()
                .parse()
                .map_err(|_| invalid("not an integer".into()))?;
            if parsed < min {
                return Err(invalid(format!("must be at least {min}")));
            }
            if matches!(key.kind, ConfigKind::Int { .. }) && parsed > i64::from(i32::MAX) {
                return Err(invalid(format!("must be at most {}", i32::MAX)));
            }
            Ok(())
        }
        ConfigKind::Choice(words) => {
            let normalized: String = value
                .split(',')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(",");
            if words.contains(&normalized.as_str()) {
                Ok(())
            } else {
                Err(invalid(format!("must be one of {words:?}")))
            }
        }
        ConfigKind::Ratio => {
            let parsed: f64 = value
                .trim()
                .parse()
                .map_err(|_| invalid("not a number".into()))?;
            if (0.0..=1.0).contains(&parsed) {
                Ok(())
            } else {
                Err(invalid("must be between 0 and 1".into()))
            }
        }
    }
}

/// Checks a set of topic-level overrides.
///
/// # Errors
/// The first unknown name or bad value.
pub fn check_topic_overrides(overrides: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in overrides {
        let key = topic_key(name).ok_or_else(|| ConfigError::Unknown(name.clone()))?;
        check_value(key, name, value)?;
    }
    Ok(())
}

/// Where a resolved value came from, with Kafka's DescribeConfigs `config_source` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// The topic's own override (`TOPIC_CONFIG`, 1).
    Topic = 1,
    /// A dynamic broker override (`DYNAMIC_DEFAULT_BROKER_CONFIG`, 3).
    DynamicBroker = 3,
    /// The broker's flags or config file (`STATIC_BROKER_CONFIG`, 4).
    StaticBroker = 4,
    /// Kafka's default (`DEFAULT_CONFIG`, 5).
    Default = 5,
}

/// The layers a topic config is resolved from; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct ConfigLayers<'a> {
    /// The topic's overrides, by topic-level name.
    pub topic: &'a BTreeMap<String, String>,
    /// Dynamic broker overrides, by broker-level name.
    pub dynamic_broker: &'a BTreeMap<String, String>,
    /// Static broker settings, by broker-level name.
    pub static_broker: &'a BTreeMap<String, String>,
}

impl ConfigLayers<'_> {
    /// The value of `key` and where it came from.
    pub fn resolve(&self, key: &ConfigKey) -> (String, ConfigSource) {
        if let Some(value) = self.topic.get(key.topic_name) {
            return (value.clone(), ConfigSource::Topic);
        }
        if let Some(value) = self.dynamic_broker.get(key.broker_name) {
            return (value.clone(), ConfigSource::DynamicBroker);
        }
        if let Some(value) = self.static_broker.get(key.broker_name) {
            return (value.clone(), ConfigSource::StaticBroker);
        }
        (key.default.to_owned(), ConfigSource::Default)
    }

    /// The partition log settings these layers give.
    ///
    /// # Errors
    /// A value that does not parse, or settings the log refuses together.
    pub fn log_config(&self) -> Result<LogConfig, ConfigError> {
        let mut config = LogConfig::default();
        for key in TOPIC_CONFIGS {
            let (value, _) = self.resolve(key);
            check_value(key, key.topic_name, &value)?;
            let value = value.trim();
            let number = || value.parse::<i64>().unwrap_or_default();
            match key.topic_name {
                "flush.messages" => config.flush_messages = number() as u64,
                "flush.ms" => config.flush_ms = number(),
                "index.interval.bytes" => config.index_interval_bytes = number() as u32,
                "max.message.bytes" => config.max_message_bytes = number() as u32,
                "message.timestamp.type" => {
                    config.message_timestamp_type = if value == "LogAppendTime" {
                        TimestampType::LogAppendTime
                    } else {
                        TimestampType::CreateTime
                    }
                }
                "cleanup.policy" => {
                    config.cleanup_policy =
                        CleanupPolicy::parse(value).unwrap_or(CleanupPolicy::DELETE)
                }
                "delete.retention.ms" => config.delete_retention_ms = number(),
                "max.compaction.lag.ms" => config.max_compaction_lag_ms = number(),
                "min.cleanable.dirty.ratio" => {
                    config.min_cleanable_dirty_ratio = Ratio(value.parse().unwrap_or(0.5))
                }
                "min.compaction.lag.ms" => config.min_compaction_lag_ms = number(),
                "retention.bytes" => config.retention_bytes = number(),
                "retention.ms" => config.retention_ms = number(),
                "segment.bytes" => config.segment_bytes = number() as u32,
                "segment.index.bytes" => config.segment_index_bytes = number() as u32,
                "segment.ms" => config.segment_ms = number(),
                _ => {}
            }
        }
        config
            .validate()
            .map_err(|reason| ConfigError::InvalidValue {
                name: "topic configs".into(),
                value: String::new(),
                reason,
            })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_resolve_in_order() {
        let topic = map(&[("retention.ms", "1000")]);
        let dynamic = map(&[("log.retention.ms", "2000"), ("log.segment.bytes", "4096")]);
        let static_broker = map(&[("log.segment.bytes", "8192"), ("message.max.bytes", "5000")]);
        let layers = ConfigLayers {
            topic: &topic,
            dynamic_broker: &dynamic,
            static_broker: &static_broker,
        };
        let config = layers.log_config().unwrap();
        assert_eq!(config.retention_ms, 1000);
        assert_eq!(config.segment_bytes, 4096);
        assert_eq!(config.max_message_bytes, 5000);
        assert_eq!(config.retention_bytes, -1);
        assert_eq!(config.cleanup_policy, CleanupPolicy::DELETE);
        let compacted = map(&[
            ("cleanup.policy", "compact,delete"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("delete.retention.ms", "10"),
        ]);
        let config = ConfigLayers {
            topic: &compacted,
            ..layers
        }
        .log_config()
        .unwrap();
        assert_eq!(
            config.cleanup_policy,
            CleanupPolicy {
                delete: true,
                compact: true
            }
        );
        assert_eq!(config.min_cleanable_dirty_ratio, Ratio(0.25));
        assert_eq!(config.delete_retention_ms, 10);
        let key = topic_key("retention.ms").unwrap();
        assert_eq!(layers.resolve(key).1, ConfigSource::Topic);
        let key = topic_key("flush.ms").unwrap();
        assert_eq!(
            layers.resolve(key),
            (LONG_MAX.to_owned(), ConfigSource::Default)
        );
    }

    #[test]
    fn refuses_unknown_names_and_bad_values() {
        assert_eq!(
            check_topic_overrides(&map(&[("retention.mss", "1")])),
            Err(ConfigError::Unknown("retention.mss".into()))
        );
        for (name, value) in [
            ("retention.ms", "soon"),
            ("retention.ms", "-2"),
            ("segment.bytes", "10"),
            ("segment.bytes", "4294967296"),
            ("message.timestamp.type", "Wallclock"),
            ("cleanup.policy", "shred"),
            ("cleanup.policy", "compact,shred"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "half"),
            ("max.compaction.lag.ms", "0"),
        ] {
            assert!(
                matches!(
                    check_topic_overrides(&map(&[(name, value)])),
                    Err(ConfigError::InvalidValue { .. })
                ),
                "{name}={value}"
            );
        }
        assert!(
            check_topic_overrides(&map(&[("message.timestamp.type", "LogAppendTime")])).is_ok()
        );
        for policy in ["compact", "delete", "compact,delete", "delete, compact"] {
            let overrides = map(&[
                ("cleanup.policy", policy),
                ("min.cleanable.dirty.ratio", "0.1"),
            ]);
            assert!(check_topic_overrides(&overrides).is_ok(), "{policy}");
        }
    }
}
