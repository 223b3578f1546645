//! One client connection: a reader task that takes frames off the socket and decodes them
//! (reading ahead up to `max_inflight_requests_per_connection` requests), and a processor that
//! handles them one at a time, in order, and writes each response, as Kafka does, so that a
//! client's pipelined requests to one partition are appended in the order sent.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use tracing::{debug, warn};

use super::shard::Shard;
use crate::broker::handlers;
use crate::broker::quotas::QuotaKind;
use crate::protocol::splice::{encode_response_spliced, SplicedFrame, SPLICE_BYTES_MIN};
use crate::protocol::{decode_request, encode_response, take_frame, DecodeError, Request};

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// The socket, shared by the reader and the processor; borrowed only inside a poll, never
/// across an await.
#[derive(Clone)]
struct SocketHalf(Rc<RefCell<TcpStream>>);

impl AsyncRead for SocketHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SocketHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// What the reader hands the processor.
enum Incoming {
    /// A request, with when its frame was complete.
    Request(Box<Request>, Instant),
    /// ApiVersions at a version Spate does not know: answered at v0 with UNSUPPORTED_VERSION and
    /// the versions Spate does know, as Kafka does, so the client can retry at one of them.
    UnsupportedApiVersions { correlation_id: i32 },
}

/// Serves one connection until the client closes it, it sends something that cannot be
/// decoded, or the broker shuts down (after finishing the requests already read).
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let socket = SocketHalf(Rc::new(RefCell::new(stream)));
    let (sender, receiver) =
        local_channel::new_bounded(shard.config.max_inflight_requests_per_connection);
    let reader = glommio::spawn_local(read_requests(
        Rc::clone(&shard),
        socket.clone(),
        sender,
        peer,
    ));
    let mut writer = socket.clone();
    let mut out = BytesMut::new();
    while let Some(incoming) = receiver.recv().await {
        out.clear();
        let mut throttle_ms = 0;
        let (api_key, started) = match incoming {
            Incoming::UnsupportedApiVersions { correlation_id } => {
                let body = ResponseKind::ApiVersions(handlers::api_versions_response(
                    ResponseError::UnsupportedVersion.code(),
                ));
                encode_response(correlation_id, ApiKey::ApiVersions, 0, &body, &mut out)
                    .expect("ApiVersions v0 encodes");
                (ApiKey::ApiVersions, Instant::now())
            }
            Incoming::Request(request, started) => {
                let (api_key, version, correlation_id) = (
                    request.api_key,
                    request.version,
                    request.header.correlation_id,
                );
                // A shared handle on the header's bytes, not a copy.
                let client_id = request.header.client_id.clone();
                // The time the shard spends polling the handler: the request's share of the
                // core, without the time it waits (long polls, replication, other shards).
                let mut busy = Duration::ZERO;
                let mut handling = std::pin::pin!(handlers::handle(&shard, *request, peer));
                let outcome = std::future::poll_fn(|cx| {
                    let polled = Instant::now();
                    let poll = handling.as_mut().poll(cx);
                    busy += polled.elapsed();
                    poll
                })
                .await;
                let mut handled = match outcome {
                    Ok(handled) => handled,
                    Err(reason) => {
                        warn!(%peer, %reason, "closing connection");
                        break;
                    }
                };
                if !handled.between_brokers {
                    let busy_us = usize::try_from(busy.as_micros()).unwrap_or(usize::MAX);
                    let (request_throttle_ms, _) = shard.record_quota(
                        client_id.as_deref().unwrap_or_default(),
                        QuotaKind::Request,
                        busy_us,
                    );
                    if request_throttle_ms > handled.throttle_ms {
                        handled.throttle_ms = request_throttle_ms;
                        match &mut handled.response {
                            Some(ResponseKind::Produce(response)) => {
                                response.throttle_time_ms = request_throttle_ms;
                            }
                            Some(ResponseKind::Fetch(response)) => {
                                // As Kafka: any throttled consumer fetch is answered empty,
                                // and its bytes do not count against the fetch quota.
                                if handled.consumer_fetch {
                                    if let Some((sensor, bytes)) = handled.fetch_recorded.take() {
                                        shard.unrecord_quota(&sensor, bytes);
                                    }
                                    response.responses.clear();
                                }
                                response.throttle_time_ms = request_throttle_ms;
                            }
                            _ => {}
                        }
                    }
                }
                throttle_ms = handled.throttle_ms;
                match handled.response {
                    Some(ResponseKind::Fetch(fetch)) => {
                        // Record sets go to the socket from their own buffers.
                        let records: Vec<Bytes> = fetch
                            .responses
                            .iter()
                            .flat_map(|topic| &topic.partitions)
                            .filter_map(|partition| partition.records.clone())
                            .filter(|records| records.len() >= SPLICE_BYTES_MIN)
                            .collect();
                        match encode_response_spliced(
                            correlation_id,
                            api_key,
                            version,
                            &fetch,
                            &records,
                        ) {
                            Ok(frame) => {
                                drop(fetch);
                                if write_pieces(&mut writer, &frame).await.is_err() {
                                    break;
                                }
                            }
                            Err(error) => {
                                warn!(%peer, %error, "closing connection: response does not encode");
                                break;
                            }
                        }
                    }
                    Some(body) => {
                        if let Err(error) =
                            encode_response(correlation_id, api_key, version, &body, &mut out)
                        {
                            warn!(%peer, %error, "closing connection: response does not encode");
                            break;
                        }
                    }
                    None => {}
                }
                (api_key, started)
            }
        };
        if !out.is_empty() && writer.write_all(&out).await.is_err() {
            break;
        }
        shard
            .metrics
            .borrow_mut()
            .observe_request(api_name(api_key), started.elapsed().as_secs_f64());
        if throttle_ms > 0 {
            // Over its quota: the client's next requests wait here, unread, as Kafka mutes a
            // throttled channel (the response already told the client how long).
            shard.metrics.borrow_mut().throttled_requests += 1;
            let muted = Duration::from_millis(u64::try_from(throttle_ms).unwrap_or(0));
            if !shard.sleep_unless_shutdown(muted).await {
                break;
            }
        }
    }
    drop(receiver);
    reader.cancel().await;
    let _ = writer.close().await;
    debug!(%peer, "connection closed");
}

