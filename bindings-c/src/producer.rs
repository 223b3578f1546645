//! `spate_producer`: sends records; delivery reports are served on the application's thread.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CString};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_engine::client::arena::CopyArena;
use spate_engine::client::config::ProducerConfig;
use spate_engine::client::producer::{DeliveryResult, Producer, ProducerRecord};

use crate::config::{spate_config, Client};
use crate::status::{
    bytes_argument, client_failure, config_failure, fail, guard, shared_handle, spate_status,
    str_argument, write_out,
};

/// `partition` of `spate_producer_send` for the partitioner's choice (murmur2 of the key, as
/// the Java client and librdkafka; sticky for keyless records).
pub const SPATE_PARTITION_ANY: i32 = -1;
/// `timestamp_ms` of `spate_producer_send` for the time of sending.
pub const SPATE_TIMESTAMP_NOW: i64 = -1;

/// A record header: `name` NUL-terminated, `value` pointer plus length (NULL and 0 for a null
/// value). Read during `spate_producer_send` only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct spate_header {
    /// The header's name.
    pub name: *const c_char,
    /// The value's bytes, or NULL.
    pub value: *const u8,
    /// The value's length.
    pub value_len: usize,
}

/// A record's delivery outcome, handed to a `spate_delivery_cb`. Every pointer in it is valid
/// only during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct spate_delivery_report {
    /// The topic.
    pub topic: *const c_char,
    /// The partition, -1 when the record failed before one was chosen.
    pub partition: i32,
    /// The offset, -1 when not delivered (or with acks=0, which gets no answer).
    pub offset: i64,
    /// The record's timestamp in ms (the broker's for LogAppendTime topics), -1 on failure.
    pub timestamp_ms: i64,
    /// SPATE_STATUS_OK when delivered; otherwise why not.
    pub status: spate_status,
    /// The Kafka error code when `status` is SPATE_STATUS_KAFKA, else 0.
    pub error_code: i16,
    /// What went wrong, or NULL when delivered.
    pub error_message: *const c_char,
}

/// Called with a record's delivery report and the opaque pointer given to
/// `spate_producer_send`, on the thread that calls `spate_producer_poll`,
/// `spate_producer_flush` or `spate_producer_free`.
pub type spate_delivery_cb =
    Option<unsafe extern "C" fn(report: *const spate_delivery_report, opaque: *mut c_void)>;

/// The caller's opaque pointer, carried to the thread that serves its report.
struct Opaque(*mut c_void);
// SAFETY: Spate never dereferences it; it goes back to the caller's callback, on a thread of
// the caller's choosing (the one that polls), as documented.
unsafe impl Send for Opaque {}

struct Report {
    callback: unsafe extern "C" fn(*const spate_delivery_report, *mut c_void),
    opaque: Opaque,
    topic: Arc<CString>,
    result: DeliveryResult,
}

#[derive(Default)]
struct Reports {
    queue: Mutex<VecDeque<Report>>,
    arrived: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A producer: batches records per partition and sends them from a background thread.
///
/// Ownership: made by `spate_producer_new`, freed by `spate_producer_free`.
/// Thread safety: every function may be called from several threads at once (sends are
/// queued in the order they are made on each thread); callbacks run on the thread that polls.
pub struct spate_producer {
    producer: Option<Producer>,
    reports: Arc<Reports>,
    /// The last topic sent to, as the C string reports hand out (most applications send to
    /// one or a few topics: this saves an allocation per record).
    last_topic: Mutex<Option<(String, Arc<CString>)>>,
    /// Where keys and values are copied (see `CopyArena`).
    arena: CopyArena,
}

impl spate_producer {
    /// Copies caller bytes (pointer and length, NULL and 0 for none) into the arena.
    ///
    /// # Safety
    /// As [`bytes_argument`].
    unsafe fn copy(
        &self,
        pointer: *const u8,
        len: usize,
        name: &str,
    ) -> Result<Option<Bytes>, spate_status> {
        if pointer.is_null() {
            // SAFETY: NULL is not read; this only checks the length.
            return unsafe { bytes_argument(pointer, len, name) };
        }
        // SAFETY: the caller promises `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(pointer, len) };
        Ok(Some(self.arena.copy(bytes)))
    }

