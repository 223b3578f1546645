//! The `read_committed` side of a fetch: which batches of a partition's records belong to
//! aborted transactions and are skipped, from the fetch response's aborted-transaction list.

use std::collections::BTreeSet;

use kafka_protocol::messages::fetch_response;

/// A `read_committed` fetch's filter of aborted transactions (Kafka's fetcher): a
/// transactional batch is skipped when its producer has an aborted transaction (from the
/// response's list) that started at or before the batch and whose abort marker has not been
/// passed yet.
#[derive(Debug)]
pub struct AbortedFilter {
    /// Aborted transactions not reached yet, by first offset, latest first (popped from the
    /// end).
    pending: Vec<(i64, i64)>,
    /// Producers inside an aborted transaction at the current batch.
    aborting: BTreeSet<i64>,
}

impl AbortedFilter {
    /// A filter of the aborted transactions a fetch response listed for one partition.
    pub fn new(aborted: Option<Vec<fetch_response::AbortedTransaction>>) -> AbortedFilter {
        let mut pending: Vec<(i64, i64)> = aborted
            .unwrap_or_default()
            .into_iter()
            .map(|txn| (txn.first_offset, txn.producer_id.0))
            .collect();
        pending.sort_unstable_by(|a, b| b.cmp(a));
        AbortedFilter {
            pending,
            aborting: BTreeSet::new(),
        }
    }

    /// Whether the batch of `records` is to be skipped.
    pub fn skips(&mut self, records: &[kafka_protocol::records::Record]) -> bool {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return false;
        };
        while let Some(&(first_offset, producer_id)) = self.pending.last() {
            if first_offset > last.offset {
                break;
            }
            self.aborting.insert(producer_id);
            self.pending.pop();
        }
        if first.control {
            // An abort marker (control key version, type 0) ends its producer's aborted run.
            let abort = first
                .key
                .as_deref()
                .is_some_and(|key| key.len() >= 4 && key[2..4] == [0, 0]);
            if abort {
                self.aborting.remove(&first.producer_id);
            }
            return true;
        }
        first.transactional && self.aborting.contains(&first.producer_id)
    }
}
