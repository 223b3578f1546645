//! CreateTopics, DeleteTopics and CreatePartitions: catalog changes run by the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use uuid::Uuid;

use super::{counted, str_bytes};
use crate::broker::catalog::NewTopic;
use crate::broker::errors::KafkaError;
use crate::broker::topic_config::TOPIC_CONFIGS;
use crate::runtime::shard::{AdminOp, Shard};

pub(super) async fn create_topics(
    shard: &Rc<Shard>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut names_seen = BTreeMap::<String, usize>::new();
    for topic in &request.topics {
        *names_seen.entry(topic.name.0.to_string()).or_default() += 1;
    }
    let mut outcomes: Vec<Option<Result<(), KafkaError>>> = Vec::new();
    let mut to_create = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        if names_seen[&name] > 1 {
            outcomes.push(Some(Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                format!("topic {name:?} appears more than once in the request"),
            ))));
            continue;
        }
        let configs = topic
            .configs
            .iter()
            .filter_map(|config| {
                config
                    .value
                    .as_ref()
                    .map(|value| (config.name.to_string(), value.to_string()))
            })
            .collect();
        to_create.push(NewTopic {
            name,
            partitions: topic.num_partitions,
            replication_factor: topic.replication_factor,
            assignments: topic
                .assignments
                .iter()
                .map(|assignment| {
                    (
                        assignment.partition_index,
                        assignment.broker_ids.iter().map(|id| id.0).collect(),
                    )
                })
                .collect(),
            configs,
        });
        outcomes.push(None);
    }
    let mut results = shard
        .admin(AdminOp::CreateTopics {
            topics: to_create.clone(),
            validate_only: request.validate_only,
        })
        .await
        .into_iter();
    let mut created = to_create.iter();
    let catalog = shard.catalog();
    let mut response = CreateTopicsResponse::default();
    for (topic, outcome) in request.topics.iter().zip(outcomes) {
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                created.next();
                results
                    .next()
                    .unwrap_or_else(|| Err(KafkaError::new(ResponseError::UnknownServerError)))
            }
        };
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        match outcome {
            Ok(()) => {
                let name = topic.name.0.to_string();
                let (partitions, configs, id) = match catalog.topic(&name) {
                    Some(found) if !request.validate_only => {
                        (found.partitions, found.configs.clone(), found.id)
                    }
                    _ => {
                        let partitions = if !topic.assignments.is_empty() {
                            topic.assignments.len() as i32
                        } else if topic.num_partitions == -1 {
                            shard.config.num_partitions
                        } else {
                            topic.num_partitions
                        };
                        let configs = topic
                            .configs
                            .iter()
                            .filter_map(|c| {
                                c.value
                                    .as_ref()
                                    .map(|v| (c.name.to_string(), v.to_string()))
                            })
                            .collect();
                        (partitions, configs, Uuid::nil())
                    }
                };
                if version >= 7 {
                    result.topic_id = id;
                }
                if version >= 5 {
                    result.num_partitions = partitions;
                    result.replication_factor = 1;
                    let layers = catalog.layers(&configs);
                    result.configs = Some(
                        TOPIC_CONFIGS
                            .iter()
                            .map(|key| {
                                let (value, source) = layers.resolve(key);
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(key.topic_name))
                                    .with_value(Some(str_bytes(value)))
                                    .with_config_source(source as i8)
                            })
                            .collect(),
                    );
                }
            }
            Err(error) => {
                let (code, message) = (counted(shard, &error), error.message);
                result.error_code = code;
                result.error_message = message.map(str_bytes);
                if version >= 5 {
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
            }
        }
        response.topics.push(result);
    }
    response
}

pub(super) async fn delete_topics(
    shard: &Rc<Shard>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let catalog = shard.catalog();
    // (name if known, id as asked, error found before asking the controller)
    let mut wanted: Vec<(Option<String>, Uuid, Option<KafkaError>)> = Vec::new();
    if version >= 6 {
        for state in &request.topics {
            match (&state.name, state.topic_id.is_nil()) {
                (Some(name), true) => wanted.push((Some(name.0.to_string()), Uuid::nil(), None)),
                (None, false) => match catalog.topic_by_id(state.topic_id) {
                    Some(topic) => wanted.push((Some(topic.name.clone()), state.topic_id, None)),
                    None => wanted.push((
                        None,
                        state.topic_id,
                        Some(KafkaError::new(ResponseError::UnknownTopicId)),
                    )),
                },
                _ => wanted.push((
                    state.name.as_ref().map(|name| name.0.to_string()),
                    state.topic_id,
                    Some(KafkaError::with_message(
                        ResponseError::InvalidRequest,
                        "give either a topic name or a topic id",
                    )),
                )),
            }
        }
    } else {
        for name in &request.topic_names {
            wanted.push((Some(name.0.to_string()), Uuid::nil(), None));
        }
    }
    let mut seen = BTreeSet::new();
    let names: Vec<String> = wanted
        .iter()
        .filter(|(_, _, error)| error.is_none())
        .filter_map(|(name, _, _)| name.clone())
        .filter(|name| seen.insert(name.clone()))
        .collect();
    let results: BTreeMap<String, Result<(), KafkaError>> = names
        .iter()
        .cloned()
        .zip(
            shard
                .admin(AdminOp::DeleteTopics {
                    names: names.clone(),
                })
                .await,
        )
        .collect();
    let mut response = DeleteTopicsResponse::default();
    for (name, id, error) in wanted {
        let outcome = match error {
            Some(error) => Err(error),
            None => results
                .get(name.as_deref().unwrap_or_default())
                .cloned()
                .unwrap_or(Ok(())),
        };
        let mut result =
            DeletableTopicResult::default().with_name(name.map(|n| TopicName(str_bytes(n))));
        if version >= 6 {
            result.topic_id = id;
        }
        if let Err(error) = outcome {
            let (code, message) = (counted(shard, &error), error.message);
            result.error_code = code;
            if version >= 5 {
                result.error_message = message.map(str_bytes);
            }
        }
        response.responses.push(result);
    }
    response
}

pub(super) async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    let mut asked = Vec::new();
    let mut early: Vec<Option<KafkaError>> = Vec::new();
    for topic in &request.topics {
        let bad_assignment = topic.assignments.as_ref().is_some_and(|assignments| {
            assignments.iter().any(|assignment| {
                assignment
                    .broker_ids
                    .iter()
                    .any(|id| id.0 != shard.config.node_id)
            })
        });
        if topic
            .assignments
            .as_ref()
            .is_some_and(|assignments| !assignments.is_empty())
            && shard.in_cluster()
        {
            early.push(Some(KafkaError::with_message(
                ResponseError::InvalidReplicaAssignment,
                "manual replica assignments are not supported in a cluster yet",
            )));
        } else if bad_assignment {
            early.push(Some(KafkaError::with_message(
                ResponseError::InvalidReplicaAssignment,
                "replicas must be live brokers",
            )));
        } else {
            early.push(None);
            asked.push((topic.name.0.to_string(), topic.count));
        }
    }
    let mut results = shard
        .admin(AdminOp::CreatePartitions {
            topics: asked,
            validate_only: request.validate_only,
        })
        .await
        .into_iter();
    for (topic, early) in request.topics.iter().zip(early) {
        let outcome = match early {
            Some(error) => Err(error),
            None => results.next().unwrap_or(Ok(())),
        };
        let mut result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        if let Err(error) = outcome {
            let (code, message) = (counted(shard, &error), error.message);
            result.error_code = code;
            result.error_message = message.map(str_bytes);
        }
        response.results.push(result);
    }
    response
}
