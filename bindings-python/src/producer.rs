//! `spate.Producer`, its futures and delivery reports.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use spate_engine::client::config::ProducerConfig;
use spate_engine::client::producer::{
    DeliveryResult, Producer as ClientProducer, ProducerRecord, RecordMetadata as Metadata,
};
use spate_engine::client::transaction::GroupMetadata;

use crate::convert::{payload, properties, seconds, servers, Arena};
use crate::errors::{delivery_error, state_error, timeout_error, IntoPyResult};
use crate::sync::lock;
use crate::wait::interruptibly;

/// Where a record was written: its topic, partition, offset and timestamp.
#[pyclass(module = "spate._native", frozen, eq)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    #[pyo3(get)]
    topic: String,
    /// The partition.
    #[pyo3(get)]
    partition: i32,
    /// The record's offset (-1 with acks=0, which gets no answer).
    #[pyo3(get)]
    offset: i64,
    /// The record's timestamp in ms: its create time, or the broker's for LogAppendTime topics.
    #[pyo3(get)]
    timestamp_ms: i64,
}

#[pymethods]
impl RecordMetadata {
    fn __repr__(&self) -> String {
        format!(
            "RecordMetadata(topic={:?}, partition={}, offset={}, timestamp_ms={})",
            self.topic, self.partition, self.offset, self.timestamp_ms
        )
    }
}

impl From<Metadata> for RecordMetadata {
    fn from(metadata: Metadata) -> RecordMetadata {
        RecordMetadata {
            topic: metadata.topic,
            partition: metadata.partition,
            offset: metadata.offset,
            timestamp_ms: metadata.timestamp_ms,
        }
    }
}

/// A consumer's group, member and generation, for `Producer.send_offsets_to_transaction`.
#[pyclass(module = "spate._native", frozen)]
#[derive(Debug, Clone)]
pub struct ConsumerGroupMetadata {
    pub(crate) inner: GroupMetadata,
}

#[pymethods]
impl ConsumerGroupMetadata {
    /// The group id.
    #[getter]
    fn group_id(&self) -> &str {
        &self.inner.group_id
    }

    /// The consumer's generation (-1 without a membership).
    #[getter]
    fn generation_id(&self) -> i32 {
        self.inner.generation_id
    }

    /// Its member id (empty without a membership).
    #[getter]
    fn member_id(&self) -> &str {
        &self.inner.member_id
    }

    fn __repr__(&self) -> String {
        format!(
            "ConsumerGroupMetadata(group_id={:?}, generation_id={}, member_id={:?})",
            self.inner.group_id, self.inner.generation_id, self.inner.member_id
        )
    }
}

/// A delivery result, as a Python value or exception.
fn outcome(py: Python<'_>, result: &DeliveryResult) -> PyResult<RecordMetadata> {
    match result {
        Ok(metadata) => Ok(RecordMetadata::from(metadata.clone())),
        Err(error) => Err(delivery_error(py, error)),
    }
}

#[derive(Default)]
struct Slot {
    result: Option<DeliveryResult>,
    /// `add_done_callback` functions, with the future to hand them.
    callbacks: Vec<Py<PyAny>>,
    this: Option<Py<DeliveryFuture>>,
}

type SharedSlot = Arc<(Mutex<Slot>, Condvar)>;

/// The result of `Producer.send`, to wait for: `result()` gives the `RecordMetadata` or
/// raises why the record was not delivered. Safe to use from any thread.
#[pyclass(module = "spate._native", frozen)]
pub struct DeliveryFuture {
    slot: SharedSlot,
}

#[pymethods]
impl DeliveryFuture {
    /// Whether the result is known.
    fn done(&self, py: Python<'_>) -> bool {
        py.detach(|| lock(&self.slot.0).result.is_some())
    }

