//! `spate.EmbeddedBroker`: a real broker on threads of the Python process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString, PyTuple};
use spate_engine::broker::config::ServeSettings;
use spate_engine::runtime::server::{start, Placement, RunningBroker, ServeError};

use crate::errors::{broker_error, config_error};
use crate::sync::lock;

/// A Spate broker running inside this Python process, on threads it owns.
///
/// `EmbeddedBroker(data_dir=None, port=0, host="127.0.0.1", **config)` starts at once and
/// serves until `stop()` (or the end of a `with` block). `port=0` picks a free port; the
/// address is in `bootstrap_servers`. Without `data_dir`, the data lives in a temporary
/// directory removed on stop. `config` takes `spate serve`'s settings by their TOML names
/// (`num_partitions=3`, `auto_create_topics=False`, `cores=2`,
/// `topic_defaults={"log.retention.ms": 60000}`). Unlike `spate serve`, it runs one shard by
/// default and starts groups without `group_initial_rebalance_delay_ms` (0, as test brokers
/// usually do). Several brokers may run in one process on different ports.
#[pyclass(module = "spate._native", frozen)]
pub struct EmbeddedBroker {
    state: Arc<BrokerState>,
    address: SocketAddr,
    data_dir: PathBuf,
}

/// A running broker and its temporary directory, shared with [`LIVE`] so that brokers still
/// running when the interpreter exits are stopped then.
struct BrokerState {
    running: Mutex<Option<RunningBroker>>,
    temporary: Mutex<Option<tempfile::TempDir>>,
}

impl BrokerState {
    /// Stops the broker, then removes its temporary directory; `None` when it was stopped
    /// already (or is being stopped by another thread, which removes the directory).
    fn stop(&self) -> Option<Result<(), ServeError>> {
        let running = lock(&self.running).take()?;
        let stopped = running.stop();
        drop(lock(&self.temporary).take());
        Some(stopped)
    }
}

/// Every embedded broker of the process, for [`stop_embedded_brokers`].
static LIVE: Mutex<Vec<Weak<BrokerState>>> = Mutex::new(Vec::new());

/// Stops every embedded broker still running (registered with `atexit` by the package, so
/// that a script that never calls `stop()` still syncs its data and removes its temporary
/// directories on exit).
#[pyfunction]
pub fn stop_embedded_brokers(py: Python<'_>) {
    let live: Vec<Arc<BrokerState>> = lock(&LIVE)
        .drain(..)
        .filter_map(|state| state.upgrade())
        .collect();
    py.detach(move || {
        for state in live {
            drop(state.stop());
        }
    });
}

#[pymethods]
impl EmbeddedBroker {
    #[new]
    #[pyo3(signature = (data_dir=None, port=0, host="127.0.0.1", **config))]
    fn new(
        py: Python<'_>,
        data_dir: Option<PathBuf>,
        port: u16,
        host: &str,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<EmbeddedBroker> {
        let ip: IpAddr = host.parse().map_err(|_| {
            config_error(
                py,
                format!("host is an IP address, not {host:?}"),
                Some("host"),
            )
        })?;
        let mut table = toml::Table::new();
        if let Some(config) = config {
            for (name, value) in config.iter() {
                let name: String = name.extract()?;
                let name = name.replace('.', "_");
                table.insert(name.clone(), toml_value(py, &name, &value)?);
            }
        }
        // One setting at a time first, so that an error names the setting at fault.
        for (name, value) in &table {
            let single = toml::Table::from_iter([(name.clone(), value.clone())]);
            if let Err(error) = toml::Value::Table(single).try_into::<ServeSettings>() {
                return Err(config_error(
                    py,
                    format!("EmbeddedBroker setting {name}: {}", error.message()),
                    Some(name),
                ));
            }
        }
        let settings: ServeSettings =
            toml::Value::Table(table)
                .try_into()
                .map_err(|error: toml::de::Error| {
                    config_error(py, format!("EmbeddedBroker: {}", error.message()), None)
                })?;
        let temporary = match &data_dir {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("spate-embedded-")
                    .tempdir()
                    .map_err(|error| {
                        broker_error(py, format!("no temporary directory: {error}"))
                    })?,
            ),
        };
        let dir = data_dir
            .clone()
            .unwrap_or_else(|| temporary.as_ref().expect("made above").path().to_owned());
        let defaults = ServeSettings {
            cores: Some(1),
            group_initial_rebalance_delay_ms: Some(0),
            ..ServeSettings::default()
        };
        let mut settings = settings.over(defaults);
        settings.listen = Some(SocketAddr::new(ip, port));
        settings.data_dir = Some(dir);
        let config = settings
            .resolve()
            .map_err(|error| config_error(py, format!("EmbeddedBroker: {error}"), None))?;
        let running = py
            .detach(|| start(config, Placement::Unbound))
            .map_err(|error| broker_error(py, error.to_string()))?;
        let address = running.listen_address();
        let data_dir = running.data_dir().to_owned();
        let state = Arc::new(BrokerState {
            running: Mutex::new(Some(running)),
            temporary: Mutex::new(temporary),
        });
        let mut live = lock(&LIVE);
        live.retain(|state| state.strong_count() > 0);
        live.push(Arc::downgrade(&state));
        drop(live);
        Ok(EmbeddedBroker {
            state,
            address,
            data_dir,
        })
    }

    /// `"host:port"` for the clients' `bootstrap_servers`.
    #[getter]
    fn bootstrap_servers(&self) -> String {
        self.address.to_string()
    }

    /// The port the broker listens on.
    #[getter]
    fn port(&self) -> u16 {
        self.address.port()
    }

    /// The data directory (absolute).
    #[getter]
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// Whether the broker is serving.
    #[getter]
    fn running(&self) -> bool {
        lock(&self.state.running).is_some()
    }

    /// Stops accepting, finishes in-flight requests, syncs every partition and stops; then
    /// removes a temporary data directory. Stopping twice is harmless.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let state = Arc::clone(&self.state);
        match py.detach(move || state.stop()) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(broker_error(py, error.to_string())),
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<EmbeddedBroker {} data_dir={}{}>",
            self.address,
            self.data_dir.display(),
            if lock(&self.state.running).is_some() {
                ""
            } else {
                " stopped"
            }
        )
    }
}

impl Drop for EmbeddedBroker {
    /// A broker collected without `stop` stops with the GIL released (its threads do not need
    /// it, but other Python threads should run meanwhile).
    fn drop(&mut self) {
        if lock(&self.state.running).is_some() {
            let state = Arc::clone(&self.state);
            Python::attach(|py| py.detach(move || drop(state.stop())));
        }
    }
}

/// A Python setting as TOML, for `ServeSettings`.
fn toml_value(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<toml::Value> {
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(toml::Value::Boolean(flag.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        return Ok(toml::Value::Integer(value.extract()?));
    }
    if value.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(value.extract()?));
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(toml::Value::String(text.to_cow()?.into_owned()));
    }
    if let Ok(path) = value.extract::<PathBuf>() {
        return Ok(toml::Value::String(path.display().to_string()));
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        // A table of strings (`topic_defaults`): values as text.
        let mut table = toml::Table::new();
        for (key, item) in dict.iter() {
            let key: String = key.extract()?;
            let text = crate::convert::property_value(py, &key, &item)?;
            table.insert(key, toml::Value::String(text));
        }
        return Ok(toml::Value::Table(table));
    }
    Err(config_error(
        py,
        format!("{name} takes a number, string, boolean or dict"),
        Some(name),
    ))
}
