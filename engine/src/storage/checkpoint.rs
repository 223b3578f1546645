//! The per-partition checkpoint file: recovery point and log start offset.
//!
//! `partition.checkpoint` is written atomically (temporary file, sync, rename, directory sync)
//! and carries a CRC32C. Layout, big-endian:
//!
//! ```text
//!  0  u32  magic "SPCK"
//!  4  u16  version (1)
//!  6  u16  reserved (0)
//!  8  i64  recovery point: every batch below it is synced and its segment's indexes are on disk
//! 16  i64  log start offset
//! 24  u32  CRC32C of bytes 0..24
//! ```

use bytes::{BufMut, BytesMut};

/// File name inside the partition directory.
pub const CHECKPOINT_FILE_NAME: &str = "partition.checkpoint";
const MAGIC: u32 = 0x5350_434b;
const VERSION: u16 = 1;
/// Bytes of the checkpoint record.
pub const CHECKPOINT_BYTES: usize = 28;

/// The contents of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Batches below this offset are durable and their segments' indexes are on disk.
    pub recovery_point: i64,
    /// The first offset readable in the log.
    pub log_start_offset: i64,
}

impl Checkpoint {
    /// The file image.
    pub fn encode(&self) -> BytesMut {
        let mut bytes = BytesMut::with_capacity(CHECKPOINT_BYTES);
        bytes.put_u32(MAGIC);
        bytes.put_u16(VERSION);
        bytes.put_u16(0);
        bytes.put_i64(self.recovery_point);
        bytes.put_i64(self.log_start_offset);
        let crc = crc32c::crc32c(&bytes);
        bytes.put_u32(crc);
        bytes
    }

    /// Parses a file image; trailing bytes (padding) are ignored. `None` when the magic,
    /// version or CRC do not check out.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() < CHECKPOINT_BYTES {
            return None;
        }
        let magic = u32::from_be_bytes(bytes[0..4].try_into().ok()?);
        let version = u16::from_be_bytes(bytes[4..6].try_into().ok()?);
        let crc = u32::from_be_bytes(bytes[24..28].try_into().ok()?);
        if magic != MAGIC || version != VERSION || crc32c::crc32c(&bytes[..24]) != crc {
            return None;
        }
        let checkpoint = Checkpoint {
            recovery_point: i64::from_be_bytes(bytes[8..16].try_into().ok()?),
            log_start_offset: i64::from_be_bytes(bytes[16..24].try_into().ok()?),
        };
        (checkpoint.recovery_point >= 0 && checkpoint.log_start_offset >= 0).then_some(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let checkpoint = Checkpoint {
            recovery_point: 12345,
            log_start_offset: 100,
        };
        let mut bytes = checkpoint.encode().to_vec();
        assert_eq!(bytes.len(), CHECKPOINT_BYTES);
        assert_eq!(Checkpoint::decode(&bytes), Some(checkpoint));
        bytes[10] ^= 1;
        assert_eq!(Checkpoint::decode(&bytes), None);
        assert_eq!(Checkpoint::decode(&bytes[..20]), None);
    }
}