    /// Where the record was written, waiting up to `timeout` seconds (forever for None).
    /// Raises the error that kept it from being delivered, or spate.TimeoutError.
    #[pyo3(signature = (timeout=None))]
    fn result(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<RecordMetadata> {
        let result = self.wait(py, timeout)?;
        outcome(py, &result)
    }

    /// The error that kept the record from being delivered, or None once it was; waits like
    /// `result`.
    #[pyo3(signature = (timeout=None))]
    fn exception(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PyErr>> {
        let result = self.wait(py, timeout)?;
        Ok(outcome(py, &result).err())
    }

    /// Calls `callback(future)` once the result is known: at once (on this thread) if it is,
    /// else on the producer's network thread, as `concurrent.futures` does. Exceptions it
    /// raises are reported as unraisable.
    fn add_done_callback(slf: &Bound<'_, Self>, callback: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let done = {
            let mut slot = lock(&this.slot.0);
            if slot.result.is_none() {
                slot.callbacks.push(callback.clone_ref(py));
                slot.this = Some(slf.clone().unbind());
                false
            } else {
                true
            }
        };
        if done {
            callback.call1(py, (slf,))?;
        }
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = py.detach(|| match &lock(&self.slot.0).result {
            None => "pending".to_owned(),
            Some(Ok(metadata)) => format!(
                "delivered to {}-{} at offset {}",
                metadata.topic, metadata.partition, metadata.offset
            ),
            Some(Err(error)) => format!("failed: {error}"),
        });
        format!("<DeliveryFuture {state}>")
    }
}

impl DeliveryFuture {
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<DeliveryResult> {
        let timeout = seconds(timeout)?;
        let slot = &self.slot;
        let result = interruptibly(py, timeout, |slice| {
            let (state, ready) = &**slot;
            let mut state = lock(state);
            if state.result.is_none() && !slice.is_zero() {
                state = ready
                    .wait_timeout(state, slice)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.result.clone()
        })?;
        result.ok_or_else(|| timeout_error(py, "the record's delivery is not known yet"))
    }
}

/// An `on_delivery` callback waiting to be served, with its record's result.
struct Report {
    callback: Py<PyAny>,
    result: DeliveryResult,
}

type Reports = Arc<Mutex<VecDeque<Report>>>;

/// Records the result in the future and queues the `on_delivery` report; runs on the
/// producer's network thread.
fn complete(slot: &SharedSlot, report: Option<(Py<PyAny>, Reports)>, result: DeliveryResult) {
    if let Some((callback, reports)) = report {
        lock(&reports).push_back(Report {
            callback,
            result: result.clone(),
        });
    }
    let (callbacks, this) = {
        let mut state = lock(&slot.0);
        state.result = Some(result);
        (std::mem::take(&mut state.callbacks), state.this.take())
    };
    slot.1.notify_all();
    if let Some(this) = this {
        Python::attach(|py| {
            for callback in callbacks {
                if let Err(error) = callback.call1(py, (this.clone_ref(py),)) {
                    error.write_unraisable(py, Some(callback.bind(py)));
                }
            }
        });
    }
}

/// A Kafka producer.
///
/// `Producer(bootstrap_servers, **config)` takes Kafka's producer settings by their names,
/// with underscores or dots (`linger_ms=5`, `**{"compression.type": "zstd"}`). Records are
/// batched per partition and sent by a background thread; `send` returns a `DeliveryFuture`.
/// `on_delivery` callbacks run on the application's thread, inside `send`, `poll`, `flush`
/// and `close`, as librdkafka's do. Safe to share between threads.
#[pyclass(module = "spate._native", frozen)]
pub struct Producer {
    inner: Mutex<Option<Arc<ClientProducer>>>,
    reports: Reports,
    arena: Arena,
}

#[pymethods]
impl Producer {
    #[new]
    #[pyo3(signature = (bootstrap_servers, **config))]
    fn new(
        py: Python<'_>,
        bootstrap_servers: &Bound<'_, PyAny>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Producer> {
        let mut settings = properties(py, config)?;
        settings.push(("bootstrap.servers".into(), servers(py, bootstrap_servers)?));
        let config = ProducerConfig::from_properties(settings).or_raise(py)?;
        let producer = py.detach(|| ClientProducer::new(config)).or_raise(py)?;
        Ok(Producer {
            inner: Mutex::new(Some(Arc::new(producer))),
            reports: Arc::default(),
            arena: Arena::default(),
        })
    }

