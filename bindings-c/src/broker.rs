//! `spate_broker`: a Spate broker running inside the application, on threads it owns.

use std::ffi::{c_char, CString};
use std::net::SocketAddr;
use std::path::PathBuf;

use spate_engine::broker::config::ServeSettings;
use spate_engine::runtime::server::{start, Placement, RunningBroker};

use crate::status::{fail, guard, path_argument, spate_status, write_out};

/// An embedded broker: a single-node Spate broker on 127.0.0.1 with one shard.
///
/// Ownership: made by `spate_broker_start`, stopped and freed by `spate_broker_stop`.
/// Thread safety: `spate_broker_bootstrap_servers` may be called from any thread; stop it
/// from one thread, once.
pub struct spate_broker {
    running: Option<RunningBroker>,
    address: CString,
    /// A data directory made for this broker, removed when it stops.
    temporary: Option<tempfile::TempDir>,
}

/// Starts a broker listening on 127.0.0.1:`port` (0: a free port) with its data in
/// `data_dir` (NULL: a temporary directory removed when it stops), and writes it to
/// `*broker` once it accepts connections. Groups start without the initial rebalance delay,
/// as test brokers usually do. SPATE_STATUS_IO when the directory is unusable or held by
/// another broker, or the port is taken (the message says which).
///
/// glommio needs io_uring and 512 KiB of locked memory; the broker raises RLIMIT_MEMLOCK
/// itself when it may.
///
/// # Safety
/// `data_dir` is NULL or NUL-terminated; `broker` NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn spate_broker_start(
    data_dir: *const c_char,
    port: u16,
    broker: *mut *mut spate_broker,
) -> spate_status {
    guard(|| {
        if broker.is_null() {
            return Err(fail(spate_status::InvalidArgument, "broker is NULL"));
        }
        let (dir, temporary) = if data_dir.is_null() {
            let temporary = tempfile::Builder::new()
                .prefix("spate-embedded-")
                .tempdir()
                .map_err(|error| {
                    fail(spate_status::Io, format!("no temporary directory: {error}"))
                })?;
            (temporary.path().to_owned(), Some(temporary))
        } else {
            // SAFETY: forwarded from the caller's contract.
            (
                PathBuf::from(unsafe { path_argument(data_dir, "data_dir") }?),
                None,
            )
        };
        let settings = ServeSettings {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            data_dir: Some(dir),
            cores: Some(1),
            group_initial_rebalance_delay_ms: Some(0),
            ..ServeSettings::default()
        };
        let config = settings
            .resolve()
            .map_err(|error| fail(spate_status::Config, error.to_string()))?;
        let running = start(config, Placement::Unbound)
            .map_err(|error| fail(spate_status::Io, error.to_string()))?;
        let address = CString::new(running.listen_address().to_string()).expect("no NUL");
        let boxed = Box::new(spate_broker {
            running: Some(running),
            address,
            temporary,
        });
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(broker, Box::into_raw(boxed), "broker") }
    })
}

/// The broker's address as `"127.0.0.1:PORT"`, for `bootstrap.servers`: owned by the broker,
/// valid until `spate_broker_stop`. NULL for a NULL broker.
///
/// # Safety
/// `broker` is NULL or a live broker.
#[no_mangle]
pub unsafe extern "C" fn spate_broker_bootstrap_servers(
    broker: *const spate_broker,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { broker.as_ref() }.map_or(std::ptr::null(), |broker| broker.address.as_ptr())
}

/// Stops the broker (finishing in-flight requests and syncing every partition), removes a
/// temporary data directory and frees the broker. NULL is accepted (SPATE_STATUS_OK).
///
/// # Safety
/// `broker` is NULL or a live broker that no other thread uses during or after the call.
#[no_mangle]
pub unsafe extern "C" fn spate_broker_stop(broker: *mut spate_broker) -> spate_status {
    if broker.is_null() {
        return spate_status::Ok;
    }
    guard(|| {
        // SAFETY: made by Box::into_raw in spate_broker_start; the caller gives it up.
        let mut this = unsafe { Box::from_raw(broker) };
        let stopped = this.running.take().map_or(Ok(()), RunningBroker::stop);
        drop(this.temporary.take());
        stopped.map_err(|error| fail(spate_status::Io, error.to_string()))
    })
}
