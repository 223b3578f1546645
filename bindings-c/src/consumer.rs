//! `spate_consumer` and the `spate_message`s it returns.

use std::ffi::{c_char, CString};
use std::ptr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use spate_engine::client::config::ConsumerConfig;
use spate_engine::client::consumer::{Consumer, ConsumerRecord, StartAt};
use spate_engine::client::transaction::GroupMetadata;
use spate_engine::client::ClientError;

use crate::config::{spate_config, Client};
use crate::status::{
    client_failure, config_failure, fail, guard, shared_handle, spate_status, str_argument,
    write_out,
};

/// A partition, with an offset where one is wanted: the next offset to read for
/// `spate_consumer_commit`; where to start (or -1 for the committed offset, else
/// `auto.offset.reset`) for `spate_consumer_assign`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct spate_topic_partition {
    /// The topic, NUL-terminated; read during the call only.
    pub topic: *const c_char,
    /// The partition.
    pub partition: i32,
    /// The offset, or -1.
    pub offset: i64,
}

/// A consumer: reads assigned partitions, or shares subscribed topics' partitions with the
/// other members of its group (`group.id`).
///
/// Ownership: made by `spate_consumer_new`, closed by `spate_consumer_close` and freed by
/// `spate_consumer_free` (which closes it if needed).
/// Thread safety: every function may be called from any thread; calls on one consumer run
/// one at a time (a call waits for the one in progress).
pub struct spate_consumer {
    consumer: Mutex<Option<Consumer>>,
}

/// A record returned by `spate_consumer_poll`, owned by the caller and freed with
/// `spate_message_free`. Its accessors' pointers are valid until it is freed.
/// Thread safety: may be read from any thread, and freed from any one.
pub struct spate_message {
    record: ConsumerRecord,
    topic: CString,
    header_names: Vec<CString>,
}

impl spate_consumer {
    fn with<R>(
        &self,
        call: impl FnOnce(&mut Consumer) -> Result<R, ClientError>,
    ) -> Result<R, spate_status> {
        let mut consumer = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        let consumer = consumer
            .as_mut()
            .ok_or_else(|| fail(spate_status::State, "the consumer is closed"))?;
        call(consumer).map_err(client_failure)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Consumer>> {
        self.consumer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Makes a consumer from `config` (`bootstrap.servers`, and `group.id` to subscribe or
/// commit; settings for other kinds of client are ignored) and writes it to `*consumer`.
/// SPATE_STATUS_CONNECT when no bootstrap server answers, SPATE_STATUS_CONFIG for a missing
/// or bad setting.
///
/// # Safety
/// `config` is NULL or a live config; `consumer` NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_new(
    config: *const spate_config,
    consumer: *mut *mut spate_consumer,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let config = unsafe { shared_handle(config, "config") }?;
        if consumer.is_null() {
            return Err(fail(spate_status::InvalidArgument, "consumer is NULL"));
        }
        let settings = ConsumerConfig::from_properties(config.properties_for(Client::Consumer))
            .map_err(|error| config_failure(&error))?;
        let made = Consumer::new(settings).map_err(client_failure)?;
        let boxed = Box::new(spate_consumer {
            consumer: Mutex::new(Some(made)),
        });
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(consumer, Box::into_raw(boxed), "consumer") }
    })
}

/// Joins the group (`group.id`) to share the partitions of `topics` (`count` NUL-terminated
/// names) with its other members; the join happens in `spate_consumer_poll`.
/// SPATE_STATUS_STATE without `group.id`.
///
/// # Safety
/// `consumer` is NULL or a live consumer; `topics` readable for `count` NUL-terminated names.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_subscribe(
    consumer: *const spate_consumer,
    topics: *const *const c_char,
    count: usize,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(consumer, "consumer") }?;
        if topics.is_null() && count != 0 {
            return Err(fail(spate_status::InvalidArgument, "topics is NULL"));
        }
        let pointers = if count == 0 {
            &[][..]
        } else {
            // SAFETY: the caller promises `count` readable pointers.
            unsafe { std::slice::from_raw_parts(topics, count) }
        };
        let names = pointers
            .iter()
            // SAFETY: each is a NUL-terminated string, as promised.
            .map(|pointer| unsafe { str_argument(*pointer, "a topic") }.map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        this.with(|consumer| consumer.subscribe(&names))
    })
}

