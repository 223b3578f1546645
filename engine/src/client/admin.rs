//! The admin client: topics and the cluster (issue 5 adds groups, configs and records).
//!
//! Each call goes to the first bootstrap broker that answers; with one broker, or with
//! Spate's controller answering any broker's admin calls, that is enough until replication
//! lands.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::config::{CommonConfig, ConfigError};
use super::connection::Connection;
use super::error::ClientError;

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions, or -1 for the broker's default.
    pub partitions: i32,
    /// Replication factor, or -1 for the broker's default.
    pub replication_factor: i16,
    /// Topic configs.
    pub configs: BTreeMap<String, String>,
}

/// One partition as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionInfo {
    /// Index.
    pub partition: i32,
    /// Leader broker id, -1 when none.
    pub leader: i32,
    /// Replica broker ids.
    pub replicas: Vec<i32>,
    /// In-sync replica broker ids.
    pub isr: Vec<i32>,
}

/// A topic as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Topic id.
    pub id: Uuid,
    /// Internal to the broker (`__consumer_offsets`).
    pub internal: bool,
    /// Partitions.
    pub partitions: Vec<PartitionInfo>,
}

/// A broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokerInfo {
    /// Broker id.
    pub id: i32,
    /// Host.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Rack.
    pub rack: Option<String>,
}

/// The cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterInfo {
    /// Cluster id.
    pub cluster_id: Option<String>,
    /// Controller broker id.
    pub controller_id: i32,
    /// Brokers.
    pub brokers: Vec<BrokerInfo>,
}

