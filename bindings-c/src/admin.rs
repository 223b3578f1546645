//! `spate_admin`: topics; and `spate_string_list`, the lists it returns.

use std::collections::BTreeMap;
use std::ffi::{c_char, CString};
use std::ptr;
use std::sync::{Mutex, PoisonError};

use spate_engine::client::admin::{Admin, NewTopic};
use spate_engine::client::config::CommonConfig;
use spate_engine::client::ClientError;

use crate::config::{spate_config, Client};
use crate::status::{
    client_failure, config_failure, fail, guard, shared_handle, spate_status, str_argument,
    write_out,
};

/// An admin client: creates, deletes and lists topics.
///
/// Ownership: made by `spate_admin_new`, freed by `spate_admin_free`.
/// Thread safety: every function may be called from any thread; calls run one at a time.
pub struct spate_admin {
    admin: Mutex<Admin>,
}

/// A list of strings returned by Spate, owned by the caller and freed with
/// `spate_string_list_free`. Thread safety: may be read from any thread.
pub struct spate_string_list {
    strings: Vec<CString>,
}

impl spate_admin {
    fn with<R>(
        &self,
        call: impl FnOnce(&mut Admin) -> Result<R, ClientError>,
    ) -> Result<R, spate_status> {
        let mut admin = self.admin.lock().unwrap_or_else(PoisonError::into_inner);
        call(&mut admin).map_err(client_failure)
    }
}

/// The result for the one item a call was made for.
fn only_result(results: Vec<Result<(), ClientError>>) -> Result<(), spate_status> {
    results
        .into_iter()
        .next()
        .unwrap_or(Ok(()))
        .map_err(client_failure)
}

/// Makes an admin client from `config` (`bootstrap.servers`; settings for other kinds of
/// client are ignored) and writes it to `*admin`. SPATE_STATUS_CONNECT when no bootstrap
/// server answers.
///
/// # Safety
/// `config` is NULL or a live config; `admin` NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn spate_admin_new(
    config: *const spate_config,
    admin: *mut *mut spate_admin,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let config = unsafe { shared_handle(config, "config") }?;
        if admin.is_null() {
            return Err(fail(spate_status::InvalidArgument, "admin is NULL"));
        }
        let settings = CommonConfig::from_properties(config.properties_for(Client::Admin))
            .map_err(|error| config_failure(&error))?;
        let made = Admin::connect(&settings).map_err(client_failure)?;
        let boxed = Box::new(spate_admin {
            admin: Mutex::new(made),
        });
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(admin, Box::into_raw(boxed), "admin") }
    })
}

/// Creates topic `name` with `partitions` partitions and `replication_factor` replicas (-1
/// for the broker's defaults). SPATE_STATUS_KAFKA with code 36 (TOPIC_ALREADY_EXISTS) when
/// it exists.
///
/// # Safety
/// `admin` is NULL or a live admin client; `name` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn spate_admin_create_topic(
    admin: *const spate_admin,
    name: *const c_char,
    partitions: i32,
    replication_factor: i16,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(admin, "admin") }?;
        // SAFETY: as above.
        let name = unsafe { str_argument(name, "name") }?;
        let topic = NewTopic {
            name: name.to_owned(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        };
        only_result(this.with(|admin| admin.create_topics(&[topic]))?)
    })
}

/// Deletes topic `name` and its data. SPATE_STATUS_KAFKA with code 3
/// (UNKNOWN_TOPIC_OR_PARTITION) when there is none.
///
/// # Safety
/// `admin` is NULL or a live admin client; `name` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn spate_admin_delete_topic(
    admin: *const spate_admin,
    name: *const c_char,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(admin, "admin") }?;
        // SAFETY: as above.
        let name = unsafe { str_argument(name, "name") }?;
        only_result(this.with(|admin| admin.delete_topics(&[name.to_owned()]))?)
    })
}

/// The names of the topics, sorted, internal ones (`__consumer_offsets`) left out, as a list
/// written to `*topics` that the caller frees with `spate_string_list_free`.
///
/// # Safety
/// `admin` is NULL or a live admin client; `topics` NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn spate_admin_list_topics(
    admin: *const spate_admin,
    topics: *mut *mut spate_string_list,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let this = unsafe { shared_handle(admin, "admin") }?;
        if topics.is_null() {
            return Err(fail(spate_status::InvalidArgument, "topics is NULL"));
        }
        let described = this.with(|admin| admin.describe_topics(None))?;
        let mut names: Vec<String> = described
            .into_iter()
            .filter(|topic| !topic.internal)
            .map(|topic| topic.name)
            .collect();
        names.sort();
        let list = Box::new(spate_string_list {
            strings: names
                .into_iter()
                .map(|name| CString::new(name.replace('\0', " ")).expect("NULs replaced"))
                .collect(),
        });
        // SAFETY: as above.
        unsafe { write_out(topics, Box::into_raw(list), "topics") }
    })
}

/// Frees an admin client. NULL is accepted and ignored.
///
/// # Safety
/// `admin` is NULL or a live admin client no other thread uses during or after the call.
#[no_mangle]
pub unsafe extern "C" fn spate_admin_free(admin: *mut spate_admin) {
    if !admin.is_null() {
        // SAFETY: made by Box::into_raw in spate_admin_new.
        drop(unsafe { Box::from_raw(admin) });
    }
}

/// How many strings the list holds (0 for NULL).
///
/// # Safety
/// `list` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn spate_string_list_count(list: *const spate_string_list) -> usize {
    // SAFETY: the caller's contract.
    unsafe { list.as_ref() }.map_or(0, |list| list.strings.len())
}

/// String `index` of the list (NUL-terminated, owned by the list), or NULL when out of range.
///
/// # Safety
/// `list` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn spate_string_list_get(
    list: *const spate_string_list,
    index: usize,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { list.as_ref() }
        .and_then(|list| list.strings.get(index))
        .map_or(ptr::null(), |string| string.as_ptr())
}

/// Frees a list. NULL is accepted and ignored.
///
/// # Safety
/// `list` is NULL or a list from Spate not freed yet.
#[no_mangle]
pub unsafe extern "C" fn spate_string_list_free(list: *mut spate_string_list) {
    if !list.is_null() {
        // SAFETY: made by Box::into_raw in this module.
        drop(unsafe { Box::from_raw(list) });
    }
}
