//! DescribeClientQuotas and AlterClientQuotas.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    alter_client_quotas_response, describe_client_quotas_response, AlterClientQuotasRequest,
    AlterClientQuotasResponse, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
};

use super::{count_error, str_bytes};
use crate::broker::quotas::{EntityName, QuotaEntity};
use crate::runtime::shard::{AdminOp, Shard};

const USER: &str = "user";
const CLIENT_ID: &str = "client-id";

/// DescribeClientQuotas match types.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

pub(super) fn describe_client_quotas(
    shard: &Rc<Shard>,
    request: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    let mut response = DescribeClientQuotasResponse::default();
    let mut filters: Vec<(bool, Filter)> = Vec::new();
    for component in &request.components {
        let is_user = match component.entity_type.as_str() {
            USER => true,
            CLIENT_ID => false,
            other => {
                return refused(
                    shard,
                    response,
                    format!("unknown entity type {other:?}; Spate has user and client-id"),
                )
            }
        };
        let filter = match (component.match_type, component._match.as_deref()) {
            (MATCH_EXACT, Some(name)) => Filter::Exact(name.to_owned()),
            (MATCH_DEFAULT, _) => Filter::Default,
            (MATCH_SPECIFIED, _) => Filter::Any,
            _ => return refused(shard, response, "invalid match type or name".into()),
        };
        filters.push((is_user, filter));
    }
    let catalog = shard.catalog();
    let mut entries = Vec::new();
    for (entity, values) in catalog.client_quotas() {
        let parts = [(true, &entity.user), (false, &entity.client_id)];
        let matches = filters.iter().all(|(is_user, filter)| {
            let name = if *is_user {
                &entity.user
            } else {
                &entity.client_id
            };
            filter.matches(name.as_ref())
        });
        let strict_ok = !request.strict
            || parts
                .iter()
                .all(|(is_user, name)| name.is_none() || filters.iter().any(|(u, _)| u == is_user));
        if !matches || !strict_ok {
            continue;
        }
        let entity_data = parts
            .iter()
            .filter_map(|(is_user, name)| {
                name.as_ref().map(|name| {
                    describe_client_quotas_response::EntityData::default()
                        .with_entity_type(str_bytes(if *is_user { USER } else { CLIENT_ID }))
                        .with_entity_name(name.to_wire().map(str_bytes))
                })
            })
            .collect();
        let value_data = values
            .iter()
            .map(|(key, value)| {
                describe_client_quotas_response::ValueData::default()
                    .with_key(str_bytes(key.clone()))
                    .with_value(value.0)
            })
            .collect();
        entries.push(
            describe_client_quotas_response::EntryData::default()
                .with_entity(entity_data)
                .with_values(value_data),
        );
    }
    response.entries = Some(entries);
    response
}

enum Filter {
    Exact(String),
    Default,
    Any,
}

impl Filter {
    fn matches(&self, name: Option<&EntityName>) -> bool {
        match (self, name) {
            (Filter::Exact(wanted), Some(EntityName::Named(name))) => wanted == name,
            (Filter::Default, Some(EntityName::Default)) => true,
            (Filter::Any, Some(_)) => true,
            _ => false,
        }
    }
}

fn refused(
    shard: &Shard,
    mut response: DescribeClientQuotasResponse,
    message: String,
) -> DescribeClientQuotasResponse {
    count_error(shard, ResponseError::InvalidRequest.code());
    response.error_code = ResponseError::InvalidRequest.code();
    response.error_message = Some(str_bytes(message));
    response
}

pub(super) async fn alter_client_quotas(
    shard: &Rc<Shard>,
    request: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let mut response = AlterClientQuotasResponse::default();
    let mut entries = Vec::new();
    let mut positions = Vec::new();
    for (index, entry) in request.entries.iter().enumerate() {
        let echoed: Vec<_> = entry
            .entity
            .iter()
            .map(|part| {
                alter_client_quotas_response::EntityData::default()
                    .with_entity_type(part.entity_type.clone())
                    .with_entity_name(part.entity_name.clone())
            })
            .collect();
        response
            .entries
            .push(alter_client_quotas_response::EntryData::default().with_entity(echoed));
        match entity_of(entry) {
            Ok(entity) => {
                let changes = entry
                    .ops
                    .iter()
                    .map(|op| (op.key.to_string(), (!op.remove).then_some(op.value)))
                    .collect();
                entries.push((entity, changes));
                positions.push(index);
            }
            Err(message) => {
                let slot = &mut response.entries[index];
                count_error(shard, ResponseError::InvalidRequest.code());
                slot.error_code = ResponseError::InvalidRequest.code();
                slot.error_message = Some(str_bytes(message));
            }
        }
    }
    if entries.is_empty() {
        return response;
    }
    let results = shard
        .admin(AdminOp::AlterClientQuotas {
            entries,
            validate_only: request.validate_only,
        })
        .await;
    for (index, result) in positions.into_iter().zip(results) {
        if let Err(error) = result {
            let slot = &mut response.entries[index];
            count_error(shard, error.code());
            slot.error_code = error.code();
            slot.error_message = error.message.clone().map(str_bytes);
        }
    }
    response
}

fn entity_of(
    entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData,
) -> Result<QuotaEntity, String> {
    let mut entity = QuotaEntity {
        user: None,
        client_id: None,
    };
    for part in &entry.entity {
        let name = EntityName::from_wire(part.entity_name.as_deref());
        let slot = match part.entity_type.as_str() {
            USER => &mut entity.user,
            CLIENT_ID => &mut entity.client_id,
            other => {
                return Err(format!(
                    "unknown entity type {other:?}; Spate has user and client-id"
                ))
            }
        };
        if slot.replace(name).is_some() {
            return Err(format!(
                "entity type {} given twice",
                part.entity_type.as_str()
            ));
        }
    }
    if entity.user.is_none() && entity.client_id.is_none() {
        return Err("an entity names a user, a client id or both".into());
    }
    Ok(entity)
}
