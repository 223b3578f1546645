//! Sparse offset and time indexes of one segment.
//!
//! The offset index maps a relative offset (offset minus the segment's base offset) to the byte
//! position of the batch that starts there; one entry is added after every
//! `index_interval_bytes` of log. The time index maps the largest timestamp seen so far to the
//! relative offset of the batch that brought it; entries are added at the same points when the
//! largest timestamp grew, and once more when the segment is closed, so its last entry holds the
//! segment's largest timestamp.
//!
//! Indexes live in memory while their segment is active and are written whole, with a CRC32C, when
//! the segment is rolled, checkpointed or closed (see `docs/FORMAT.md`). A file whose header or
//! CRC does not check out is rebuilt from the log.

use bytes::{BufMut, BytesMut};

/// Magic at the start of index files: "SPIX".
const INDEX_MAGIC: u32 = 0x5350_4958;
const INDEX_VERSION: u16 = 1;
/// Bytes of the index file header.
pub const INDEX_HEADER_BYTES: usize = 16;
/// Bytes of one offset index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one time index entry.
pub const TIME_ENTRY_BYTES: usize = 12;

/// Which index a file holds, stored in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
enum IndexKind {
    Offset = 1,
    Time = 2,
}

/// Why an index file was not usable. Never fatal: the index is rebuilt from the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexFileError {
    /// Shorter than its header or than its entries.
    #[error("index file truncated")]
    Truncated,
    /// Wrong magic, version or kind.
    #[error("not a Spate index file of this kind and version")]
    BadHeader,
    /// The entries do not match the stored CRC32C.
    #[error("index CRC mismatch")]
    CrcMismatch,
    /// Entries are not strictly increasing.
    #[error("index entries out of order")]
    Unordered,
}

/// One offset index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset minus the segment base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

/// One time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp of the segment up to and including the batch at `relative_offset`.
    pub timestamp: i64,
    /// Base offset of that batch minus the segment base offset.
    pub relative_offset: u32,
}

