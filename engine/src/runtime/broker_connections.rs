//! Connections from this shard to other brokers' Kafka ports for one-off requests (a partition
//! leader's transaction verification, a transaction coordinator's WriteTxnMarkers): an idle
//! connection is kept for the next request to the same broker, so that a busy transactional
//! workload does not open (and leave in TIME_WAIT) a connection per request.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use glommio::net::TcpStream;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use tracing::debug;

use super::now_ms;
use super::replica_fetcher::exchange;

/// Most idle connections kept per broker address.
const IDLE_PER_ADDRESS_MAX: usize = 4;
/// An idle connection older than this is closed rather than reused (a broker that restarted
/// meanwhile closed its end).
const IDLE_MS_MAX: i64 = 30_000;

/// Idle connections to other brokers, by address (`host:port`).
#[derive(Default)]
pub(super) struct BrokerConnections {
    idle: RefCell<BTreeMap<String, Vec<(TcpStream, i64)>>>,
}

impl std::fmt::Debug for BrokerConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.idle.borrow().values().map(Vec::len).sum();
        f.debug_struct("BrokerConnections")
            .field("idle", &idle)
            .finish()
    }
}

impl BrokerConnections {
    /// Sends `request` to the broker at `target` and reads its answer, within `timeout`
    /// (connecting included). On an idle connection first, if there is one; when that one
    /// fails (its broker closed it), once more on a new connection. The requests sent here
    /// may be sent twice: a verification only reads, and a marker written twice is taken
    /// once (the second finds no open transaction, or is refused as stale).
    ///
    /// # Errors
    /// A sentence when the broker cannot be reached, the exchange fails or times out, or the
    /// response does not decode.
    pub(super) async fn exchange<Request: Encodable, Response: Decodable>(
        &self,
        target: &str,
        api_key: ApiKey,
        version: i16,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, String> {
        futures_lite::future::or(
            async {
                if let Some(mut stream) = self.take_idle(target) {
                    match exchange(&mut stream, api_key, version, 0, request).await {
                        Ok(response) => {
                            self.put_idle(target, stream);
                            return Ok(response);
                        }
                        Err(error) => {
                            debug!(%target, %error, "an idle broker connection failed; connecting again");
                        }
                    }
                }
                let mut stream = TcpStream::connect(target)
                    .await
                    .map_err(|error| error.to_string())?;
                let _ = stream.set_nodelay(true);
                let response = exchange(&mut stream, api_key, version, 0, request).await?;
                self.put_idle(target, stream);
                Ok(response)
            },
            async {
                glommio::timer::sleep(timeout).await;
                Err("timed out".to_owned())
            },
        )
        .await
    }

    /// The most recently used idle connection to `target` young enough to reuse; older ones
    /// are closed.
    fn take_idle(&self, target: &str) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let connections = idle.get_mut(target)?;
        let now = now_ms();
        connections.retain(|(_, since_ms)| now.saturating_sub(*since_ms) <= IDLE_MS_MAX);
        let taken = connections.pop().map(|(stream, _)| stream);
        if connections.is_empty() {
            idle.remove(target);
        }
        taken
    }

    /// Keeps `stream`, whose last exchange completed, for the next request to `target`; closes
    /// the connections idle too long, to any address (one no longer asked for included).
    fn put_idle(&self, target: &str, stream: TcpStream) {
        let mut idle = self.idle.borrow_mut();
        let now = now_ms();
        idle.retain(|_, connections| {
            connections.retain(|(_, since_ms)| now.saturating_sub(*since_ms) <= IDLE_MS_MAX);
            !connections.is_empty()
        });
        let connections = idle.entry(target.to_owned()).or_default();
        if connections.len() < IDLE_PER_ADDRESS_MAX {
            connections.push((stream, now_ms()));
        }
    }

    /// How many idle connections are kept.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use bytes::{Bytes, BytesMut};
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::TcpListener;
    use kafka_protocol::messages::{
        ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    };

    use super::*;
    use crate::runtime::run_local;

    /// A broker that answers ApiVersions v0 and closes each connection after
    /// `requests_per_connection` answers; counts the connections it accepted.
    fn fake_broker(requests_per_connection: usize) -> (String, Rc<Cell<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("has an address").to_string();
        let accepted = Rc::new(Cell::new(0));
        let counted = Rc::clone(&accepted);
        glommio::spawn_local(async move {
            loop {
                let Ok(mut stream) = listener.accept().await else {
                    return;
                };
                counted.set(counted.get() + 1);
                glommio::spawn_local(async move {
                    for _ in 0..requests_per_connection {
                        let mut length = [0_u8; 4];
                        if stream.read_exact(&mut length).await.is_err() {
                            return;
                        }
                        let mut body = vec![0; u32::from_be_bytes(length) as usize];
                        stream
                            .read_exact(&mut body)
                            .await
                            .expect("reads the request");
                        let mut body = Bytes::from(body);
                        let header = RequestHeader::decode(&mut body, 1).expect("a header");
                        let mut frame = BytesMut::new();
                        frame.extend_from_slice(&[0; 4]);
                        ResponseHeader::default()
                            .with_correlation_id(header.correlation_id)
                            .encode(&mut frame, 0)
                            .expect("encodes");
                        ApiVersionsResponse::default()
                            .encode(&mut frame, 0)
                            .expect("encodes");
                        let size = u32::try_from(frame.len() - 4).expect("small");
                        frame[..4].copy_from_slice(&size.to_be_bytes());
                        stream.write_all(&frame).await.expect("answers");
                    }
                })
                .detach();
            }
        })
        .detach();
        (address, accepted)
    }

    async fn ask(connections: &BrokerConnections, target: &str) -> Result<(), String> {
        let _: ApiVersionsResponse = connections
            .exchange(
                target,
                ApiKey::ApiVersions,
                0,
                &ApiVersionsRequest::default(),
                Duration::from_secs(5),
            )
            .await?;
        Ok(())
    }

    #[test]
    fn requests_to_one_broker_share_a_connection() {
        run_local(|| async {
            let (target, accepted) = fake_broker(usize::MAX);
            let connections = BrokerConnections::default();
            for _ in 0..5 {
                ask(&connections, &target).await.expect("answered");
            }
            assert_eq!(accepted.get(), 1);
            assert_eq!(connections.idle_count(), 1);
        })
        .unwrap();
    }

    #[test]
    fn a_connection_its_broker_closed_is_replaced_without_failing_the_request() {
        run_local(|| async {
            let (target, accepted) = fake_broker(2);
            let connections = BrokerConnections::default();
            for _ in 0..5 {
                ask(&connections, &target).await.expect("answered");
            }
            // Two answers per connection: the third, fifth request found theirs closed.
            assert_eq!(accepted.get(), 3);
        })
        .unwrap();
    }

    #[test]
    fn an_unreachable_broker_is_an_error() {
        run_local(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
            let target = listener.local_addr().expect("has an address").to_string();
            drop(listener);
            let connections = BrokerConnections::default();
            assert!(ask(&connections, &target).await.is_err());
            assert_eq!(connections.idle_count(), 0);
        })
        .unwrap();
    }
}
