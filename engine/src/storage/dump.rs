//! Inspection of a partition directory, as `spate log dump` prints it (like Kafka's
//! DumpLogSegments): every batch of every segment with its CRC status, and whether the index
//! files agree with the log. Read-only: nothing is repaired.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::backend::{read_whole_file, OpenMode, Storage, StorageFile};
use super::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use super::checkpoint::{Checkpoint, CHECKPOINT_FILE_NAME};
use super::error::{StorageError, StorageResult};
use super::index::{OffsetIndex, TimeIndex};
use super::segment::{parse_file_name, SegmentPaths, LOG_SUFFIX};

/// One batch as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDump {
    /// Byte position in the segment.
    pub position: u64,
    /// The header.
    pub header: BatchHeader,
    /// `None` when the CRC and length check out, else what is wrong.
    pub problem: Option<String>,
}

/// What the index files say about the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexStatus {
    /// The file is absent.
    Missing,
    /// The file does not decode (header or CRC).
    Damaged(String),
    /// Entries, and the ones that do not match the log.
    Checked {
        /// Number of entries.
        entries: usize,
        /// Entries that point at no batch start, or at the wrong offset.
        mismatches: Vec<String>,
    },
}

/// One segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDump {
    /// The `.log` file.
    pub path: PathBuf,
    /// Base offset from the file name.
    pub base_offset: i64,
    /// File size.
    pub size_bytes: u64,
    /// Batches in order.
    pub batches: Vec<BatchDump>,
    /// Why the walk stopped before the end of the file, if it did.
    pub stopped_early: Option<(u64, String)>,
    /// The offset index.
    pub offset_index: IndexStatus,
    /// The time index.
    pub time_index: IndexStatus,
}

/// A whole partition directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDump {
    /// The directory.
    pub dir: PathBuf,
    /// The checkpoint, if present and intact.
    pub checkpoint: Option<Checkpoint>,
    /// Segments in offset order.
    pub segments: Vec<SegmentDump>,
}

impl PartitionDump {
    /// Whether every batch checks out and every index agrees with the log.
    pub fn is_healthy(&self) -> bool {
        self.segments.iter().all(|segment| {
            segment.stopped_early.is_none()
                && segment.batches.iter().all(|batch| batch.problem.is_none())
                && [&segment.offset_index, &segment.time_index].iter().all(|status| {
                    matches!(status, IndexStatus::Checked { mismatches, .. } if mismatches.is_empty())
                })
        })
    }
}

/// Reads and checks every segment of the partition in `dir`.
///
/// # Errors
/// An I/O error reading the directory or a file.
pub async fn dump_partition<S: Storage>(storage: &S, dir: &Path) -> StorageResult<PartitionDump> {
    let io = |context: String| move |source| StorageError::io(context, source);
    let names = storage
        .list(dir)
        .await
        .map_err(io(format!("listing {}", dir.display())))?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE_NAME);
    let checkpoint = match read_whole_file(storage, &checkpoint_path).await {
        Ok(bytes) => Checkpoint::decode(&bytes),
        Err(_) => None,
    };
    let mut segments = Vec::new();
    for base_offset in names
        .iter()
        .filter_map(|name| parse_file_name(name, LOG_SUFFIX))
    {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = storage
            .open(&paths.log, OpenMode::Existing)
            .await
            .map_err(io(format!("opening {}", paths.log.display())))?;
        let mut batches = Vec::new();
        let mut position = 0;
        let mut stopped_early = None;
        while position < file.len() {
            let header_bytes = file
                .read_at(position, BATCH_HEADER_BYTES)
                .await
                .map_err(io(format!("reading {}", paths.log.display())))?;
            if header_bytes.iter().all(|&byte| byte == 0) {
                // Direct-I/O padding left by a crash: recovery cuts it.
                break;
            }
            let header = match BatchHeader::parse(&header_bytes) {
                Ok(header) if header.batch_length >= (BATCH_HEADER_BYTES - 12) as i32 => header,
                Ok(header) => {
                    stopped_early = Some((
                        position,
                        format!("invalid batch length {}", header.batch_length),
                    ));
                    break;
                }
                Err(error) => {
                    stopped_early = Some((position, error.to_string()));
                    break;
                }
            };
            let size = header.size_bytes();
            let bytes = file
                .read_at(position, size)
                .await
                .map_err(io(format!("reading {}", paths.log.display())))?;
            let problem = batch::validate_stored(&bytes)
                .err()
                .map(|error| error.to_string());
            let stop = bytes.len() < size;
            batches.push(BatchDump {
                position,
                header,
                problem,
            });
            if stop {
                stopped_early = Some((position, "batch runs past the end of the file".into()));
                break;
            }
            position += size as u64;
        }
        let offset_index = check_offset_index(storage, &paths, base_offset, &batches).await;
        let time_index = check_time_index(storage, &paths, base_offset, &batches).await;
        segments.push(SegmentDump {
            path: paths.log.clone(),
            base_offset,
            size_bytes: file.len(),
            batches,
            stopped_early,
            offset_index,
            time_index,
        });
        file.close()
            .await
            .map_err(io(format!("closing {}", paths.log.display())))?;
    }
    Ok(PartitionDump {
        dir: dir.to_path_buf(),
        checkpoint,
        segments,
    })
}

