//! A blocking Kafka-protocol connection for the bench tools, with the `kafka-protocol` crate's
//! codecs: one request at a time, as a simple client does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// A connection to a broker.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    correlation_id: i32,
    client_id: StrBytes,
}

impl Connection {
    /// Connects to `address` (`HOST:PORT`).
    ///
    /// # Errors
    /// The connect error.
    pub fn open(address: &str, client_id: &str) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Connection {
            stream,
            correlation_id: 0,
            client_id: StrBytes::from_string(client_id.to_owned()),
        })
    }

    /// Sends a request and waits for its response.
    ///
    /// # Errors
    /// An I/O error, or a response that does not decode.
    pub fn call(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> std::io::Result<ResponseKind> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, api_key.request_header_version(version))
            .map_err(std::io::Error::other)?;
        body.encode(&mut frame, version)
            .map_err(std::io::Error::other)?;
        let size = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&frame)?;
        let mut size = [0; 4];
        self.stream.read_exact(&mut size)?;
        let mut response = vec![0; u32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut response)?;
        let mut response = Bytes::from(response);
        let header =
            ResponseHeader::decode(&mut response, api_key.response_header_version(version))
                .map_err(std::io::Error::other)?;
        if header.correlation_id != self.correlation_id {
            return Err(std::io::Error::other("response out of order"));
        }
        ResponseKind::decode(api_key, &mut response, version).map_err(std::io::Error::other)
    }
}