/// Reads exactly these `count` partitions from now on, ending any subscription; a partition
/// with an offset >= 0 starts there.
///
/// # Safety
/// `consumer` is NULL or a live consumer; `partitions` readable for `count` entries.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_assign(
    consumer: *const spate_consumer,
    partitions: *const spate_topic_partition,
    count: usize,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(consumer, "consumer") }?;
        // SAFETY: as above.
        let partitions = unsafe { partition_list(partitions, count) }?;
        this.with(|consumer| {
            let assigned: Vec<(String, i32)> = partitions
                .iter()
                .map(|(topic, partition, _)| (topic.clone(), *partition))
                .collect();
            consumer.assign(&assigned);
            for (topic, partition, offset) in &partitions {
                if *offset >= 0 {
                    consumer.seek(topic, *partition, StartAt::Offset(*offset))?;
                }
            }
            Ok(())
        })
    })
}

/// Waits up to `timeout_ms` (-1: forever) for a record and writes it to `*message` (the
/// caller frees it with `spate_message_free`), or NULL when none arrived. In a group, this
/// is also where the consumer joins, rebalances and auto-commits. SPATE_STATUS_STATE once
/// the consumer is closed.
///
/// # Safety
/// `consumer` is NULL or a live consumer; `message` NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_poll(
    consumer: *const spate_consumer,
    timeout_ms: i32,
    message: *mut *mut spate_message,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(consumer, "consumer") }?;
        if message.is_null() {
            return Err(fail(spate_status::InvalidArgument, "message is NULL"));
        }
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { message.write(ptr::null_mut()) };
        let forever = timeout_ms < 0;
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(1000));
        let record = loop {
            let mut records = this.with(|consumer| consumer.poll_at_most(timeout, 1))?;
            if let Some(record) = records.pop() {
                break Some(record);
            }
            if !forever {
                break None;
            }
        };
        if let Some(record) = record {
            let topic = CString::new(record.topic.replace('\0', " ")).expect("NULs replaced");
            let header_names = record
                .headers
                .iter()
                .map(|(name, _)| CString::new(name.replace('\0', " ")).expect("NULs replaced"))
                .collect();
            let boxed = Box::new(spate_message {
                record,
                topic,
                header_names,
            });
            // SAFETY: as above.
            unsafe { message.write(Box::into_raw(boxed)) };
        }
        Ok(())
    })
}

/// Commits offsets for the group: `count` partitions with the next offset to read, or, with
/// NULL and 0, the position of every assigned partition (the records returned so far). Waits
/// for the coordinator's answer unless `asynchronous` is not 0 (commits are sent in the order
/// they are made either way). SPATE_STATUS_STATE without `group.id`.
///
/// # Safety
/// `consumer` is NULL or a live consumer; `offsets` readable for `count` entries.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_commit(
    consumer: *const spate_consumer,
    offsets: *const spate_topic_partition,
    count: usize,
    asynchronous: i32,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(consumer, "consumer") }?;
        let offsets = if offsets.is_null() && count == 0 {
            None
        } else {
            // SAFETY: as above.
            let list = unsafe { partition_list(offsets, count) }?;
            if let Some((topic, partition, offset)) = list.iter().find(|(_, _, offset)| *offset < 0)
            {
                return Err(fail(
                    spate_status::InvalidArgument,
                    format!("offset {offset} of {topic}-{partition} is not an offset"),
                ));
            }
            Some(
                list.into_iter()
                    .map(|(topic, partition, offset)| ((topic, partition), offset))
                    .collect(),
            )
        };
        this.with(|consumer| {
            if asynchronous != 0 {
                consumer.commit_async(offsets, None)
            } else {
                consumer.commit(offsets)
            }
        })
    })
}

