//! InitProducerId: producer ids for idempotent producers.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::counted;
use crate::broker::errors::KafkaError;
use crate::runtime::shard::Shard;

/// Gives an idempotent producer a new producer id at epoch 0. As Kafka's coordinator does
/// without a transactional id, a producer id and epoch sent by the client (version 3 and up,
/// KIP-360) are not bumped: the producer gets a fresh id. Transactional ids are refused until
/// transactions exist.
pub(super) async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let result = if request.transactional_id.is_some() {
        Err(KafkaError::with_message(
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported yet",
        ))
    } else {
        shard.allocate_producer_id().await
    };
    match result {
        Ok(producer_id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(0),
        Err(error) => {
            if let Some(message) = &error.message {
                tracing::debug!(%message, "InitProducerId refused");
            }
            InitProducerIdResponse::default()
                .with_error_code(counted(shard, &error))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}