    fn topic_for_reports(&self, topic: &str) -> Arc<CString> {
        let mut last = lock(&self.last_topic);
        if let Some((name, text)) = last.as_ref() {
            if name == topic {
                return Arc::clone(text);
            }
        }
        let text = Arc::new(CString::new(topic.replace('\0', " ")).expect("NULs replaced"));
        *last = Some((topic.to_owned(), Arc::clone(&text)));
        text
    }
}

/// Makes a producer from `config` (which needs `bootstrap.servers`; settings for other kinds
/// of client are ignored) and writes it to `*producer`. Connects to a bootstrap server first:
/// SPATE_STATUS_CONNECT when none answers, SPATE_STATUS_CONFIG for a missing or bad setting.
///
/// # Safety
/// `config` is NULL or a live config; `producer` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_new(
    config: *const spate_config,
    producer: *mut *mut spate_producer,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let config = unsafe { shared_handle(config, "config") }?;
        if producer.is_null() {
            return Err(fail(spate_status::InvalidArgument, "producer is NULL"));
        }
        let settings = ProducerConfig::from_properties(config.properties_for(Client::Producer))
            .map_err(|error| config_failure(&error))?;
        let made = Producer::new(settings).map_err(client_failure)?;
        let boxed = Box::new(spate_producer {
            producer: Some(made),
            reports: Arc::default(),
            last_topic: Mutex::default(),
            arena: CopyArena::default(),
        });
        // SAFETY: checked non-NULL above; the caller promises it is writable.
        unsafe { write_out(producer, Box::into_raw(boxed), "producer") }
    })
}

/// Queues a record for `topic`. `partition` is a partition or SPATE_PARTITION_ANY; `key` and
/// `value` are pointer plus length (NULL and 0 for none: a null value is a tombstone);
/// `headers` points to `header_count` headers (NULL when 0); `timestamp_ms` is the create
/// time or SPATE_TIMESTAMP_NOW. Everything is copied before the call returns.
///
/// `callback`, when not NULL, gets the delivery report with `opaque` on the thread that next
/// calls `spate_producer_poll`, `spate_producer_flush` or `spate_producer_free` after the
/// result is known. Fails at once with SPATE_STATUS_KAFKA and code 3 for a topic or
/// partition that does not exist (when the broker does not create it), code 10 for a record
/// over `max.request.size`; SPATE_STATUS_STATE once the producer is being freed.
///
/// # Safety
/// `producer` is NULL or a live producer; `topic` NUL-terminated; `key`, `value` readable for
/// their lengths; `headers` readable for `header_count` headers whose strings are
/// NUL-terminated and values readable for their lengths.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn spate_producer_send(
    producer: *const spate_producer,
    topic: *const c_char,
    partition: i32,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    headers: *const spate_header,
    header_count: usize,
    timestamp_ms: i64,
    callback: spate_delivery_cb,
    opaque: *mut c_void,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract (all arguments below).
        let this = unsafe { shared_handle(producer, "producer") }?;
        let topic = unsafe { str_argument(topic, "topic") }?;
        let key = unsafe { this.copy(key, key_len, "key") }?;
        let value = unsafe { this.copy(value, value_len, "value") }?;
        if headers.is_null() && header_count != 0 {
            return Err(fail(
                spate_status::InvalidArgument,
                format!("headers is NULL with a count of {header_count}"),
            ));
        }
        let header_slice = if header_count == 0 {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(headers, header_count) }
        };
        let mut record_headers = Vec::with_capacity(header_count);
        for header in header_slice {
            let name = unsafe { str_argument(header.name, "a header name") }?.to_owned();
            let value = unsafe { this.copy(header.value, header.value_len, "a header value") }?;
            record_headers.push((name, value));
        }
        if partition < 0 && partition != SPATE_PARTITION_ANY {
            return Err(fail(
                spate_status::InvalidArgument,
                format!("partition {partition} is neither a partition nor SPATE_PARTITION_ANY"),
            ));
        }
        let record = ProducerRecord {
            topic: topic.to_owned(),
            partition: (partition >= 0).then_some(partition),
            key,
            value,
            headers: record_headers,
            timestamp_ms: (timestamp_ms != SPATE_TIMESTAMP_NOW).then_some(timestamp_ms),
        };
        let Some(client) = this.producer.as_ref() else {
            return Err(fail(spate_status::State, "the producer is being freed"));
        };
        match callback {
            None => client.send_with_callback(record, |_| {}),
            Some(callback) => {
                let reports = Arc::clone(&this.reports);
                let opaque = Opaque(opaque);
                let topic = this.topic_for_reports(topic);
                client.send_with_callback(record, move |result| {
                    let mut queue = lock(&reports.queue);
                    let was_empty = queue.is_empty();
                    queue.push_back(Report {
                        callback,
                        opaque,
                        topic,
                        result,
                    });
                    drop(queue);
                    // `poll` waits only for an empty queue: wake it for the first report, not
                    // for every one (a notification costs a system call).
                    if was_empty {
                        reports.arrived.notify_all();
                    }
                })
            }
        }
        .map_err(client_failure)
    })
}