/// Reads `partition` of `topic` from `offset` at the next poll. SPATE_STATUS_STATE for a
/// partition not assigned.
///
/// # Safety
/// `consumer` is NULL or a live consumer; `topic` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_seek(
    consumer: *const spate_consumer,
    topic: *const c_char,
    partition: i32,
    offset: i64,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(consumer, "consumer") }?;
        // SAFETY: as above.
        let topic = unsafe { str_argument(topic, "topic") }?;
        if offset < 0 {
            return Err(fail(
                spate_status::InvalidArgument,
                format!("offset {offset} is not an offset"),
            ));
        }
        this.with(|consumer| consumer.seek(topic, partition, StartAt::Offset(offset)))
    })
}

/// Commits (with `enable.auto.commit`), leaves the group and stops the background thread.
/// Later calls other than `spate_consumer_free` give SPATE_STATUS_STATE; closing twice is
/// harmless.
///
/// # Safety
/// `consumer` is NULL or a live consumer.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_close(consumer: *const spate_consumer) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(consumer, "consumer") }?;
        let taken = this.lock().take();
        if let Some(consumer) = taken {
            consumer.close();
        }
        Ok(())
    })
}

/// Closes the consumer if it is open, and frees it. NULL is accepted and ignored.
///
/// # Safety
/// `consumer` is NULL or a live consumer that no other thread uses during or after the call.
#[no_mangle]
pub unsafe extern "C" fn spate_consumer_free(consumer: *mut spate_consumer) {
    if consumer.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: made by Box::into_raw in spate_consumer_new; the caller gives it up.
        let this = unsafe { Box::from_raw(consumer) };
        let taken = this.lock().take();
        if let Some(consumer) = taken {
            consumer.close();
        }
        Ok(())
    });
}

/// The group, member and generation `consumer` commits as, for a transactional producer's
/// `spate_producer_send_offsets_to_transaction`.
///
/// # Safety
/// `consumer` is NULL or a live consumer.
pub(crate) unsafe fn group_metadata_of(
    consumer: *const spate_consumer,
) -> Result<GroupMetadata, spate_status> {
    // SAFETY: forwarded from the caller's contract.
    let this = unsafe { shared_handle(consumer, "consumer") }?;
    this.with(|consumer| consumer.group_metadata())
}

/// The `(topic, partition, offset)` entries of a C array.
///
/// # Safety
/// `partitions` readable for `count` entries, each topic NUL-terminated.
pub(crate) unsafe fn partition_list(
    partitions: *const spate_topic_partition,
    count: usize,
) -> Result<Vec<(String, i32, i64)>, spate_status> {
    if partitions.is_null() && count != 0 {
        return Err(fail(spate_status::InvalidArgument, "partitions is NULL"));
    }
    let entries = if count == 0 {
        &[][..]
    } else {
        // SAFETY: the caller promises `count` readable entries.
        unsafe { std::slice::from_raw_parts(partitions, count) }
    };
    entries
        .iter()
        .map(|entry| {
            // SAFETY: as promised.
            let topic = unsafe { str_argument(entry.topic, "a partition's topic") }?;
            Ok((topic.to_owned(), entry.partition, entry.offset))
        })
        .collect()
}

/// # Safety
/// `message` is NULL or a live message.
unsafe fn message_ref<'a>(message: *const spate_message) -> Option<&'a spate_message> {
    // SAFETY: the caller's contract.
    unsafe { message.as_ref() }
}

