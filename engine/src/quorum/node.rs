//! [`QuorumNode`]: one member of the metadata quorum, raft-rs's `RawNode` driven as a sans-IO
//! state machine.
//!
//! # Calling protocol
//! The node owns no socket, file, clock or random source. Its driver:
//!
//! 1. creates it with [`QuorumNode::new`] from what its disk holds (nothing, the first time)
//!    and a seed;
//! 2. hands it the time with [`QuorumNode::tick`], messages from peers with
//!    [`QuorumNode::step`] and metadata records to replicate with [`QuorumNode::propose`];
//! 3. after every call, drains [`QuorumNode::poll_output`] and carries the outputs out **in
//!    order**: [`QuorumOutput::Persist`] must be durable before any later output is carried
//!    out (a vote or an acknowledgement sent before its entries are on disk could elect two
//!    leaders or lose a committed entry); [`QuorumOutput::Send`] goes to a peer (it may be
//!    lost); [`QuorumOutput::Apply`] hands a committed entry to the metadata state, once, in
//!    log order.
//!
//! # Determinism
//! raft-rs draws each election timeout from the thread's RNG when the node's term or role
//! changes. The node overwrites it, after every call into raft-rs that may have changed
//! either, with a value from its own generator seeded by the driver, so that a simulation run
//! is reproduced by its seed. raft-rs keeps its maps in `FxHashMap`s, whose iteration order is
//! fixed.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

use crate::rng::SplitMix64;

/// A quorum member's id: its `node.id`, as in `--controller-quorum 1@host:port,...`.
pub type NodeId = u64;

/// Timing of the quorum, in ticks of `tick_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumConfig {
    /// One raft tick.
    pub tick_ms: i64,
    /// Ticks without a leader before a follower stands for election; the actual timeout is
    /// drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
}

impl Default for QuorumConfig {
    fn default() -> QuorumConfig {
        // An election within 0.5 to 1 s of losing the leader, heartbeats every 50 ms.
        QuorumConfig {
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 1,
        }
    }
}

/// What the node asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum QuorumOutput {
    /// Send this message to its `to` node.
    Send(Message),
    /// Make these durable before carrying out anything after this output.
    Persist {
        /// Entries to append to the log (replacing any from their first index on).
        entries: Vec<Entry>,
        /// The term, vote and commit index to record, if they changed.
        hard_state: Option<HardState>,
        /// A snapshot that replaces the log up to its index, if one arrived.
        snapshot: Option<Snapshot>,
    },
    /// A committed metadata record, in log order.
    Apply {
        /// Its log index.
        index: u64,
        /// The record, as proposed.
        data: Vec<u8>,
    },
}

/// Why a proposal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; the known leader, if any, is named.
    NotLeader(Option<NodeId>),
}

/// One member of the metadata quorum. See the module docs.
pub struct QuorumNode {
    raw: RawNode<MemStorage>,
    config: QuorumConfig,
    rng: SplitMix64,
    last_tick_ms: Option<i64>,
    term_and_role: (u64, StateRole),
    outputs: std::collections::VecDeque<QuorumOutput>,
}

impl std::fmt::Debug for QuorumNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumNode")
            .field("id", &self.raw.raft.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .finish_non_exhaustive()
    }
}

