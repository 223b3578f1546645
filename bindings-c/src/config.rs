//! `spate_config`: settings by Kafka's property names, checked as they are set.

use std::collections::BTreeMap;
use std::ffi::c_char;

use spate_engine::client::config::{CommonConfig, ConfigError, ConsumerConfig, ProducerConfig};

use crate::status::{config_failure, fail, guard, handle, spate_status, str_argument};

/// Settings for a producer, consumer or admin client, by Kafka's property names
/// (`bootstrap.servers`, `linger.ms`, `group.id`, ...).
///
/// Ownership: made by `spate_config_new`, freed by `spate_config_free`; the `_new` functions
/// of the clients copy what they need, so a config may be freed or reused after them.
/// Thread safety: not to be changed by two threads at once; reading it from several (making
/// clients) is safe.
#[derive(Debug, Default, Clone)]
pub struct spate_config {
    properties: BTreeMap<String, String>,
}

/// Which clients take a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    Producer,
    Consumer,
    Admin,
}

/// Whether `client` knows the setting: `Ok(false)` when it does not, the error when it does
/// but the value is wrong.
fn accepts(client: Client, name: &str, value: &str) -> Result<bool, ConfigError> {
    let mut properties = vec![(name.to_owned(), value.to_owned())];
    if name != "bootstrap.servers" {
        properties.push(("bootstrap.servers".to_owned(), "probe:1".to_owned()));
    }
    let result = match client {
        Client::Producer => ProducerConfig::from_properties(properties).map(drop),
        Client::Consumer => ConsumerConfig::from_properties(properties).map(drop),
        Client::Admin => CommonConfig::from_properties(properties).map(drop),
    };
    match result {
        Ok(()) => Ok(true),
        Err(ConfigError::Unknown(unknown)) if unknown == name => Ok(false),
        Err(error) => Err(error),
    }
}

impl spate_config {
    /// The settings `client` takes (others are for other kinds of client and ignored, as
    /// librdkafka ignores consumer settings in a producer).
    pub(crate) fn properties_for(&self, client: Client) -> Vec<(String, String)> {
        self.properties
            .iter()
            .filter(|(name, value)| accepts(client, name, value).unwrap_or(true))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

/// A new, empty config. Never NULL. Free it with `spate_config_free`.
#[no_mangle]
pub extern "C" fn spate_config_new() -> *mut spate_config {
    Box::into_raw(Box::default())
}

/// Sets `name` to `value` (both NUL-terminated, copied). Returns SPATE_STATUS_CONFIG for a
/// name no Spate client knows or a value the setting does not take (the message names the
/// setting), SPATE_STATUS_INVALID_ARGUMENT for NULL arguments.
///
/// # Safety
/// `config` is NULL or a live config not used by another thread during the call; `name` and
/// `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn spate_config_set(
    config: *mut spate_config,
    name: *const c_char,
    value: *const c_char,
) -> spate_status {
    guard(|| {
        // SAFETY: forwarded from the caller's contract.
        let config = unsafe { handle(config, "config") }?;
        // SAFETY: as above.
        let name = unsafe { str_argument(name, "name") }?.trim();
        // SAFETY: as above.
        let value = unsafe { str_argument(value, "value") }?.trim();
        let mut known = false;
        for client in [Client::Producer, Client::Consumer, Client::Admin] {
            match accepts(client, name, value) {
                Ok(accepted) => known |= accepted,
                Err(error) => return Err(config_failure(&error)),
            }
        }
        if !known {
            return Err(fail(
                spate_status::Config,
                format!("unknown setting {name:?}"),
            ));
        }
        config.properties.insert(name.to_owned(), value.to_owned());
        Ok(())
    })
}

/// Frees a config. NULL is accepted and ignored.
///
/// # Safety
/// `config` is NULL or a config from `spate_config_new` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn spate_config_free(config: *mut spate_config) {
    if !config.is_null() {
        // SAFETY: made by Box::into_raw in spate_config_new.
        drop(unsafe { Box::from_raw(config) });
    }
}
