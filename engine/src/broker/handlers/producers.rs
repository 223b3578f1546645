//! InitProducerId: producer ids for idempotent and transactional producers.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::counted;
use crate::broker::errors::KafkaError;
use crate::runtime::shard::Shard;
use crate::txn::{TxnCall, TxnReply};

/// Gives an idempotent producer a new producer id at epoch 0. As Kafka's coordinator does
/// without a transactional id, a producer id and epoch sent by the client (version 3 and up,
/// KIP-360) are not bumped: the producer gets a fresh id. With a transactional id the id's
/// transaction coordinator answers: the id's producer id at a bumped epoch, fencing older
/// producers of the id; a producer id and epoch sent with it must be the id's current ones
/// (KIP-360: the producer bumps its own epoch), else PRODUCER_FENCED.
pub(super) async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let result = match shard.allocate_producer_id().await {
        Ok(producer_id) => match &request.transactional_id {
            None => Ok((producer_id, 0)),
            Some(transactional_id) => {
                let reply = shard
                    .txn_call(
                        transactional_id,
                        TxnCall::InitProducerId {
                            transactional_id: transactional_id.to_string(),
                            timeout_ms: request.transaction_timeout_ms,
                            fresh_producer_id: producer_id,
                            // -1 (and before version 3): a producer starting afresh.
                            expected: (request.producer_id.0 >= 0)
                                .then_some((request.producer_id.0, request.producer_epoch)),
                        },
                    )
                    .await;
                match reply {
                    TxnReply::ProducerId {
                        error: None,
                        producer_id,
                        producer_epoch,
                    } => Ok((producer_id, producer_epoch)),
                    TxnReply::ProducerId {
                        error: Some(error), ..
                    } => Err(KafkaError::new(error)),
                    TxnReply::Done(error) => Err(KafkaError::new(
                        error.unwrap_or(ResponseError::UnknownServerError),
                    )),
                }
            }
        },
        Err(error) => Err(error),
    };
    match result {
        Ok((producer_id, producer_epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch),
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
