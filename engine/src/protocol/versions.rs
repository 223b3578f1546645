//! The APIs and version ranges Spate implements, and so advertises in ApiVersions.
//!
//! Each range is what Spate handles correctly, intersected with what the `kafka-protocol` crate
//! can decode. Clients pick the highest version both sides know, so the upper ends reach the
//! versions librdkafka 2.x, kafka-python 2.x and the Java client 3.x and 4.x use, and the lower
//! ends go down to what the crate decodes.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

/// `(API, lowest, highest)` Spate implements. Kept in API key order.
const IMPLEMENTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    // v4+ (several transactions, verify_only) is what brokers send each other (KIP-890).
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    // v4 only adds TRANSACTION_ABORTABLE; v5 is KIP-890's transaction version 2 (an epoch
    // bump at every end). The `transaction.version` feature is not advertised, so the Java
    // client stays at v4 and with AddPartitionsToTxn; Spate's client uses v5.
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::DescribeQuorum, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

/// The versions of `api_key` Spate accepts, or `None` when it does not implement that API.
pub fn supported(api_key: ApiKey) -> Option<VersionRange> {
    IMPLEMENTED
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|&(key, min, max)| VersionRange { min, max }.intersect(&key.valid_versions()))
        .filter(|range| !range.is_empty())
}

/// Every implemented API with its accepted versions, in API key order, for ApiVersions.
pub fn all() -> impl Iterator<Item = (ApiKey, VersionRange)> {
    IMPLEMENTED
        .iter()
        .filter_map(|&(key, _, _)| supported(key).map(|range| (key, range)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_range_is_within_the_crate() {
        for &(key, min, max) in IMPLEMENTED {
            let range = supported(key).expect("implemented APIs have a range");
            assert_eq!(
                (range.min, range.max),
                (min, max),
                "{key:?} is narrowed by the crate"
            );
        }
        let keys: Vec<i16> = IMPLEMENTED.iter().map(|(key, _, _)| *key as i16).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
