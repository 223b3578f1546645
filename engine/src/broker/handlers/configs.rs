//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs, for topics and for the broker
//! (whose configs are the topic defaults, with Kafka's broker-level names).

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use super::{counted, str_bytes};
use crate::broker::errors::KafkaError;
use crate::broker::topic_config::{ConfigKey, ConfigKind, ConfigSource, TOPIC_CONFIGS};
use crate::runtime::shard::{AdminOp, Shard};

/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's DescribeConfigs config types.
fn config_type(kind: ConfigKind) -> i8 {
    match kind {
        ConfigKind::Int { .. } => 3,
        ConfigKind::Long { .. } => 5,
        ConfigKind::Choice(_) => 2,
        ConfigKind::Ratio => 6,
    }
}

fn broker_name_ok(shard: &Shard, name: &str) -> bool {
    name.is_empty() || name == shard.config.node_id.to_string()
}

fn unsupported_resource(resource_type: i8) -> KafkaError {
    KafkaError::with_message(
        ResponseError::InvalidRequest,
        format!("config resource type {resource_type} is not supported (topics: 2, brokers: 4)"),
    )
}

pub(super) fn describe_configs(
    shard: &Rc<Shard>,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let catalog = shard.catalog();
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let wanted = |config: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.is_empty() || keys.iter().any(|key| key.as_str() == config))
        };
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let entry = |key: &ConfigKey,
                     config_name: &'static str,
                     value: String,
                     source: ConfigSource,
                     read_only: bool| {
            let mut entry = DescribeConfigsResourceResult::default()
                .with_name(str_bytes(config_name))
                .with_value(Some(str_bytes(value.clone())))
                .with_read_only(read_only)
                .with_config_source(source as i8);
            if request.include_synonyms {
                entry.synonyms = vec![DescribeConfigsSynonym::default()
                    .with_name(str_bytes(config_name))
                    .with_value(Some(str_bytes(value)))
                    .with_source(source as i8)];
            }
            if version >= 3 {
                entry.config_type = config_type(key.kind);
                if request.include_documentation {
                    entry.documentation = Some(str_bytes(key.doc));
                }
            }
            entry
        };
        let outcome: Result<Vec<DescribeConfigsResourceResult>, KafkaError> =
            match resource.resource_type {
                RESOURCE_TOPIC => match catalog.topic(&name) {
                    None => Err(KafkaError::new(ResponseError::UnknownTopicOrPartition)),
                    Some(topic) => {
                        let layers = catalog.layers(&topic.configs);
                        Ok(TOPIC_CONFIGS
                            .iter()
                            .filter(|key| wanted(key.topic_name))
                            .map(|key| {
                                let (value, source) = layers.resolve(key);
                                entry(key, key.topic_name, value, source, false)
                            })
                            .collect())
                    }
                },
                RESOURCE_BROKER if broker_name_ok(shard, &name) => {
                    let no_topic_overrides = Default::default();
                    let layers = catalog.layers(&no_topic_overrides);
                    Ok(TOPIC_CONFIGS
                        .iter()
                        .filter(|key| wanted(key.broker_name))
                        .map(|key| {
                            let (value, source) = layers.resolve(key);
                            entry(key, key.broker_name, value, source, false)
                        })
                        .collect())
                }
                RESOURCE_BROKER => Err(KafkaError::with_message(
                    ResponseError::InvalidRequest,
                    format!("this is broker {}, not {name:?}", shard.config.node_id),
                )),
                other => Err(unsupported_resource(other)),
            };
        match outcome {
            Ok(configs) => result.configs = configs,
            Err(error) => {
                result.error_code = counted(shard, &error);
                result.error_message = error.message.map(str_bytes);
            }
        }
        response.results.push(result);
    }
    response
}

/// Runs one resource's change on the controller.
async fn alter_resource(
    shard: &Rc<Shard>,
    resource_type: i8,
    name: &str,
    changes: Vec<(String, Option<String>)>,
    replace_all: bool,
    validate_only: bool,
) -> Result<(), KafkaError> {
    let op = match resource_type {
        RESOURCE_TOPIC => AdminOp::AlterTopicConfigs {
            topic: name.to_owned(),
            changes,
            replace_all,
            validate_only,
        },
        RESOURCE_BROKER if broker_name_ok(shard, name) => AdminOp::AlterBrokerConfigs {
            changes,
            replace_all,
            validate_only,
        },
        RESOURCE_BROKER => {
            return Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                format!("this is broker {}, not {name:?}", shard.config.node_id),
            ))
        }
        other => return Err(unsupported_resource(other)),
    };
    shard.admin(op).await.into_iter().next().unwrap_or(Ok(()))
}

pub(super) async fn alter_configs(
    shard: &Rc<Shard>,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for resource in request.resources {
        let changes = resource
            .configs
            .iter()
            .map(|config| {
                (
                    config.name.to_string(),
                    config.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let name = resource.resource_name.to_string();
        let outcome = alter_resource(
            shard,
            resource.resource_type,
            &name,
            changes,
            true,
            request.validate_only,
        )
        .await;
        let mut result = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err(error) = outcome {
            result.error_code = counted(shard, &error);
            result.error_message = error.message.map(str_bytes);
        }
        response.responses.push(result);
    }
    response
}

pub(super) async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in request.resources {
        let mut changes = Vec::new();
        let mut refused = None;
        for config in &resource.configs {
            let name = config.name.to_string();
            match config.config_operation {
                SET => changes.push((
                    name,
                    Some(
                        config
                            .value
                            .as_ref()
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    ),
                )),
                DELETE => changes.push((name, None)),
                operation => {
                    refused = Some(KafkaError::with_message(
                        ResponseError::InvalidConfig,
                        format!(
                            "operation {operation} (APPEND/SUBTRACT) applies to list configs, and {name} is not one"
                        ),
                    ));
                }
            }
        }
        let name = resource.resource_name.to_string();
        let outcome = match refused {
            Some(error) => Err(error),
            None => {
                alter_resource(
                    shard,
                    resource.resource_type,
                    &name,
                    changes,
                    false,
                    request.validate_only,
                )
                .await
            }
        };
        let mut result = IncrementalResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err(error) = outcome {
            result.error_code = counted(shard, &error);
            result.error_message = error.message.map(str_bytes);
        }
        response.responses.push(result);
    }
    response
}