    /// Queues a record for `topic` and returns its `DeliveryFuture`.
    ///
    /// `value` and `key` are bytes (str is encoded as UTF-8) or None; `headers` a list of
    /// `(name, value)` pairs or a dict; `partition` None lets the partitioner choose (murmur2
    /// of the key, as the Java client; sticky for keyless records); `timestamp_ms` None means
    /// now. `on_delivery(error, metadata)` is called with one of them None.
    ///
    /// Raises TopicNotFound for a missing topic (when the broker does not create it),
    /// MessageTooLarge for a record over max.request.size, StateError once closed.
    #[pyo3(signature = (topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None, on_delivery=None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        topic: String,
        value: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
        partition: Option<i32>,
        timestamp_ms: Option<i64>,
        on_delivery: Option<Py<PyAny>>,
    ) -> PyResult<DeliveryFuture> {
        self.serve_reports(py)?;
        let record = ProducerRecord {
            topic,
            partition,
            key: payload(&self.arena, "key", key)?,
            value: payload(&self.arena, "value", value)?,
            headers: crate::convert::headers(&self.arena, headers)?,
            timestamp_ms,
        };
        let producer = self.producer(py)?;
        let slot = SharedSlot::default();
        let report = on_delivery.map(|callback| (callback, Arc::clone(&self.reports)));
        let completed = Arc::clone(&slot);
        // The producer handle is dropped with the GIL released: if another thread closed the
        // producer meanwhile, this is the last handle, and dropping it waits for the network
        // thread, which may need the GIL.
        py.detach(move || {
            producer.send_with_callback(record, move |result| {
                complete(&completed, report, result);
            })
        })
        .or_raise(py)?;
        Ok(DeliveryFuture { slot })
    }

    /// Serves `on_delivery` callbacks of records whose results are known, waiting up to
    /// `timeout` seconds for one when none is; returns how many ran.
    #[pyo3(signature = (timeout=0.0))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<usize> {
        let timeout = seconds(timeout)?;
        let reports = &self.reports;
        interruptibly(py, timeout, |slice| {
            let step = Duration::from_millis(5).min(slice);
            let deadline = std::time::Instant::now() + slice;
            loop {
                if !lock(reports).is_empty() {
                    return Some(());
                }
                if std::time::Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(step);
            }
        })?;
        self.serve_reports(py)
    }

