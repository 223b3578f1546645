//! The admin client: topics and the cluster (issue 5 adds groups, configs and records).
//!
//! Each call goes to the first bootstrap broker that answers; with one broker, or with
//! Spate's controller answering any broker's admin calls, that is enough until replication
//! lands.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::config::{CommonConfig, ConfigError};
use super::connection::{response_of, Connection};
use super::error::ClientError;
use crate::broker::quotas::{EntityName, QuotaEntity, QuotaValues};

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

/// A partition reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionReassignment {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Its replicas now: the target, then those leaving.
    pub replicas: Vec<i32>,
    /// Replicas being added.
    pub adding: Vec<i32>,
    /// Replicas to be removed.
    pub removing: Vec<i32>,
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

/// A group as ListGroups lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// `consumer` for consumer groups.
    pub protocol_type: String,
    /// State (`Stable`, `Empty`, ...).
    pub state: String,
}

/// A member of a group, with what it was assigned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupMember {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// `client.id`.
    pub client_id: String,
    /// Address.
    pub client_host: String,
    /// Assigned partitions, when the group is Stable and uses the consumer protocol.
    pub assignment: Vec<(String, i32)>,
}

/// One partition's committed offset and lag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset.
    pub committed: i64,
    /// Log end offset.
    pub end: i64,
    /// `end - committed`.
    pub lag: i64,
}

/// A group described.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// State.
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// The assignor of the current generation.
    pub assignor: String,
    /// Members.
    pub members: Vec<GroupMember>,
    /// Committed offsets with their lag.
    pub offsets: Vec<PartitionLag>,
}

/// Where [`Admin::plan_offset_reset`] moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// An offset.
    Offset(i64),
    /// The first record at or after a timestamp (ms); the log end when none is that recent.
    Timestamp(i64),
    /// The committed offset (the log start where none is) moved by this many records.
    ShiftBy(i64),
}

/// Per partition, its log start offset after [`Admin::delete_records`], or its error.
pub type DeletedRecords = BTreeMap<(String, i32), Result<i64, ClientError>>;

