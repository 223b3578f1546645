//! The Kafka wire protocol: framing, and the mapping between frames and the `kafka-protocol`
//! crate's request and response types. No I/O: callers hand in bytes and get bytes back.
//!
//! A Kafka frame is a 4-byte big-endian length followed by that many bytes: a request header
//! (API key, API version, correlation id, client id, tagged fields for flexible versions) and
//! the request body. Responses carry a response header (correlation id, tagged fields) and the
//! body, encoded at the version of the request.

mod codec;
mod frame;
pub mod splice;
pub mod versions;

pub use codec::{decode_request, encode_response, DecodeError, EncodeError, Request};
pub use frame::{take_frame, FrameError, FRAME_LENGTH_BYTES};
