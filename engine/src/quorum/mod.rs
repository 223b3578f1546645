//! The metadata quorum: the controllers' replicated log of cluster metadata, on raft-rs.
//!
//! - [`node`]: one quorum member, raft-rs's `RawNode` driven as a sans-IO state machine with
//!   time and election jitter as inputs.
//!
//! The metadata records themselves, the image they build and the controller's decisions
//! (registrations, fencing, elections, ISR changes) come on top of this.

pub mod node;

pub use node::{NodeId, ProposeError, QuorumConfig, QuorumNode, QuorumOutput};

#[cfg(test)]
mod tests;
