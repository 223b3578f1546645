//! The one place where internal errors become Kafka error codes.

use kafka_protocol::error::ResponseError;

use super::catalog::CatalogError;
use crate::storage::producers::ProducerError;
use crate::storage::StorageError;

/// A Kafka error code with the message sent where the response has room for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    /// The code.
    pub code: ResponseError,
    /// A sentence for the client (error_message fields) and the log.
    pub message: Option<String>,
}

impl KafkaError {
    /// A code without a message.
    pub fn new(code: ResponseError) -> KafkaError {
        KafkaError {
            code,
            message: None,
        }
    }

    /// A code with a message.
    pub fn with_message(code: ResponseError, message: impl Into<String>) -> KafkaError {
        KafkaError {
            code,
            message: Some(message.into()),
        }
    }

    /// The wire code.
    pub fn code(&self) -> i16 {
        self.code.code()
    }
}

impl From<&StorageError> for KafkaError {
    fn from(error: &StorageError) -> KafkaError {
        let code = match error {
            StorageError::InvalidBatch { .. } => ResponseError::CorruptMessage,
            StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
            StorageError::RecordsTooLarge { .. } => ResponseError::RecordListTooLarge,
            StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            // Only a follower's fetcher appends replicated batches; no client sees this.
            StorageError::NotContiguous { .. } => ResponseError::UnknownServerError,
            // The records were cut because another replica leads the partition now.
            StorageError::Truncated { .. } => ResponseError::NotLeaderOrFollower,
            StorageError::InvalidConfig(_) => ResponseError::InvalidConfig,
            StorageError::KeylessRecord { .. } => ResponseError::InvalidRecord,
            StorageError::Producer(ProducerError::OutOfOrderSequence { .. }) => {
                ResponseError::OutOfOrderSequenceNumber
            }
            StorageError::Producer(ProducerError::InvalidProducerEpoch { .. }) => {
                ResponseError::InvalidProducerEpoch
            }
            StorageError::Producer(
                ProducerError::InvalidTxnState { .. } | ProducerError::Unverified { .. },
            ) => ResponseError::InvalidTxnState,
            StorageError::Producer(ProducerError::CoordinatorFenced { .. }) => {
                ResponseError::TransactionCoordinatorFenced
            }
            StorageError::Producer(
                ProducerError::MissingSequence { .. }
                | ProducerError::SeveralBatches { .. }
                | ProducerError::ControlBatchFromClient { .. },
            ) => ResponseError::InvalidRecord,
            StorageError::Io { .. }
            | StorageError::Corrupt { .. }
            | StorageError::Poisoned { .. } => ResponseError::KafkaStorageError,
        };
        KafkaError::with_message(code, error.to_string())
    }
}

impl From<StorageError> for KafkaError {
    fn from(error: StorageError) -> KafkaError {
        KafkaError::from(&error)
    }
}

impl From<&CatalogError> for KafkaError {
    fn from(error: &CatalogError) -> KafkaError {
        let code = match error {
            CatalogError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            CatalogError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
            CatalogError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
            CatalogError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            CatalogError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            CatalogError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            CatalogError::InvalidConfig(_) => ResponseError::InvalidConfig,
            CatalogError::PolicyViolation(_) => ResponseError::PolicyViolation,
        };
        KafkaError::with_message(code, error.to_string())
    }
}

impl From<CatalogError> for KafkaError {
    fn from(error: CatalogError) -> KafkaError {
        KafkaError::from(&error)
    }
}
