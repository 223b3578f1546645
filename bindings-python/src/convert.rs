//! Python values in and out: settings, payloads, partitions, records.

use std::collections::BTreeMap;

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString, PyTuple};
pub use spate_engine::client::arena::CopyArena as Arena;

use crate::errors::config_error;

/// Settings given as keyword arguments (`linger_ms=5`) or with Kafka's dotted names (through
/// `**{"linger.ms": 5}`), as the `(name, value)` strings the client's config reads. Booleans
/// become `true`/`false`, lists and tuples comma-separated values.
pub fn properties(
    py: Python<'_>,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<(String, String)>> {
    let mut properties = Vec::new();
    let Some(config) = config else {
        return Ok(properties);
    };
    for (name, value) in config.iter() {
        let name: String = name.extract()?;
        let dotted = name.replace('_', ".");
        if value.is_none() {
            continue; // An unset setting takes its default, as with kafka-python.
        }
        properties.push((dotted.clone(), property_value(py, &dotted, &value)?));
    }
    Ok(properties)
}

/// One setting's value as text.
pub fn property_value(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(if flag.is_true() { "true" } else { "false" }.to_owned());
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(text.to_cow()?.into_owned());
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = value.extract()?;
        let parts = items
            .iter()
            .map(|item| property_value(py, name, item))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(parts.join(","));
    }
    if let Ok(number) = value.extract::<i64>() {
        return Ok(number.to_string());
    }
    if let Ok(number) = value.extract::<f64>() {
        if number.fract() == 0.0 {
            return Ok(format!("{number:.0}"));
        }
        return Ok(number.to_string());
    }
    Err(config_error(
        py,
        format!(
            "{name} takes a string, number, boolean or list, not {}",
            value.get_type().name()?
        ),
        Some(name),
    ))
}

/// `bootstrap_servers` as given: `"host:port,host:port"` or a list of them.
pub fn servers(py: Python<'_>, servers: &Bound<'_, PyAny>) -> PyResult<String> {
    property_value(py, "bootstrap.servers", servers)
}

/// A key, value or header value: bytes-like, `str` (encoded as UTF-8) or `None`, copied into
/// `arena`.
pub fn payload(
    arena: &Arena,
    what: &str,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Bytes>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.is_none() {
        return Ok(None);
    }
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok(Some(arena.copy(bytes.as_bytes())));
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(Some(arena.copy(text.to_cow()?.as_bytes())));
    }
    if let Ok(array) = value.cast::<PyByteArray>() {
        return Ok(Some(arena.copy(&array.to_vec())));
    }
    if value.is_instance_of::<PyMemoryView>() {
        let bytes = value.call_method0("tobytes")?;
        let bytes = bytes.cast::<PyBytes>()?;
        return Ok(Some(arena.copy(bytes.as_bytes())));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be bytes, bytearray, memoryview, str or None, not {}",
        value.get_type().name()?
    )))
}

/// Headers as a list of `(name, value)` pairs or a dict, values copied into `arena`.
pub fn headers(
    arena: &Arena,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<(String, Option<Bytes>)>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    if value.is_none() {
        return Ok(Vec::new());
    }
    let pairs: Vec<(String, Bound<'_, PyAny>)> = if let Ok(dict) = value.cast::<PyDict>() {
        dict.iter()
            .map(|(name, value)| Ok((name.extract::<String>()?, value)))
            .collect::<PyResult<_>>()?
    } else {
        value.extract().map_err(|_| {
            PyTypeError::new_err("headers must be a list of (str, bytes) pairs or a dict")
        })?
    };
    pairs
        .into_iter()
        .map(|(name, value)| Ok((name, payload(arena, "a header value", Some(&value))?)))
        .collect()
}

/// A `(topic, partition)` pair (a `TopicPartition` or any 2-tuple).
pub fn topic_partition(value: &Bound<'_, PyAny>) -> PyResult<(String, i32)> {
    value.extract::<(String, i32)>().map_err(|_| {
        PyTypeError::new_err("a partition is a (topic, partition) pair such as TopicPartition")
    })
}

/// Partitions from any iterable of pairs.
pub fn topic_partitions(values: &Bound<'_, PyAny>) -> PyResult<Vec<(String, i32)>> {
    values
        .try_iter()?
        .map(|value| topic_partition(&value?))
        .collect()
}

/// `{(topic, partition): int}` from a dict keyed by pairs.
pub fn partition_map(values: &Bound<'_, PyAny>) -> PyResult<BTreeMap<(String, i32), i64>> {
    let dict = values
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("expected a dict of {(topic, partition): int}"))?;
    dict.iter()
        .map(|(key, value)| Ok((topic_partition(&key)?, value.extract::<i64>()?)))
        .collect()
}

/// A `spate.TopicPartition`.
pub fn new_topic_partition<'py>(
    py: Python<'py>,
    topic: &str,
    partition: i32,
) -> PyResult<Bound<'py, PyAny>> {
    static CLASS: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
    CLASS
        .import(py, "spate._types", "TopicPartition")?
        .call1((topic, partition))
}

/// A list of `spate.TopicPartition`.
pub fn topic_partition_list<'py>(
    py: Python<'py>,
    partitions: &[(String, i32)],
) -> PyResult<Bound<'py, PyList>> {
    let items = partitions
        .iter()
        .map(|(topic, partition)| new_topic_partition(py, topic, *partition))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// A dict keyed by `spate.TopicPartition`.
pub fn partition_dict<'py, V>(
    py: Python<'py>,
    values: impl IntoIterator<Item = ((String, i32), V)>,
) -> PyResult<Bound<'py, PyDict>>
where
    V: IntoPyObject<'py>,
{
    let dict = PyDict::new(py);
    for ((topic, partition), value) in values {
        dict.set_item(new_topic_partition(py, &topic, partition)?, value)?;
    }
    Ok(dict)
}

/// Seconds (as Python gives timeouts) to a duration; `None`, and timeouts too long for a
/// duration, mean no limit. Raises ValueError for a negative or NaN timeout.
pub fn seconds(timeout: Option<f64>) -> PyResult<Option<std::time::Duration>> {
    match timeout {
        None => Ok(None),
        Some(seconds) if seconds >= 0.0 => Ok(std::time::Duration::try_from_secs_f64(seconds).ok()),
        Some(seconds) => Err(PyValueError::new_err(format!(
            "a timeout is a number of seconds >= 0, not {seconds}"
        ))),
    }
}
