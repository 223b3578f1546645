//! Client quotas, Kafka's model (KIP-13, KIP-55): produce and fetch byte rates per user and
//! client id, with defaults, resolved by Kafka's precedence, measured with a token bucket,
//! and enforced by throttling (the response carries `throttle_time_ms` and the connection is
//! muted for that long), never by failing requests.
//!
//! Pure: time comes in as `now_ms`. The broker keeps one [`QuotaTracker`] per process, so that
//! a quota holds across all of its cores.

use std::collections::BTreeMap;
use std::fmt;

/// A user or client id named by a quota entity: one name, or the default for all names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityName {
    /// Every user or client id without a quota of its own (Kafka's `<default>`).
    Default,
    /// This one.
    Named(String),
}

impl EntityName {
    /// From the wire: a null name is the default.
    pub fn from_wire(name: Option<&str>) -> EntityName {
        match name {
            None => EntityName::Default,
            Some(name) => EntityName::Named(name.to_owned()),
        }
    }

    /// To the wire.
    pub fn to_wire(&self) -> Option<&str> {
        match self {
            EntityName::Default => None,
            EntityName::Named(name) => Some(name),
        }
    }

    /// As stored in the catalog: `<default>` for the default, as Kafka writes it.
    pub fn to_stored(&self) -> String {
        match self {
            EntityName::Default => DEFAULT_NAME.to_owned(),
            EntityName::Named(name) => name.clone(),
        }
    }

    /// From the catalog.
    pub fn from_stored(name: &str) -> EntityName {
        if name == DEFAULT_NAME {
            EntityName::Default
        } else {
            EntityName::Named(name.to_owned())
        }
    }
}

const DEFAULT_NAME: &str = "<default>";

/// Who a quota is for: a user, a client id, or both (Kafka's quota entity).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuotaEntity {
    /// The user, if the entity names one.
    pub user: Option<EntityName>,
    /// The client id, if the entity names one.
    pub client_id: Option<EntityName>,
}

impl fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(user) = &self.user {
            parts.push(format!("user={}", user.to_stored()));
        }
        if let Some(client_id) = &self.client_id {
            parts.push(format!("client-id={}", client_id.to_stored()));
        }
        f.write_str(&parts.join(","))
    }
}

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaKind {
    /// Bytes of records produced per second (`producer_byte_rate`).
    Produce,
    /// Bytes of records fetched per second (`consumer_byte_rate`).
    Fetch,
    /// Time the broker spends on the client's requests, in percent of one core
    /// (`request_percentage`; 200 is two cores' worth).
    Request,
}

impl QuotaKind {
    /// Kafka's config key.
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => "producer_byte_rate",
            QuotaKind::Fetch => "consumer_byte_rate",
            QuotaKind::Request => "request_percentage",
        }
    }

    /// A configured value as a rate of what [`QuotaTracker::record`] is given: bytes per
    /// second, or for request time microseconds per second.
    pub fn rate_of(self, value: f64) -> f64 {
        match self {
            QuotaKind::Produce | QuotaKind::Fetch => value,
            // value% of one core's second.
            QuotaKind::Request => value * 10_000.0,
        }
    }

    /// The kind of a config key, if Spate enforces it.
    pub fn of_key(key: &str) -> Option<QuotaKind> {
        match key {
            "producer_byte_rate" => Some(QuotaKind::Produce),
            "consumer_byte_rate" => Some(QuotaKind::Fetch),
            "request_percentage" => Some(QuotaKind::Request),
            _ => None,
        }
    }
}

/// A quota value, compared bit for bit so that catalogs have an equality.
#[derive(Debug, Clone, Copy)]
pub struct QuotaValue(pub f64);

impl PartialEq for QuotaValue {
    fn eq(&self, other: &QuotaValue) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for QuotaValue {}

/// Every configured quota: entity to config key to value.
pub type QuotaConfigs = BTreeMap<QuotaEntity, BTreeMap<String, QuotaValue>>;

/// Changes to one entity's quotas: a key set to a value, or removed (`None`).
pub type QuotaChanges = Vec<(String, Option<f64>)>;

/// One entity's quotas as DescribeClientQuotas lists them: key to value.
pub type QuotaValues = BTreeMap<String, f64>;

/// Checks a quota config key and value as AlterClientQuotas gets them.
///
/// # Errors
/// A sentence for an unknown key or a value that is not a positive number.
pub fn check_quota(key: &str, value: f64) -> Result<(), String> {
    if QuotaKind::of_key(key).is_none() {
        return Err(format!(
            "unknown or unsupported quota key {key:?}: Spate enforces producer_byte_rate, \
             consumer_byte_rate and request_percentage"
        ));
    }
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{key} must be a positive number, not {value}"));
    }
    Ok(())
}

