//! A produce history and its checker, after Jepsen's Kafka workload: what producers sent and
//! were told, what every replica holds once the cluster healed, and the safety properties
//! that must hold between the two whatever failed meanwhile.
//!
//! The cluster tests (real processes, SIGKILLed and restarted) and the simulation record the
//! same [`History`] and hand it, with each replica's log ([`ReplicaLog`]) and each
//! partition's high watermark after healing, to [`check`]. A history is written as JSON lines
//! ([`History::to_json_lines`]), one [`Operation`] per line, so that a failing run's history
//! can be kept and checked again.
//!
//! # Properties checked
//! - **No acknowledged write lost**: every record acknowledged at an offset is at that offset,
//!   below the high watermark, in every replica.
//! - **No record at two offsets**: no value appears twice in a partition (every value sent is
//!   unique, and producers do not retry, so a duplicate is the broker's doing).
//! - **Replicas identical below the high watermark**: every replica holds the same records at
//!   every offset below it.
//! - **Send order kept**: a producer's records in one partition are at increasing offsets in the
//!   order it sent them (it waits for each answer before the next send).
//! - **Nothing invented**: every record in a log was sent by someone; acknowledged records are
//!   where they were acknowledged, and a failed send may or may not have been written.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One step of a history, in the order the test observed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Operation {
    /// Producer `producer` sends its `seq`-th record, `value` (unique in the history), to
    /// `partition`.
    Send {
        /// The producer's number.
        producer: u32,
        /// Its sends, counted from 0.
        seq: u64,
        /// The partition.
        partition: i32,
        /// The record's value.
        value: String,
    },
    /// The send was acknowledged at `offset`.
    Acked {
        /// The producer's number.
        producer: u32,
        /// Which send.
        seq: u64,
        /// The offset the broker gave it.
        offset: i64,
    },
    /// The send failed: the record may or may not have been written.
    Failed {
        /// The producer's number.
        producer: u32,
        /// Which send.
        seq: u64,
        /// What the producer was told.
        error: String,
    },
}

/// Everything the producers did, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The operations, in the order they were observed.
    pub operations: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records one operation.
    pub fn push(&mut self, operation: Operation) {
        self.operations.push(operation);
    }

    /// Appends `other`'s operations (another producer's, recorded apart).
    pub fn extend(&mut self, other: History) {
        self.operations.extend(other.operations);
    }

    /// One JSON object per line.
    pub fn to_json_lines(&self) -> String {
        let mut text = String::new();
        for operation in &self.operations {
            text.push_str(&serde_json::to_string(operation).expect("operations serialize"));
            text.push('\n');
        }
        text
    }

    /// Reads [`History::to_json_lines`]'s output.
    ///
    /// # Errors
    /// The first line that is not an operation, with its number (from 1).
    pub fn from_json_lines(text: &str) -> Result<History, String> {
        let mut history = History::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let operation = serde_json::from_str(line)
                .map_err(|error| format!("line {}: {error}", number + 1))?;
            history.push(operation);
        }
        Ok(history)
    }
}

/// One replica's copy of one partition: its records in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLog {
    /// The broker that holds it.
    pub node: i32,
    /// The partition.
    pub partition: i32,
    /// `(offset, value)` of every record, in offset order.
    pub records: Vec<(i64, String)>,
}

