//! [`PlanningImage`]: the metadata the active controller plans against.
//!
//! A record the controller proposes is applied only once the quorum commits it, a round trip
//! later. Planning the next decision on the applied image alone would ignore the records in
//! flight: two brokers fenced one after the other would each be taken out of a partition
//! that still names the other, and the second change would undo the first (a fenced broker
//! left leading). So, as Kafka's controller does, the controller plans against the applied
//! image with its own proposed records already on top, and against the applied image again
//! once it holds them all.
//!
//! The records on top are applied at the log indexes the proposals took, so they build
//! exactly what applying them for real will (a broker's epoch is its registration's index).
//! A controller acts only once it applied the log up to the start of its own leadership (see
//! the driver), so nothing proposed by an earlier controller is missing underneath.

use super::image::MetadataImage;
use super::records::MetadataRecord;

/// The applied image plus this controller's proposed, not yet applied, records. See the
/// module docs.
#[derive(Debug, Clone, Default)]
pub struct PlanningImage {
    /// The applied image with the proposed records on top, while any is not applied yet.
    ahead: Option<MetadataImage>,
    /// The log index of the last record proposed.
    last_proposed_index: u64,
}

impl PlanningImage {
    /// Nothing proposed: plans go by the applied image.
    pub fn new() -> PlanningImage {
        PlanningImage::default()
    }

    /// What to plan against, given the `applied` image.
    pub fn view<'a>(&'a self, applied: &'a MetadataImage) -> &'a MetadataImage {
        self.ahead.as_ref().unwrap_or(applied)
    }

    /// `records` were proposed as the log entry at `index`, on top of `applied`.
    pub fn proposed(&mut self, applied: &MetadataImage, index: u64, records: &[MetadataRecord]) {
        let ahead = self.ahead.get_or_insert_with(|| applied.clone());
        if index > ahead.last_applied_index() {
            // A record that does not fit fails the same way when it is applied for real.
            let _ = ahead.apply_entry(index, records);
        }
        self.last_proposed_index = self.last_proposed_index.max(index);
    }

    /// The applied image moved to `applied`: once it holds every proposed record, plans go
    /// by it again.
    pub fn caught_up(&mut self, applied: &MetadataImage) {
        if applied.last_applied_index() >= self.last_proposed_index {
            self.ahead = None;
        }
    }

    /// This node's controller stopped or started: what was proposed may never apply.
    pub fn reset(&mut self) {
        *self = PlanningImage::default();
    }
}
