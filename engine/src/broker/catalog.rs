//! The catalog: which topics exist, their ids, partition counts and config overrides, and the
//! dynamic broker configs. An immutable snapshot; a change makes a new catalog, which the
//! controller shard persists and hands to every shard. Sans-IO: ids and the cluster id come in
//! as arguments, and persistence is [`Catalog::to_toml`] / [`Catalog::from_toml`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::names::{collision_key, validate_topic_name, TopicNameError};
use super::quotas::{check_quota, EntityName, QuotaConfigs, QuotaEntity, QuotaValue};
use super::topic_config::{
    broker_key, check_topic_overrides, check_value, topic_key, ConfigError, ConfigLayers,
};
use crate::limits::PARTITIONS_PER_TOPIC_MAX;
use crate::replication::PartitionState;
use crate::storage::LogConfig;

/// Name of the catalog file in the data directory.
pub const CATALOG_FILE_NAME: &str = "catalog.toml";
/// Format version of the catalog file.
const CATALOG_FORMAT_VERSION: u32 = 1;

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Its id (Kafka's topic id, KIP-516).
    pub id: Uuid,
    /// Number of partitions.
    pub partitions: i32,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
    /// The log settings its partitions use, resolved from the overrides and broker configs.
    pub log_config: LogConfig,
}

/// A catalog change that is refused, with the Kafka error it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// INVALID_TOPIC_EXCEPTION.
    #[error(transparent)]
    InvalidTopic(#[from] TopicNameError),
    /// TOPIC_ALREADY_EXISTS.
    #[error("topic {0:?} already exists")]
    TopicAlreadyExists(String),
    /// UNKNOWN_TOPIC_OR_PARTITION.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// INVALID_PARTITIONS.
    #[error("{0}")]
    InvalidPartitions(String),
    /// INVALID_REPLICATION_FACTOR.
    #[error("{0}")]
    InvalidReplicationFactor(String),
    /// INVALID_REPLICA_ASSIGNMENT.
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    /// INVALID_CONFIG.
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    /// POLICY_VIOLATION (internal topics cannot be deleted).
    #[error("{0}")]
    PolicyViolation(String),
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions, or -1 for the broker's default.
    pub partitions: i32,
    /// Replication factor, or -1 for the broker's default.
    pub replication_factor: i16,
    /// Manual assignment: partition index to replica broker ids. Empty for automatic.
    pub assignments: Vec<(i32, Vec<i32>)>,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
}

/// The broker facts topic creation is checked against.
#[derive(Debug, Clone)]
pub struct CreateContext {
    /// Broker ids that are alive (one until replication lands).
    pub live_brokers: Vec<i32>,
    /// Partitions for `partitions = -1` (`num.partitions`).
    pub default_partitions: i32,
    /// Replication factor for `replication_factor = -1`.
    pub default_replication_factor: i16,
}

/// The catalog. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    cluster_id: String,
    topics: BTreeMap<String, Arc<Topic>>,
    names_by_id: BTreeMap<Uuid, String>,
    dynamic_broker_configs: BTreeMap<String, String>,
    static_broker_configs: Arc<BTreeMap<String, String>>,
    /// Client quotas (AlterClientQuotas).
    client_quotas: Arc<QuotaConfigs>,
    /// In a cluster: the brokers and where each partition lives. `None` on a single node,
    /// which leads every partition itself.
    layout: Option<Arc<ClusterLayout>>,
}

/// Where a cluster's partitions live, as the applied metadata says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterLayout {
    /// The active controller (the quorum leader), or -1.
    pub controller_id: i32,
    /// The registered, unfenced brokers, by id.
    pub brokers: BTreeMap<i32, LayoutBroker>,
    /// Every partition's replicas, leader, epochs and ISR.
    pub partitions: BTreeMap<(Uuid, i32), PartitionState>,
    /// Each registered broker's latest producer id block: (the request it answered, first id).
    pub producer_id_blocks: BTreeMap<i32, (u64, i64)>,
    /// The cluster's client quotas.
    pub client_quotas: QuotaConfigs,
}

