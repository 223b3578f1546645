//! Statuses, the per-thread last error, the panic guard and argument checks shared by every
//! exported function.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;

use bytes::Bytes;
use spate_engine::client::config::ConfigError;
use spate_engine::client::ClientError;

/// Outcome of a call. 0 is success; `spate_last_error_message()` describes any other.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum spate_status {
    /// Success.
    Ok = 0,
    /// A NULL pointer, a string that is not UTF-8, or another bad argument.
    InvalidArgument = 1,
    /// An I/O error (a missing directory, a permission problem, ...).
    Io = 2,
    /// A bug in Spate: an internal panic was caught at the API boundary.
    Internal = 3,
    /// An unknown setting, or a value a setting does not take.
    Config = 4,
    /// No broker could be reached, or a connection failed.
    Connect = 5,
    /// The broker refused: `spate_last_error_code()` gives the Kafka error code (3 is
    /// UNKNOWN_TOPIC_OR_PARTITION, 10 MESSAGE_TOO_LARGE, ...).
    Kafka = 6,
    /// A wait ran out of time (a flush with records still in flight, say).
    TimedOut = 7,
    /// A call the object cannot take in its state: closed, a partition not assigned, a
    /// group call without `group.id`.
    State = 8,
    /// A broker answer the client could not use, or an API version it does not speak.
    Protocol = 9,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    static LAST_CODE: Cell<i16> = const { Cell::new(0) };
}

/// Records `message` as this thread's last error, with no Kafka code.
pub fn set_last_error(message: impl Into<String>) {
    set_last_error_with_code(message, 0);
}

fn set_last_error_with_code(message: impl Into<String>, code: i16) {
    let message = message.into().replace('\0', " ");
    let message = CString::new(message).expect("NULs replaced");
    LAST_ERROR.with(|last| *last.borrow_mut() = Some(message));
    LAST_CODE.with(|last| last.set(code));
}

/// Records `message` and returns `status`, for `return Err(fail(..))`.
pub fn fail(status: spate_status, message: impl Into<String>) -> spate_status {
    set_last_error(message);
    status
}

/// Records a client error and returns its status.
pub fn client_failure(error: ClientError) -> spate_status {
    let message = error.to_string();
    let status = match &error {
        ClientError::Kafka { code, .. } => {
            set_last_error_with_code(message, *code);
            return spate_status::Kafka;
        }
        ClientError::Connect { .. } | ClientError::Io { .. } => spate_status::Connect,
        ClientError::Config(_) => spate_status::Config,
        ClientError::InvalidState(_) => spate_status::State,
        ClientError::Timeout(_) => spate_status::TimedOut,
        ClientError::Unsupported(_) | ClientError::Protocol(_) => spate_status::Protocol,
        _ => spate_status::Internal,
    };
    set_last_error(message);
    status
}

/// Records a configuration error and returns [`spate_status::Config`].
pub fn config_failure(error: &ConfigError) -> spate_status {
    fail(spate_status::Config, error.to_string())
}

/// Runs `body`, turning a panic into [`spate_status::Internal`] so that it never unwinds into C.
pub fn guard(body: impl FnOnce() -> Result<(), spate_status>) -> spate_status {
    guard_status(|| match body() {
        Ok(()) => spate_status::Ok,
        Err(status) => status,
    })
}

/// As [`guard`], for a body that returns its status itself.
pub fn guard_status(body: impl FnOnce() -> spate_status) -> spate_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(_) => fail(
            spate_status::Internal,
            "internal error: Spate panicked; please report this as a bug",
        ),
    }
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `pointer` is NULL or a NUL-terminated string valid for the duration of the call.
pub unsafe fn str_argument<'a>(
    pointer: *const c_char,
    name: &str,
) -> Result<&'a str, spate_status> {
    if pointer.is_null() {
        return Err(fail(
            spate_status::InvalidArgument,
            format!("{name} is NULL"),
        ));
    }
    // SAFETY: the caller promises a valid NUL-terminated string.
    unsafe { CStr::from_ptr(pointer) }.to_str().map_err(|_| {
        fail(
            spate_status::InvalidArgument,
            format!("{name} is not UTF-8"),
        )
    })
}