/// The quota that applies to `user` and `client_id` for `kind`, by Kafka's precedence (most
/// specific first), and the sensor it is measured with: clients whose quota comes from the
/// same entity share a sensor only where the entity names them as a group (a user's quota is
/// shared by all of the user's clients; a default client-id quota is each client's own).
pub fn resolve(
    configs: &QuotaConfigs,
    user: &str,
    client_id: &str,
    kind: QuotaKind,
) -> Option<(f64, SensorKey)> {
    use EntityName::{Default, Named};
    let named_user = || Some(Named(user.to_owned()));
    let named_client = || Some(Named(client_id.to_owned()));
    let candidates = [
        (named_user(), named_client()),
        (named_user(), Some(Default)),
        (named_user(), None),
        (Some(Default), named_client()),
        (Some(Default), Some(Default)),
        (Some(Default), None),
        (None, named_client()),
        (None, Some(Default)),
    ];
    for (entity_user, entity_client) in candidates {
        let entity = QuotaEntity {
            user: entity_user,
            client_id: entity_client,
        };
        if let Some(value) = configs
            .get(&entity)
            .and_then(|values| values.get(kind.key()))
        {
            let sensor = SensorKey {
                kind,
                user: entity.user.as_ref().map(|_| user.to_owned()),
                client_id: entity.client_id.as_ref().map(|_| client_id.to_owned()),
            };
            return Some((value.0, sensor));
        }
    }
    None
}

/// What one sensor measures: a kind of traffic of a user, a client id, or both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SensorKey {
    /// Produce or fetch bytes.
    pub kind: QuotaKind,
    /// The user, when the quota is per user.
    pub user: Option<String>,
    /// The client id, when the quota is per client id.
    pub client_id: Option<String>,
}

/// How many seconds of its quota a client may send at once before it is throttled: the
/// bucket's depth.
pub const BURST_SECONDS: f64 = 2.0;
/// The longest throttle given at once (ms); a client further behind is throttled again on
/// its next request.
pub const THROTTLE_MS_MAX: i64 = 30_000;
/// A sensor not used for this long is forgotten.
const SENSOR_IDLE_MS: i64 = 60 * 60 * 1_000;

/// A token bucket: `quota` bytes a second flow in, up to [`BURST_SECONDS`] of them; traffic
/// takes them out, and a bucket in debt is paid back by waiting. Kafka measures client
/// quotas with a rate sampled over 11 one-second windows instead; a bucket gives the same
/// long-run rate without the burst of ten seconds' worth that a fresh (or just emptied)
/// window lets through, which made clients alternate between a burst and ten silent seconds.
#[derive(Debug, Clone)]
struct Bucket {
    /// Bytes that may still go without waiting; negative when in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated_ms: i64,
}

impl Bucket {
    fn full(quota: f64, now_ms: i64) -> Bucket {
        Bucket {
            tokens: quota * BURST_SECONDS,
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, quota: f64, now_ms: i64) {
        let elapsed_ms = (now_ms - self.updated_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed_ms * quota / 1_000.0).min(quota * BURST_SECONDS);
        self.updated_ms = self.updated_ms.max(now_ms);
    }
}

/// The buckets of every sensor of a broker.
#[derive(Debug, Default)]
pub struct QuotaTracker {
    buckets: BTreeMap<SensorKey, Bucket>,
}

impl QuotaTracker {
    /// Takes `amount` from `sensor`'s bucket and returns how long the client must wait (ms)
    /// for the bucket to be out of debt (0 when it is not in debt).
    pub fn record(&mut self, sensor: &SensorKey, quota: f64, amount: f64, now_ms: i64) -> i64 {
        let bucket = self
            .buckets
            .entry(sensor.clone())
            .or_insert_with(|| Bucket::full(quota, now_ms));
        bucket.refill(quota, now_ms);
        bucket.tokens -= amount;
        if bucket.tokens >= 0.0 {
            return 0;
        }
        ((-bucket.tokens / quota * 1_000.0).ceil() as i64).min(THROTTLE_MS_MAX)
    }

    /// Gives back an amount taken at `now_ms` (a fetch answered empty because it was
    /// throttled, as Kafka does).
    pub fn unrecord(&mut self, sensor: &SensorKey, amount: f64, now_ms: i64) {
        if let Some(bucket) = self.buckets.get_mut(sensor) {
            bucket.tokens += amount;
            bucket.updated_ms = bucket.updated_ms.max(now_ms);
        }
    }

    /// Forgets sensors idle for an hour.
    pub fn forget_idle(&mut self, now_ms: i64) {
        self.buckets
            .retain(|_, bucket| now_ms - bucket.updated_ms < SENSOR_IDLE_MS);
    }

    /// Sensors tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no sensor is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EntityName::{Default, Named};

    fn configs(entries: &[(Option<EntityName>, Option<EntityName>, f64)]) -> QuotaConfigs {
        entries
            .iter()
            .map(|(user, client_id, value)| {
                (
                    QuotaEntity {
                        user: user.clone(),
                        client_id: client_id.clone(),
                    },
                    [("producer_byte_rate".to_owned(), QuotaValue(*value))].into(),
                )
            })
            .collect()
    }