/// Serves the delivery reports whose results are known, waiting up to `timeout_ms` (-1:
/// forever) for one when none is; writes how many were served to `*served` unless it is NULL.
///
/// # Safety
/// `producer` is NULL or a live producer; `served` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_poll(
    producer: *const spate_producer,
    timeout_ms: i32,
    served: *mut usize,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(producer, "producer") }?;
        let deadline = deadline(timeout_ms);
        {
            let mut queue = lock(&this.reports.queue);
            while queue.is_empty() {
                let left = match deadline {
                    None => Duration::from_secs(3600),
                    Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => left,
                        _ => break,
                    },
                };
                queue = this
                    .reports
                    .arrived
                    .wait_timeout(queue, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let count = serve(&this.reports);
        if !served.is_null() {
            // SAFETY: the caller promises it is writable.
            unsafe { served.write(count) };
        }
        Ok(())
    })
}

/// Sends everything queued and waits until every record is delivered or failed, up to
/// `timeout_ms` (-1: forever), then serves the delivery reports. SPATE_STATUS_TIMED_OUT when
/// records are still in flight at the timeout.
///
/// # Safety
/// `producer` is NULL or a live producer.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_flush(
    producer: *const spate_producer,
    timeout_ms: i32,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(producer, "producer") }?;
        let Some(client) = this.producer.as_ref() else {
            return Err(fail(spate_status::State, "the producer is being freed"));
        };
        let left = match deadline(timeout_ms) {
            None => {
                client.flush();
                0
            }
            Some(deadline) => {
                client.flush_within(deadline.saturating_duration_since(Instant::now()))
            }
        };
        serve(&this.reports);
        if left > 0 {
            return Err(fail(
                spate_status::TimedOut,
                format!("{left} records still without a delivery result after {timeout_ms} ms"),
            ));
        }
        Ok(())
    })
}

/// Runs `call` on the producer's client, then serves the delivery reports.
///
/// # Safety
/// `producer` is NULL or a live producer.
unsafe fn with_client(
    producer: *const spate_producer,
    call: impl FnOnce(&Producer) -> Result<(), spate_engine::client::ClientError>,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(producer, "producer") }?;
        let Some(client) = this.producer.as_ref() else {
            return Err(fail(spate_status::State, "the producer is being freed"));
        };
        let result = call(client);
        serve(&this.reports);
        result.map_err(client_failure)
    })
}

/// Registers the producer's `transactional.id` with its transaction coordinator: fences earlier
/// producers of the id and aborts their open transaction. Call once, before the first
/// transaction. SPATE_STATUS_STATE without `transactional.id`.
///
/// # Safety
/// `producer` is NULL or a live producer.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_init_transactions(
    producer: *const spate_producer,
) -> spate_status {
    // SAFETY: forwarded from the caller's contract.
    unsafe { with_client(producer, Producer::init_transactions) }
}

