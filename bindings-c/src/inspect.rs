//! Partition inspection: what `spate log dump` reports.

use std::ffi::{c_char, CString};
use std::path::Path;

use spate_engine::storage::backend::StdStorage;
use spate_engine::storage::dump::{dump_partition, PartitionDump};

use crate::status::{guard_status, path_argument, set_last_error, spate_status};

/// A summary of a partition directory, filled by [`spate_log_inspect`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct spate_log_summary {
    /// Number of segment files.
    pub segments: u64,
    /// Number of record batches in all segments.
    pub batches: u64,
    /// Offset of the first batch, or -1 when the log is empty.
    pub first_offset: i64,
    /// Offset after the last batch, or -1 when the log is empty.
    pub next_offset: i64,
    /// Bytes in all segment files.
    pub size_bytes: u64,
    /// 1 when every batch passes its CRC and every index agrees with the log, else 0.
    pub healthy: u8,
}

fn dump(dir: &Path) -> Result<PartitionDump, spate_status> {
    if !dir.is_dir() {
        set_last_error(format!("{} is not a directory", dir.display()));
        return Err(spate_status::Io);
    }
    futures_lite::future::block_on(dump_partition(&StdStorage, dir)).map_err(|error| {
        set_last_error(error.to_string());
        spate_status::Io
    })
}

/// Checks the partition directory `dir` (read-only) and fills `summary`.
///
/// Returns SPATE_STATUS_OK when the directory could be read, whether or not it is healthy
/// (see `summary->healthy`); SPATE_STATUS_INVALID_ARGUMENT for NULL arguments;
/// SPATE_STATUS_IO when the directory cannot be read.
///
/// # Safety
/// `dir` is a NUL-terminated string; `summary` points to writable memory for one
/// `spate_log_summary`.
#[no_mangle]
pub unsafe extern "C" fn spate_log_inspect(
    dir: *const c_char,
    summary: *mut spate_log_summary,
) -> spate_status {
    guard_status(|| {
        // SAFETY: forwarded from the caller's contract.
        let dir = match unsafe { path_argument(dir, "dir") } {
            Ok(dir) => dir,
            Err(status) => return status,
        };
        if summary.is_null() {
            set_last_error("summary is NULL");
            return spate_status::InvalidArgument;
        }
        let dump = match dump(dir) {
            Ok(dump) => dump,
            Err(status) => return status,
        };
        let batches = dump.segments.iter().flat_map(|segment| &segment.batches);
        let first_offset = batches
            .clone()
            .next()
            .map_or(-1, |batch| batch.header.base_offset);
        let next_offset = batches
            .clone()
            .last()
            .map_or(-1, |batch| batch.header.next_offset());
        let result = spate_log_summary {
            segments: dump.segments.len() as u64,
            batches: batches.count() as u64,
            first_offset,
            next_offset,
            size_bytes: dump.segments.iter().map(|segment| segment.size_bytes).sum(),
            healthy: u8::from(dump.is_healthy()),
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { summary.write(result) };
        spate_status::Ok
    })
}

/// Writes a human-readable report of every batch in the partition directory `dir` (like
/// `spate log dump`) to `*report`, a string the caller frees with spate_string_free().
///
/// # Safety
/// `dir` is a NUL-terminated string; `report` points to writable memory for one pointer.
#[no_mangle]
pub unsafe extern "C" fn spate_log_dump(
    dir: *const c_char,
    report: *mut *mut c_char,
) -> spate_status {
    guard_status(|| {
        // SAFETY: forwarded from the caller's contract.
        let dir = match unsafe { path_argument(dir, "dir") } {
            Ok(dir) => dir,
            Err(status) => return status,
        };
        if report.is_null() {
            set_last_error("report is NULL");
            return spate_status::InvalidArgument;
        }
        let dump = match dump(dir) {
            Ok(dump) => dump,
            Err(status) => return status,
        };
        let text = CString::new(dump.to_string().replace('\0', " ")).expect("NULs replaced");
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { report.write(text.into_raw()) };
        spate_status::Ok
    })
}
