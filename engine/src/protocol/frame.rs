//! Length-prefixed frames.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;

/// A frame that cannot be accepted. The connection must be closed: the stream is no longer in
/// step with frame boundaries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is negative.
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    /// The frame is larger than `socket_request_max_bytes`.
    #[error("frame of {size_bytes} bytes exceeds socket_request_max_bytes ({limit_bytes})")]
    TooLarge {
        /// Size the prefix announced.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
}

/// Takes one whole frame (without its length prefix) from the front of `buffer`, if a whole one
/// is there. When only part of a frame is buffered, reserves room for the rest, after checking
/// the announced length against `max_bytes`, so that nothing is allocated for a frame that will
/// be refused.
///
/// # Errors
/// [`FrameError`] for a length that is negative or above `max_bytes`.
pub fn take_frame(buffer: &mut BytesMut, max_bytes: usize) -> Result<Option<Bytes>, FrameError> {
    if buffer.len() < FRAME_LENGTH_BYTES {
        return Ok(None);
    }
    let announced = i32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    let size_bytes =
        usize::try_from(announced).map_err(|_| FrameError::NegativeLength(announced))?;
    if size_bytes > max_bytes {
        return Err(FrameError::TooLarge {
            size_bytes,
            limit_bytes: max_bytes,
        });
    }
    let total = FRAME_LENGTH_BYTES + size_bytes;
    if buffer.len() < total {
        buffer.reserve(total - buffer.len());
        return Ok(None);
    }
    buffer.advance(FRAME_LENGTH_BYTES);
    Ok(Some(buffer.split_to(size_bytes).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_whole_frames_only() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[0, 0, 0, 3, b'a', b'b']);
        assert_eq!(take_frame(&mut buffer, 10), Ok(None));
        buffer.extend_from_slice(b"c\x00\x00");
        assert_eq!(
            take_frame(&mut buffer, 10),
            Ok(Some(Bytes::from_static(b"abc")))
        );
        assert_eq!(take_frame(&mut buffer, 10), Ok(None));
        assert_eq!(buffer.len(), 2);
    }

    #[test]
    fn refuses_oversized_and_negative_lengths_before_reserving() {
        let mut buffer = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        let capacity = buffer.capacity();
        assert!(matches!(
            take_frame(&mut buffer, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(buffer.capacity(), capacity);
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0xff, 0xfe][..]);
        assert_eq!(
            take_frame(&mut buffer, 1 << 20),
            Err(FrameError::NegativeLength(-2))
        );
    }
}
