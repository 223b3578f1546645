//! Broker metrics: each shard counts into its own [`ShardMetrics`] (no sharing, no atomics);
//! the metrics endpoint collects a copy from every shard, merges them and renders Prometheus'
//! text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Upper bounds of the request latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A per-topic counter family: name, help and how to read it.
type TopicCounter = (&'static str, &'static str, fn(&TopicStats) -> u64);

/// Requests of one API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiStats {
    /// Requests handled.
    pub requests: u64,
    /// Requests per latency bucket (the last counts those above every bound).
    pub buckets: [u64; LATENCY_BUCKETS_SECONDS.len() + 1],
    /// Sum of latencies.
    pub latency_sum_seconds: f64,
}

/// Traffic of one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// Record batch bytes appended.
    pub bytes_in: u64,
    /// Records appended.
    pub records_in: u64,
    /// Record batch bytes sent to consumers.
    pub bytes_out: u64,
    /// Records sent to consumers.
    pub records_out: u64,
}

/// One shard's counters, or the sum over shards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardMetrics {
    /// By API name.
    pub apis: BTreeMap<&'static str, ApiStats>,
    /// By topic name.
    pub topics: BTreeMap<String, TopicStats>,
    /// Error codes returned, by code.
    pub errors: BTreeMap<i16, u64>,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections refused by the connection limits.
    pub connections_refused: u64,
    /// Connections closed because of a bad frame.
    pub connections_closed_bad_input: u64,
    /// Requests whose client was over its quota and throttled.
    pub throttled_requests: u64,
    /// Partitions this shard owns.
    pub partitions: u64,
    /// Syncs started because a partition had `log_background_sync_bytes` unsynced.
    pub background_syncs: u64,
}

impl ShardMetrics {
    /// Counts one request of `api` that took `seconds`.
    pub fn observe_request(&mut self, api: &'static str, seconds: f64) {
        let stats = self.apis.entry(api).or_default();
        stats.requests += 1;
        stats.latency_sum_seconds += seconds;
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        stats.buckets[bucket] += 1;
    }

    /// Counts an error code sent (0 is not an error and is ignored).
    pub fn observe_error(&mut self, code: i16) {
        if code != 0 {
            *self.errors.entry(code).or_default() += 1;
        }
    }

    /// The stats of a topic, for counting into.
    pub fn topic(&mut self, name: &str) -> &mut TopicStats {
        if !self.topics.contains_key(name) {
            self.topics.insert(name.to_owned(), TopicStats::default());
        }
        self.topics.get_mut(name).expect("inserted above")
    }

    /// Adds another shard's counters.
    pub fn merge(&mut self, other: &ShardMetrics) {
        for (api, stats) in &other.apis {
            let mine = self.apis.entry(api).or_default();
            mine.requests += stats.requests;
            mine.latency_sum_seconds += stats.latency_sum_seconds;
            for (mine, theirs) in mine.buckets.iter_mut().zip(stats.buckets) {
                *mine += theirs;
            }
        }
        for (topic, stats) in &other.topics {
            let mine = self.topic(topic);
            mine.bytes_in += stats.bytes_in;
            mine.records_in += stats.records_in;
            mine.bytes_out += stats.bytes_out;
            mine.records_out += stats.records_out;
        }
        for (code, count) in &other.errors {
            *self.errors.entry(*code).or_default() += count;
        }
        self.connections_accepted += other.connections_accepted;
        self.connections_open += other.connections_open;
        self.connections_refused += other.connections_refused;
        self.connections_closed_bad_input += other.connections_closed_bad_input;
        self.throttled_requests += other.throttled_requests;
        self.partitions += other.partitions;
        self.background_syncs += other.background_syncs;
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "spate_requests_total",
            "counter",
            "Requests handled, by API.",
        );
        for (api, stats) in &self.apis {
            let _ = writeln!(
                out,
                "spate_requests_total{{api=\"{api}\"}} {}",
                stats.requests
            );
        }
        family(
            &mut out,
            "spate_request_latency_seconds",
            "histogram",
            "Time from a request's arrival to its response, by API.",
        );
        for (api, stats) in &self.apis {
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(stats.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "spate_request_latency_seconds_bucket{{api=\"{api}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "spate_request_latency_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} {}\n\
                 spate_request_latency_seconds_sum{{api=\"{api}\"}} {}\n\
                 spate_request_latency_seconds_count{{api=\"{api}\"}} {}",
                stats.requests, stats.latency_sum_seconds, stats.requests
            );
        }
        let topic_counters: [TopicCounter; 4] = [
            (
                "spate_topic_bytes_in_total",
                "Record batch bytes appended, by topic.",
                |s| s.bytes_in,
            ),
            (
                "spate_topic_records_in_total",
                "Records appended, by topic.",
                |s| s.records_in,
            ),
            (
                "spate_topic_bytes_out_total",
                "Record batch bytes fetched, by topic.",
                |s| s.bytes_out,
            ),
            (
                "spate_topic_records_out_total",
                "Records fetched, by topic.",
                |s| s.records_out,
            ),
        ];
        for (name, help, value) in topic_counters {
            family(&mut out, name, "counter", help);
            for (topic, stats) in &self.topics {
                let _ = writeln!(out, "{name}{{topic=\"{topic}\"}} {}", value(stats));
            }
        }
        family(
            &mut out,
            "spate_errors_total",
            "counter",
            "Kafka error codes returned, by code.",
        );
        for (code, count) in &self.errors {
            let _ = writeln!(out, "spate_errors_total{{code=\"{code}\"}} {count}");
        }
        let gauges = [
            (
                "spate_partitions",
                "gauge",
                "Partitions hosted.",
                self.partitions,
            ),
            (
                "spate_connections_open",
                "gauge",
                "Client connections open.",
                self.connections_open,
            ),
            (
                "spate_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                self.connections_accepted,
            ),
            (
                "spate_connections_refused_total",
                "counter",
                "Connections refused by the connection limits.",
                self.connections_refused,
            ),
            (
                "spate_connections_closed_bad_input_total",
                "counter",
                "Connections closed because of a malformed or oversized frame.",
                self.connections_closed_bad_input,
            ),
            (
                "spate_throttled_requests_total",
                "counter",
                "Requests of clients over their quota, answered with a throttle time.",
                self.throttled_requests,
            ),
            (
                "spate_background_syncs_total",
                "counter",
                "Partition syncs started because log_background_sync_bytes were unsynced.",
                self.background_syncs,
            ),
        ];
        for (name, kind, help, value) in gauges {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_renders() {
        let mut a = ShardMetrics::default();
        a.observe_request("Produce", 0.0003);
        a.topic("orders").bytes_in += 100;
        a.observe_error(3);
        let mut b = ShardMetrics::default();
        b.observe_request("Produce", 2.0);
        b.topic("orders").bytes_in += 50;
        b.observe_error(0);
        a.merge(&b);
        let text = a.render_prometheus();
        assert!(text.contains("spate_requests_total{api=\"Produce\"} 2"));
        assert!(
            text.contains("spate_request_latency_seconds_bucket{api=\"Produce\",le=\"0.0005\"} 1")
        );
        assert!(
            text.contains("spate_request_latency_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 2")
        );
        assert!(text.contains("spate_topic_bytes_in_total{topic=\"orders\"} 150"));
        assert!(text.contains("spate_errors_total{code=\"3\"} 1"));
        assert!(!text.contains("code=\"0\""));
    }
}