/// A segment's offset index. Entries strictly increase in both fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    /// An empty index.
    pub fn new() -> OffsetIndex {
        OffsetIndex::default()
    }

    /// Appends an entry.
    ///
    /// # Panics
    /// If the entry does not come strictly after the last one: an index out of order would send
    /// reads to the wrong batches.
    pub fn push(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                entry.relative_offset > last.relative_offset && entry.position > last.position,
                "offset index entries must strictly increase: {last:?} then {entry:?}"
            );
        }
        self.entries.push(entry);
    }

    /// The last entry at or before `relative_offset`: where a scan for that offset starts.
    pub fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self
            .entries
            .partition_point(|entry| entry.relative_offset <= relative_offset);
        after.checked_sub(1).map(|index| self.entries[index])
    }

    /// All entries, in order.
    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    /// The last entry.
    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps only entries with `position < position_end`.
    pub fn truncate_to_position(&mut self, position_end: u64) {
        self.entries
            .retain(|entry| u64::from(entry.position) < position_end);
    }

    /// The file image: header and entries.
    pub fn encode(&self) -> BytesMut {
        let mut body = BytesMut::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for entry in &self.entries {
            body.put_u32(entry.relative_offset);
            body.put_u32(entry.position);
        }
        encode_file(IndexKind::Offset, self.entries.len(), &body)
    }

    /// Parses a file image. Trailing bytes after the entries (padding) are ignored.
    ///
    /// # Errors
    /// An [`IndexFileError`]; the caller rebuilds the index from the log.
    pub fn decode(bytes: &[u8]) -> Result<OffsetIndex, IndexFileError> {
        let body = decode_file(IndexKind::Offset, OFFSET_ENTRY_BYTES, bytes)?;
        let mut index = OffsetIndex::new();
        for chunk in body.chunks_exact(OFFSET_ENTRY_BYTES) {
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes(chunk[0..4].try_into().expect("4")),
                position: u32::from_be_bytes(chunk[4..8].try_into().expect("4")),
            };
            if let Some(last) = index.entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
                {
                    return Err(IndexFileError::Unordered);
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

/// A segment's time index. Timestamps and offsets strictly increase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// An empty index.
    pub fn new() -> TimeIndex {
        TimeIndex::default()
    }

    /// Appends an entry if its timestamp is larger than the last one's; a later offset with the
    /// same largest timestamp adds nothing.
    pub fn maybe_push(&mut self, entry: TimeEntry) {
        match self.entries.last_mut() {
            Some(last) if entry.timestamp <= last.timestamp => {}
            Some(last) if entry.relative_offset == last.relative_offset => *last = entry,
            Some(last) => {
                assert!(
                    entry.relative_offset > last.relative_offset,
                    "time index order"
                );
                self.entries.push(entry);
            }
            None => self.entries.push(entry),
        }
    }

    /// The last entry whose timestamp is strictly below `timestamp`: every record up to and
    /// including its batch is older than `timestamp`, so a search can start at that batch.
    pub fn last_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let after = self
            .entries
            .partition_point(|entry| entry.timestamp < timestamp);
        after.checked_sub(1).map(|index| self.entries[index])
    }

    /// Keeps only entries with `relative_offset <= relative_offset_max`.
    pub fn retain_up_to(&mut self, relative_offset_max: u32) {
        self.entries
            .retain(|entry| entry.relative_offset <= relative_offset_max);
    }

    /// All entries, in order.
    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    /// The last entry.
    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file image: header and entries.
    pub fn encode(&self) -> BytesMut {
        let mut body = BytesMut::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for entry in &self.entries {
            body.put_i64(entry.timestamp);
            body.put_u32(entry.relative_offset);
        }
        encode_file(IndexKind::Time, self.entries.len(), &body)
    }

    /// Parses a file image. Trailing bytes after the entries (padding) are ignored.
    ///
    /// # Errors
    /// An [`IndexFileError`]; the caller rebuilds the index from the log.
    pub fn decode(bytes: &[u8]) -> Result<TimeIndex, IndexFileError> {
        let body = decode_file(IndexKind::Time, TIME_ENTRY_BYTES, bytes)?;
        let mut index = TimeIndex::new();
        for chunk in body.chunks_exact(TIME_ENTRY_BYTES) {
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(chunk[0..8].try_into().expect("8")),
                relative_offset: u32::from_be_bytes(chunk[8..12].try_into().expect("4")),
            };
            if let Some(last) = index.entries.last() {
                if entry.timestamp <= last.timestamp
                    || entry.relative_offset <= last.relative_offset
                {
                    return Err(IndexFileError::Unordered);
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

fn encode_file(kind: IndexKind, count: usize, body: &[u8]) -> BytesMut {
    let mut file = BytesMut::with_capacity(INDEX_HEADER_BYTES + body.len());
    file.put_u32(INDEX_MAGIC);
    file.put_u16(INDEX_VERSION);
    file.put_u16(kind as u16);
    file.put_u32(u32::try_from(count).expect("index entries fit in u32"));
    file.put_u32(crc32c::crc32c(body));
    file.put_slice(body);
    file
}

fn decode_file(kind: IndexKind, entry_bytes: usize, bytes: &[u8]) -> Result<&[u8], IndexFileError> {
    if bytes.len() < INDEX_HEADER_BYTES {
        return Err(IndexFileError::Truncated);
    }
    let magic = u32::from_be_bytes(bytes[0..4].try_into().expect("4"));
    let version = u16::from_be_bytes(bytes[4..6].try_into().expect("2"));
    let stored_kind = u16::from_be_bytes(bytes[6..8].try_into().expect("2"));
    if magic != INDEX_MAGIC || version != INDEX_VERSION || stored_kind != kind as u16 {
        return Err(IndexFileError::BadHeader);
    }
    let count = u32::from_be_bytes(bytes[8..12].try_into().expect("4")) as usize;
    let crc = u32::from_be_bytes(bytes[12..16].try_into().expect("4"));
    let end = count
        .checked_mul(entry_bytes)
        .and_then(|body| body.checked_add(INDEX_HEADER_BYTES))
        .ok_or(IndexFileError::Truncated)?;
    if bytes.len() < end {
        return Err(IndexFileError::Truncated);
    }
    let body = &bytes[INDEX_HEADER_BYTES..end];
    if crc32c::crc32c(body) != crc {
        return Err(IndexFileError::CrcMismatch);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_offset_index() -> OffsetIndex {
        let mut index = OffsetIndex::new();
        for i in 0..10u32 {
            index.push(OffsetEntry {
                relative_offset: i * 100,
                position: i * 4096,
            });
        }
        index
    }

    #[test]
    fn floor_finds_the_entry_at_or_before() {
        let index = sample_offset_index();
        assert_eq!(index.floor(0).unwrap().position, 0);
        assert_eq!(index.floor(99).unwrap().position, 0);
        assert_eq!(index.floor(100).unwrap().position, 4096);
        assert_eq!(index.floor(10_000).unwrap().position, 9 * 4096);
        assert_eq!(OffsetIndex::new().floor(5), None);
    }

    #[test]
    fn offset_index_round_trips_and_ignores_padding() {
        let index = sample_offset_index();
        let mut file = index.encode().to_vec();
        file.extend_from_slice(&[0; 100]);
        assert_eq!(OffsetIndex::decode(&file).unwrap(), index);
    }

    #[test]
    fn damaged_index_files_are_refused() {
        let file = sample_offset_index().encode().to_vec();
        let mut flipped = file.clone();
        flipped[INDEX_HEADER_BYTES + 3] ^= 1;
        assert_eq!(
            OffsetIndex::decode(&flipped),
            Err(IndexFileError::CrcMismatch)
        );
        assert_eq!(
            OffsetIndex::decode(&file[..file.len() - 1]),
            Err(IndexFileError::Truncated)
        );
        assert_eq!(TimeIndex::decode(&file), Err(IndexFileError::BadHeader));
        assert_eq!(OffsetIndex::decode(&[]), Err(IndexFileError::Truncated));
    }

    #[test]
    fn time_index_keeps_only_growing_timestamps() {
        let mut index = TimeIndex::new();
        index.maybe_push(TimeEntry {
            timestamp: 10,
            relative_offset: 0,
        });
        index.maybe_push(TimeEntry {
            timestamp: 5,
            relative_offset: 3,
        });
        index.maybe_push(TimeEntry {
            timestamp: 20,
            relative_offset: 5,
        });
        index.maybe_push(TimeEntry {
            timestamp: 30,
            relative_offset: 5,
        });
        assert_eq!(index.len(), 2);
        assert_eq!(index.last_below(10), None);
        assert_eq!(index.last_below(11).unwrap().relative_offset, 0);
        assert_eq!(index.last_below(31).unwrap().timestamp, 30);
        assert_eq!(TimeIndex::decode(&index.encode()).unwrap(), index);
    }
}
