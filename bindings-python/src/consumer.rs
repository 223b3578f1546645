//! `spate.Consumer` and `spate.Record`.
//!
//! The client consumer is used by one thread at a time: every call takes its lock after
//! releasing the GIL (so a thread waiting for it never holds the GIL the holder may need). A
//! rebalance callback runs inside `poll` (or `subscribe`, `close`) on the polling thread while
//! that call holds the lock; calls it makes on the same consumer reach the client consumer
//! through the frame the polling call left on this thread's stack of [`Frame`]s, as the
//! client's `RebalanceListener` contract allows, instead of waiting for the lock forever.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use spate_engine::client::assignor::TopicPartition;
use spate_engine::client::config::ConsumerConfig;
use spate_engine::client::consumer::{
    Consumer as ClientConsumer, ConsumerRecord, RebalanceListener, StartAt,
};
use spate_engine::client::ClientError;

use crate::convert::{
    partition_dict, partition_map, properties, servers, topic_partition, topic_partition_list,
    topic_partitions,
};
use crate::errors::{client_error, config_error, state_error, IntoPyResult};
use crate::sync::lock;

/// A record read from a partition.
#[pyclass(module = "spate._native", frozen)]
pub struct Record {
    record: ConsumerRecord,
}

#[pymethods]
impl Record {
    /// The topic.
    #[getter]
    fn topic(&self) -> &str {
        &self.record.topic
    }

    /// The partition.
    #[getter]
    fn partition(&self) -> i32 {
        self.record.partition
    }

    /// The offset.
    #[getter]
    fn offset(&self) -> i64 {
        self.record.offset
    }

    /// The timestamp, in ms since the Unix epoch.
    #[getter]
    fn timestamp_ms(&self) -> i64 {
        self.record.timestamp_ms
    }

    /// The key, or None.
    #[getter]
    fn key<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.record.key.as_ref().map(|key| PyBytes::new(py, key))
    }

    /// The value, or None (a tombstone).
    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.record
            .value
            .as_ref()
            .map(|value| PyBytes::new(py, value))
    }

    /// The headers: a list of `(name, value)` pairs, values bytes or None.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pairs = self
            .record
            .headers
            .iter()
            .map(|(name, value)| {
                PyTuple::new(
                    py,
                    [
                        name.into_pyobject(py)?.into_any(),
                        match value {
                            Some(value) => PyBytes::new(py, value).into_any(),
                            None => py.None().into_bound(py),
                        },
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, pairs)
    }

    fn __repr__(&self) -> String {
        let record = &self.record;
        format!(
            "Record(topic={:?}, partition={}, offset={}, timestamp_ms={}, key={}, value={})",
            record.topic,
            record.partition,
            record.offset,
            record.timestamp_ms,
            preview(record.key.as_deref()),
            preview(record.value.as_deref()),
        )
    }
}

fn preview(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "None".into(),
        Some(bytes) if bytes.len() <= 40 => format!("{:?}", String::from_utf8_lossy(bytes)),
        Some(bytes) => format!("<{} bytes>", bytes.len()),
    }
}

/// A consumer call in progress on this thread, for its rebalance callbacks.
struct Frame {
    consumer_id: usize,
    /// The Python consumer, handed to callbacks.
    owner: Py<PyAny>,
    /// The client consumer, while a callback of this call runs.
    inside_callback: Option<*mut ClientConsumer>,
}

