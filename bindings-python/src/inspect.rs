//! Partition inspection: what `spate log dump` reports, as Python values.

use std::path::PathBuf;

use crate::errors::spate_error;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use spate_engine::storage::backend::StdStorage;
use spate_engine::storage::dump::{dump_partition, PartitionDump};

fn load(py: Python<'_>, dir: PathBuf) -> PyResult<PartitionDump> {
    if !dir.is_dir() {
        return Err(spate_error(
            py,
            format!("{} is not a directory", dir.display()),
        ));
    }
    py.detach(|| futures_lite::future::block_on(dump_partition(&StdStorage, &dir)))
        .map_err(|error| spate_error(py, error.to_string()))
}

/// Inspects a partition directory (read-only): returns a dict with `segments`, `healthy` and
/// `batches`, a list of dicts with each batch's offsets, size, codec, timestamps and CRC status.
#[pyfunction]
pub fn inspect_partition<'py>(py: Python<'py>, dir: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let dump = load(py, dir)?;
    let result = PyDict::new(py);
    result.set_item("segments", dump.segments.len())?;
    result.set_item("healthy", dump.is_healthy())?;
    let mut batches = Vec::new();
    for segment in &dump.segments {
        for batch in &segment.batches {
            let header = &batch.header;
            let item = PyDict::new(py);
            item.set_item("segment_base_offset", segment.base_offset)?;
            item.set_item("base_offset", header.base_offset)?;
            item.set_item("last_offset", header.last_offset())?;
            item.set_item("records", header.records_count)?;
            item.set_item("position", batch.position)?;
            item.set_item("size_bytes", header.size_bytes())?;
            item.set_item(
                "codec",
                header
                    .codec()
                    .map_or_else(|_| "unknown".to_string(), |codec| codec.to_string()),
            )?;
            item.set_item("max_timestamp_ms", header.max_timestamp)?;
            item.set_item("crc_ok", batch.problem.is_none())?;
            batches.push(item);
        }
    }
    result.set_item("batches", batches)?;
    Ok(result)
}

/// The report `spate log dump` prints for a partition directory.
#[pyfunction]
pub fn dump_partition_text(py: Python<'_>, dir: PathBuf) -> PyResult<String> {
    Ok(load(py, dir)?.to_string())
}
