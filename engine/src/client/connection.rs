//! One blocking connection to a broker: requests encoded and responses decoded with the
//! `kafka-protocol` crate, the API versions negotiated once with ApiVersions, one request at a
//! time or several in flight. Blocking sockets on the caller's thread: no executor, no io_uring.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    list_offsets_request, ApiKey, ApiVersionsRequest, BrokerId, ListOffsetsRequest, RequestHeader,
    RequestKind, ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::config::CommonConfig;
use super::error::ClientError;

/// Largest response frame accepted.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// The versions of each API this client speaks: `(lowest, highest)`.
pub fn client_versions(api_key: ApiKey) -> Option<(i16, i16)> {
    Some(match api_key {
        ApiKey::ApiVersions => (0, 3),
        ApiKey::Metadata => (1, 12),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 6),
        ApiKey::DescribeCluster => (0, 1),
        ApiKey::DescribeClientQuotas => (0, 1),
        ApiKey::AlterClientQuotas => (0, 1),
        ApiKey::Produce => (3, 11),
        // Up to v12: v13+ name topics by id, which this client does not track yet.
        ApiKey::Fetch => (4, 12),
        ApiKey::ListOffsets => (1, 7),
        ApiKey::OffsetFetch => (1, 8),
        ApiKey::DescribeGroups => (0, 5),
        ApiKey::ListGroups => (0, 5),
        ApiKey::DeleteGroups => (0, 2),
        ApiKey::IncrementalAlterConfigs => (0, 1),
        ApiKey::CreatePartitions => (0, 3),
        ApiKey::FindCoordinator => (1, 4),
        ApiKey::JoinGroup => (1, 9),
        ApiKey::SyncGroup => (0, 5),
        ApiKey::Heartbeat => (0, 4),
        ApiKey::LeaveGroup => (0, 5),
        ApiKey::OffsetCommit => (2, 8),
        ApiKey::DeleteRecords => (0, 2),
        ApiKey::InitProducerId => (0, 4),
        ApiKey::AddPartitionsToTxn => (0, 3),
        ApiKey::AddOffsetsToTxn => (0, 3),
        // v5: transaction version 2 (KIP-890), each end bumps the producer's epoch.
        ApiKey::EndTxn => (0, 5),
        ApiKey::TxnOffsetCommit => (0, 3),
        ApiKey::AlterPartitionReassignments => (0, 1),
        ApiKey::ListPartitionReassignments => (0, 0),
        _ => return None,
    })
}

/// The body of a response of the API `$kind`, or a protocol error when the broker answered
/// another API.
macro_rules! response_of {
    ($response:expr, $kind:ident) => {
        match $response {
            kafka_protocol::messages::ResponseKind::$kind(body) => Ok(body),
            _ => Err($crate::client::ClientError::Protocol(
                concat!(stringify!($kind), " answered with another API").into(),
            )),
        }
    };
}
pub(crate) use response_of;

/// A request sent and not yet answered: what reading its response needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a request in flight must have its response read"]
pub struct InFlight {
    /// The API.
    pub api_key: ApiKey,
    /// The version it was sent at.
    pub version: i16,
    correlation_id: i32,
}