/// The message's topic (NUL-terminated, owned by the message), or NULL for a NULL message.
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn spate_message_topic(message: *const spate_message) -> *const c_char {
    // SAFETY: forwarded.
    unsafe { message_ref(message) }.map_or(ptr::null(), |message| message.topic.as_ptr())
}

/// The message's partition, or -1 for a NULL message.
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn spate_message_partition(message: *const spate_message) -> i32 {
    // SAFETY: forwarded.
    unsafe { message_ref(message) }.map_or(-1, |message| message.record.partition)
}

/// The message's offset, or -1 for a NULL message.
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn spate_message_offset(message: *const spate_message) -> i64 {
    // SAFETY: forwarded.
    unsafe { message_ref(message) }.map_or(-1, |message| message.record.offset)
}

/// The message's timestamp in ms since the Unix epoch, or -1 for a NULL message.
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn spate_message_timestamp(message: *const spate_message) -> i64 {
    // SAFETY: forwarded.
    unsafe { message_ref(message) }.map_or(-1, |message| message.record.timestamp_ms)
}

fn bytes_out(bytes: Option<&[u8]>, len: *mut usize) -> *const u8 {
    if !len.is_null() {
        // SAFETY: the caller promises `len` is NULL or writable.
        unsafe { len.write(bytes.map_or(0, <[u8]>::len)) };
    }
    bytes.map_or(ptr::null(), <[u8]>::as_ptr)
}

/// The message's key (owned by the message), NULL for a null key; its length goes to `*len`
/// unless `len` is NULL.
///
/// # Safety
/// `message` is NULL or a live message; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn spate_message_key(
    message: *const spate_message,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: forwarded.
    let key = unsafe { message_ref(message) }.and_then(|message| message.record.key.as_deref());
    bytes_out(key, len)
}

/// The message's value (owned by the message), NULL for a null value (a tombstone); its
/// length goes to `*len` unless `len` is NULL.
///
/// # Safety
/// `message` is NULL or a live message; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn spate_message_value(
    message: *const spate_message,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: forwarded.
    let value = unsafe { message_ref(message) }.and_then(|message| message.record.value.as_deref());
    bytes_out(value, len)
}

/// How many headers the message has (0 for a NULL message).
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn spate_message_header_count(message: *const spate_message) -> usize {
    // SAFETY: forwarded.
    unsafe { message_ref(message) }.map_or(0, |message| message.record.headers.len())
}

/// Header `index` of the message: its name (NUL-terminated) to `*name`, its value to `*value`
/// (NULL for a null value) and length to `*value_len`; all owned by the message.
/// SPATE_STATUS_INVALID_ARGUMENT for an index out of range or NULL pointers.
///
/// # Safety
/// `message` is NULL or a live message; the out pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn spate_message_header(
    message: *const spate_message,
    index: usize,
    name: *mut *const c_char,
    value: *mut *const u8,
    value_len: *mut usize,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let message = unsafe { shared_handle(message, "message") }?;
        let Some((_, header_value)) = message.record.headers.get(index) else {
            return Err(fail(
                spate_status::InvalidArgument,
                format!(
                    "header {index} of a message with {} headers",
                    message.record.headers.len()
                ),
            ));
        };
        if name.is_null() || value.is_null() || value_len.is_null() {
            return Err(fail(
                spate_status::InvalidArgument,
                "name, value and value_len must not be NULL",
            ));
        }
        // SAFETY: as above.
        unsafe { write_out(name, message.header_names[index].as_ptr(), "name") }?;
        let pointer = bytes_out(header_value.as_deref(), value_len);
        // SAFETY: as above.
        unsafe { write_out(value, pointer, "value") }
    })
}

/// Frees a message. NULL is accepted and ignored.
///
/// # Safety
/// `message` is NULL or a message from `spate_consumer_poll` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn spate_message_free(message: *mut spate_message) {
    if !message.is_null() {
        // SAFETY: made by Box::into_raw in spate_consumer_poll.
        drop(unsafe { Box::from_raw(message) });
    }
}