thread_local! {
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// The client consumer a rebalance callback running on this thread may use.
struct CallbackConsumer(*mut ClientConsumer);

// SAFETY: only ever used on the thread that made it, while the callback that made it runs
// (the GIL is released around the use, which moves nothing to another thread).
unsafe impl Send for CallbackConsumer {}

/// Calls the Python rebalance callbacks.
struct Listener {
    consumer_id: usize,
    on_assign: Option<Py<PyAny>>,
    on_revoke: Option<Py<PyAny>>,
    on_lost: Option<Py<PyAny>>,
    /// The first exception a callback raised, for the consumer call to raise.
    error: Arc<Mutex<Option<PyErr>>>,
}

impl Listener {
    fn call(
        &self,
        callback: Option<&Py<PyAny>>,
        consumer: &mut ClientConsumer,
        partitions: &[TopicPartition],
    ) {
        let Some(callback) = callback else {
            return;
        };
        Python::attach(|py| {
            let pointer: *mut ClientConsumer = consumer;
            let found = FRAMES.with(|frames| {
                let mut frames = frames.borrow_mut();
                let frame = frames
                    .iter_mut()
                    .rev()
                    .find(|frame| frame.consumer_id == self.consumer_id)?;
                let previous = frame.inside_callback.replace(pointer);
                Some((frame.owner.clone_ref(py), previous))
            });
            // Without a frame the consumer is being dropped: nobody is there to call back.
            let Some((owner, previous)) = found else {
                return;
            };
            // Put back what was there (a callback may run inside another's call) even if the
            // callback unwinds.
            let _restore = RestoreCallback {
                consumer_id: self.consumer_id,
                previous,
            };
            let result = topic_partition_list(py, partitions)
                .and_then(|partitions| callback.call1(py, (owner, partitions)));
            if let Err(error) = result {
                lock(&self.error).get_or_insert(error);
            }
        });
    }
}

/// Restores a frame's callback consumer when a callback ends.
struct RestoreCallback {
    consumer_id: usize,
    previous: Option<*mut ClientConsumer>,
}

impl Drop for RestoreCallback {
    fn drop(&mut self) {
        FRAMES.with(|frames| {
            if let Some(frame) = frames
                .borrow_mut()
                .iter_mut()
                .rev()
                .find(|frame| frame.consumer_id == self.consumer_id)
            {
                frame.inside_callback = self.previous;
            }
        });
    }
}

/// A frame on this thread's stack for the duration of a consumer call, removed however the
/// call ends.
struct FrameGuard;

impl FrameGuard {
    fn push(consumer_id: usize, owner: Py<PyAny>) -> FrameGuard {
        FRAMES.with(|frames| {
            frames.borrow_mut().push(Frame {
                consumer_id,
                owner,
                inside_callback: None,
            });
        });
        FrameGuard
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        let frame = FRAMES.with(|frames| frames.borrow_mut().pop());
        // The owner is a Python reference: dropped here with or without the GIL, pyo3
        // defers the decrement when needed.
        drop(frame);
    }
}

impl RebalanceListener for Listener {
    fn on_partitions_revoked(
        &mut self,
        consumer: &mut ClientConsumer,
        partitions: &[TopicPartition],
    ) {
        self.call(self.on_revoke.as_ref(), consumer, partitions);
    }

    fn on_partitions_assigned(
        &mut self,
        consumer: &mut ClientConsumer,
        partitions: &[TopicPartition],
    ) {
        self.call(self.on_assign.as_ref(), consumer, partitions);
    }

    fn on_partitions_lost(&mut self, consumer: &mut ClientConsumer, partitions: &[TopicPartition]) {
        let callback = self.on_lost.as_ref().or(self.on_revoke.as_ref());
        self.call(callback, consumer, partitions);
    }
}

static NEXT_CONSUMER_ID: AtomicUsize = AtomicUsize::new(1);

/// A Kafka consumer.
///
/// `Consumer(bootstrap_servers, group_id=None, topics=(), **config)` takes Kafka's consumer
/// settings by their names, with underscores or dots (`auto_offset_reset="earliest"`). With a
/// `group_id`, `topics` are subscribed: the group shares their partitions among its members
/// and offsets are committed for it. Without one, every partition of `topics` is assigned.
///
/// `consumer_timeout_ms` (not a Kafka setting; kafka-python's) ends iteration after that long
/// without a record; iteration otherwise waits for records forever. Calls from several threads
/// are serialised (one runs at a time).
#[pyclass(module = "spate._native", frozen)]
pub struct Consumer {
    id: usize,
    inner: Mutex<Option<ClientConsumer>>,
    callback_error: Arc<Mutex<Option<PyErr>>>,
    /// Records a poll had taken when a rebalance callback raised: returned by the next poll
    /// (their positions are past them already, so dropping them would skip them).
    stashed: Mutex<std::collections::VecDeque<ConsumerRecord>>,
    iteration_timeout: Option<Duration>,
}

/// Whether a call may be made from inside one of the consumer's own rebalance callbacks:
/// the client's listener contract allows commits, seeks and reading state, not polling or
/// changing the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InCallback {
    Allowed,
    Refused(&'static str),
}

/// What a consumer call found.
enum Called<R> {
    Done(Result<R, ClientError>),
    Closed,
}

#[pymethods]
impl Consumer {
    #[new]
    #[pyo3(signature = (bootstrap_servers, group_id=None, topics=None, **config))]
    fn new(
        py: Python<'_>,
        bootstrap_servers: &Bound<'_, PyAny>,
        group_id: Option<String>,
        topics: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Consumer> {
        let mut settings = properties(py, config)?;
        let mut iteration_timeout = None;
        settings.retain(|(name, value)| {
            if name == "consumer.timeout.ms" {
                iteration_timeout = Some(value.clone());
                false
            } else {
                true
            }
        });
        let iteration_timeout = match iteration_timeout {
            None => None,
            Some(value) => match value.parse::<u64>() {
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => {
                    return Err(config_error(
                        py,
                        format!("consumer_timeout_ms takes a number of ms, not {value:?}"),
                        Some("consumer_timeout_ms"),
                    ))
                }
            },
        };
        settings.push(("bootstrap.servers".into(), servers(py, bootstrap_servers)?));
        if let Some(group_id) = &group_id {
            settings.push(("group.id".into(), group_id.clone()));
        }
        let topics: Vec<String> = match topics {
            None => Vec::new(),
            Some(topics) if topics.is_instance_of::<pyo3::types::PyString>() => {
                vec![topics.extract()?]
            }
            Some(topics) => topics.extract()?,
        };
        let config = ConsumerConfig::from_properties(settings).or_raise(py)?;
        let mut consumer = py
            .detach(|| -> Result<ClientConsumer, ClientError> {
                let mut consumer = ClientConsumer::new(config)?;
                if topics.is_empty() {
                } else if group_id.is_some() {
                    consumer.subscribe(&topics)?;
                } else {
                    let mut partitions = Vec::new();
                    for topic in &topics {
                        for partition in consumer.partitions_of(topic)? {
                            partitions.push((topic.clone(), partition));
                        }
                    }
                    consumer.assign(&partitions);
                }
                Ok(consumer)
            })
            .or_raise(py)?;
        let id = NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed);
        let callback_error = Arc::new(Mutex::new(None));
        consumer.set_rebalance_listener(Box::new(Listener {
            consumer_id: id,
            on_assign: None,
            on_revoke: None,
            on_lost: None,
            error: Arc::clone(&callback_error),
        }));
        Ok(Consumer {
            id,
            inner: Mutex::new(Some(consumer)),
            callback_error,
            stashed: Mutex::default(),
            iteration_timeout,
        })
    }

    /// Joins the group to share the partitions of `topics` (a list, or one name) with its
    /// other members, replacing any subscription or assignment. Callbacks, each called as
    /// `callback(consumer, partitions)` inside `poll` on the polling thread: `on_assign`
    /// after partitions are given to this consumer, `on_revoke` before they are taken (their
    /// offsets can still be committed), `on_lost` when they were lost without a rebalance
    /// (defaults to `on_revoke`). An exception a callback raises is raised by `poll`.
    #[pyo3(signature = (topics, on_assign=None, on_revoke=None, on_lost=None))]
    fn subscribe(
        slf: &Bound<'_, Self>,
        topics: &Bound<'_, PyAny>,
        on_assign: Option<Py<PyAny>>,
        on_revoke: Option<Py<PyAny>>,
        on_lost: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let topics: Vec<String> = if topics.is_instance_of::<pyo3::types::PyString>() {
            vec![topics.extract()?]
        } else {
            topics.extract()?
        };
        let listener = Listener {
            consumer_id: slf.get().id,
            on_assign,
            on_revoke,
            on_lost,
            error: Arc::clone(&slf.get().callback_error),
        };
        lock(&slf.get().stashed).clear();
        run(slf, InCallback::Refused("subscribe"), move |consumer| {
            consumer.subscribe(&topics)?;
            consumer.set_rebalance_listener(Box::new(listener));
            Ok(())
        })
    }

    /// Leaves the group's subscription (partitions are revoked first).
    fn unsubscribe(slf: &Bound<'_, Self>) -> PyResult<()> {
        lock(&slf.get().stashed).clear();
        run(slf, InCallback::Refused("unsubscribe"), |consumer| {
            consumer.unsubscribe();
            Ok(())
        })
    }

    /// The subscribed topics, sorted.
    fn subscription(slf: &Bound<'_, Self>) -> PyResult<Vec<String>> {
        run(slf, InCallback::Allowed, |consumer| {
            Ok(consumer.subscription())
        })
    }

    /// Reads exactly these partitions (`(topic, partition)` pairs) from now on, ending any
    /// subscription. Partitions kept keep their positions; new ones start at the committed
    /// offset (with a group) or by auto.offset.reset.
    fn assign(slf: &Bound<'_, Self>, partitions: &Bound<'_, PyAny>) -> PyResult<()> {
        let partitions = topic_partitions(partitions)?;
        lock(&slf.get().stashed).clear();
        run(slf, InCallback::Refused("assign"), move |consumer| {
            consumer.assign(&partitions);
            Ok(())
        })
    }

    /// The partitions this consumer reads, as `TopicPartition`s.
    fn assignment<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyList>> {
        let partitions = run(slf, InCallback::Allowed, |consumer| {
            Ok(consumer.assignment())
        })?;
        topic_partition_list(slf.py(), &partitions)
    }

    /// Records, waiting up to `timeout_ms` for some (0: only those already fetched); an empty
    /// list when none arrived. At most `max_records` (default max.poll.records). In a group,
    /// this is also where the consumer joins, rebalances and auto-commits.
    #[pyo3(signature = (timeout_ms=0, max_records=None))]
    fn poll<'py>(
        slf: &Bound<'py, Self>,
        timeout_ms: u64,
        max_records: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let py = slf.py();
        let records = poll_records(slf, Some(Duration::from_millis(timeout_ms)), max_records)?;
        let records = records
            .into_iter()
            .map(|record| Bound::new(py, Record { record }))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, records)
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Record> {
        let timeout = slf.get().iteration_timeout;
        let mut records = poll_records(slf, timeout, Some(1))?;
        match records.pop() {
            Some(record) => Ok(Record { record }),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// Commits offsets for the group: `offsets` a dict of `{(topic, partition): offset}` (the
    /// offset of the next record to read), or None for the positions of every partition (the
    /// records returned so far). Waits for the coordinator's answer unless `asynchronous`
    /// (commits are sent in the order they are made either way).
    #[pyo3(signature = (offsets=None, asynchronous=false))]
    fn commit(
        slf: &Bound<'_, Self>,
        offsets: Option<&Bound<'_, PyAny>>,
        asynchronous: bool,
    ) -> PyResult<()> {
        let offsets = offsets.map(partition_map).transpose()?;
        run(slf, InCallback::Allowed, move |consumer| {
            if asynchronous {
                consumer.commit_async(offsets, None)
            } else {
                consumer.commit(offsets)
            }
        })
    }

    /// The group, member and generation this consumer commits as, for a transactional
    /// producer's `send_offsets_to_transaction`. Raises StateError without a group id.
    fn group_metadata(slf: &Bound<'_, Self>) -> PyResult<crate::producer::ConsumerGroupMetadata> {
        let inner = run(slf, InCallback::Allowed, |consumer| {
            consumer.group_metadata()
        })?;
        Ok(crate::producer::ConsumerGroupMetadata { inner })
    }

    /// The group's committed offsets of `partitions`, as `{TopicPartition: offset}`
    /// (partitions without one are left out).
    fn committed<'py>(
        slf: &Bound<'py, Self>,
        partitions: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let partitions = topic_partitions(partitions)?;
        let committed = run(slf, InCallback::Allowed, move |consumer| {
            consumer.committed(&partitions)
        })?;
        partition_dict(slf.py(), committed)
    }

    /// Reads `partition` from `offset` at the next poll. Raises StateError for a partition
    /// not assigned.
    fn seek(slf: &Bound<'_, Self>, partition: &Bound<'_, PyAny>, offset: i64) -> PyResult<()> {
        let (topic, partition) = topic_partition(partition)?;
        lock(&slf.get().stashed).clear();
        run(slf, InCallback::Allowed, move |consumer| {
            consumer.seek(&topic, partition, StartAt::Offset(offset))
        })
    }

    /// Reads these partitions (all assigned ones when none are given) from their log start.
    #[pyo3(signature = (*partitions))]
    fn seek_to_beginning(slf: &Bound<'_, Self>, partitions: &Bound<'_, PyTuple>) -> PyResult<()> {
        seek_all(slf, partitions, StartAt::Beginning)
    }

    /// Reads these partitions (all assigned ones when none are given) from their log end:
    /// only records produced from now on.
    #[pyo3(signature = (*partitions))]
    fn seek_to_end(slf: &Bound<'_, Self>, partitions: &Bound<'_, PyTuple>) -> PyResult<()> {
        seek_all(slf, partitions, StartAt::End)
    }

    /// The offset of the next record `poll` returns for `partition`, or None until known.
    fn position(slf: &Bound<'_, Self>, partition: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
        let (topic, partition) = topic_partition(partition)?;
        run(slf, InCallback::Allowed, move |consumer| {
            Ok(consumer.position(&topic, partition))
        })
    }

    /// The partition's log start and log end offsets (asked of its leader).
    fn watermarks(slf: &Bound<'_, Self>, partition: &Bound<'_, PyAny>) -> PyResult<(i64, i64)> {
        let (topic, partition) = topic_partition(partition)?;
        run(slf, InCallback::Allowed, move |consumer| {
            consumer.watermarks(&topic, partition)
        })
    }

    /// For each `{(topic, partition): timestamp_ms}`, the offset of the first record at or
    /// after the timestamp, or None when no record is that recent.
    fn offsets_for_times<'py>(
        slf: &Bound<'py, Self>,
        timestamps: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let timestamps = partition_map(timestamps)?;
        let offsets = run(slf, InCallback::Allowed, move |consumer| {
            consumer.offsets_for_times(&timestamps)
        })?;
        partition_dict(slf.py(), offsets)
    }

    /// Stops fetching these partitions until `resume`; their positions are kept.
    #[pyo3(signature = (*partitions))]
    fn pause(slf: &Bound<'_, Self>, partitions: &Bound<'_, PyTuple>) -> PyResult<()> {
        let partitions = topic_partitions(partitions)?;
        run(slf, InCallback::Allowed, move |consumer| {
            consumer.pause(&partitions)
        })
    }

    /// Fetches these paused partitions again.
    #[pyo3(signature = (*partitions))]
    fn resume(slf: &Bound<'_, Self>, partitions: &Bound<'_, PyTuple>) -> PyResult<()> {
        let partitions = topic_partitions(partitions)?;
        run(slf, InCallback::Allowed, move |consumer| {
            consumer.resume(&partitions)
        })
    }

    /// The paused partitions.
    fn paused<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyList>> {
        let partitions = run(slf, InCallback::Allowed, |consumer| Ok(consumer.paused()))?;
        topic_partition_list(slf.py(), &partitions)
    }

    /// Commits (with auto commit), leaves the group (revoking partitions through the
    /// callbacks) and stops the background thread. Closing twice is harmless.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if inside_callback(this.id).is_some() {
            return Err(state_error(
                py,
                "a consumer cannot be closed inside its own rebalance callback",
            ));
        }
        let frame = FrameGuard::push(this.id, slf.clone().into_any().unbind());
        py.detach(|| {
            let consumer = lock(&this.inner).take();
            if let Some(consumer) = consumer {
                consumer.close();
            }
        });
        drop(frame);
        lock(&this.stashed).clear();
        match lock(&this.callback_error).take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        if inside_callback(self.id).is_some() {
            return false; // Its own poll holds the lock, and runs.
        }
        py.detach(|| lock(&self.inner).is_none())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(slf: &Bound<'_, Self>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        Consumer::close(slf)?;
        Ok(false)
    }
}