/// A broker clients can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutBroker {
    /// Its advertised host.
    pub host: String,
    /// Its Kafka port.
    pub port: i32,
}

/// A topic as the cluster metadata holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTopic {
    /// Name.
    pub name: String,
    /// Id.
    pub id: Uuid,
    /// Number of partitions.
    pub partitions: i32,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    format_version: u32,
    cluster_id: String,
    #[serde(default)]
    broker_configs: BTreeMap<String, String>,
    #[serde(default)]
    topics: Vec<TopicRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    client_quotas: Vec<QuotaRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    values: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicRecord {
    name: String,
    id: Uuid,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

impl Catalog {
    /// An empty catalog for a new cluster.
    pub fn new(cluster_id: String, static_broker_configs: BTreeMap<String, String>) -> Catalog {
        Catalog {
            cluster_id,
            static_broker_configs: Arc::new(static_broker_configs),
            ..Catalog::default()
        }
    }

    /// Parses a catalog file.
    ///
    /// # Errors
    /// A sentence saying what is wrong with the file.
    pub fn from_toml(
        text: &str,
        static_broker_configs: BTreeMap<String, String>,
    ) -> Result<Catalog, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|error| error.to_string())?;
        if file.format_version != CATALOG_FORMAT_VERSION {
            return Err(format!(
                "catalog format version {} is not supported (expected {CATALOG_FORMAT_VERSION})",
                file.format_version
            ));
        }
        let mut catalog = Catalog::new(file.cluster_id, static_broker_configs);
        catalog.dynamic_broker_configs = file.broker_configs;
        let mut quotas = QuotaConfigs::new();
        for record in file.client_quotas {
            let entity = QuotaEntity {
                user: record.user.as_deref().map(EntityName::from_stored),
                client_id: record.client_id.as_deref().map(EntityName::from_stored),
            };
            for (key, value) in &record.values {
                check_quota(key, *value).map_err(|error| format!("quota of {entity}: {error}"))?;
            }
            let values = record
                .values
                .into_iter()
                .map(|(key, value)| (key, QuotaValue(value)))
                .collect();
            quotas.insert(entity, values);
        }
        catalog.client_quotas = Arc::new(quotas);
        for record in file.topics {
            let log_config = catalog
                .layers(&record.configs)
                .log_config()
                .map_err(|error| format!("topic {:?}: {error}", record.name))?;
            catalog.insert(Topic {
                name: record.name,
                id: record.id,
                partitions: record.partitions,
                configs: record.configs,
                log_config,
            });
        }
        Ok(catalog)
    }

    /// The catalog file's text.
    pub fn to_toml(&self) -> String {
        let file = CatalogFile {
            format_version: CATALOG_FORMAT_VERSION,
            cluster_id: self.cluster_id.clone(),
            broker_configs: self.dynamic_broker_configs.clone(),
            topics: self
                .topics
                .values()
                .map(|topic| TopicRecord {
                    name: topic.name.clone(),
                    id: topic.id,
                    partitions: topic.partitions,
                    configs: topic.configs.clone(),
                })
                .collect(),
            client_quotas: self
                .client_quotas
                .iter()
                .map(|(entity, values)| QuotaRecord {
                    user: entity.user.as_ref().map(EntityName::to_stored),
                    client_id: entity.client_id.as_ref().map(EntityName::to_stored),
                    values: values
                        .iter()
                        .map(|(key, value)| (key.clone(), value.0))
                        .collect(),
                })
                .collect(),
        };
        toml::to_string(&file).expect("the catalog serializes")
    }

    /// The catalog of a cluster node: the cluster's id, and the topics and layout its
    /// metadata holds (replacing any topic of this catalog), with this node's broker configs.
    pub fn with_cluster_metadata(
        &self,
        cluster_id: &str,
        topics: Vec<MetadataTopic>,
        layout: ClusterLayout,
    ) -> Catalog {
        let mut catalog = Catalog {
            cluster_id: cluster_id.to_owned(),
            topics: BTreeMap::new(),
            names_by_id: BTreeMap::new(),
            dynamic_broker_configs: self.dynamic_broker_configs.clone(),
            static_broker_configs: Arc::clone(&self.static_broker_configs),
            // In a cluster the quotas are the metadata's, the same on every broker.
            client_quotas: Arc::new(layout.client_quotas.clone()),
            layout: Some(Arc::new(layout)),
        };
        for topic in topics {
            // The controller checked the overrides; a broker config changed since could still
            // make them unusable here, in which case the broker's own settings apply.
            let log_config = match catalog.layers(&topic.configs).log_config() {
                Ok(log_config) => log_config,
                Err(error) => {
                    tracing::warn!(topic = %topic.name, %error, "topic configs not usable here");
                    catalog
                        .layers(&BTreeMap::new())
                        .log_config()
                        .unwrap_or_default()
                }
            };
            catalog.insert(Topic {
                name: topic.name,
                id: topic.id,
                partitions: topic.partitions,
                configs: topic.configs,
                log_config,
            });
        }
        catalog
    }

    /// In a cluster, the brokers and where partitions live; `None` on a single node.
    pub fn layout(&self) -> Option<&ClusterLayout> {
        self.layout.as_deref()
    }

    /// A partition's state in a cluster; `None` on a single node or for an unknown partition.
    pub fn partition_state(&self, topic_id: Uuid, partition: i32) -> Option<&PartitionState> {
        self.layout()?.partitions.get(&(topic_id, partition))
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<&Arc<Topic>> {
        self.topics.get(name)
    }

    /// A topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&Arc<Topic>> {
        self.names_by_id
            .get(&id)
            .and_then(|name| self.topics.get(name))
    }

    /// Partitions of every topic together: what a single broker holds.
    pub fn partition_count(&self) -> usize {
        self.topics
            .values()
            .map(|topic| usize::try_from(topic.partitions).unwrap_or(0))
            .sum()
    }

    /// All topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.topics.values()
    }

    /// Dynamic broker config overrides.
    pub fn dynamic_broker_configs(&self) -> &BTreeMap<String, String> {
        &self.dynamic_broker_configs
    }

    /// The config layers for a topic with these overrides.
    pub fn layers<'a>(&'a self, topic_configs: &'a BTreeMap<String, String>) -> ConfigLayers<'a> {
        ConfigLayers {
            topic: topic_configs,
            dynamic_broker: &self.dynamic_broker_configs,
            static_broker: &self.static_broker_configs,
        }
    }

    /// The topic's `min.insync.replicas` (at least 1): acks=all writes are refused
    /// (NOT_ENOUGH_REPLICAS, as Kafka) while fewer replicas are in sync, and a partition
    /// leader's high watermark stands still.
    pub fn min_insync_replicas(&self, topic: &Topic) -> usize {
        let key = topic_key("min.insync.replicas").expect("a known topic config");
        let (value, _) = self.layers(&topic.configs).resolve(key);
        value.parse().unwrap_or(1).max(1)
    }

    fn insert(&mut self, topic: Topic) {
        self.names_by_id.insert(topic.id, topic.name.clone());
        self.topics.insert(topic.name.clone(), Arc::new(topic));
    }

    /// Checks a topic creation without making it (CreateTopics with `validate_only`).
    ///
    /// # Errors
    /// [`CatalogError`] for the first rule broken.
    pub fn check_create(
        &self,
        new: &NewTopic,
        context: &CreateContext,
    ) -> Result<Topic, CatalogError> {
        validate_topic_name(&new.name)?;
        if self.topics.contains_key(&new.name) {
            return Err(CatalogError::TopicAlreadyExists(new.name.clone()));
        }
        let key = collision_key(&new.name);
        if let Some(existing) = self.topics.keys().find(|name| collision_key(name) == key) {
            return Err(TopicNameError::Collides {
                name: new.name.clone(),
                existing: existing.clone(),
            }
            .into());
        }
        let partitions = if !new.assignments.is_empty() {
            if new.partitions != -1 || new.replication_factor != -1 {
                return Err(CatalogError::InvalidReplicaAssignment(
                    "give either a replica assignment or partitions and replication factor".into(),
                ));
            }
            let mut indexes: Vec<i32> = new.assignments.iter().map(|(index, _)| *index).collect();
            indexes.sort_unstable();
            if indexes
                .iter()
                .enumerate()
                .any(|(i, index)| *index != i as i32)
            {
                return Err(CatalogError::InvalidReplicaAssignment(
                    "partition indexes of the assignment must be 0..n".into(),
                ));
            }
            for (index, replicas) in &new.assignments {
                if replicas.is_empty()
                    || replicas.iter().any(|id| !context.live_brokers.contains(id))
                {
                    return Err(CatalogError::InvalidReplicaAssignment(format!(
                        "partition {index}: replicas {replicas:?} are not all live brokers {:?}",
                        context.live_brokers
                    )));
                }
                if replicas.len() > 1 {
                    return Err(CatalogError::InvalidReplicationFactor(format!(
                        "partition {index}: {} replicas, but replication is not available yet",
                        replicas.len()
                    )));
                }
            }
            indexes.len() as i32
        } else {
            let partitions = if new.partitions == -1 {
                context.default_partitions
            } else {
                new.partitions
            };
            check_partition_count(partitions)?;
            let replication_factor = if new.replication_factor == -1 {
                context.default_replication_factor
            } else {
                new.replication_factor
            };
            if replication_factor < 1 {
                return Err(CatalogError::InvalidReplicationFactor(format!(
                    "replication factor must be at least 1, not {replication_factor}"
                )));
            }
            if replication_factor as usize > context.live_brokers.len() {
                return Err(CatalogError::InvalidReplicationFactor(format!(
                    "replication factor {replication_factor} is larger than the {} live broker(s)",
                    context.live_brokers.len()
                )));
            }
            partitions
        };
        check_topic_overrides(&new.configs)?;
        let log_config = self.layers(&new.configs).log_config()?;
        Ok(Topic {
            name: new.name.clone(),
            id: Uuid::nil(),
            partitions,
            configs: new.configs.clone(),
            log_config,
        })
    }

    /// The catalog with the topic added under `id`.
    ///
    /// # Errors
    /// As [`Catalog::check_create`].
    pub fn with_topic(
        &self,
        new: &NewTopic,
        context: &CreateContext,
        id: Uuid,
    ) -> Result<(Catalog, Arc<Topic>), CatalogError> {
        let mut topic = self.check_create(new, context)?;
        assert!(!id.is_nil() && !self.names_by_id.contains_key(&id));
        topic.id = id;
        let mut catalog = self.clone();
        catalog.insert(topic);
        let topic = Arc::clone(&catalog.topics[&new.name]);
        Ok((catalog, topic))
    }

    /// The catalog without the topic.
    ///
    /// # Errors
    /// [`CatalogError::UnknownTopic`], or [`CatalogError::PolicyViolation`] for internal topics.
    pub fn without_topic(&self, name: &str) -> Result<(Catalog, Arc<Topic>), CatalogError> {
        let topic = self
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_owned()))?;
        if super::names::is_internal(name) {
            return Err(CatalogError::PolicyViolation(format!(
                "internal topic {name:?} cannot be deleted"
            )));
        }
        let mut catalog = self.clone();
        catalog.topics.remove(name);
        catalog.names_by_id.remove(&topic.id);
        Ok((catalog, topic))
    }

    /// The catalog with the topic grown to `partitions`.
    ///
    /// # Errors
    /// [`CatalogError::UnknownTopic`], or [`CatalogError::InvalidPartitions`] unless the count
    /// grows and stays within the limit.
    pub fn with_partitions(&self, name: &str, partitions: i32) -> Result<Catalog, CatalogError> {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_owned()))?;
        if super::names::is_internal(name) {
            // Groups and transactional ids are placed by hashing over the partition count.
            return Err(CatalogError::PolicyViolation(format!(
                "the partitions of internal topic {name:?} cannot be changed"
            )));
        }
        if partitions <= topic.partitions {
            return Err(CatalogError::InvalidPartitions(format!(
                "topic {name:?} has {} partitions; the new count {partitions} must be larger",
                topic.partitions
            )));
        }
        check_partition_count(partitions)?;
        let mut grown = Topic::clone(topic);
        grown.partitions = partitions;
        let mut catalog = self.clone();
        catalog.insert(grown);
        Ok(catalog)
    }

    /// The catalog with the topic's overrides replaced by `configs`.
    ///
    /// # Errors
    /// [`CatalogError::UnknownTopic`] or [`CatalogError::InvalidConfig`].
    pub fn with_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<Catalog, CatalogError> {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_owned()))?;
        check_topic_overrides(&configs)?;
        let log_config = self.layers(&configs).log_config()?;
        let mut changed = Topic::clone(topic);
        changed.configs = configs;
        changed.log_config = log_config;
        let mut catalog = self.clone();
        catalog.insert(changed);
        Ok(catalog)
    }

    /// The client quotas.
    pub fn client_quotas(&self) -> &QuotaConfigs {
        &self.client_quotas
    }

    /// The catalog with `entity`'s quota values changed: `Some` sets a key, `None` removes
    /// it; an entity left with no value goes.
    ///
    /// # Errors
    /// A sentence for an unknown key or a bad value; nothing changes then.
    pub fn with_client_quota(
        &self,
        entity: &QuotaEntity,
        changes: &[(String, Option<f64>)],
    ) -> Result<Catalog, String> {
        let mut values = self.client_quotas.get(entity).cloned().unwrap_or_default();
        for (key, value) in changes {
            match value {
                Some(value) => {
                    check_quota(key, *value)?;
                    values.insert(key.clone(), QuotaValue(*value));
                }
                None => {
                    values.remove(key);
                }
            }
        }
        let mut catalog = self.clone();
        let quotas = Arc::make_mut(&mut catalog.client_quotas);
        if values.is_empty() {
            quotas.remove(entity);
        } else {
            quotas.insert(entity.clone(), values);
        }
        Ok(catalog)
    }

    /// The catalog with the dynamic broker overrides replaced by `configs` (broker-level
    /// names), and every topic's log settings resolved again.
    ///
    /// # Errors
    /// [`CatalogError::InvalidConfig`] for an unknown name or bad value.
    pub fn with_broker_configs(
        &self,
        configs: BTreeMap<String, String>,
    ) -> Result<Catalog, CatalogError> {
        for (name, value) in &configs {
            let key = broker_key(name).ok_or_else(|| ConfigError::Unknown(name.clone()))?;
            check_value(key, name, value)?;
        }
        let mut catalog = self.clone();
        catalog.dynamic_broker_configs = configs;
        let topics: Vec<Arc<Topic>> = catalog.topics.values().cloned().collect();
        for topic in topics {
            let mut changed = Topic::clone(&topic);
            changed.log_config = catalog.layers(&topic.configs).log_config()?;
            catalog.insert(changed);
        }
        Ok(catalog)
    }
}

