//! The client's errors.

use kafka_protocol::error::ResponseError;

/// What went wrong in a client call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker could not be reached.
    #[error(
        "cannot connect to {address}: {source} (is a broker running there? see --bootstrap-server)"
    )]
    Connect {
        /// The address tried.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed during a request.
    #[error("connection to {address} failed: {source}")]
    Io {
        /// The broker.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The broker answered with a Kafka error.
    #[error("{name} (Kafka error {code}){}", message.as_deref().map(|message| format!(": {message}")).unwrap_or_default())]
    Kafka {
        /// The error code.
        code: i16,
        /// Its name, as Kafka's documentation spells it.
        name: String,
        /// The broker's message, if it sent one.
        message: Option<String>,
    },
    /// The broker does not speak a version of an API this client needs.
    #[error("the broker does not support {0} at a version this client speaks")]
    Unsupported(String),
    /// A setting that cannot be used.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// A call the client cannot make in its present state (seeking a partition not assigned,
    /// subscribing without a group id, ...).
    #[error("{0}")]
    InvalidState(String),
    /// A message that could not be encoded or decoded.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A wait that ran out of time on the client's side (buffer.memory staying full, say).
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClientError {
    /// The error for a Kafka error code and optional message.
    pub fn from_code(code: i16, message: Option<String>) -> ClientError {
        let name = match ResponseError::try_from_code(code) {
            Some(error) => kafka_error_name(error),
            None => format!("UNKNOWN_ERROR_{code}"),
        };
        ClientError::Kafka {
            code,
            name,
            message: message.filter(|message| !message.is_empty()),
        }
    }

    /// The Kafka error code, when the broker answered with one.
    pub fn code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is the broker's `error`.
    pub fn is(&self, error: ResponseError) -> bool {
        self.code() == Some(error.code())
    }

    /// Whether the connection is gone (not reached, or failed during a request).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Io { .. })
    }

    /// `Ok` for code 0, else the error.
    ///
    /// # Errors
    /// The error for a non-zero code.
    pub fn check(code: i16, message: Option<String>) -> Result<(), ClientError> {
        if code == 0 {
            Ok(())
        } else {
            Err(ClientError::from_code(code, message))
        }
    }
}

/// `TopicAlreadyExists` as `TOPIC_ALREADY_EXISTS`, Kafka's spelling.
fn kafka_error_name(error: ResponseError) -> String {
    let debug = format!("{error:?}");
    let mut name = String::with_capacity(debug.len() + 8);
    for (index, character) in debug.chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(character.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_errors_read_as_kafka_names_them() {
        let error = ClientError::from_code(36, Some("topic \"t\" exists".into()));
        assert_eq!(
            error.to_string(),
            "TOPIC_ALREADY_EXISTS (Kafka error 36): topic \"t\" exists"
        );
        assert_eq!(
            ClientError::from_code(3, None).to_string(),
            "UNKNOWN_TOPIC_OR_PARTITION (Kafka error 3)"
        );
        assert!(ClientError::check(0, None).is_ok());
    }
}
