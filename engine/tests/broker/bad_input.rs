//! What a client sends can close its own connection, never the broker or other connections.

use kafka_protocol::messages::RequestHeader;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestKind, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::util::{answers_api_versions, Broker};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn bad_frames_close_only_their_connection() {
    let work = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &work.path().join("data"),
        &["--socket-request-max-bytes", "1048576"],
    );
    let pid = broker.child.as_ref().unwrap().id();
    let mut bystander = broker.connect();
    assert!(matches!(
        bystander.call(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(Default::default())
        ),
        kafka_protocol::messages::ResponseKind::ApiVersions(_)
    ));
    let rss_before = rss_kib(pid);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized frame", 0x7fff_fff0_u32.to_be_bytes().to_vec()),
        (
            "just over the limit",
            (1_048_577_u32).to_be_bytes().to_vec(),
        ),
        ("negative length", (-5_i32).to_be_bytes().to_vec()),
        (
            "too short for a header",
            [&3_u32.to_be_bytes()[..], &[0, 18, 0]].concat(),
        ),
        ("garbage", [&12_u32.to_be_bytes()[..], &[0xde; 12]].concat()),
        (
            "unknown API key",
            [&8_u32.to_be_bytes()[..], &[0x7f, 0x00, 0, 0, 0, 0, 0, 1]].concat(),
        ),
        (
            // JoinGroup: a real API Spate does not implement yet.
            "unimplemented API",
            [
                &10_u32.to_be_bytes()[..],
                &[0, 11, 0, 5, 0, 0, 0, 1, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            // Metadata v1 announcing 2^31-1 topics in a 14-byte frame: the crate would reserve
            // hundreds of GiB before noticing the bytes are missing.
            "huge array length",
            [
                &14_u32.to_be_bytes()[..],
                &[0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            // Metadata v9 (flexible) with a compact array of 2^32-2 topics.
            "huge compact array length",
            [
                &15_u32.to_be_bytes()[..],
                &[
                    0, 3, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff,
                ],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut connection = broker.connect();
        connection.send_raw(&bytes).unwrap();
        assert!(
            connection.closed_by_broker(),
            "{what}: connection left open"
        );
        assert!(broker.is_running(), "{what}: broker died: {}", broker.log());
        assert!(answers_api_versions(broker.address), "{what}");
    }
    // A frame that stops half way: the broker waits for the rest, then sees the close.
    let mut truncated = broker.connect();
    truncated.send_raw(&[0, 0, 0, 100, 0, 18]).unwrap();
    drop(truncated);

    assert!(matches!(
        bystander.call(
            ApiKey::ApiVersions,
            0,
            RequestKind::ApiVersions(Default::default())
        ),
        kafka_protocol::messages::ResponseKind::ApiVersions(_)
    ));
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(broker.log().contains("closing connection"));
    assert!(broker.stop().success());
}

#[test]
fn api_versions_at_an_unknown_version_answers_with_the_known_ones() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &[]);
    let mut connection = broker.connect();
    // A client newer than the broker sends ApiVersions v99 with a flexible (v2) header and a
    // body the broker cannot know: build v4 and relabel it.
    let correlation_id = 41;
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(4)
        .with_correlation_id(correlation_id);
    let mut frame = bytes::BytesMut::from(&[0_u8; 4][..]);
    header.encode(&mut frame, 2).unwrap();
    ApiVersionsRequest::default().encode(&mut frame, 4).unwrap();
    frame[6..8].copy_from_slice(&99_i16.to_be_bytes());
    let size = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    connection.send_raw(&frame).unwrap();
    let mut frame = connection.receive_frame().expect("an answer");
    let header = ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    let response = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(response
        .api_keys
        .iter()
        .any(|key| key.api_key == ApiKey::Fetch as i16));
}

#[test]
fn connection_limits_refuse_the_extra_connection() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &work.path().join("data"),
        &["--max-connections-per-ip", "2"],
    );
    // Let the broker see the start-up probe's connection close.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let first = broker.connect();
    let second = broker.connect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut third = broker.connect();
    assert!(third.closed_by_broker(), "{}", broker.log());
    drop((first, second));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(answers_api_versions(broker.address));
}