impl Drop for Consumer {
    /// A consumer collected without `close` leaves its group (and commits, with auto commit)
    /// with the GIL released, so that other Python threads run meanwhile.
    fn drop(&mut self) {
        let consumer = lock(&self.inner).take();
        if let Some(consumer) = consumer {
            Python::attach(|py| py.detach(move || drop(consumer)));
        }
    }
}

/// The client consumer of the rebalance callback of consumer `id` running on this thread.
fn inside_callback(id: usize) -> Option<CallbackConsumer> {
    FRAMES.with(|frames| {
        frames
            .borrow()
            .iter()
            .rev()
            .find(|frame| frame.consumer_id == id)
            .and_then(|frame| frame.inside_callback)
            .map(CallbackConsumer)
    })
}

/// Runs `call` on the client consumer with the GIL released: inside one of this consumer's
/// rebalance callbacks, on the consumer the callback was given; otherwise under the lock.
fn run<R, F>(slf: &Bound<'_, Consumer>, in_callback: InCallback, call: F) -> PyResult<R>
where
    R: Send,
    F: FnOnce(&mut ClientConsumer) -> Result<R, ClientError> + Send,
{
    let (called, callback_error) = run_raw(slf, in_callback, call)?;
    if let Some(error) = callback_error {
        return Err(error);
    }
    finish(slf.py(), called)
}

fn finish<R>(py: Python<'_>, called: Called<R>) -> PyResult<R> {
    match called {
        Called::Done(result) => result.map_err(|error| client_error(py, error)),
        Called::Closed => Err(state_error(py, "the consumer is closed")),
    }
}

/// As [`run`], also giving back an exception a rebalance callback raised during the call.
fn run_raw<R, F>(
    slf: &Bound<'_, Consumer>,
    in_callback: InCallback,
    call: F,
) -> PyResult<(Called<R>, Option<PyErr>)>
where
    R: Send,
    F: FnOnce(&mut ClientConsumer) -> Result<R, ClientError> + Send,
{
    let py = slf.py();
    let this = slf.get();
    let called = if let Some(callback_consumer) = inside_callback(this.id) {
        if let InCallback::Refused(what) = in_callback {
            return Err(state_error(
                py,
                format!("{what} is not allowed inside the consumer's own rebalance callback"),
            ));
        }
        py.detach(move || {
            let pointer = callback_consumer;
            // SAFETY: the pointer came from the `&mut ClientConsumer` the client gave the
            // listener, whose call is suspended on this very thread in the Python callback
            // that made this call; nothing else uses the consumer until it returns.
            let consumer = unsafe { &mut *pointer.0 };
            Called::Done(call(consumer))
        })
    } else {
        let frame = FrameGuard::push(this.id, slf.clone().into_any().unbind());
        let called = py.detach(|| match lock(&this.inner).as_mut() {
            Some(consumer) => Called::Done(call(consumer)),
            None => Called::Closed,
        });
        drop(frame);
        called
    };
    let callback_error = lock(&this.callback_error).take();
    Ok((called, callback_error))
}

/// Polls in slices so that Ctrl-C interrupts; `None` waits until a record arrives.
fn poll_records(
    slf: &Bound<'_, Consumer>,
    timeout: Option<Duration>,
    max_records: Option<usize>,
) -> PyResult<Vec<ConsumerRecord>> {
    let py = slf.py();
    {
        let mut stashed = lock(&slf.get().stashed);
        if !stashed.is_empty() {
            let count = max_records.unwrap_or(usize::MAX).max(1).min(stashed.len());
            return Ok(stashed.drain(..count).collect());
        }
    }
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    loop {
        let slice = match deadline {
            None => crate::wait::SLICE,
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(crate::wait::SLICE),
        };
        let (called, callback_error) = run_raw(
            slf,
            InCallback::Refused("poll"),
            move |consumer| match max_records {
                Some(max_records) => consumer.poll_at_most(slice, max_records),
                None => consumer.poll(slice),
            },
        )?;
        if let Some(error) = callback_error {
            if let Called::Done(Ok(records)) = called {
                lock(&slf.get().stashed).extend(records);
            }
            return Err(error);
        }
        let records = finish(py, called)?;
        if !records.is_empty() {
            return Ok(records);
        }
        py.check_signals()?;
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Ok(records);
        }
    }
}

fn seek_all(
    slf: &Bound<'_, Consumer>,
    partitions: &Bound<'_, PyTuple>,
    start: StartAt,
) -> PyResult<()> {
    let partitions = topic_partitions(partitions)?;
    lock(&slf.get().stashed).clear();
    run(slf, InCallback::Allowed, move |consumer| {
        let partitions = if partitions.is_empty() {
            consumer.assignment()
        } else {
            partitions
        };
        for (topic, partition) in partitions {
            consumer.seek(&topic, partition, start)?;
        }
        Ok(())
    })
}
