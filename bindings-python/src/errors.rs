//! Rust errors as the exceptions of `spate._errors` (defined in Python, so that they carry
//! attributes and docstrings like any Python exception).

use kafka_protocol::error::ResponseError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use spate_engine::client::config::ConfigError;
use spate_engine::client::producer::DeliveryError;
use spate_engine::client::ClientError;

/// An exception class of `spate._errors` by name.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || py.import("spate._errors").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// An exception of class `name` made with `args`.
fn raise<'py, A>(py: Python<'py>, name: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    match class(py, name).and_then(|class| class.call1(args)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(error) => error,
    }
}

/// `SpateError(message)`.
pub fn spate_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "SpateError", (message.into(),))
}

/// `StateError(message)`.
pub fn state_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "StateError", (message.into(),))
}

/// `TimeoutError(message)`.
pub fn timeout_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "TimeoutError", (message.into(),))
}

/// `BrokerError(message)`.
pub fn broker_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "BrokerError", (message.into(),))
}

/// `ConfigError(message, setting)`.
pub fn config_error(py: Python<'_>, message: impl Into<String>, setting: Option<&str>) -> PyErr {
    raise(py, "ConfigError", (message.into(), setting))
}

/// The exception for a Kafka error code: a subclass of `KafkaError` where one fits.
pub fn kafka_error(py: Python<'_>, code: i16, message: String) -> PyErr {
    let known = ResponseError::try_from_code(code);
    let class = match known {
        Some(ResponseError::UnknownTopicOrPartition) => "TopicNotFound",
        Some(ResponseError::TopicAlreadyExists) => "TopicAlreadyExists",
        Some(ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge) => {
            "MessageTooLarge"
        }
        Some(ResponseError::NotEnoughReplicas | ResponseError::NotEnoughReplicasAfterAppend) => {
            "NotEnoughReplicas"
        }
        _ => "KafkaError",
    };
    let name = match ClientError::from_code(code, None) {
        ClientError::Kafka { name, .. } => name,
        _ => format!("UNKNOWN_ERROR_{code}"),
    };
    let retriable = known.is_some_and(|error| error.is_retriable());
    raise(py, class, (message, code, name, retriable))
}

fn config_error_of(py: Python<'_>, error: &ConfigError) -> PyErr {
    let setting = match error {
        ConfigError::Unknown(name) => Some(name.as_str()),
        ConfigError::Missing(name) => Some(*name),
        ConfigError::Invalid { name, .. } => Some(name.as_str()),
        _ => None,
    };
    config_error(py, error.to_string(), setting)
}

/// The exception for a client error.
pub fn client_error(py: Python<'_>, error: ClientError) -> PyErr {
    let message = error.to_string();
    match error {
        ClientError::Kafka { code, .. } => kafka_error(py, code, message),
        ClientError::Connect { .. } | ClientError::Io { .. } => {
            raise(py, "ConnectionError", (message,))
        }
        ClientError::Config(error) => config_error_of(py, &error),
        ClientError::InvalidState(_) => raise(py, "StateError", (message,)),
        ClientError::Timeout(_) => raise(py, "TimeoutError", (message,)),
        ClientError::Unsupported(_) | ClientError::Protocol(_) => {
            raise(py, "ProtocolError", (message,))
        }
        _ => raise(py, "SpateError", (message,)),
    }
}

/// The exception for a record that was not delivered.
pub fn delivery_error(py: Python<'_>, error: &DeliveryError) -> PyErr {
    match error.code {
        Some(code) => kafka_error(py, code, error.message.clone()),
        None => raise(py, "SpateError", (error.message.clone(),)),
    }
}

/// Turns client results into Python results.
pub trait IntoPyResult<T> {
    /// The result with its error as an exception.
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, ClientError> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|error| client_error(py, error))
    }
}

impl<T> IntoPyResult<T> for Result<T, ConfigError> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|error| config_error_of(py, &error))
    }
}
