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
//!    log order; [`QuorumOutput::Install`] replaces the metadata state by a snapshot the
//!    leader sent; [`QuorumOutput::Compact`] asks the driver to keep a snapshot and drop the
//!    log entries it covers.
//!
//! # Snapshots
//! Every so often (the driver decides; Spate counts applied records) the driver hands the node
//! its applied state with [`QuorumNode::compact`]; the node keeps it as its snapshot and drops
//! the entries it covers. A follower too far behind to be sent entries is sent the snapshot
//! instead, whole, and installs it. A snapshot counts as delivered once handed to the driver:
//! if it was lost, the follower's refusal of the next append makes the leader send it again.
//!
//! # Determinism
//! raft-rs draws each election timeout from the thread's RNG when the node's term or role
//! changes. The node overwrites it, after every call into raft-rs that may have changed
//! either, with a value from its own generator seeded by the driver, so that a simulation run
//! is reproduced by its seed. raft-rs keeps its maps in `FxHashMap`s, whose iteration order is
//! fixed.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::{Config, RawNode, SnapshotStatus, StateRole};

use super::store::QuorumStore;

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
    /// Replace the metadata state by this snapshot's: the leader sent it because this node's
    /// log was too far behind. Comes after the [`QuorumOutput::Persist`] that stores it, and
    /// before the records that follow it.
    Install {
        /// The last log index the snapshot covers.
        index: u64,
        /// The snapshot's data, as given to [`QuorumNode::compact`] on the leader.
        data: Vec<u8>,
    },
    /// Keep this snapshot of this node's own applied state and drop the log entries up to
    /// its index (after the snapshot is durable).
    Compact(Snapshot),
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

/// What a member's disk holds, as [`QuorumNode::new`] starts from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurableState {
    /// The last hard state persisted (default when none was).
    pub hard_state: HardState,
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// The entries after it, in order.
    pub entries: Vec<Entry>,
}

/// One member of the metadata quorum. See the module docs.
pub struct QuorumNode {
    raw: RawNode<QuorumStore>,
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
    /// A member `id` of the quorum of `voters`, starting from what its disk held (nothing
    /// the first time), with election jitter drawn from `seed`. The driver restores its
    /// metadata state from `durable.snapshot` itself; the records after it are applied again.
    ///
    /// # Panics
    /// When `id` is not among `voters` or the timing is invalid: configuration errors the
    /// caller checks first.
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        durable: DurableState,
        config: QuorumConfig,
        seed: u64,
    ) -> QuorumNode {
        assert!(voters.contains(&id), "node {id} is one of {voters:?}");
        let applied = durable
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.get_metadata().index);
        let storage = QuorumStore::new(
            ConfState::from((voters.to_vec(), vec![])),
            durable.hard_state,
            durable.snapshot,
            &durable.entries,
        );
        let raft_config = Config {
            id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            applied,
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

    /// The index of the last entry in this node's log (after a proposal: the proposal's).
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Whether this node handed out for applying an entry of its current term: a new leader's
    /// first entry (raft's no-op), and so everything committed before its term.
    pub fn applied_in_current_term(&self) -> bool {
        self.raw.raft.apply_to_current_term()
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

    /// The driver's metadata state has applied every record up to `index`, and `data` is a
    /// snapshot of it: keep it, drop the log up to it (a [`QuorumOutput::Compact`] follows).
    ///
    /// # Panics
    /// When `index` is not above the current snapshot or not yet applied.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) {
        assert!(
            index <= self.raw.raft.raft_log.applied,
            "snapshot at {index} past the applied index {}",
            self.raw.raft.raft_log.applied
        );
        let snapshot = self.raw.mut_store().compact(index, data);
        self.outputs.push_back(QuorumOutput::Compact(snapshot));
    }

    /// The index of the latest snapshot (0 before the first).
    pub fn snapshot_index(&self) -> u64 {
        self.raw.store().snapshot_metadata().index
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
            let mut snapshots_sent = Vec::new();
            self.push_sends(ready.take_messages(), &mut snapshots_sent);
            let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
            if let Some(snapshot) = &snapshot {
                self.raw.mut_store().install_snapshot(snapshot.clone());
            }
            let committed = ready.take_committed_entries();
            let entries = ready.entries().to_vec();
            self.raw.mut_store().append(&entries);
            let hard_state = ready.hs().cloned();
            if let Some(hard_state) = &hard_state {
                self.raw.mut_store().set_hard_state(hard_state.clone());
            }
            if !entries.is_empty() || hard_state.is_some() || snapshot.is_some() {
                self.outputs.push_back(QuorumOutput::Persist {
                    entries,
                    hard_state,
                    snapshot: snapshot.clone(),
                });
            }
            if let Some(snapshot) = snapshot {
                self.outputs.push_back(QuorumOutput::Install {
                    index: snapshot.get_metadata().index,
                    data: snapshot.data.to_vec(),
                });
            }
            self.push_applies(committed);
            self.push_sends(ready.take_persisted_messages(), &mut snapshots_sent);
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit);
            }
            self.push_sends(light.take_messages(), &mut snapshots_sent);
            self.push_applies(light.take_committed_entries());
            self.raw.advance_apply();
            for to in snapshots_sent {
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
            self.after_raft_call();
        }
    }

    fn push_sends(&mut self, messages: Vec<Message>, snapshots_sent: &mut Vec<NodeId>) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                snapshots_sent.push(message.to);
            }
            self.outputs.push_back(QuorumOutput::Send(message));
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
