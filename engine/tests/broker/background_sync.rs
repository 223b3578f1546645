//! `log_background_sync_bytes`: a partition is synced in the background once that many bytes
//! were appended since its last sync, and not before.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_engine::storage::batch::build::{batch, NewRecord};

use super::util::{free_port, Broker, Connection};

const THRESHOLD_BYTES: usize = 64 << 10;

fn produce(connection: &mut Connection, value_bytes: usize) {
    let records = batch(&[NewRecord::value("v".repeat(value_bytes), 1_000)]);
    let request = RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("synced")))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records.freeze())),
                ])]),
    );
    let ResponseKind::Produce(response) = connection.call(ApiKey::Produce, 9, request) else {
        panic!("not a produce response");
    };
    let partition = &response.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, 0);
}

fn background_syncs(metrics_port: u16) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("spate_background_syncs_total "))
        .expect("the counter is rendered")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_partition_is_synced_in_the_background_once_the_threshold_is_unsynced() {
    let work = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    let threshold = THRESHOLD_BYTES.to_string();
    let broker = Broker::start(
        &work.path().join("data"),
        &[
            "--cores",
            "1",
            "--metrics-listen",
            &metrics_address,
            "--log-background-sync-bytes",
            &threshold,
        ],
    );
    let mut connection = broker.connect();
    connection.metadata_auto_create("synced");
    assert_eq!(background_syncs(metrics_port), 0);

    // Half the threshold: no sync, neither at the append nor at the periodic checks.
    produce(&mut connection, THRESHOLD_BYTES / 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(background_syncs(metrics_port), 0, "{}", broker.log());

    // Past it: one sync starts.
    produce(&mut connection, THRESHOLD_BYTES / 2 + 1024);
    let deadline = Instant::now() + Duration::from_secs(10);
    while background_syncs(metrics_port) == 0 {
        assert!(Instant::now() < deadline, "no background sync started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // That sync covered everything appended, so less than the threshold since is left alone.
    std::thread::sleep(Duration::from_millis(500));
    produce(&mut connection, THRESHOLD_BYTES / 4);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(background_syncs(metrics_port), 1, "{}", broker.log());
}