impl QuorumNode {
    /// A member `id` of the quorum of `voters`, starting from the durable `hard_state` and
    /// `entries` it had (empty the first time), with election jitter drawn from `seed`.
    ///
    /// # Panics
    /// When `id` is not among `voters` or the timing is invalid: configuration errors the
    /// caller checks first.
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        hard_state: HardState,
        entries: &[Entry],
        config: QuorumConfig,
        seed: u64,
    ) -> QuorumNode {
        assert!(voters.contains(&id), "node {id} is one of {voters:?}");
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
        {
            let mut store = storage.wl();
            store
                .append(entries)
                .expect("restored entries are contiguous");
            store.set_hardstate(hard_state.clone());
        }
        let raft_config = Config {
            id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            applied: 0,
            ..Config::default()
        };
        raft_config
            .validate()
            .expect("valid quorum timing: election_ticks > heartbeat_ticks > 0");
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, storage, &logger).expect("a valid raft node");
        let mut node = QuorumNode {
            term_and_role: (raw.raft.term, raw.raft.state),
            raw,
            config,
            rng: SplitMix64::new(seed),
            last_tick_ms: None,
            outputs: std::collections::VecDeque::new(),
        };
        node.draw_election_timeout();
        node
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raw.raft.id
    }

    /// Whether this node leads the quorum (is the active controller).
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        Some(self.raw.raft.leader_id).filter(|&leader| leader != raft::INVALID_ID)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The next thing for the driver to do, until `None`.
    pub fn poll_output(&mut self) -> Option<QuorumOutput> {
        self.outputs.pop_front()
    }

    /// Time passed: raft ticks once per `tick_ms` since the last call.
    pub fn tick(&mut self, now_ms: i64) {
        let last = *self.last_tick_ms.get_or_insert(now_ms);
        let ticks = (now_ms - last).max(0) / self.config.tick_ms;
        for _ in 0..ticks {
            self.raw.tick();
            self.after_raft_call();
        }
        self.last_tick_ms = Some(last + ticks * self.config.tick_ms);
        self.collect_ready();
    }

    /// A message from a peer. Messages from unknown or stale peers are dropped, as raft drops
    /// them.
    pub fn step(&mut self, message: Message) {
        // raft-rs refuses only messages that are not for a raft peer (local messages, unknown
        // senders); a peer sending those is misbehaving and is ignored.
        let _ = self.raw.step(message);
        self.after_raft_call();
        self.collect_ready();
    }

    /// Proposes a metadata record. It is applied (on every member) once committed; a leader
    /// change before that may drop it, so the proposer watches for it in the applied records.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] on a follower.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader(self.leader()));
        }
        self.raw
            .propose(Vec::new(), data)
            .map_err(|_| ProposeError::NotLeader(self.leader()))?;
        self.after_raft_call();
        self.collect_ready();
        Ok(())
    }

    /// Redraws the election timeout when raft-rs may have drawn one from its thread RNG.
    fn after_raft_call(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if now != self.term_and_role {
            self.term_and_role = now;
            self.draw_election_timeout();
        }
    }

    fn draw_election_timeout(&mut self) {
        let min = self.config.election_ticks;
        let span = self.config.election_ticks as u64;
        let timeout = min + self.rng.below(span) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    /// Turns raft-rs's ready state into outputs (raft-rs's synchronous `advance` flow).
    fn collect_ready(&mut self) {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            for message in ready.take_messages() {
                self.outputs.push_back(QuorumOutput::Send(message));
            }
            let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
            if let Some(snapshot) = &snapshot {
                self.raw
                    .mut_store()
                    .wl()
                    .apply_snapshot(snapshot.clone())
                    .expect("a newer snapshot");
            }
            let committed = ready.take_committed_entries();
            let entries = ready.entries().to_vec();
            if !entries.is_empty() {
                self.raw
                    .mut_store()
                    .wl()
                    .append(&entries)
                    .expect("entries follow the log");
            }
            let hard_state = ready.hs().cloned();
            if let Some(hard_state) = &hard_state {
                self.raw.mut_store().wl().set_hardstate(hard_state.clone());
            }
            if !entries.is_empty() || hard_state.is_some() || snapshot.is_some() {
                self.outputs.push_back(QuorumOutput::Persist {
                    entries,
                    hard_state,
                    snapshot,
                });
            }
            self.push_applies(committed);
            for message in ready.take_persisted_messages() {
                self.outputs.push_back(QuorumOutput::Send(message));
            }
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.raw
                    .mut_store()
                    .wl()
                    .mut_hard_state()
                    .set_commit(commit);
            }
            for message in light.take_messages() {
                self.outputs.push_back(QuorumOutput::Send(message));
            }
            self.push_applies(light.take_committed_entries());
            self.raw.advance_apply();
            self.after_raft_call();
        }
    }

    fn push_applies(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            // Empty normal entries are the new leaders' no-ops; configuration changes are not
            // used (membership is fixed by `--controller-quorum`).
            if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
                self.outputs.push_back(QuorumOutput::Apply {
                    index: entry.index,
                    data: entry.data.to_vec(),
                });
            }
        }
    }
}