/// An admin client.
#[derive(Debug)]
pub struct Admin {
    connection: Connection,
    timeout: Duration,
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

impl Admin {
    /// Connects to the first reachable bootstrap server.
    ///
    /// # Errors
    /// The last connection error when none is reachable.
    pub fn connect(config: &CommonConfig) -> Result<Admin, ClientError> {
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let mut last = None;
        for address in &config.bootstrap_servers {
            match Connection::open(address, &config.client_id, timeout) {
                Ok(connection) => {
                    return Ok(Admin {
                        connection,
                        timeout,
                    })
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("bootstrap.servers is never empty"))
    }

    /// Connects with settings given by Kafka property names.
    ///
    /// # Errors
    /// A [`ConfigError`] (as a protocol error) or the connection error.
    pub fn from_properties<I, K, V>(properties: I) -> Result<Admin, ClientError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let config = CommonConfig::from_properties(properties)
            .map_err(|error: ConfigError| ClientError::Protocol(error.to_string()))?;
        Admin::connect(&config)
    }

    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// Creates topics; one result per topic, in order.
    ///
    /// # Errors
    /// A failure of the request itself; per-topic refusals are in the results.
    pub fn create_topics(
        &mut self,
        topics: &[NewTopic],
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(self.timeout_ms())
            .with_topics(
                topics
                    .iter()
                    .map(|topic| {
                        create_topics_request::CreatableTopic::default()
                            .with_name(TopicName(text(&topic.name)))
                            .with_num_partitions(topic.partitions)
                            .with_replication_factor(topic.replication_factor)
                            .with_configs(
                                topic
                                    .configs
                                    .iter()
                                    .map(|(name, value)| {
                                        create_topics_request::CreatableTopicConfig::default()
                                            .with_name(text(name))
                                            .with_value(Some(text(value)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let (_, response) = self
            .connection
            .call(ApiKey::CreateTopics, RequestKind::CreateTopics(request))?;
        let ResponseKind::CreateTopics(response) = response else {
            return Err(ClientError::Protocol(
                "CreateTopics answered with another API".into(),
            ));
        };
        Ok(topics
            .iter()
            .map(|topic| {
                match response
                    .topics
                    .iter()
                    .find(|result| result.name.0.as_str() == topic.name)
                {
                    Some(result) => ClientError::check(
                        result.error_code,
                        result.error_message.as_ref().map(ToString::to_string),
                    ),
                    None => Err(ClientError::Protocol(format!(
                        "no result for topic {}",
                        topic.name
                    ))),
                }
            })
            .collect())
    }

    /// Deletes topics by name; one result per topic, in order.
    ///
    /// # Errors
    /// A failure of the request itself; per-topic refusals are in the results.
    pub fn delete_topics(
        &mut self,
        names: &[String],
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let version = self.connection.version(ApiKey::DeleteTopics)?;
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(self.timeout_ms());
        if version >= 6 {
            request.topics = names
                .iter()
                .map(|name| {
                    delete_topics_request::DeleteTopicState::default()
                        .with_name(Some(TopicName(text(name))))
                })
                .collect();
        } else {
            request.topic_names = names.iter().map(|name| TopicName(text(name))).collect();
        }
        let (_, response) = self
            .connection
            .call(ApiKey::DeleteTopics, RequestKind::DeleteTopics(request))?;
        let ResponseKind::DeleteTopics(response) = response else {
            return Err(ClientError::Protocol(
                "DeleteTopics answered with another API".into(),
            ));
        };
        Ok(names
            .iter()
            .map(|name| {
                let result = response.responses.iter().find(|result| {
                    result
                        .name
                        .as_ref()
                        .is_some_and(|found| found.0.as_str() == name)
                });
                match result {
                    Some(result) => ClientError::check(
                        result.error_code,
                        result.error_message.as_ref().map(ToString::to_string),
                    ),
                    None => Err(ClientError::Protocol(format!("no result for topic {name}"))),
                }
            })
            .collect())
    }

    /// Metadata of the named topics, or of every topic for `None`, sorted by name. Topics
    /// that do not exist are errors; nothing is created.
    ///
    /// # Errors
    /// A failure of the request, or a topic the broker reports an error for.
    pub fn describe_topics(
        &mut self,
        names: Option<&[String]>,
    ) -> Result<Vec<TopicInfo>, ClientError> {
        let (_, metadata) = self.metadata(names)?;
        let mut topics = Vec::new();
        for topic in metadata.topics {
            let name = topic
                .name
                .as_ref()
                .map(|name| name.0.to_string())
                .unwrap_or_default();
            if topic.error_code != 0 {
                return Err(ClientError::from_code(
                    topic.error_code,
                    Some(format!("topic {name}")),
                ));
            }
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions
                .iter()
                .map(|partition| PartitionInfo {
                    partition: partition.partition_index,
                    leader: partition.leader_id.0,
                    replicas: partition.replica_nodes.iter().map(|id| id.0).collect(),
                    isr: partition.isr_nodes.iter().map(|id| id.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|partition| partition.partition);
            topics.push(TopicInfo {
                name,
                id: topic.topic_id,
                internal: topic.is_internal,
                partitions,
            });
        }
        topics.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(topics)
    }

    /// The cluster: its id, controller and brokers.
    ///
    /// # Errors
    /// A failure of the request.
    pub fn describe_cluster(&mut self) -> Result<ClusterInfo, ClientError> {
        let (_, metadata) = self.metadata(Some(&[]))?;
        let mut brokers: Vec<BrokerInfo> = metadata
            .brokers
            .iter()
            .map(|broker| BrokerInfo {
                id: broker.node_id.0,
                host: broker.host.to_string(),
                port: broker.port,
                rack: broker.rack.as_ref().map(ToString::to_string),
            })
            .collect();
        brokers.sort_by_key(|broker| broker.id);
        Ok(ClusterInfo {
            cluster_id: metadata.cluster_id.as_ref().map(ToString::to_string),
            controller_id: metadata.controller_id.0,
            brokers,
        })
    }

    fn metadata(
        &mut self,
        names: Option<&[String]>,
    ) -> Result<(i16, MetadataResponse), ClientError> {
        let request = MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(names.map(|names| {
                names
                    .iter()
                    .map(|name| {
                        metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(TopicName(text(name))))
                    })
                    .collect()
            }));
        let (version, response) = self
            .connection
            .call(ApiKey::Metadata, RequestKind::Metadata(request))?;
        match response {
            ResponseKind::Metadata(response) => Ok((version, response)),
            _ => Err(ClientError::Protocol(
                "Metadata answered with another API".into(),
            )),
        }
    }
}