/// A connection to one broker.
#[derive(Debug)]
pub struct Connection {
    address: String,
    stream: TcpStream,
    correlation_id: i32,
    client_id: StrBytes,
    /// How long a response may take (`request.timeout.ms`) unless a call says otherwise.
    timeout: Duration,
    /// The broker's `(lowest, highest)` version of each API it advertises.
    broker_versions: BTreeMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects to `address` (`HOST:PORT`) and negotiates API versions.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the broker cannot be reached, or any error of the
    /// ApiVersions exchange.
    pub fn open(
        address: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let connect_error = |source: std::io::Error| ClientError::Connect {
            address: address.to_owned(),
            source,
        };
        let resolved = address
            .to_socket_addrs()
            .map_err(connect_error)?
            .next()
            .ok_or_else(|| {
                connect_error(std::io::Error::other("the name resolves to no address"))
            })?;
        let stream = TcpStream::connect_timeout(&resolved, timeout).map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_error)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(connect_error)?;
        let mut connection = Connection {
            address: address.to_owned(),
            stream,
            correlation_id: 0,
            timeout,
            client_id: StrBytes::from_string(client_id.to_owned()),
            broker_versions: BTreeMap::new(),
        };
        connection.negotiate()?;
        Ok(connection)
    }

    /// Connects to the first reachable bootstrap server of `config`.
    ///
    /// # Errors
    /// The last server's error when none answers.
    pub fn open_any(config: &CommonConfig) -> Result<Connection, ClientError> {
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let mut last = None;
        for address in &config.bootstrap_servers {
            match Connection::open(address, &config.client_id, timeout) {
                Ok(connection) => return Ok(connection),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("bootstrap.servers is never empty"))
    }

    /// ListOffsets for one partition: -2 the log start, -1 the log end, else the first offset
    /// at or after a timestamp (-1 when there is none).
    ///
    /// # Errors
    /// A failure of the request, or the partition's error.
    pub fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ])]);
        let (_, response) = self.call(ApiKey::ListOffsets, RequestKind::ListOffsets(request))?;
        let ResponseKind::ListOffsets(response) = response else {
            return Err(ClientError::Protocol(
                "ListOffsets answered with another API".into(),
            ));
        };
        let answer = response
            .topics
            .first()
            .and_then(|topic| topic.partitions.first())
            .ok_or_else(|| ClientError::Protocol("ListOffsets without an answer".into()))?;
        ClientError::check(answer.error_code, Some(format!("{topic}-{partition}")))?;
        Ok(answer.offset)
    }

    /// The broker's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket, for waiting on several connections at once with poll(2).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.stream.as_raw_fd()
    }

    fn negotiate(&mut self) -> Result<(), ClientError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("spate"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        // v3 first; a broker that does not know it answers at v0 with its versions.
        let response = match self.exchange(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(request.clone()),
        ) {
            Ok(ResponseKind::ApiVersions(response)) if response.error_code == 0 => response,
            _ => match self.exchange(ApiKey::ApiVersions, 0, RequestKind::ApiVersions(request))? {
                ResponseKind::ApiVersions(response) => response,
                _ => {
                    return Err(ClientError::Protocol(
                        "ApiVersions answered with another API".into(),
                    ))
                }
            },
        };
        if response.error_code != 0 {
            return Err(ClientError::from_code(response.error_code, None));
        }
        self.broker_versions = response
            .api_keys
            .iter()
            .map(|api| (api.api_key, (api.min_version, api.max_version)))
            .collect();
        Ok(())
    }

    /// The highest version of `api_key` both sides speak.
    ///
    /// # Errors
    /// [`ClientError::Unsupported`] when there is none.
    pub fn version(&self, api_key: ApiKey) -> Result<i16, ClientError> {
        let unsupported = || ClientError::Unsupported(format!("{api_key:?}"));
        let (ours_min, ours_max) = client_versions(api_key).ok_or_else(unsupported)?;
        let &(theirs_min, theirs_max) = self
            .broker_versions
            .get(&(api_key as i16))
            .ok_or_else(unsupported)?;
        let version = ours_max.min(theirs_max);
        if version < ours_min.max(theirs_min) {
            return Err(unsupported());
        }
        Ok(version)
    }

    /// Sends `body` at the highest common version and returns the response with that version.
    ///
    /// # Errors
    /// [`ClientError`] for an I/O failure, an unsupported API or a response that does not decode.
    pub fn call(
        &mut self,
        api_key: ApiKey,
        body: RequestKind,
    ) -> Result<(i16, ResponseKind), ClientError> {
        let version = self.version(api_key)?;
        Ok((version, self.exchange(api_key, version, body)?))
    }

    /// [`Connection::call`] for a request the broker may hold for up to `wait` (JoinGroup
    /// waits for the whole group) on top of the usual request timeout.
    ///
    /// # Errors
    /// As [`Connection::call`].
    pub fn call_waiting(
        &mut self,
        api_key: ApiKey,
        body: RequestKind,
        wait: Duration,
    ) -> Result<(i16, ResponseKind), ClientError> {
        let io = |address: &str, source| ClientError::Io {
            address: address.to_owned(),
            source,
        };
        self.stream
            .set_read_timeout(Some(self.timeout + wait))
            .map_err(|source| io(&self.address, source))?;
        let result = self.call(api_key, body);
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|source| io(&self.address, source))?;
        result
    }

    /// Sends `body` at the highest common version without waiting for a response (Produce
    /// with acks=0, which gets none).
    ///
    /// # Errors
    /// [`ClientError`] for an I/O failure or an unsupported API.
    pub fn send_only(&mut self, api_key: ApiKey, body: RequestKind) -> Result<(), ClientError> {
        let version = self.version(api_key)?;
        self.write_request(api_key, version, &body)
    }

    fn write_request(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: &RequestKind,
    ) -> Result<(), ClientError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        // Sized up front: a Produce carries megabytes, and growing the buffer would copy them.
        let body_size = match body {
            RequestKind::Produce(produce) => produce.compute_size(version).unwrap_or(0),
            _ => 0,
        };
        let mut frame = BytesMut::with_capacity(4 + 64 + self.client_id.len() + body_size);
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, api_key.request_header_version(version))
            .map_err(|error| {
                ClientError::Protocol(format!("encoding the {api_key:?} header: {error}"))
            })?;
        body.encode(&mut frame, version).map_err(|error| {
            ClientError::Protocol(format!("encoding {api_key:?} v{version}: {error}"))
        })?;
        let size = u32::try_from(frame.len() - 4)
            .map_err(|_| ClientError::Protocol("request too large".into()))?;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream
            .write_all(&frame)
            .map_err(|source| ClientError::Io {
                address: self.address.clone(),
                source,
            })
    }

    /// Sends `body` at the highest common version and returns what [`Connection::receive`]
    /// needs to read its response: several requests may be in flight on one connection, and
    /// Kafka answers them in the order they were sent.
    ///
    /// # Errors
    /// [`ClientError`] for an I/O failure or an unsupported API.
    pub fn send(&mut self, api_key: ApiKey, body: &RequestKind) -> Result<InFlight, ClientError> {
        let version = self.version(api_key)?;
        self.write_request(api_key, version, body)?;
        Ok(InFlight {
            api_key,
            version,
            correlation_id: self.correlation_id,
        })
    }

    /// Waits up to `timeout` for a response to start arriving; `false` when none did. The
    /// response stays unread, for [`Connection::receive`].
    ///
    /// # Errors
    /// [`ClientError::Io`] when the connection failed or the broker closed it.
    pub fn wait_readable(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        let io = |address: &str, source| ClientError::Io {
            address: address.to_owned(),
            source,
        };
        // A zero timeout means "block forever" to the socket; wait at least a millisecond.
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|source| io(&self.address, source))?;
        let mut first = [0; 1];
        let peeked = self.stream.peek(&mut first);
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|source| io(&self.address, source))?;
        match peeked {
            Ok(0) => Err(io(
                &self.address,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ),
            )),
            Ok(_) => Ok(true),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(error) => Err(io(&self.address, error)),
        }
    }

    /// Reads the response to a request sent with [`Connection::send`]; responses must be read
    /// in the order their requests were sent.
    ///
    /// # Errors
    /// [`ClientError`] for an I/O failure, a response out of order or one that does not decode.
    pub fn receive(&mut self, request: InFlight) -> Result<ResponseKind, ClientError> {
        read_response(&mut self.stream, &self.address, request)
    }

    /// Splits the connection into a half that sends and a half that reads responses, for a
    /// thread that writes requests while another reads their answers.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the socket cannot be shared.
    pub fn split(self) -> Result<(RequestSender, ResponseReader), ClientError> {
        let stream = self.stream.try_clone().map_err(|source| ClientError::Io {
            address: self.address.clone(),
            source,
        })?;
        let reader = ResponseReader {
            address: self.address.clone(),
            stream,
        };
        Ok((RequestSender { connection: self }, reader))
    }

    fn exchange(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Result<ResponseKind, ClientError> {
        self.write_request(api_key, version, &body)?;
        self.receive(InFlight {
            api_key,
            version,
            correlation_id: self.correlation_id,
        })
    }
}