/// Opens a transaction: the records sent until its commit or abort belong to it.
/// SPATE_STATUS_STATE before `spate_producer_init_transactions`, in a transaction, or once
/// fenced.
///
/// # Safety
/// `producer` is NULL or a live producer.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_begin_transaction(
    producer: *const spate_producer,
) -> spate_status {
    // SAFETY: forwarded from the caller's contract.
    unsafe { with_client(producer, Producer::begin_transaction) }
}

/// Commits `count` offsets (each the next offset to read) of `consumer`'s group inside the
/// open transaction: they become the group's committed offsets when it commits, never if it
/// aborts. SPATE_STATUS_STATE when `consumer` has no `group.id`.
///
/// # Safety
/// `producer` and `consumer` are NULL or live; `offsets` readable for `count` entries with
/// NUL-terminated topics.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_send_offsets_to_transaction(
    producer: *const spate_producer,
    offsets: *const crate::consumer::spate_topic_partition,
    count: usize,
    consumer: *const crate::consumer::spate_consumer,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let list = unsafe { crate::consumer::partition_list(offsets, count) }?;
        // SAFETY: as above.
        let group = unsafe { crate::consumer::group_metadata_of(consumer) }?;
        // SAFETY: as above.
        let this = unsafe { shared_handle(producer, "producer") }?;
        let Some(client) = this.producer.as_ref() else {
            return Err(fail(spate_status::State, "the producer is being freed"));
        };
        client
            .send_offsets_to_transaction(&list, &group)
            .map_err(client_failure)
    })
}

/// Sends the transaction's records, waits for them and commits it. SPATE_STATUS_STATE when
/// one of its records failed (abort it then); a Kafka error when a newer producer fenced
/// this one.
///
/// # Safety
/// `producer` is NULL or a live producer.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_commit_transaction(
    producer: *const spate_producer,
) -> spate_status {
    // SAFETY: forwarded from the caller's contract.
    unsafe { with_client(producer, Producer::commit_transaction) }
}

/// Waits for the transaction's records to be answered, then aborts it: read_committed
/// consumers never see them, and its offsets are dropped.
///
/// # Safety
/// `producer` is NULL or a live producer.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_abort_transaction(
    producer: *const spate_producer,
) -> spate_status {
    // SAFETY: forwarded from the caller's contract.
    unsafe { with_client(producer, Producer::abort_transaction) }
}

/// Flushes (waiting for every record's result, at most `delivery.timeout.ms`), serves the
/// last delivery reports, stops the background thread and frees the producer. NULL is
/// accepted and ignored.
///
/// # Safety
/// `producer` is NULL or a live producer that no other thread uses during or after the call.
#[no_mangle]
pub unsafe extern "C" fn spate_producer_free(producer: *mut spate_producer) {
    if producer.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: made by Box::into_raw in spate_producer_new; the caller gives it up.
        let mut this = unsafe { Box::from_raw(producer) };
        if let Some(client) = this.producer.take() {
            client.close();
        }
        serve(&this.reports);
        Ok(())
    });
}

fn deadline(timeout_ms: i32) -> Option<Instant> {
    (timeout_ms >= 0)
        .then(|| Instant::now() + Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)))
}

/// Calls the queued delivery callbacks on this thread.
fn serve(reports: &Reports) -> usize {
    let mut served = 0;
    loop {
        let Some(report) = lock(&reports.queue).pop_front() else {
            return served;
        };
        let (partition, offset, timestamp_ms, status, error_code, message) = match &report.result {
            Ok(metadata) => (
                metadata.partition,
                metadata.offset,
                metadata.timestamp_ms,
                spate_status::Ok,
                0,
                None,
            ),
            Err(error) => (
                -1,
                -1,
                -1,
                if error.code.is_some() {
                    spate_status::Kafka
                } else {
                    spate_status::Connect
                },
                error.code.unwrap_or(0),
                Some(CString::new(error.message.replace('\0', " ")).expect("NULs replaced")),
            ),
        };
        let delivery = spate_delivery_report {
            topic: report.topic.as_ptr(),
            partition,
            offset,
            timestamp_ms,
            status,
            error_code,
            error_message: message.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
        };
        // SAFETY: the caller's callback, called as its type documents, with pointers valid
        // for the call.
        unsafe { (report.callback)(&delivery, report.opaque.0) };
        served += 1;
    }
}