async fn check_offset_index<S: Storage>(
    storage: &S,
    paths: &SegmentPaths,
    base_offset: i64,
    batches: &[BatchDump],
) -> IndexStatus {
    let Ok(bytes) = read_whole_file(storage, &paths.index).await else {
        return IndexStatus::Missing;
    };
    let index = match OffsetIndex::decode(&bytes) {
        Ok(index) => index,
        Err(error) => return IndexStatus::Damaged(error.to_string()),
    };
    let by_position: BTreeMap<u64, i64> = batches
        .iter()
        .map(|batch| (batch.position, batch.header.base_offset))
        .collect();
    let mut mismatches = Vec::new();
    for entry in index.entries() {
        let expected = base_offset + i64::from(entry.relative_offset);
        match by_position.get(&u64::from(entry.position)) {
            Some(&found) if found == expected => {}
            Some(&found) => mismatches.push(format!(
                "entry for offset {expected} points at position {} which holds offset {found}",
                entry.position
            )),
            None => mismatches.push(format!(
                "entry for offset {expected} points at position {} which is no batch start",
                entry.position
            )),
        }
    }
    IndexStatus::Checked {
        entries: index.len(),
        mismatches,
    }
}

async fn check_time_index<S: Storage>(
    storage: &S,
    paths: &SegmentPaths,
    base_offset: i64,
    batches: &[BatchDump],
) -> IndexStatus {
    let Ok(bytes) = read_whole_file(storage, &paths.time_index).await else {
        return IndexStatus::Missing;
    };
    let index = match TimeIndex::decode(&bytes) {
        Ok(index) => index,
        Err(error) => return IndexStatus::Damaged(error.to_string()),
    };
    // Running max timestamp at each batch base offset.
    let mut running_max = -1;
    let mut max_at: BTreeMap<i64, i64> = BTreeMap::new();
    for batch in batches {
        running_max = running_max.max(batch.header.max_timestamp);
        max_at.insert(batch.header.base_offset, running_max);
    }
    let mut mismatches = Vec::new();
    for entry in index.entries() {
        let offset = base_offset + i64::from(entry.relative_offset);
        match max_at.get(&offset) {
            Some(&max) if entry.timestamp <= max => {}
            Some(&max) => mismatches.push(format!(
                "entry ({}, offset {offset}) is newer than any record up to there ({max})",
                entry.timestamp
            )),
            None => mismatches.push(format!("entry for offset {offset} names no batch start")),
        }
    }
    IndexStatus::Checked {
        entries: index.len(),
        mismatches,
    }
}

impl fmt::Display for IndexStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexStatus::Missing => f.write_str("missing"),
            IndexStatus::Damaged(reason) => write!(f, "damaged ({reason})"),
            IndexStatus::Checked {
                entries,
                mismatches,
            } if mismatches.is_empty() => {
                write!(f, "{entries} entries, consistent")
            }
            IndexStatus::Checked {
                entries,
                mismatches,
            } => {
                write!(f, "{entries} entries, {} inconsistent", mismatches.len())?;
                for mismatch in mismatches {
                    write!(f, "\n    {mismatch}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for PartitionDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Partition {}", self.dir.display())?;
        match &self.checkpoint {
            Some(checkpoint) => writeln!(
                f,
                "checkpoint: recovery point {}, log start offset {}",
                checkpoint.recovery_point, checkpoint.log_start_offset
            )?,
            None => writeln!(f, "checkpoint: missing or damaged")?,
        }
        for segment in &self.segments {
            writeln!(
                f,
                "\nSegment {} (base offset {}, {} bytes, {} batches)",
                segment.path.display(),
                segment.base_offset,
                segment.size_bytes,
                segment.batches.len()
            )?;
            for batch in &segment.batches {
                let header = &batch.header;
                let codec = header
                    .codec()
                    .map_or_else(|error| error.to_string(), |codec| codec.to_string());
                writeln!(
                    f,
                    "baseOffset: {} lastOffset: {} count: {} position: {} size: {} magic: {} \
                     compresscodec: {} baseTimestamp: {} maxTimestamp: {} timestampType: {:?} \
                     producerId: {} producerEpoch: {} baseSequence: {} isTransactional: {} \
                     isControl: {} partitionLeaderEpoch: {} crc: {:#010x} {}",
                    header.base_offset,
                    header.last_offset(),
                    header.records_count,
                    batch.position,
                    header.size_bytes(),
                    header.magic,
                    codec,
                    header.base_timestamp,
                    header.max_timestamp,
                    header.timestamp_type(),
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                    header.is_transactional(),
                    header.is_control(),
                    header.partition_leader_epoch,
                    header.crc,
                    match &batch.problem {
                        None => "ok".to_string(),
                        Some(problem) => format!("BAD ({problem})"),
                    }
                )?;
            }
            if let Some((position, reason)) = &segment.stopped_early {
                writeln!(f, "stopped at position {position}: {reason}")?;
            }
            writeln!(f, "offset index: {}", segment.offset_index)?;
            writeln!(f, "time index: {}", segment.time_index)?;
        }
        write!(
            f,
            "\n{}",
            if self.is_healthy() {
                "healthy"
            } else {
                "PROBLEMS FOUND"
            }
        )
    }
}