/// Reads one response frame from `stream` and decodes it as the answer to `request`.
fn read_response(
    stream: &mut TcpStream,
    address: &str,
    request: InFlight,
) -> Result<ResponseKind, ClientError> {
    let InFlight {
        api_key,
        version,
        correlation_id,
    } = request;
    let io = |source| ClientError::Io {
        address: address.to_owned(),
        source,
    };
    let mut size = [0; 4];
    stream.read_exact(&mut size).map_err(io)?;
    let size = u32::from_be_bytes(size) as usize;
    if size > RESPONSE_BYTES_MAX {
        return Err(ClientError::Protocol(format!("a response of {size} bytes")));
    }
    let mut response = vec![0; size];
    stream.read_exact(&mut response).map_err(io)?;
    let mut response = Bytes::from(response);
    let header = ResponseHeader::decode(&mut response, api_key.response_header_version(version))
        .map_err(|error| {
            ClientError::Protocol(format!("decoding the {api_key:?} response header: {error}"))
        })?;
    if header.correlation_id != correlation_id {
        return Err(ClientError::Protocol(format!(
            "response {} to request {correlation_id}",
            header.correlation_id
        )));
    }
    ResponseKind::decode(api_key, &mut response, version)
        .map_err(|error| ClientError::Protocol(format!("decoding {api_key:?} v{version}: {error}")))
}

/// The sending half of a split [`Connection`].
#[derive(Debug)]
pub struct RequestSender {
    connection: Connection,
}

impl RequestSender {
    /// As [`Connection::send`].
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send(&mut self, api_key: ApiKey, body: &RequestKind) -> Result<InFlight, ClientError> {
        self.connection.send(api_key, body)
    }

    /// As [`Connection::send_only`].
    ///
    /// # Errors
    /// As [`Connection::send_only`].
    pub fn send_only(&mut self, api_key: ApiKey, body: RequestKind) -> Result<(), ClientError> {
        self.connection.send_only(api_key, body)
    }

    /// Closes the socket for both halves, so that a reader blocked on it returns.
    pub fn shutdown(&self) {
        // Already closed, or never fully open: nothing more to do either way.
        let _ = self.connection.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The reading half of a split [`Connection`].
#[derive(Debug)]
pub struct ResponseReader {
    address: String,
    stream: TcpStream,
}

impl ResponseReader {
    /// As [`Connection::receive`].
    ///
    /// # Errors
    /// As [`Connection::receive`].
    pub fn receive(&mut self, request: InFlight) -> Result<ResponseKind, ClientError> {
        read_response(&mut self.stream, &self.address, request)
    }
}
