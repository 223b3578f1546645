//! The broker's limits: partitions per broker, refused with a clear error.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use spate_engine::client::admin::{Admin, NewTopic};

use super::util::Broker;

fn topic(name: &str, partitions: i32) -> NewTopic {
    NewTopic {
        name: name.into(),
        partitions,
        replication_factor: 1,
        configs: BTreeMap::new(),
    }
}

#[test]
fn topics_and_partitions_beyond_the_brokers_limit_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &work.path().join("data"),
        &["--max-partitions-per-broker", "10"],
    );
    let address = broker.address.to_string();
    let mut admin = Admin::from_properties([("bootstrap.servers", address.as_str())]).unwrap();
    let results = admin
        .create_topics(&[topic("fits", 8), topic("does-not-fit", 3)])
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    let refused = results[1].as_ref().unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ResponseError::InvalidPartitions.code()),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("max_partitions_per_broker"),
        "{refused}"
    );
    let grown = admin.create_partitions("fits", 11).unwrap_err();
    assert_eq!(grown.code(), Some(ResponseError::InvalidPartitions.code()));
    admin.create_partitions("fits", 10).unwrap();
    let described = admin.describe_topics(Some(&["fits".into()])).unwrap();
    assert_eq!(described.len(), 1);
}