/// A broken property, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged record is not at its offset in a replica.
    Lost {
        /// The producer's number.
        producer: u32,
        /// Which send.
        seq: u64,
        /// The partition.
        partition: i32,
        /// Where it was acknowledged.
        offset: i64,
        /// The replica missing it.
        node: i32,
        /// What that replica holds there instead, if anything.
        found: Option<String>,
    },
    /// An acknowledged offset lies at or above the high watermark after healing.
    AboveHighWatermark {
        /// The partition.
        partition: i32,
        /// The acknowledged offset.
        offset: i64,
        /// The high watermark.
        high_watermark: i64,
    },
    /// A value is at two offsets of a partition.
    Duplicate {
        /// The partition.
        partition: i32,
        /// The value.
        value: String,
        /// Its offsets in one replica.
        offsets: Vec<i64>,
    },
    /// Two replicas differ below the high watermark.
    Diverged {
        /// The partition.
        partition: i32,
        /// The first offset where they differ.
        offset: i64,
        /// The replicas and what each holds there.
        holders: Vec<(i32, Option<String>)>,
    },
    /// A producer's records are out of send order in a partition.
    OutOfOrder {
        /// The producer's number.
        producer: u32,
        /// The partition.
        partition: i32,
        /// The earlier send, and its offset.
        earlier: (u64, i64),
        /// The later send, at a lower offset.
        later: (u64, i64),
    },
    /// A record no one sent, or sent to another partition.
    Unknown {
        /// The partition it is in.
        partition: i32,
        /// Where.
        offset: i64,
        /// Its value.
        value: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{self:?}")
    }
}

/// What a history held, when nothing was violated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Sends.
    pub sent: usize,
    /// Sends acknowledged.
    pub acknowledged: usize,
    /// Sends that failed.
    pub failed: usize,
    /// Failed sends whose record is in the log anyway.
    pub failed_but_written: usize,
}

/// What the history says of one send.
struct SendFacts {
    producer: u32,
    seq: u64,
    partition: i32,
    acked_offset: Option<i64>,
    failed: bool,
}

/// Checks `history` against `replicas` (every replica of every partition, read after the
/// cluster healed) and `high_watermarks` (each partition's, after healing). See the module
/// docs for the properties.
///
/// # Errors
/// Every violation found.
pub fn check(
    history: &History,
    replicas: &[ReplicaLog],
    high_watermarks: &BTreeMap<i32, i64>,
) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut summary = Summary::default();
    let mut sends: BTreeMap<String, SendFacts> = BTreeMap::new();
    let mut value_of: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for operation in &history.operations {
        match operation {
            Operation::Send {
                producer,
                seq,
                partition,
                value,
            } => {
                summary.sent += 1;
                value_of.insert((*producer, *seq), value.clone());
                sends.insert(
                    value.clone(),
                    SendFacts {
                        producer: *producer,
                        seq: *seq,
                        partition: *partition,
                        acked_offset: None,
                        failed: false,
                    },
                );
            }
            Operation::Acked {
                producer,
                seq,
                offset,
            } => {
                summary.acknowledged += 1;
                if let Some(facts) = value_of
                    .get(&(*producer, *seq))
                    .and_then(|value| sends.get_mut(value))
                {
                    facts.acked_offset = Some(*offset);
                }
            }
            Operation::Failed { producer, seq, .. } => {
                summary.failed += 1;
                if let Some(facts) = value_of
                    .get(&(*producer, *seq))
                    .and_then(|value| sends.get_mut(value))
                {
                    facts.failed = true;
                }
            }
        }
    }

    let mut by_partition: BTreeMap<i32, Vec<&ReplicaLog>> = BTreeMap::new();
    for replica in replicas {
        by_partition
            .entry(replica.partition)
            .or_default()
            .push(replica);
    }

    // Acknowledged records: below the high watermark, at their offset, in every replica.
    for (value, facts) in &sends {
        let Some(offset) = facts.acked_offset else {
            continue;
        };
        let high_watermark = high_watermarks.get(&facts.partition).copied().unwrap_or(0);
        if offset >= high_watermark {
            violations.push(Violation::AboveHighWatermark {
                partition: facts.partition,
                offset,
                high_watermark,
            });
        }
        for replica in by_partition.get(&facts.partition).into_iter().flatten() {
            let found = value_at(replica, offset);
            if found != Some(value.as_str()) {
                violations.push(Violation::Lost {
                    producer: facts.producer,
                    seq: facts.seq,
                    partition: facts.partition,
                    offset,
                    node: replica.node,
                    found: found.map(str::to_owned),
                });
            }
        }
    }

    let mut failed_but_written = BTreeMap::new();
    for (&partition, logs) in &by_partition {
        let high_watermark = high_watermarks.get(&partition).copied().unwrap_or(0);
        // Replicas identical below the high watermark.
        if let Some(first) = logs.first() {
            let mut offsets: Vec<i64> = logs
                .iter()
                .flat_map(|log| log.records.iter().map(|(offset, _)| *offset))
                .filter(|&offset| offset < high_watermark)
                .collect();
            offsets.sort_unstable();
            offsets.dedup();
            for offset in offsets {
                let reference = value_at(first, offset);
                if logs.iter().any(|log| value_at(log, offset) != reference) {
                    violations.push(Violation::Diverged {
                        partition,
                        offset,
                        holders: logs
                            .iter()
                            .map(|log| (log.node, value_at(log, offset).map(str::to_owned)))
                            .collect(),
                    });
                    break;
                }
            }
        }
        for log in logs {
            // No value twice; nothing no one sent to this partition.
            let mut offsets_of: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
            for (offset, value) in &log.records {
                offsets_of.entry(value).or_default().push(*offset);
                match sends.get(value) {
                    Some(facts) if facts.partition == partition => {
                        if facts.failed {
                            failed_but_written.insert(value.as_str(), ());
                        }
                    }
                    _ => violations.push(Violation::Unknown {
                        partition,
                        offset: *offset,
                        value: value.clone(),
                    }),
                }
            }
            for (value, offsets) in offsets_of {
                if offsets.len() > 1 {
                    violations.push(Violation::Duplicate {
                        partition,
                        value: value.to_owned(),
                        offsets,
                    });
                }
            }
            // Each producer's records in send order.
            let mut last_of: BTreeMap<u32, (u64, i64)> = BTreeMap::new();
            for (offset, value) in &log.records {
                let Some(facts) = sends
                    .get(value)
                    .filter(|facts| facts.partition == partition)
                else {
                    continue;
                };
                if let Some(&(seq, earlier_offset)) = last_of.get(&facts.producer) {
                    if facts.seq < seq {
                        violations.push(Violation::OutOfOrder {
                            producer: facts.producer,
                            partition,
                            earlier: (facts.seq, *offset),
                            later: (seq, earlier_offset),
                        });
                    }
                }
                let newest = last_of
                    .entry(facts.producer)
                    .or_insert((facts.seq, *offset));
                if facts.seq >= newest.0 {
                    *newest = (facts.seq, *offset);
                }
            }
        }
    }
    summary.failed_but_written = failed_but_written.len();
    violations.dedup();
    if violations.is_empty() {
        Ok(summary)
    } else {
        Err(violations)
    }
}

