//! Requests from frames, responses into frames, through the `kafka-protocol` crate.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::frame::FRAME_LENGTH_BYTES;
use super::versions;

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The header as sent.
    pub header: RequestHeader,
    /// The API.
    pub api_key: ApiKey,
    /// The API version the body is encoded at, and the response must be.
    pub version: i16,
    /// The body.
    pub body: RequestKind,
}

/// A frame that is not a request Spate can handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Too short to hold a request header.
    #[error("frame of {size_bytes} bytes is too short for a request header")]
    TooShort {
        /// Size of the frame.
        size_bytes: usize,
    },
    /// An API key Spate does not know or does not implement.
    #[error("unsupported API key {api_key} (correlation id {correlation_id})")]
    UnsupportedApi {
        /// The key sent.
        api_key: i16,
        /// Correlation id, when the header could be read.
        correlation_id: i32,
    },
    /// A version of an implemented API that Spate does not accept. For ApiVersions the broker
    /// answers (with UNSUPPORTED_VERSION and its versions, as Kafka does); for the others it
    /// closes the connection, as Kafka does.
    #[error("unsupported version {version} of {api_key:?} (correlation id {correlation_id})")]
    UnsupportedVersion {
        /// The API.
        api_key: ApiKey,
        /// The version sent.
        version: i16,
        /// Correlation id.
        correlation_id: i32,
    },
    /// The header or body does not decode.
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        /// The API.
        api_key: ApiKey,
        /// The version.
        version: i16,
        /// What the decoder said.
        reason: String,
    },
}

/// A response the crate refused to encode: a bug in Spate (a field set that the version does
/// not carry), never the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {api_key:?} v{version} response: {reason}")]
pub struct EncodeError {
    /// The API.
    pub api_key: ApiKey,
    /// The version.
    pub version: i16,
    /// What the encoder said.
    pub reason: String,
}

/// Decodes one frame (without its length prefix) into a request.
///
/// # Errors
/// [`DecodeError`]; see its variants for what the broker does with each.
pub fn decode_request(mut frame: Bytes) -> Result<Request, DecodeError> {
    const FIXED_HEADER_BYTES: usize = 8; // api key, api version, correlation id
    if frame.len() < FIXED_HEADER_BYTES {
        return Err(DecodeError::TooShort {
            size_bytes: frame.len(),
        });
    }
    let raw_api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let unsupported_api = DecodeError::UnsupportedApi {
        api_key: raw_api_key,
        correlation_id,
    };
    let api_key = ApiKey::try_from(raw_api_key).map_err(|_| unsupported_api.clone())?;
    let range = versions::supported(api_key).ok_or(unsupported_api)?;
    if version < range.min || version > range.max {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed {
        api_key,
        version,
        reason,
    };
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|error| malformed(format!("header: {error}")))?;
    let body = RequestKind::decode(api_key, &mut frame, version)
        .map_err(|error| malformed(error.to_string()))?;
    Ok(Request {
        header,
        api_key,
        version,
        body,
    })
}

/// Appends one response frame (length prefix, header, body) to `out`.
///
/// # Errors
/// [`EncodeError`] when the crate refuses the response; `out` is then as it was.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    let error = |reason: String| EncodeError {
        api_key,
        version,
        reason,
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    out.put_u32(0);
    let encoded = header
        .encode(out, api_key.response_header_version(version))
        .and_then(|()| body.encode(out, version));
    if let Err(reason) = encoded {
        out.truncate(start);
        return Err(error(reason.to_string()));
    }
    let size_bytes = out.len() - start - FRAME_LENGTH_BYTES;
    let Ok(size) = u32::try_from(size_bytes) else {
        out.truncate(start);
        return Err(error(format!("{size_bytes} bytes do not fit a frame")));
    };
    out[start..start + FRAME_LENGTH_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
    use kafka_protocol::protocol::StrBytes;

    fn frame_of(api_key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut out = BytesMut::new();
        header
            .encode(&mut out, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn decodes_a_flexible_request() {
        let body = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("spate-test"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        let request = decode_request(frame_of(ApiKey::ApiVersions, 3, &body)).unwrap();
        assert_eq!(request.header.correlation_id, 7);
        assert_eq!(request.body, RequestKind::ApiVersions(body));
    }

    #[test]
    fn refuses_unknown_versions_and_short_frames() {
        let body = ApiVersionsRequest::default();
        let frame = frame_of(ApiKey::ApiVersions, 0, &body);
        let mut bumped = BytesMut::from(&frame[..]);
        bumped[3] = 99;
        assert!(matches!(
            decode_request(bumped.freeze()),
            Err(DecodeError::UnsupportedVersion {
                version: 99,
                correlation_id: 7,
                ..
            })
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 18, 0])),
            Err(DecodeError::TooShort { .. })
        ));
        assert!(matches!(
            decode_request(frame.slice(..frame.len() - 1)),
            Err(DecodeError::Malformed { .. }) | Ok(_)
        ));
    }

    #[test]
    fn frames_a_response_with_its_length() {
        let mut out = BytesMut::new();
        let body = ResponseKind::ApiVersions(ApiVersionsResponse::default());
        encode_response(9, ApiKey::ApiVersions, 3, &body, &mut out).unwrap();
        let size = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(size + 4, out.len());
        assert_eq!(i32::from_be_bytes([out[4], out[5], out[6], out[7]]), 9);
    }
}