    fn named(name: &str) -> Option<EntityName> {
        Some(Named(name.to_owned()))
    }

    #[test]
    fn the_most_specific_entity_wins_in_kafkas_order() {
        let all = configs(&[
            (None, Some(Default), 8.0),
            (None, named("app"), 7.0),
            (Some(Default), None, 6.0),
            (Some(Default), Some(Default), 5.0),
            (Some(Default), named("app"), 4.0),
            (named("alice"), None, 3.0),
            (named("alice"), Some(Default), 2.0),
            (named("alice"), named("app"), 1.0),
        ]);
        let quota = |configs: &QuotaConfigs, user, client| {
            resolve(configs, user, client, QuotaKind::Produce).map(|(value, _)| value)
        };
        assert_eq!(quota(&all, "alice", "app"), Some(1.0));
        assert_eq!(quota(&all, "alice", "other"), Some(2.0));
        assert_eq!(quota(&all, "bob", "app"), Some(4.0));
        assert_eq!(quota(&all, "bob", "other"), Some(5.0));
        let clients_only = configs(&[(None, Some(Default), 8.0), (None, named("app"), 7.0)]);
        assert_eq!(quota(&clients_only, "bob", "app"), Some(7.0));
        assert_eq!(quota(&clients_only, "bob", "other"), Some(8.0));
        assert_eq!(
            resolve(&clients_only, "bob", "app", QuotaKind::Fetch),
            None,
            "each kind on its own"
        );
        assert_eq!(quota(&QuotaConfigs::new(), "bob", "app"), None);
    }

    #[test]
    fn a_default_client_quota_is_each_clients_own_and_a_user_quota_is_shared() {
        let per_client = configs(&[(None, Some(Default), 8.0)]);
        let (_, a) = resolve(&per_client, "u", "a", QuotaKind::Produce).unwrap();
        let (_, b) = resolve(&per_client, "u", "b", QuotaKind::Produce).unwrap();
        assert_ne!(a, b);
        let per_user = configs(&[(named("u"), None, 8.0)]);
        let (_, a) = resolve(&per_user, "u", "a", QuotaKind::Produce).unwrap();
        let (_, b) = resolve(&per_user, "u", "b", QuotaKind::Produce).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_client_over_its_rate_is_throttled_just_long_enough() {
        let sensor = SensorKey {
            kind: QuotaKind::Produce,
            user: None,
            client_id: Some("app".into()),
        };
        let mut tracker = QuotaTracker::default();
        // A 1000 bytes/s quota lets 2000 bytes go at once.
        assert_eq!(tracker.record(&sensor, 1_000.0, 2_000.0, 0), 0);
        // 500 more are 500 in debt: half a second.
        assert_eq!(tracker.record(&sensor, 1_000.0, 500.0, 0), 500);
        // A client that waits and sends at the quota is not throttled again...
        for step in 1..=20 {
            assert_eq!(
                tracker.record(&sensor, 1_000.0, 100.0, 500 + step * 100),
                0,
                "step {step}"
            );
        }
        // ...and one that sends twice the quota waits for the excess.
        let mut waited = 0;
        let mut now = 2_500;
        for _ in 0..20 {
            let throttle = tracker.record(&sensor, 1_000.0, 200.0, now);
            waited += throttle;
            now += 100 + throttle;
        }
        // 4000 bytes take 4 s at 1000 bytes/s; the last send is followed by its 100 ms step.
        assert_eq!(now - 2_500, 4_100);
        assert!(waited > 0);
        // Under the quota from the start: never throttled.
        let other = SensorKey {
            client_id: Some("slow".into()),
            ..sensor.clone()
        };
        for step in 0..100 {
            assert_eq!(tracker.record(&other, 1_000.0, 90.0, step * 100), 0);
        }
        let fresh = SensorKey {
            client_id: Some("fresh".into()),
            ..sensor.clone()
        };
        assert!(tracker.record(&fresh, 1_000.0, 50_000.0, 0) > 0);
        tracker.unrecord(&fresh, 50_000.0, 0);
        assert_eq!(tracker.record(&fresh, 1_000.0, 0.0, 0), 0);
        tracker.forget_idle(10 * 60 * 60 * 1_000);
        assert!(tracker.is_empty());
    }

    #[test]
    fn quota_keys_and_values_are_checked() {
        assert!(check_quota("producer_byte_rate", 1024.0).is_ok());
        assert!(check_quota("consumer_byte_rate", 1.5).is_ok());
        assert!(check_quota("producer_byte_rate", 0.0).is_err());
        assert!(check_quota("producer_byte_rate", f64::NAN).is_err());
        assert!(check_quota("request_percentage", 50.0).is_ok());
        assert!(check_quota("controller_mutation_rate", 50.0).is_err());
        assert!(check_quota("bogus", 1.0).is_err());
    }
}
