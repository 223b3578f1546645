//! The metadata quorum: the controllers' replicated log of cluster metadata, on raft-rs.
//!
//! - [`node`]: one quorum member, raft-rs's `RawNode` driven as a sans-IO state machine with
//!   time and election jitter as inputs; [`store`]: raft-rs's in-memory view of its log and
//!   latest snapshot; [`log`]: the same on disk.
//! - [`records`]: what the metadata log holds; [`image`]: the metadata they build, the same on
//!   every node that applied the same records, and its snapshots.
//! - [`controller`]: the active controller's decisions (registrations, heartbeats and fencing,
//!   leader elections, ISR changes, topic placement), as records to propose;
//!   [`planning`]: the image it plans against, with its proposed records already on top;
//!   [`admin`]: topic requests (create, delete, ISR changes, reassignments) as records and
//!   their outcomes.
//! - [`member`]: a node's whole part in the quorum (raft node, applied image, controller while
//!   it leads, its broker registration and heartbeats, routing of topic requests) as one
//!   sans-IO state machine, which the glommio driver and the simulation both run.

pub mod admin;
pub mod controller;
pub mod image;
pub mod log;
pub mod member;
pub mod node;
pub mod planning;
pub mod records;
pub mod store;

pub use controller::{Controller, ControllerConfig, ControllerError};
pub use image::{MetadataImage, MetadataSnapshot};
pub use node::{DurableState, NodeId, ProposeError, QuorumConfig, QuorumNode, QuorumOutput};
pub use planning::PlanningImage;
pub use records::MetadataRecord;

#[cfg(test)]
mod controller_tests;
#[cfg(test)]
mod member_tests;
#[cfg(test)]
mod tests;