/// Writes a spliced frame piece by piece: the encoded parts and the record buffers, uncopied.
async fn write_pieces(writer: &mut SocketHalf, frame: &SplicedFrame) -> std::io::Result<()> {
    for piece in frame.pieces() {
        writer.write_all(piece).await?;
    }
    Ok(())
}

async fn read_requests(
    shard: Rc<Shard>,
    mut socket: SocketHalf,
    sender: LocalSender<Incoming>,
    peer: SocketAddr,
) {
    let max_bytes = shard.config.socket_request_max_bytes;
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        match take_frame(&mut buffer, max_bytes) {
            Err(error) => {
                warn!(%peer, %error, "closing connection: bad frame");
                shard.metrics.borrow_mut().connections_closed_bad_input += 1;
                return;
            }
            Ok(Some(frame)) => {
                let incoming = match decode_request(frame) {
                    Ok(request) => Incoming::Request(Box::new(request), Instant::now()),
                    Err(DecodeError::UnsupportedVersion {
                        api_key: ApiKey::ApiVersions,
                        correlation_id,
                        ..
                    }) => Incoming::UnsupportedApiVersions { correlation_id },
                    Err(error) => {
                        warn!(%peer, %error, "closing connection: request cannot be handled");
                        shard.metrics.borrow_mut().connections_closed_bad_input += 1;
                        return;
                    }
                };
                if sender.send(incoming).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                if shard.shutting_down.get() {
                    return;
                }
                let filled = buffer.len();
                buffer.resize(filled + READ_CHUNK_BYTES.max(buffer.capacity() - filled), 0);
                let shutdown = shard.shutdown_event.listen();
                let read = futures_lite::future::or(
                    async { Some(socket.read(&mut buffer[filled..]).await) },
                    async {
                        if !shard.shutting_down.get() {
                            shutdown.await;
                        }
                        None
                    },
                )
                .await;
                match read {
                    Some(Ok(read_bytes)) if read_bytes > 0 => buffer.truncate(filled + read_bytes),
                    Some(Ok(_)) | None => return,
                    Some(Err(error)) => {
                        debug!(%peer, %error, "read failed");
                        return;
                    }
                }
            }
        }
    }
}

/// The API's name, for metrics labels.
pub fn api_name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::AlterPartitionReassignments => "AlterPartitionReassignments",
        ApiKey::ListPartitionReassignments => "ListPartitionReassignments",
        ApiKey::DescribeQuorum => "DescribeQuorum",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeClientQuotas => "DescribeClientQuotas",
        ApiKey::AlterClientQuotas => "AlterClientQuotas",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_api_has_its_own_metrics_label() {
        for (api_key, _) in crate::protocol::versions::all() {
            assert_ne!(api_name(api_key), "Other", "{api_key:?}");
        }
    }
}
