//! Segment file names and the metadata the log keeps per segment.

use std::path::{Path, PathBuf};

/// Suffix of segment data files.
pub const LOG_SUFFIX: &str = ".log";
/// Suffix of offset index files.
pub const INDEX_SUFFIX: &str = ".index";
/// Suffix of time index files.
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// Paths of a segment's three files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPaths {
    /// `<base offset, 20 digits>.log`
    pub log: PathBuf,
    /// `<base offset, 20 digits>.index`
    pub index: PathBuf,
    /// `<base offset, 20 digits>.timeindex`
    pub time_index: PathBuf,
}

impl SegmentPaths {
    /// Paths for the segment starting at `base_offset` in `dir`.
    pub fn new(dir: &Path, base_offset: i64) -> SegmentPaths {
        debug_assert!(base_offset >= 0);
        let stem = format!("{base_offset:020}");
        SegmentPaths {
            log: dir.join(format!("{stem}{LOG_SUFFIX}")),
            index: dir.join(format!("{stem}{INDEX_SUFFIX}")),
            time_index: dir.join(format!("{stem}{TIME_INDEX_SUFFIX}")),
        }
    }
}

/// Parses `<20 digits><suffix>` into the base offset.
pub fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What the log remembers of every segment, active or closed: a few numbers, no per-record
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Offset of the segment's first batch, and its file name.
    pub base_offset: i64,
    /// Offset after the segment's last batch.
    pub next_offset: i64,
    /// Bytes in the segment file.
    pub size_bytes: u64,
    /// Largest batch max timestamp in the segment, or -1.
    pub max_timestamp: i64,
    /// Base offset of the batch that holds `max_timestamp`.
    pub offset_of_max_timestamp: i64,
    /// Max timestamp of the segment's first batch, or -1 when empty: the age used by
    /// `segment_ms`, which follows the data and so survives restarts.
    pub first_batch_timestamp: i64,
}

impl SegmentMeta {
    /// An empty segment starting at `base_offset`.
    pub fn empty(base_offset: i64) -> SegmentMeta {
        SegmentMeta {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            first_batch_timestamp: -1,
        }
    }

    /// Whether the segment holds no batch.
    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// Records one appended batch.
    pub fn observe_batch(
        &mut self,
        base_offset: i64,
        next_offset: i64,
        max_timestamp: i64,
        size: u64,
    ) {
        assert_eq!(
            base_offset, self.next_offset,
            "offsets in a segment are dense"
        );
        assert!(
            next_offset > base_offset,
            "a batch holds at least one offset"
        );
        if self.is_empty() {
            self.first_batch_timestamp = max_timestamp;
        }
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.offset_of_max_timestamp = base_offset;
        }
        self.next_offset = next_offset;
        self.size_bytes += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_twenty_digits() {
        let paths = SegmentPaths::new(Path::new("/p"), 42);
        assert_eq!(paths.log, Path::new("/p/00000000000000000042.log"));
        assert_eq!(
            parse_file_name("00000000000000000042.log", LOG_SUFFIX),
            Some(42)
        );
        assert_eq!(parse_file_name("42.log", LOG_SUFFIX), None);
        assert_eq!(
            parse_file_name("0000000000000000004x.log", LOG_SUFFIX),
            None
        );
    }
}