fn check_partition_count(partitions: i32) -> Result<(), CatalogError> {
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
        return Err(CatalogError::InvalidPartitions(format!(
            "partition count must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, not {partitions}"
        )));
    }
    Ok(())
}

/// The shard (core) that owns a partition: the topic's partitions go round-robin over the
/// shards from a start that depends on the topic id, so topics spread evenly.
pub fn shard_of(topic_id: Uuid, partition: i32, shards: usize) -> usize {
    assert!(shards > 0 && partition >= 0);
    let (high, low) = topic_id.as_u64_pair();
    let start = (high ^ low) % shards as u64;
    ((start + partition as u64) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> CreateContext {
        CreateContext {
            live_brokers: vec![1],
            default_partitions: 3,
            default_replication_factor: 1,
        }
    }

    fn new_topic(name: &str, partitions: i32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn client_quotas_are_set_removed_checked_and_round_trip() {
        let catalog = Catalog::new("cluster".into(), BTreeMap::new());
        let per_client = QuotaEntity {
            user: None,
            client_id: Some(EntityName::Named("app".into())),
        };
        let defaults = QuotaEntity {
            user: Some(EntityName::Default),
            client_id: Some(EntityName::Default),
        };
        let catalog = catalog
            .with_client_quota(&per_client, &[("producer_byte_rate".into(), Some(1024.0))])
            .unwrap()
            .with_client_quota(&defaults, &[("consumer_byte_rate".into(), Some(2048.5))])
            .unwrap();
        let text = catalog.to_toml();
        let read = Catalog::from_toml(&text, BTreeMap::new()).unwrap();
        assert_eq!(read.client_quotas(), catalog.client_quotas());
        assert_eq!(read, catalog);
        assert!(catalog
            .with_client_quota(
                &per_client,
                &[("controller_mutation_rate".into(), Some(5.0))]
            )
            .is_err());
        assert!(catalog
            .with_client_quota(&per_client, &[("producer_byte_rate".into(), Some(-1.0))])
            .is_err());
        let removed = catalog
            .with_client_quota(&per_client, &[("producer_byte_rate".into(), None)])
            .unwrap();
        assert_eq!(
            removed.client_quotas().len(),
            1,
            "an entity with no value goes"
        );
    }

    #[test]
    fn creates_checks_and_round_trips() {
        let catalog = Catalog::new("cluster".into(), BTreeMap::new());
        let (catalog, topic) = catalog
            .with_topic(
                &new_topic("orders", -1),
                &context(),
                Uuid::from_u64_pair(1, 2),
            )
            .unwrap();
        assert_eq!(topic.partitions, 3);
        assert_eq!(
            catalog.check_create(&new_topic("orders", 1), &context()),
            Err(CatalogError::TopicAlreadyExists("orders".into()))
        );
        let (catalog, _) = catalog
            .with_topic(&new_topic("a.b", 1), &context(), Uuid::from_u64_pair(3, 4))
            .unwrap();
        assert!(matches!(
            catalog.check_create(&new_topic("a_b", 1), &context()),
            Err(CatalogError::InvalidTopic(TopicNameError::Collides { .. }))
        ));
        assert!(matches!(
            catalog.check_create(&new_topic("x", 0), &context()),
            Err(CatalogError::InvalidPartitions(_))
        ));
        let mut replicated = new_topic("x", 1);
        replicated.replication_factor = 3;
        assert!(matches!(
            catalog.check_create(&replicated, &context()),
            Err(CatalogError::InvalidReplicationFactor(_))
        ));
        let catalog = catalog
            .with_topic_configs(
                "orders",
                [("retention.ms".to_string(), "5".to_string())].into(),
            )
            .unwrap();
        let catalog = catalog.with_partitions("orders", 5).unwrap();
        assert!(catalog.with_partitions("orders", 5).is_err());
        let text = catalog.to_toml();
        let reloaded = Catalog::from_toml(&text, BTreeMap::new()).unwrap();
        assert_eq!(reloaded, catalog);
        let orders = reloaded.topic_by_id(Uuid::from_u64_pair(1, 2)).unwrap();
        assert_eq!((orders.partitions, orders.log_config.retention_ms), (5, 5));
        let (without, _) = reloaded.without_topic("orders").unwrap();
        assert!(without.topic("orders").is_none());
        assert!(without.topic_by_id(Uuid::from_u64_pair(1, 2)).is_none());
    }

    #[test]
    fn broker_overrides_reach_topics_without_their_own() {
        let catalog = Catalog::new("c".into(), BTreeMap::new());
        let (catalog, _) = catalog
            .with_topic(&new_topic("t", 1), &context(), Uuid::from_u64_pair(1, 1))
            .unwrap();
        let catalog = catalog
            .with_broker_configs([("log.retention.ms".to_string(), "77".to_string())].into())
            .unwrap();
        assert_eq!(catalog.topic("t").unwrap().log_config.retention_ms, 77);
        assert!(catalog
            .with_broker_configs([("retention.ms".to_string(), "1".to_string())].into())
            .is_err());
    }

    #[test]
    fn partitions_spread_over_shards() {
        let id = Uuid::from_u64_pair(7, 9);
        let mut counts = [0; 4];
        for partition in 0..16 {
            counts[shard_of(id, partition, 4)] += 1;
        }
        assert_eq!(counts, [4, 4, 4, 4]);
    }
}