/// An admin client.
#[derive(Debug)]
pub struct Admin {
    connection: Connection,
    timeout: Duration,
    client_id: String,
    /// Each partition's leader's address, learned as needed.
    leaders: BTreeMap<(String, i32), String>,
    /// Connections to brokers other than the bootstrap one, by address.
    links: BTreeMap<String, Connection>,
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
        Ok(Admin {
            connection: Connection::open_any(config)?,
            timeout: Duration::from_millis(config.request_timeout_ms),
            client_id: config.client_id.clone(),
            leaders: BTreeMap::new(),
            links: BTreeMap::new(),
        })
    }

    /// Connects with settings given by Kafka property names.
    ///
    /// # Errors
    /// A [`ConfigError`] or the connection error.
    pub fn from_properties<I, K, V>(properties: I) -> Result<Admin, ClientError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let config = CommonConfig::from_properties(properties)
            .map_err(|error: ConfigError| ClientError::Config(error))?;
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
        // A topic made again under the same name may have other leaders.
        self.leaders.retain(|(topic, _), _| !names.contains(topic));
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

    /// Sets and deletes a topic's config overrides (IncrementalAlterConfigs).
    ///
    /// # Errors
    /// A failure of the request, or the broker's refusal (an unknown config, a bad value).
    pub fn alter_topic_configs(
        &mut self,
        topic: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> Result<(), ClientError> {
        const SET: i8 = 0;
        const DELETE: i8 = 1;
        const TOPIC_RESOURCE: i8 = 2;
        let configs = set
            .iter()
            .map(|(name, value)| {
                incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(text(name))
                    .with_config_operation(SET)
                    .with_value(Some(text(value)))
            })
            .chain(delete.iter().map(|name| {
                incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(text(name))
                    .with_config_operation(DELETE)
            }))
            .collect();
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(text(topic))
                .with_configs(configs),
        ]);
        let (_, response) = self.connection.call(
            ApiKey::IncrementalAlterConfigs,
            RequestKind::IncrementalAlterConfigs(request),
        )?;
        let ResponseKind::IncrementalAlterConfigs(response) = response else {
            return Err(ClientError::Protocol(
                "IncrementalAlterConfigs answered with another API".into(),
            ));
        };
        let result = response.responses.first().ok_or_else(|| {
            ClientError::Protocol("IncrementalAlterConfigs without a result".into())
        })?;
        ClientError::check(
            result.error_code,
            result.error_message.as_ref().map(ToString::to_string),
        )
    }

    /// Sets (`Some`) or removes (`None`) quota values of `entity` (AlterClientQuotas):
    /// `producer_byte_rate`, `consumer_byte_rate`, `request_percentage`.
    ///
    /// # Errors
    /// The broker's refusal, or a connection error.
    pub fn alter_client_quota(
        &mut self,
        entity: &QuotaEntity,
        changes: &[(String, Option<f64>)],
    ) -> Result<(), ClientError> {
        let parts = [("user", &entity.user), ("client-id", &entity.client_id)];
        let entity_data = parts
            .iter()
            .filter_map(|(kind, name)| {
                name.as_ref().map(|name| {
                    alter_client_quotas_request::EntityData::default()
                        .with_entity_type(text(kind))
                        .with_entity_name(name.to_wire().map(text))
                })
            })
            .collect();
        let ops = changes
            .iter()
            .map(|(key, value)| {
                alter_client_quotas_request::OpData::default()
                    .with_key(text(key))
                    .with_value(value.unwrap_or_default())
                    .with_remove(value.is_none())
            })
            .collect();
        let request = AlterClientQuotasRequest::default().with_entries(vec![
            alter_client_quotas_request::EntryData::default()
                .with_entity(entity_data)
                .with_ops(ops),
        ]);
        let (_, response) = self.connection.call(
            ApiKey::AlterClientQuotas,
            RequestKind::AlterClientQuotas(request),
        )?;
        let ResponseKind::AlterClientQuotas(response) = response else {
            return Err(ClientError::Protocol(
                "AlterClientQuotas answered with another API".into(),
            ));
        };
        let entry = response
            .entries
            .first()
            .ok_or_else(|| ClientError::Protocol("AlterClientQuotas without a result".into()))?;
        ClientError::check(
            entry.error_code,
            entry.error_message.as_ref().map(ToString::to_string),
        )
    }

    /// Every client quota the broker holds (DescribeClientQuotas).
    ///
    /// # Errors
    /// The broker's refusal, or a connection error.
    pub fn describe_client_quotas(
        &mut self,
    ) -> Result<Vec<(QuotaEntity, QuotaValues)>, ClientError> {
        let (_, response) = self.connection.call(
            ApiKey::DescribeClientQuotas,
            RequestKind::DescribeClientQuotas(DescribeClientQuotasRequest::default()),
        )?;
        let ResponseKind::DescribeClientQuotas(response) = response else {
            return Err(ClientError::Protocol(
                "DescribeClientQuotas answered with another API".into(),
            ));
        };
        ClientError::check(
            response.error_code,
            response.error_message.as_ref().map(ToString::to_string),
        )?;
        let mut quotas = Vec::new();
        for entry in response.entries.unwrap_or_default() {
            let mut entity = QuotaEntity {
                user: None,
                client_id: None,
            };
            for part in &entry.entity {
                let name = Some(EntityName::from_wire(part.entity_name.as_deref()));
                match part.entity_type.as_str() {
                    "user" => entity.user = name,
                    "client-id" => entity.client_id = name,
                    _ => {}
                }
            }
            let values = entry
                .values
                .iter()
                .map(|value| (value.key.to_string(), value.value))
                .collect();
            quotas.push((entity, values));
        }
        Ok(quotas)
    }

    /// Grows a topic to `partitions` partitions (CreatePartitions).
    ///
    /// # Errors
    /// A failure of the request, or the broker's refusal (a count not larger than today's).
    pub fn create_partitions(&mut self, topic: &str, partitions: i32) -> Result<(), ClientError> {
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(self.timeout_ms())
            .with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(TopicName(text(topic)))
                    .with_count(partitions),
            ]);
        let (_, response) = self.connection.call(
            ApiKey::CreatePartitions,
            RequestKind::CreatePartitions(request),
        )?;
        let ResponseKind::CreatePartitions(response) = response else {
            return Err(ClientError::Protocol(
                "CreatePartitions answered with another API".into(),
            ));
        };
        let result = response
            .results
            .first()
            .ok_or_else(|| ClientError::Protocol("CreatePartitions without a result".into()))?;
        ClientError::check(
            result.error_code,
            result.error_message.as_ref().map(ToString::to_string),
        )
    }

    /// Moves partition `partition` of `topic` onto `replicas` (preferred leader first), or
    /// with `None` cancels the move in progress (AlterPartitionReassignments, KIP-455). It
    /// returns once the controller accepted it; the move completes when the new replicas
    /// caught up ([`Admin::list_partition_reassignments`] no longer lists it).
    ///
    /// # Errors
    /// A failure of the request, or the broker's refusal (`INVALID_REPLICA_ASSIGNMENT`,
    /// `NO_REASSIGNMENT_IN_PROGRESS`, `UNKNOWN_TOPIC_OR_PARTITION`, ...).
    pub fn alter_partition_reassignment(
        &mut self,
        topic: &str,
        partition: i32,
        replicas: Option<&[i32]>,
    ) -> Result<(), ClientError> {
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(self.timeout_ms())
            .with_topics(vec![
                alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(TopicName(text(topic)))
                    .with_partitions(vec![
                        alter_partition_reassignments_request::ReassignablePartition::default()
                            .with_partition_index(partition)
                            .with_replicas(
                                replicas.map(|ids| ids.iter().copied().map(BrokerId).collect()),
                            ),
                    ]),
            ]);
        let (_, response) = self.connection.call(
            ApiKey::AlterPartitionReassignments,
            RequestKind::AlterPartitionReassignments(request),
        )?;
        let response = response_of!(response, AlterPartitionReassignments)?;
        ClientError::check(
            response.error_code,
            response.error_message.as_ref().map(ToString::to_string),
        )?;
        let result = response
            .responses
            .first()
            .and_then(|topic| topic.partitions.first())
            .ok_or_else(|| {
                ClientError::Protocol("AlterPartitionReassignments without a result".into())
            })?;
        ClientError::check(
            result.error_code,
            result.error_message.as_ref().map(ToString::to_string),
        )
    }

    /// The reassignments in progress (ListPartitionReassignments), sorted by topic and
    /// partition.
    ///
    /// # Errors
    /// A failure of the request or the broker's error.
    pub fn list_partition_reassignments(
        &mut self,
    ) -> Result<Vec<PartitionReassignment>, ClientError> {
        let request =
            ListPartitionReassignmentsRequest::default().with_timeout_ms(self.timeout_ms());
        let (_, response) = self.connection.call(
            ApiKey::ListPartitionReassignments,
            RequestKind::ListPartitionReassignments(request),
        )?;
        let response = response_of!(response, ListPartitionReassignments)?;
        ClientError::check(
            response.error_code,
            response.error_message.as_ref().map(ToString::to_string),
        )?;
        let ids = |brokers: &[BrokerId]| brokers.iter().map(|broker| broker.0).collect();
        let mut found: Vec<PartitionReassignment> = response
            .topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(move |partition| PartitionReassignment {
                        topic: topic.name.0.to_string(),
                        partition: partition.partition_index,
                        replicas: ids(&partition.replicas),
                        adding: ids(&partition.adding_replicas),
                        removing: ids(&partition.removing_replicas),
                    })
            })
            .collect();
        found.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(found)
    }

    /// Every group of the broker, sorted by id.
    ///
    /// # Errors
    /// A failure of the request or the broker's error.
    pub fn list_groups(&mut self) -> Result<Vec<GroupListing>, ClientError> {
        let (_, response) = self.connection.call(
            ApiKey::ListGroups,
            RequestKind::ListGroups(ListGroupsRequest::default()),
        )?;
        let ResponseKind::ListGroups(response) = response else {
            return Err(ClientError::Protocol(
                "ListGroups answered with another API".into(),
            ));
        };
        ClientError::check(response.error_code, None)?;
        let mut groups: Vec<GroupListing> = response
            .groups
            .into_iter()
            .map(|group| GroupListing {
                group_id: group.group_id.0.to_string(),
                protocol_type: group.protocol_type.to_string(),
                state: group.group_state.to_string(),
            })
            .collect();
        groups.sort_by(|left, right| left.group_id.cmp(&right.group_id));
        Ok(groups)
    }

    /// A group: state, members with their assignments, and committed offsets with their lag.
    ///
    /// # Errors
    /// A failure of a request, or GROUP_ID_NOT_FOUND for a group that does not exist.
    pub fn describe_group(&mut self, group_id: &str) -> Result<GroupDescription, ClientError> {
        let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(text(group_id))]);
        let (_, response) = self.on_group_coordinator(group_id, |connection| {
            connection.call(ApiKey::DescribeGroups, RequestKind::DescribeGroups(request))
        })?;
        let ResponseKind::DescribeGroups(response) = response else {
            return Err(ClientError::Protocol(
                "DescribeGroups answered with another API".into(),
            ));
        };
        let described = response
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("DescribeGroups without the group".into()))?;
        ClientError::check(described.error_code, None)?;
        let offsets = self.list_group_offsets(group_id)?;
        if described.group_state.as_str() == "Dead" && offsets.is_empty() {
            return Err(ClientError::from_code(
                kafka_protocol::error::ResponseError::GroupIdNotFound.code(),
                Some(format!("group {group_id}")),
            ));
        }
        let consumer = described.protocol_type.as_str() == "consumer";
        Ok(GroupDescription {
            group_id: group_id.to_owned(),
            state: described.group_state.to_string(),
            protocol_type: described.protocol_type.to_string(),
            assignor: described.protocol_data.to_string(),
            members: described
                .members
                .into_iter()
                .map(|member| GroupMember {
                    member_id: member.member_id.to_string(),
                    group_instance_id: member.group_instance_id.map(|id| id.to_string()),
                    client_id: member.client_id.to_string(),
                    client_host: member.client_host.to_string(),
                    assignment: if consumer {
                        super::assignor::decode_assignment(&member.member_assignment)
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
            offsets,
        })
    }

    /// Deletes groups (they must have no members); one result per group, in order.
    ///
    /// # Errors
    /// A failure of the request itself.
    pub fn delete_groups(
        &mut self,
        group_ids: &[String],
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let request = DeleteGroupsRequest::default()
            .with_groups_names(group_ids.iter().map(|id| GroupId(text(id))).collect());
        let (_, response) = self
            .connection
            .call(ApiKey::DeleteGroups, RequestKind::DeleteGroups(request))?;
        let ResponseKind::DeleteGroups(response) = response else {
            return Err(ClientError::Protocol(
                "DeleteGroups answered with another API".into(),
            ));
        };
        Ok(group_ids
            .iter()
            .map(|id| {
                match response
                    .results
                    .iter()
                    .find(|result| result.group_id.0.as_str() == id)
                {
                    Some(result) => {
                        ClientError::check(result.error_code, Some(format!("group {id}")))
                    }
                    None => Err(ClientError::Protocol(format!("no result for group {id}"))),
                }
            })
            .collect())
    }

    /// A group's committed offsets with the log end offsets and the lag, sorted (Kafka's
    /// `listConsumerGroupOffsets`).
    ///
    /// # Errors
    /// A failed request or the group's error.
    pub fn list_group_offsets(&mut self, group_id: &str) -> Result<Vec<PartitionLag>, ClientError> {
        let committed = self.on_group_coordinator(group_id, |connection| {
            super::group::fetch_committed(connection, group_id, None, false)
        })?;
        let mut lags = Vec::with_capacity(committed.len());
        for ((topic, partition), offset) in committed {
            let end = self.list_offset(&topic, partition, -1)?;
            lags.push(PartitionLag {
                topic,
                partition,
                committed: offset,
                end,
                lag: (end - offset).max(0),
            });
        }
        Ok(lags)
    }

    /// Runs `call` on a connection to the coordinator of `group_id`: the bootstrap connection
    /// when that broker is the coordinator, else a new one.
    fn on_group_coordinator<T>(
        &mut self,
        group_id: &str,
        call: impl FnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let address = super::group::find_coordinator(&mut self.connection, group_id)?;
        if address == self.connection.address() {
            return call(&mut self.connection);
        }
        let client_id = self.client_id.clone();
        call(&mut Connection::open(&address, &client_id, self.timeout)?)
    }

    /// The new committed offset of each partition of `topic` (of `partitions`, or all) under
    /// `reset`, clamped to the partition's log start and end as Kafka's reset tool does. Nothing
    /// is changed: pass the plan to [`Admin::reset_group_offsets`].
    ///
    /// # Errors
    /// A failed request, or UNKNOWN_TOPIC_OR_PARTITION.
    pub fn plan_offset_reset(
        &mut self,
        group_id: &str,
        topic: &str,
        partitions: Option<&[i32]>,
        reset: OffsetReset,
    ) -> Result<BTreeMap<(String, i32), i64>, ClientError> {
        let all: Vec<i32> = match partitions {
            Some(partitions) => partitions.to_vec(),
            None => self
                .describe_topics(Some(&[topic.to_owned()]))?
                .into_iter()
                .flat_map(|described| described.partitions.into_iter().map(|p| p.partition))
                .collect(),
        };
        let committed = match reset {
            OffsetReset::ShiftBy(_) => self.on_group_coordinator(group_id, |connection| {
                super::group::fetch_committed(connection, group_id, None, false)
            })?,
            _ => BTreeMap::new(),
        };
        let mut plan = BTreeMap::new();
        for partition in all {
            let start = self.list_offset(topic, partition, -2)?;
            let end = self.list_offset(topic, partition, -1)?;
            let wanted = match reset {
                OffsetReset::Earliest => start,
                OffsetReset::Latest => end,
                OffsetReset::Offset(offset) => offset,
                OffsetReset::Timestamp(timestamp) => {
                    match self.list_offset(topic, partition, timestamp)? {
                        -1 => end,
                        offset => offset,
                    }
                }
                OffsetReset::ShiftBy(shift) => committed
                    .get(&(topic.to_owned(), partition))
                    .copied()
                    .unwrap_or(start)
                    .saturating_add(shift),
            };
            plan.insert((topic.to_owned(), partition), wanted.clamp(start, end));
        }
        Ok(plan)
    }

    /// Commits `offsets` for a group that has no active members (Kafka's reset tool refuses an
    /// active group too: its members would overwrite the reset with their next commit).
    ///
    /// # Errors
    /// [`ClientError::InvalidState`] for a group with members; a failed request or the
    /// coordinator's refusal.
    pub fn reset_group_offsets(
        &mut self,
        group_id: &str,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), ClientError> {
        match self.describe_group(group_id) {
            Ok(described) if !described.members.is_empty() => {
                return Err(ClientError::InvalidState(format!(
                    "group {group_id} is {} with {} members; offsets can only be reset while \
                     it has none (stop its consumers first)",
                    described.state,
                    described.members.len()
                )))
            }
            Ok(_) => {}
            Err(error) if error.is(ResponseError::GroupIdNotFound) => {}
            Err(error) => return Err(error),
        }
        self.on_group_coordinator(group_id, |connection| {
            super::group::commit_offsets(
                connection,
                super::group::Identity::outsider(group_id),
                offsets,
            )
        })
    }

    /// Deletes the records before `offsets` (-1: before the high watermark) of each partition;
    /// one result per partition: its new log start offset, or its error.
    ///
    /// # Errors
    /// A failure of the request itself.
    pub fn delete_records(
        &mut self,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<DeletedRecords, ClientError> {
        // DeleteRecords goes to each partition's leader.
        let mut by_leader: BTreeMap<
            String,
            BTreeMap<&str, Vec<delete_records_request::DeleteRecordsPartition>>,
        > = BTreeMap::new();
        for ((topic, partition), offset) in offsets {
            let leader = self.leader_address(topic, *partition)?;
            by_leader
                .entry(leader)
                .or_default()
                .entry(topic)
                .or_default()
                .push(
                    delete_records_request::DeleteRecordsPartition::default()
                        .with_partition_index(*partition)
                        .with_offset(*offset),
                );
        }
        let mut results = BTreeMap::new();
        for (leader, topics) in by_leader {
            let request = DeleteRecordsRequest::default()
                .with_timeout_ms(self.timeout_ms())
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(topic, partitions)| {
                            delete_records_request::DeleteRecordsTopic::default()
                                .with_name(TopicName(text(topic)))
                                .with_partitions(partitions)
                        })
                        .collect(),
                );
            let (_, response) = self
                .link(&leader)?
                .call(ApiKey::DeleteRecords, RequestKind::DeleteRecords(request))?;
            let response = response_of!(response, DeleteRecords)?;
            for topic in response.topics {
                for partition in topic.partitions {
                    let key = (topic.name.0.to_string(), partition.partition_index);
                    let context = Some(format!("{}-{}", key.0, key.1));
                    results.insert(
                        key,
                        ClientError::check(partition.error_code, context)
                            .map(|()| partition.low_watermark),
                    );
                }
            }
        }
        for key in offsets.keys() {
            results.entry(key.clone()).or_insert_with(|| {
                Err(ClientError::Protocol(format!(
                    "no result for {}-{}",
                    key.0, key.1
                )))
            });
        }
        Ok(results)
    }

    /// ListOffsets of one partition, at its leader.
    fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let leader = self.leader_address(topic, partition)?;
        self.link(&leader)?.list_offset(topic, partition, timestamp)
    }

    /// The address of a partition's leader, from metadata fetched once per topic.
    fn leader_address(&mut self, topic: &str, partition: i32) -> Result<String, ClientError> {
        let key = (topic.to_owned(), partition);
        if !self.leaders.contains_key(&key) {
            let (_, metadata) = self.metadata(Some(&[topic.to_owned()]))?;
            let brokers: BTreeMap<i32, String> = metadata
                .brokers
                .iter()
                .map(|broker| (broker.node_id.0, format!("{}:{}", broker.host, broker.port)))
                .collect();
            for found in &metadata.topics {
                let name = found
                    .name
                    .as_ref()
                    .map(|name| name.0.to_string())
                    .unwrap_or_default();
                ClientError::check(found.error_code, Some(format!("topic {name}")))?;
                for described in &found.partitions {
                    if let Some(address) = brokers.get(&described.leader_id.0) {
                        self.leaders
                            .insert((name.clone(), described.partition_index), address.clone());
                    }
                }
            }
        }
        self.leaders.get(&key).cloned().ok_or_else(|| {
            // Not in metadata at all, or listed without a leader (a partition's leader has an
            // address whenever it has a leader).
            ClientError::from_code(
                ResponseError::UnknownTopicOrPartition.code(),
                Some(format!("{topic}-{partition} has no leader")),
            )
        })
    }

    /// A connection to the broker at `address`: the bootstrap one when it is that broker.
    fn link(&mut self, address: &str) -> Result<&mut Connection, ClientError> {
        if address == self.connection.address() {
            return Ok(&mut self.connection);
        }
        if !self.links.contains_key(address) {
            let connection = Connection::open(address, &self.client_id, self.timeout)?;
            self.links.insert(address.to_owned(), connection);
        }
        Ok(self.links.get_mut(address).expect("just opened"))
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