/// A path argument.
///
/// # Safety
/// As [`str_argument`].
pub unsafe fn path_argument<'a>(
    pointer: *const c_char,
    name: &str,
) -> Result<&'a Path, spate_status> {
    // SAFETY: forwarded.
    unsafe { str_argument(pointer, name) }.map(Path::new)
}

/// Bytes given as pointer and length: NULL with length 0 is "no bytes" (a null key or value).
///
/// # Safety
/// `pointer` is NULL or valid for reads of `len` bytes for the duration of the call.
pub unsafe fn bytes_argument(
    pointer: *const u8,
    len: usize,
    name: &str,
) -> Result<Option<Bytes>, spate_status> {
    if pointer.is_null() {
        if len != 0 {
            return Err(fail(
                spate_status::InvalidArgument,
                format!("{name} is NULL with a length of {len}"),
            ));
        }
        return Ok(None);
    }
    // SAFETY: the caller promises `len` readable bytes.
    Ok(Some(Bytes::copy_from_slice(unsafe {
        std::slice::from_raw_parts(pointer, len)
    })))
}

/// A handle argument.
///
/// # Safety
/// `pointer` is NULL or a live handle of this type, not used by another thread in a way its
/// documentation forbids.
pub unsafe fn handle<'a, T>(pointer: *mut T, name: &str) -> Result<&'a mut T, spate_status> {
    // SAFETY: the caller's contract.
    unsafe { pointer.as_mut() }
        .ok_or_else(|| fail(spate_status::InvalidArgument, format!("{name} is NULL")))
}

/// A shared handle argument.
///
/// # Safety
/// As [`handle`].
pub unsafe fn shared_handle<'a, T>(pointer: *const T, name: &str) -> Result<&'a T, spate_status> {
    // SAFETY: the caller's contract.
    unsafe { pointer.as_ref() }
        .ok_or_else(|| fail(spate_status::InvalidArgument, format!("{name} is NULL")))
}

/// Writes `value` through an out pointer.
///
/// # Safety
/// `out` is NULL or writable for one `T`.
pub unsafe fn write_out<T>(out: *mut T, value: T, name: &str) -> Result<(), spate_status> {
    if out.is_null() {
        return Err(fail(
            spate_status::InvalidArgument,
            format!("{name} is NULL"),
        ));
    }
    // SAFETY: checked non-NULL; the caller promises it is writable.
    unsafe { out.write(value) };
    Ok(())
}

/// The version of libspate, as a static NUL-terminated string. Never NULL; do not free it.
#[no_mangle]
pub extern "C" fn spate_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread, or NULL if none failed yet. The string
/// is owned by Spate and valid until the next failing call on the same thread.
#[no_mangle]
pub extern "C" fn spate_last_error_message() -> *const c_char {
    LAST_ERROR.with(|last| {
        last.borrow()
            .as_ref()
            .map_or(ptr::null(), |message| message.as_ptr())
    })
}

/// The Kafka error code of the last failed call on this thread when it failed with
/// SPATE_STATUS_KAFKA (3 for UNKNOWN_TOPIC_OR_PARTITION, ...), else 0.
#[no_mangle]
pub extern "C" fn spate_last_error_code() -> i16 {
    LAST_CODE.with(Cell::get)
}

/// Frees a string that Spate returned. NULL is accepted and ignored.
///
/// # Safety
/// `string` is NULL or was returned by a Spate function and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn spate_string_free(string: *mut c_char) {
    if !string.is_null() {
        // SAFETY: the string came from CString::into_raw in this library.
        drop(unsafe { CString::from_raw(string) });
    }
}