/// The value at `offset` in `log`, if it holds one there.
fn value_at(log: &ReplicaLog, offset: i64) -> Option<&str> {
    log.records
        .binary_search_by_key(&offset, |(offset, _)| *offset)
        .ok()
        .map(|index| log.records[index].1.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(producer: u32, seq: u64, partition: i32) -> Operation {
        Operation::Send {
            producer,
            seq,
            partition,
            value: format!("p{producer}-{seq}"),
        }
    }

    fn acked(producer: u32, seq: u64, offset: i64) -> Operation {
        Operation::Acked {
            producer,
            seq,
            offset,
        }
    }

    fn failed(producer: u32, seq: u64) -> Operation {
        Operation::Failed {
            producer,
            seq,
            error: "REQUEST_TIMED_OUT".into(),
        }
    }

    fn log(node: i32, values: &[&str]) -> ReplicaLog {
        ReplicaLog {
            node,
            partition: 0,
            records: values
                .iter()
                .enumerate()
                .map(|(offset, value)| (offset as i64, value.to_string()))
                .collect(),
        }
    }

    /// Producer 0 sends four records to partition 0: 0 and 1 acknowledged at 0 and 1, 2
    /// failed (but written at 2), 3 failed and not written.
    fn good_history() -> History {
        History {
            operations: vec![
                send(0, 0, 0),
                acked(0, 0, 0),
                send(0, 1, 0),
                acked(0, 1, 1),
                send(0, 2, 0),
                failed(0, 2),
                send(0, 3, 0),
                failed(0, 3),
            ],
        }
    }

    fn high_watermark(offset: i64) -> BTreeMap<i32, i64> {
        BTreeMap::from([(0, offset)])
    }

    #[test]
    fn a_healthy_history_passes() {
        let replicas = [
            log(1, &["p0-0", "p0-1", "p0-2"]),
            log(2, &["p0-0", "p0-1", "p0-2"]),
        ];
        assert_eq!(
            check(&good_history(), &replicas, &high_watermark(3)),
            Ok(Summary {
                sent: 4,
                acknowledged: 2,
                failed: 2,
                failed_but_written: 1,
            })
        );
    }

    #[test]
    fn a_lost_acknowledged_record_is_found() {
        let replicas = [log(1, &["p0-0", "p0-1"]), log(2, &["p0-0"])];
        let violations = check(&good_history(), &replicas, &high_watermark(2)).unwrap_err();
        assert!(violations.contains(&Violation::Lost {
            producer: 0,
            seq: 1,
            partition: 0,
            offset: 1,
            node: 2,
            found: None,
        }));
        let violations =
            check(&good_history(), &[log(1, &["p0-0"])], &high_watermark(1)).unwrap_err();
        assert!(violations.contains(&Violation::AboveHighWatermark {
            partition: 0,
            offset: 1,
            high_watermark: 1,
        }));
    }

    #[test]
    fn an_acknowledged_record_at_another_offset_is_lost() {
        let replicas = [log(1, &["p0-1", "p0-0"])];
        let violations = check(&good_history(), &replicas, &high_watermark(2)).unwrap_err();
        assert!(violations
            .iter()
            .any(|violation| matches!(violation, Violation::Lost { seq: 0, .. })));
    }

    #[test]
    fn duplicates_divergence_reordering_and_inventions_are_found() {
        let duplicate = [log(1, &["p0-0", "p0-1", "p0-1"])];
        assert!(matches!(
            check(&good_history(), &duplicate, &high_watermark(3))
                .unwrap_err()
                .as_slice(),
            [Violation::Duplicate { offsets, .. }, ..] if offsets == &[1, 2]
        ));
        let diverged = [
            log(1, &["p0-0", "p0-1", "p0-2"]),
            log(2, &["p0-0", "p0-1", "p0-3"]),
        ];
        assert!(check(&good_history(), &diverged, &high_watermark(3))
            .unwrap_err()
            .contains(&Violation::Diverged {
                partition: 0,
                offset: 2,
                holders: vec![(1, Some("p0-2".into())), (2, Some("p0-3".into()))],
            }));
        // Above the high watermark, replicas may differ (the leader's tail not yet fetched).
        let tail = [log(1, &["p0-0", "p0-1", "p0-2"]), log(2, &["p0-0", "p0-1"])];
        assert!(check(&good_history(), &tail, &high_watermark(2)).is_ok());
        let reordered = History {
            operations: vec![send(0, 0, 0), failed(0, 0), send(0, 1, 0), failed(0, 1)],
        };
        assert!(matches!(
            check(&reordered, &[log(1, &["p0-1", "p0-0"])], &high_watermark(2))
                .unwrap_err()
                .as_slice(),
            [Violation::OutOfOrder {
                producer: 0,
                earlier: (0, 1),
                later: (1, 0),
                ..
            }]
        ));
        let invented = [log(1, &["p0-0", "p0-1", "nobody"])];
        assert!(check(&good_history(), &invented, &high_watermark(3))
            .unwrap_err()
            .contains(&Violation::Unknown {
                partition: 0,
                offset: 2,
                value: "nobody".into(),
            }));
    }

    #[test]
    fn histories_round_trip_through_json_lines() {
        let history = good_history();
        let text = history.to_json_lines();
        assert_eq!(text.lines().count(), history.operations.len());
        assert!(text
            .starts_with(r#"{"type":"send","producer":0,"seq":0,"partition":0,"value":"p0-0"}"#));
        assert_eq!(History::from_json_lines(&text), Ok(history));
        assert!(History::from_json_lines("{\"type\":\"sent\"}")
            .unwrap_err()
            .starts_with("line 1:"));
    }
}
