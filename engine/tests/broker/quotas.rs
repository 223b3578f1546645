//! Quotas on the wire: what a throttled client's responses hold.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::broker::quotas::{EntityName, QuotaEntity};
use spate_engine::client::admin::Admin;
use spate_engine::storage::batch::build::{batch, NewRecord};

use super::util::{Broker, Connection};

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str("busy"))
}

fn produce(connection: &mut Connection, records: usize) {
    let records: Vec<NewRecord> = (0..records)
        .map(|i| NewRecord::value(format!("value-{i}"), 1_000))
        .collect();
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name())
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch(&records).freeze())),
            ])]);
    let ResponseKind::Produce(produced) =
        connection.call(ApiKey::Produce, 9, RequestKind::Produce(request))
    else {
        panic!("a Produce response")
    };
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
}

fn fetch(connection: &mut Connection) -> FetchResponse {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name())
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(response) =
        connection.call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
    else {
        panic!("a Fetch response")
    };
    response
}

/// As Kafka: a consumer's fetch throttled by its request-time quota (`request_percentage`) is
/// answered without data, carrying the throttle time, and the data comes once it is under.
#[test]
fn a_fetch_throttled_by_request_time_is_answered_empty() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &["--num-partitions", "1"]);
    let mut connection = broker.connect();
    connection.metadata_auto_create("busy");
    produce(&mut connection, 20);
    let first = fetch(&mut connection);
    assert_eq!(first.throttle_time_ms, 0);
    assert!(first.responses[0].partitions[0].records.is_some());

    // 0.01% of a core: 100 µs a second, a 200 µs burst. The Connection's client id is
    // "spate-tests".
    let address = broker.address.to_string();
    let mut admin = Admin::from_properties([("bootstrap.servers", address.as_str())]).unwrap();
    let entity = QuotaEntity {
        user: None,
        client_id: Some(EntityName::Named("spate-tests".into())),
    };
    admin
        .alter_client_quota(&entity, &[("request_percentage".into(), Some(0.01))])
        .unwrap();
    let mut throttled = None;
    for _ in 0..1_000 {
        let response = fetch(&mut connection);
        if response.throttle_time_ms > 0 {
            throttled = Some(response);
            break;
        }
        assert!(response.responses[0].partitions[0].records.is_some());
    }
    let throttled = throttled.expect("a fetch throttled within 1,000 requests");
    assert!(
        throttled.responses.is_empty(),
        "a throttled fetch holds no data: {throttled:?}"
    );
    admin
        .alter_client_quota(&entity, &[("request_percentage".into(), None)])
        .unwrap();
    // The connection is muted for the throttle; the next fetch is not throttled.
    let after = fetch(&mut connection);
    assert_eq!(after.throttle_time_ms, 0);
    assert!(after.responses[0].partitions[0].records.is_some());
}
