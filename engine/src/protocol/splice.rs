//! Encoding a response without copying its record sets: the frame is written as the encoded
//! parts around the records plus the records' own buffers, in order, so a fetch response's
//! batches go from the tail cache (or the read buffer) to the socket without passing through
//! a new buffer.
//!
//! The `kafka-protocol` crate encodes a `records` field with one `put_slice` of the field's
//! bytes. [`SplicingWriter`] is the buffer the encoder writes into: when `put_slice` is handed
//! exactly one of the buffers registered with it (same address, same length), it records a
//! splice point instead of copying; every other write goes to its own buffer.

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Encodable;

use super::codec::EncodeError;
use super::frame::FRAME_LENGTH_BYTES;

/// Buffers smaller than this are copied: a splice costs a separate write.
pub const SPLICE_BYTES_MIN: usize = 4096;

/// A response frame in pieces: `parts[i]` is written, then `spliced[i]` if there is one.
#[derive(Debug, Clone, Default)]
pub struct SplicedFrame {
    /// The encoded bytes, cut at the splice points. Starts with the length prefix.
    pub parts: Vec<Bytes>,
    /// The buffers that go after each part, not copied.
    pub spliced: Vec<Bytes>,
}

impl SplicedFrame {
    /// Total bytes of the frame, prefix included.
    pub fn len(&self) -> usize {
        self.parts.iter().chain(&self.spliced).map(Bytes::len).sum()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces in write order.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        let spliced = self.spliced.iter().map(Some).chain(std::iter::repeat(None));
        self.parts
            .iter()
            .zip(spliced)
            .flat_map(|(part, spliced)| std::iter::once(part).chain(spliced))
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct SplicingWriter<'a> {
    own: BytesMut,
    registered: &'a [Bytes],
    /// (position in `own`, index in `registered`), in order.
    splices: Vec<(usize, usize)>,
    spliced_bytes: usize,
}

impl<'a> SplicingWriter<'a> {
    /// A writer that will not copy any of `registered`.
    pub fn new(registered: &'a [Bytes]) -> SplicingWriter<'a> {
        SplicingWriter {
            own: BytesMut::with_capacity(1024),
            registered,
            splices: Vec::new(),
            spliced_bytes: 0,
        }
    }

    /// Position in `own` of a logical offset; offsets before the last splice cannot be
    /// rewritten (the encoder never goes back past a record set).
    fn own_position(&self, offset: usize) -> usize {
        let last_splice = self.splices.last().map_or(0, |&(position, _)| position);
        let position = offset - self.spliced_bytes;
        assert!(
            position >= last_splice,
            "rewrite before a spliced record set"
        );
        position
    }

    /// The frame.
    pub fn finish(self) -> SplicedFrame {
        let mut own = self.own.freeze();
        let mut parts = Vec::with_capacity(self.splices.len() + 1);
        let mut spliced = Vec::with_capacity(self.splices.len());
        let mut taken = 0;
        for (position, index) in self.splices {
            parts.push(own.split_to(position - taken));
            taken = position;
            spliced.push(self.registered[index].clone());
        }
        parts.push(own);
        SplicedFrame { parts, spliced }
    }
}

// SAFETY: every method forwards to the inner `BytesMut`, whose implementation upholds the
// `BufMut` contract; `put_slice` either forwards or records a splice without touching memory.
unsafe impl BufMut for SplicingWriter<'_> {
    fn remaining_mut(&self) -> usize {
        self.own.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, count: usize) {
        // SAFETY: the caller initialised `count` bytes of `chunk_mut`, which is the inner
        // buffer's.
        unsafe { self.own.advance_mut(count) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.own.chunk_mut()
    }

    fn put_slice(&mut self, source: &[u8]) {
        if source.len() >= SPLICE_BYTES_MIN {
            let found = self.registered.iter().position(|buffer| {
                buffer.as_ptr() == source.as_ptr() && buffer.len() == source.len()
            });
            if let Some(index) = found {
                self.splices.push((self.own.len(), index));
                self.spliced_bytes += source.len();
                return;
            }
        }
        self.own.extend_from_slice(source);
    }
}

impl ByteBufMut for SplicingWriter<'_> {
    fn offset(&self) -> usize {
        self.own.len() + self.spliced_bytes
    }

    fn seek(&mut self, offset: usize) {
        let position = self.own_position(offset);
        self.own.resize(position, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = self.own_position(r.start);
        let end = self.own_position(r.end);
        &mut self.own[start..end]
    }
}

/// Encodes a response frame, splicing in every buffer of `records` instead of copying it.
///
/// # Errors
/// [`EncodeError`] when the crate refuses the response.
pub fn encode_response_spliced(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &impl Encodable,
    records: &[Bytes],
) -> Result<SplicedFrame, EncodeError> {
    let error = |reason: String| EncodeError {
        api_key,
        version,
        reason,
    };
    let mut writer = SplicingWriter::new(records);
    writer.put_u32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut writer, api_key.response_header_version(version))
        .map_err(|reason| error(reason.to_string()))?;
    body.encode(&mut writer, version)
        .map_err(|reason| error(reason.to_string()))?;
    let size = writer.offset() - FRAME_LENGTH_BYTES;
    let size =
        u32::try_from(size).map_err(|_| error(format!("{size} bytes do not fit a frame")))?;
    writer.own[..FRAME_LENGTH_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(writer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_response;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn response(records: &[Bytes]) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(index, records)| {
                PartitionData::default()
                    .with_partition_index(index as i32)
                    .with_records(Some(records.clone()))
            })
            .collect();
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(partitions)])
    }

    #[test]
    fn spliced_frames_equal_copied_frames_at_every_fetch_version() {
        let records = vec![
            Bytes::from(vec![1_u8; 10_000]),
            Bytes::from(vec![2_u8; 100]),
            Bytes::from(vec![3_u8; 5_000]),
        ];
        let body = response(&records);
        for version in 4..=16 {
            let mut copied = BytesMut::new();
            let kind = ResponseKind::Fetch(body.clone());
            encode_response(7, ApiKey::Fetch, version, &kind, &mut copied).unwrap();
            let spliced =
                encode_response_spliced(7, ApiKey::Fetch, version, &body, &records).unwrap();
            assert_eq!(spliced.spliced.len(), 2, "the small record set is copied");
            assert!(spliced.spliced[0].as_ptr() == records[0].as_ptr());
            let joined: Vec<u8> = spliced.pieces().flat_map(|piece| piece.to_vec()).collect();
            assert_eq!(joined, copied.to_vec(), "v{version}");
            assert_eq!(spliced.len(), copied.len());
        }
    }
}