    /// Sends everything queued and waits until every record is delivered or failed, up to
    /// `timeout` seconds (forever for None); then serves `on_delivery` callbacks. Raises
    /// spate.TimeoutError when records are still in flight at the timeout.
    #[pyo3(signature = (timeout=None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let producer = self.producer(py)?;
        let flushed = flush(py, &producer, timeout);
        py.detach(move || drop(producer));
        flushed?;
        self.serve_reports(py).map(drop)
    }

    /// Records sent or queued whose result is not known yet.
    fn __len__(&self, py: Python<'_>) -> usize {
        let producer = lock(&self.inner).clone();
        producer.map_or(0, |producer| py.detach(move || producer.outstanding()))
    }

    /// Flushes (up to `timeout` seconds, forever for None), serves the last callbacks and
    /// stops the background thread. Closing twice is harmless.
    #[pyo3(signature = (timeout=None))]
    fn close(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let Some(producer) = lock(&self.inner).clone() else {
            return Ok(());
        };
        let flushed = flush(py, &producer, timeout);
        py.detach(move || drop(producer));
        if let Some(producer) = lock(&self.inner).take() {
            if flushed.is_ok() {
                py.detach(move || drop(producer));
            } else {
                // Records still in flight end by delivery.timeout.ms at the latest; let them
                // end on a thread of their own rather than past the caller's timeout.
                std::thread::spawn(move || drop(producer));
            }
        }
        self.serve_reports(py)?;
        flushed
    }

    /// Registers the producer's `transactional_id` with its transaction coordinator: fences
    /// earlier producers of the id and aborts their open transaction. Call once, before the
    /// first transaction.
    fn init_transactions(&self, py: Python<'_>) -> PyResult<()> {
        let producer = self.producer(py)?;
        py.detach(move || producer.init_transactions()).or_raise(py)
    }

    /// Opens a transaction: the records sent until its commit or abort belong to it.
    fn begin_transaction(&self, py: Python<'_>) -> PyResult<()> {
        let producer = self.producer(py)?;
        py.detach(move || producer.begin_transaction()).or_raise(py)
    }

    /// Commits `offsets` (`{(topic, partition): next offset to read}`) of the consumer group
    /// `group_metadata` (from `Consumer.group_metadata()`) inside the open transaction: they
    /// count once the transaction commits, never if it aborts.
    fn send_offsets_to_transaction(
        &self,
        py: Python<'_>,
        offsets: &Bound<'_, PyAny>,
        group_metadata: &ConsumerGroupMetadata,
    ) -> PyResult<()> {
        let offsets: Vec<(String, i32, i64)> = crate::convert::partition_map(offsets)?
            .into_iter()
            .map(|((topic, partition), offset)| (topic, partition, offset))
            .collect();
        let group = group_metadata.inner.clone();
        let producer = self.producer(py)?;
        py.detach(move || producer.send_offsets_to_transaction(&offsets, &group))
            .or_raise(py)
    }

    /// Sends the transaction's records, waits for them and commits it. Raises StateError when
    /// one of its records failed (abort it then) or a newer producer fenced this one.
    fn commit_transaction(&self, py: Python<'_>) -> PyResult<()> {
        let producer = self.producer(py)?;
        let committed = py
            .detach(move || producer.commit_transaction())
            .or_raise(py);
        self.serve_reports(py)?;
        committed
    }

    /// Waits for the transaction's records to be answered, then aborts it: read_committed
    /// consumers never see them, and its offsets are dropped.
    fn abort_transaction(&self, py: Python<'_>) -> PyResult<()> {
        let producer = self.producer(py)?;
        let aborted = py.detach(move || producer.abort_transaction()).or_raise(py);
        self.serve_reports(py)?;
        aborted
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py, None)?;
        Ok(false)
    }
}

fn flush(py: Python<'_>, producer: &Arc<ClientProducer>, timeout: Option<f64>) -> PyResult<()> {
    let timeout = seconds(timeout)?;
    let done = interruptibly(py, timeout, |slice| {
        (producer.flush_within(slice) == 0).then_some(())
    })?;
    match done {
        Some(()) => Ok(()),
        None => {
            let left = py.detach(|| producer.outstanding());
            Err(timeout_error(
                py,
                format!("{left} records still without a delivery result after the timeout"),
            ))
        }
    }
}

impl Drop for Producer {
    /// A producer collected without `close`: its records are flushed and its thread stopped
    /// on a thread of their own, since that waits for the network thread, which may need the
    /// GIL held here.
    fn drop(&mut self) {
        if let Some(producer) = lock(&self.inner).take() {
            std::thread::spawn(move || drop(producer));
        }
    }
}

impl Producer {
    fn producer(&self, py: Python<'_>) -> PyResult<Arc<ClientProducer>> {
        lock(&self.inner)
            .clone()
            .ok_or_else(|| state_error(py, "the producer is closed"))
    }

    /// Runs the queued `on_delivery` callbacks; the first exception one raises stops the
    /// rest (they run at the next call) and is raised.
    fn serve_reports(&self, py: Python<'_>) -> PyResult<usize> {
        let mut served = 0;
        loop {
            let Some(report) = lock(&self.reports).pop_front() else {
                return Ok(served);
            };
            let (error, metadata) = match outcome(py, &report.result) {
                Ok(metadata) => (None, Some(metadata)),
                Err(error) => (Some(error), None),
            };
            report.callback.call1(py, (error, metadata))?;
            served += 1;
        }
    }
}
