//! What the simulation sees of the nodes, the trace of a run, and the safety checks made as
//! the run goes.
//!
//! Every node reports each turn of its [`QuorumMember`] here; the checks that need the
//! history of the whole run (one leader per term, one metadata state per log index, one
//! partition leader per leader epoch, epochs that never go back) are made at once, so a
//! violation is reported with the events that led to it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use spate_engine::history::History;
use spate_engine::quorum::member::QuorumMember;
use spate_engine::quorum::records::MetadataRecord;
use spate_engine::quorum::NodeId;
use uuid::Uuid;

use super::consumer::GroupLedger;
use super::replicas::ReplicaDump;
use super::txn_producer::TxnLedger;

/// The first producer id transaction coordinators hand out (above the idempotent producer's).
const FIRST_PRODUCER_ID: i64 = 10_000;

/// Events kept for the report of a failure.
const TRACE_TAIL_EVENTS: usize = 60;

/// FNV-1a over `bytes`, continuing from `hash`.
pub(crate) fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// FNV-1a's starting value.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The run's events: a digest of all of them, the last few in full.
#[derive(Debug)]
pub(crate) struct Trace {
    pub(crate) digest: u64,
    pub(crate) tail: VecDeque<String>,
    pub(crate) events: u64,
    /// Print every event as it happens.
    pub(crate) echo: bool,
}

impl Trace {
    fn new(echo: bool) -> Trace {
        Trace {
            digest: FNV_OFFSET,
            tail: VecDeque::new(),
            events: 0,
            echo,
        }
    }

    pub(crate) fn event(&mut self, now_ms: u64, text: String) {
        let line = format!("{now_ms:>8} ms  {text}");
        self.digest = fnv1a(self.digest, line.as_bytes());
        self.events += 1;
        if self.echo {
            println!("{line}");
        }
        if self.tail.len() == TRACE_TAIL_EVENTS {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// A node's clock: from `base_sim_ms` of simulated time on, it reads `base_clock_ms` plus the
/// simulated time since, sped up or slowed down by `drift_permille`.
#[derive(Debug, Clone, Copy)]
struct NodeClock {
    base_sim_ms: u64,
    base_clock_ms: i64,
    drift_permille: i64,
}

impl NodeClock {
    fn at(&self, sim_ms: u64) -> i64 {
        let since = sim_ms.saturating_sub(self.base_sim_ms) as i64;
        self.base_clock_ms + since * (1000 + self.drift_permille) / 1000
    }
}

/// A partition as a node last showed it.
#[derive(Debug, Clone)]
struct SeenPartition {
    partition_epoch: i32,
    leader_epoch: i32,
    isr: Vec<i32>,
    /// Its eligible leader replicas (KIP-966).
    elr: Vec<i32>,
}

/// An ISR change a partition leader asked for: the partition epoch it was based on, and the
/// ISR asked.
type IsrAsk = (i32, Vec<i32>);

/// A partition in the newest metadata: the applied index, the replicas, the ISR.
type LatestPartition = (u64, Vec<i32>, Vec<i32>);

/// A node's latest view, as it reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NodeView {
    pub(crate) term: u64,
    pub(crate) leader: Option<NodeId>,
    pub(crate) applied_index: u64,
    pub(crate) unfenced_brokers: BTreeSet<i32>,
    pub(crate) topics: BTreeSet<String>,
    /// Partitions without a leader.
    pub(crate) leaderless: usize,
    /// The first few of them, with their replicas and ISR.
    pub(crate) leaderless_examples: Vec<String>,
}

/// Shared state of one run: trace, views, and the history the checks need.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) trace: Trace,
    /// Simulated time, for events that do not come with their own.
    pub(crate) now_ms: u64,
    pub(crate) views: BTreeMap<NodeId, NodeView>,
    /// Which node led each term.
    leaders_by_term: BTreeMap<u64, NodeId>,
    /// The digest of the metadata image at each applied index, and who first reported it.
    images_by_index: BTreeMap<u64, (u64, NodeId)>,
    /// The leader of each partition at each leader epoch.
    partition_leaders: BTreeMap<(Uuid, i32, i32), i32>,
    /// Topic ids by name, as the nodes applied them.
    topic_ids: BTreeMap<String, Uuid>,
    /// Per node incarnation: the last partition epoch, leader epoch and ISR seen per
    /// partition.
    partition_epochs: BTreeMap<(NodeId, Uuid, i32), SeenPartition>,
    /// Topics whose creation a client saw acknowledged.
    pub(crate) acknowledged_topics: BTreeSet<String>,
    /// Safety violations, in the order found.
    pub(crate) violations: Vec<String>,
    /// Node clocks that differ from simulated time.
    clocks: BTreeMap<NodeId, NodeClock>,
    /// Terms (elections) seen.
    pub(crate) terms_seen: BTreeSet<u64>,
    /// Per pair of nodes (smaller first), how many times the network between them broke.
    link_breaks: BTreeMap<(NodeId, NodeId), u64>,
    /// Nodes asked to stop (SIGTERM: a controlled shutdown first).
    pub(crate) stop_requests: BTreeSet<NodeId>,
    /// Nodes whose controlled shutdown finished and whose software ended, not yet restarted.
    pub(crate) stopped: BTreeSet<NodeId>,
    /// Controlled shutdowns finished, and how many of them still led partitions then (the
    /// controller was unreachable or too slow, and the broker gave up waiting).
    pub(crate) clean_stops: u64,
    pub(crate) stops_still_leading: u64,
    /// What the producers sent and were told.
    pub(crate) history: History,
    /// ISR changes partition leaders asked for: per partition, the partition epoch each was
    /// based on and the ISR asked.
    isr_asks: BTreeMap<(Uuid, i32), Vec<IsrAsk>>,
    /// The highest high watermark each partition's leader reported at each leader epoch.
    leader_high_watermarks: BTreeMap<(String, i32, i32), i64>,
    /// Every node's replicas, collected after healing.
    pub(crate) dumps: BTreeMap<NodeId, Vec<ReplicaDump>>,
    /// Each partition's replicas and ISR in the newest metadata any node applied, with its
    /// applied index.
    latest_partitions: BTreeMap<(Uuid, i32), LatestPartition>,
    /// Each broker's epoch (its registration's index) in the newest metadata any node
    /// applied, with that applied index.
    latest_broker_epochs: BTreeMap<i32, (u64, i64)>,
    /// What the consumer group did.
    pub(crate) groups: GroupLedger,
    /// What the transactional producers and their reader did.
    pub(crate) txns: TxnLedger,
    /// The next producer id a transaction coordinator hands out.
    next_producer_id: i64,
}

impl World {
    pub(crate) fn new(echo: bool) -> World {
        World {
            trace: Trace::new(echo),
            now_ms: 0,
            views: BTreeMap::new(),
            leaders_by_term: BTreeMap::new(),
            images_by_index: BTreeMap::new(),
            partition_leaders: BTreeMap::new(),
            topic_ids: BTreeMap::new(),
            partition_epochs: BTreeMap::new(),
            acknowledged_topics: BTreeSet::new(),
            violations: Vec::new(),
            clocks: BTreeMap::new(),
            terms_seen: BTreeSet::new(),
            link_breaks: BTreeMap::new(),
            stop_requests: BTreeSet::new(),
            stopped: BTreeSet::new(),
            clean_stops: 0,
            stops_still_leading: 0,
            history: History::new(),
            isr_asks: BTreeMap::new(),
            leader_high_watermarks: BTreeMap::new(),
            dumps: BTreeMap::new(),
            latest_partitions: BTreeMap::new(),
            latest_broker_epochs: BTreeMap::new(),
            groups: GroupLedger::default(),
            txns: TxnLedger::default(),
            next_producer_id: FIRST_PRODUCER_ID,
        }
    }

    /// A producer id no coordinator handed out before (the broker's come in blocks from the
    /// controller, which the simulation does not run).
    pub(crate) fn allocate_producer_id(&mut self) -> i64 {
        let producer_id = self.next_producer_id;
        self.next_producer_id += 1;
        producer_id
    }

    /// Whether losing `node`'s disk would leave some partition with a majority of its
    /// replicas faulty: down (`down`), without their data (`lost`), or outside the ISR in the
    /// newest metadata (still catching up, so not yet a whole copy), `node` included.
    pub(crate) fn disk_loss_exceeds_minority(
        &self,
        node: NodeId,
        down: &BTreeSet<NodeId>,
        lost: &BTreeSet<NodeId>,
    ) -> bool {
        self.latest_partitions.values().any(|(_, replicas, isr)| {
            let node = node as i32;
            if !replicas.contains(&node) {
                return false;
            }
            let faulty = replicas
                .iter()
                .filter(|&&replica| {
                    replica == node
                        || !isr.contains(&replica)
                        || down.contains(&(replica as NodeId))
                        || lost.contains(&(replica as NodeId))
                })
                .count();
            faulty * 2 > replicas.len()
        })
    }

    /// Whether `node` holds the only whole in-sync copy of some partition, the other ISR
    /// members having lost their disks (`lost`) without registering since: the controller
    /// still counts them in sync, so stopping `node` could elect a replica holding nothing.
    /// Two faulty replicas of three; the fault injector keeps to a minority.
    pub(crate) fn holds_last_copy(&self, node: NodeId, lost: &BTreeSet<NodeId>) -> bool {
        let node = node as i32;
        self.latest_partitions.values().any(|(_, _, isr)| {
            isr.contains(&node)
                && isr.len() > 1
                && isr
                    .iter()
                    .filter(|&&replica| replica != node)
                    .all(|&replica| lost.contains(&(replica as NodeId)))
        })
    }

    /// `node`'s broker epoch in the newest metadata any node applied (-1 before it
    /// registered); a new registration raises it.
    pub(crate) fn broker_epoch(&self, node: NodeId) -> i64 {
        self.latest_broker_epochs
            .get(&(node as i32))
            .map_or(-1, |(_, epoch)| *epoch)
    }

    /// A partition leader asked the controller for `isr`, based on `partition_epoch`.
    pub(crate) fn isr_asked(
        &mut self,
        node: i32,
        topic_id: Uuid,
        partition: i32,
        partition_epoch: i32,
        isr: &[i32],
    ) {
        self.event(format!(
            "node {node}: asks ISR {isr:?} for {topic_id}-{partition} at partition epoch \
             {partition_epoch}"
        ));
        self.isr_asks
            .entry((topic_id, partition))
            .or_default()
            .push((partition_epoch, isr.to_vec()));
    }

    /// A partition leader's high watermark: never back at one leader epoch.
    pub(crate) fn leader_high_watermark(
        &mut self,
        node: i32,
        topic: &str,
        partition: i32,
        leader_epoch: i32,
        high_watermark: i64,
    ) {
        let key = (topic.to_owned(), partition, leader_epoch);
        let highest = self
            .leader_high_watermarks
            .entry(key)
            .or_insert(high_watermark);
        if high_watermark < *highest {
            let highest = *highest;
            self.violation(format!(
                "the high watermark of {topic}-{partition} went back from {highest} to \
                 {high_watermark} at leader epoch {leader_epoch} (leader {node})"
            ));
        } else {
            *highest = high_watermark;
        }
    }

    /// The network between `a` and `b` broke (a partition): TCP connections between them
    /// are gone. turmoil drops a partitioned link's segments without retransmitting them, so
    /// a connection that lost one would stall for ever; a real one retransmits until it
    /// delivers or gives up. The drivers model the latter: they reconnect.
    pub(crate) fn break_link(&mut self, a: NodeId, b: NodeId) {
        *self.link_breaks.entry((a.min(b), a.max(b))).or_default() += 1;
    }

    /// How many times the link between `a` and `b` broke so far.
    pub(crate) fn link_breaks(&self, a: NodeId, b: NodeId) -> u64 {
        self.link_breaks
            .get(&(a.min(b), a.max(b)))
            .copied()
            .unwrap_or_default()
    }

    /// Records an event at the current simulated time.
    pub(crate) fn event(&mut self, text: String) {
        let now_ms = self.now_ms;
        self.trace.event(now_ms, text);
    }

    /// Records a safety violation (with an event, so it shows in the trace).
    /// Whether `node` leads `topic`-`partition` at the newest leader epoch any node applied
    /// (a deposed leader that has not heard of its successor answers from an old log).
    pub(crate) fn leads_newest_epoch(&self, topic: &str, partition: i32, node: i32) -> bool {
        let Some(&topic_id) = self.topic_ids.get(topic) else {
            return false;
        };
        self.partition_leaders
            .range((topic_id, partition, i32::MIN)..=(topic_id, partition, i32::MAX))
            .next_back()
            .is_some_and(|(_, &leader)| leader == node)
    }

    pub(crate) fn violation(&mut self, text: String) {
        self.event(format!("VIOLATION: {text}"));
        self.violations.push(text);
    }

    /// A node's clock at simulated time `sim_ms`. Monotonic, like the `Instant` the broker
    /// reads: drift changes its rate, jumps move it forward.
    pub(crate) fn node_clock_ms(&self, node: NodeId, sim_ms: u64) -> i64 {
        self.clocks
            .get(&node)
            .map_or(sim_ms as i64, |clock| clock.at(sim_ms))
    }

    /// From `sim_ms` on, `node`'s clock runs `drift_permille` faster (or slower), after
    /// jumping `jump_ms` forward.
    pub(crate) fn skew_clock(
        &mut self,
        node: NodeId,
        sim_ms: u64,
        drift_permille: i64,
        jump_ms: i64,
    ) {
        let now = self.node_clock_ms(node, sim_ms);
        self.clocks.insert(
            node,
            NodeClock {
                base_sim_ms: sim_ms,
                base_clock_ms: now + jump_ms.max(0),
                drift_permille: drift_permille.clamp(-500, 500),
            },
        );
    }

    /// A node's controlled shutdown finished: its software ends.
    pub(crate) fn node_stopped<R>(&mut self, node: NodeId, member: &QuorumMember<R>) {
        let broker_id = node as i32;
        let leading = member
            .image()
            .topics()
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|state| state.leader == broker_id)
            .count();
        self.stop_requests.remove(&node);
        self.stopped.insert(node);
        self.clean_stops += 1;
        if leading > 0 {
            self.stops_still_leading += 1;
        }
        self.event(format!(
            "node {node} stops after its controlled shutdown, leading {leading} partitions"
        ));
    }

    /// A node (re)started: its per-incarnation history starts again.
    pub(crate) fn node_started(&mut self, node: NodeId) {
        self.partition_epochs
            .retain(|(owner, _, _), _| *owner != node);
        self.views.remove(&node);
        self.event(format!("node {node} starts"));
    }

    /// A node's member after one turn: checks and the new view.
    pub(crate) fn observe<R>(&mut self, node: NodeId, member: &QuorumMember<R>) {
        let raft = member.node();
        let image = member.image();
        let applied_index = image.last_applied_index();
        let previous = self.views.get(&node).cloned();
        if raft.is_leader() {
            let term = raft.term();
            match self.leaders_by_term.get(&term) {
                Some(&other) if other != node => self.violation(format!(
                    "two quorum leaders in term {term}: node {other} and node {node}"
                )),
                Some(_) => {}
                None => {
                    self.leaders_by_term.insert(term, node);
                }
            }
        }
        self.terms_seen.insert(raft.term());
        let changed = previous
            .as_ref()
            .is_none_or(|view| view.applied_index != applied_index);
        let view = if changed {
            self.check_image(node, member)
        } else {
            let mut view = previous.clone().unwrap_or_default();
            view.term = raft.term();
            view.leader = raft.leader();
            view
        };
        if previous.as_ref() != Some(&view) {
            self.event(format!(
                "node {node}: term {} leader {:?} applied {} unfenced {:?} topics {} leaderless {}",
                view.term,
                view.leader,
                view.applied_index,
                view.unfenced_brokers,
                view.topics.len(),
                view.leaderless
            ));
        }
        self.views.insert(node, view);
    }

    /// The checks on a newly applied image, and the view it gives.
    fn check_image<R>(&mut self, node: NodeId, member: &QuorumMember<R>) -> NodeView {
        let raft = member.node();
        let image = member.image();
        let applied_index = image.last_applied_index();
        let digest = fnv1a(FNV_OFFSET, &image.to_snapshot().encode());
        match self.images_by_index.get(&applied_index) {
            Some(&(other_digest, other)) if other_digest != digest => self.violation(format!(
                "node {node} and node {other} applied different metadata at index {applied_index}"
            )),
            Some(_) => {}
            None => {
                self.images_by_index.insert(applied_index, (digest, node));
            }
        }
        // The brokers each partition's ELR named in the records applied since this node's
        // previous image; `None` when they are gone (a snapshot replaced them).
        let elr_named = self
            .views
            .get(&node)
            .and_then(|view| member.records_applied_after(view.applied_index))
            .map(|records| {
                let mut named: BTreeMap<(Uuid, i32), BTreeSet<i32>> = BTreeMap::new();
                for text in records {
                    let entry = MetadataRecord::decode_entry(text.as_bytes()).unwrap_or_default();
                    for record in entry {
                        if let MetadataRecord::PartitionElr {
                            topic_id,
                            partition,
                            elr,
                        } = record
                        {
                            named.entry((topic_id, partition)).or_default().extend(elr);
                        }
                    }
                }
                named
            });
        for broker in image.brokers().values() {
            let newest = self
                .latest_broker_epochs
                .get(&broker.broker_id)
                .is_none_or(|(index, _)| *index <= applied_index);
            if newest {
                self.latest_broker_epochs
                    .insert(broker.broker_id, (applied_index, broker.broker_epoch));
            }
        }
        let mut topics = BTreeSet::new();
        let mut leaderless = 0;
        let mut leaderless_examples = Vec::new();
        for (&topic_id, topic) in image.topics() {
            topics.insert(topic.name.clone());
            self.topic_ids.insert(topic.name.clone(), topic_id);
            for (&partition, state) in &topic.partitions {
                if state.leader < 0 {
                    leaderless += 1;
                    if leaderless_examples.len() < 3 {
                        leaderless_examples.push(format!(
                            "{}-{partition} replicas {:?} isr {:?}",
                            topic.name, state.replicas, state.isr
                        ));
                    }
                } else {
                    let key = (topic_id, partition, state.leader_epoch);
                    match self.partition_leaders.get(&key) {
                        Some(&other) if other != state.leader => self.violation(format!(
                            "{}-{partition} has two leaders at leader epoch {}: {other} and {}",
                            topic.name, state.leader_epoch, state.leader
                        )),
                        Some(_) => {}
                        None => {
                            self.partition_leaders.insert(key, state.leader);
                        }
                    }
                }
                let newest = self
                    .latest_partitions
                    .get(&(topic_id, partition))
                    .is_none_or(|(index, _, _)| *index <= applied_index);
                if newest {
                    self.latest_partitions.insert(
                        (topic_id, partition),
                        (applied_index, state.replicas.clone(), state.isr.clone()),
                    );
                }
                let key = (node, topic_id, partition);
                let elr_now = image.elr(topic_id, partition).to_vec();
                if let Some(SeenPartition {
                    partition_epoch,
                    leader_epoch,
                    isr,
                    elr,
                }) = self.partition_epochs.get(&key).cloned()
                {
                    if state.partition_epoch < partition_epoch || state.leader_epoch < leader_epoch
                    {
                        self.violation(format!(
                            "node {node} saw {}-{partition} go back from epochs \
                             {partition_epoch}/{leader_epoch} to {}/{}",
                            topic.name, state.partition_epoch, state.leader_epoch
                        ));
                    }
                    // Only the partition's leader adds replicas to the ISR (AlterPartition),
                    // once they caught up; the controller only takes them out, but for an
                    // eligible leader replica (KIP-966) it elects when no in-sync one can lead.
                    // With no unclean elections or reassignments here, a replica joins the
                    // ISR only when a leader asked for an ISR holding it, based on a state
                    // between the one seen before and this one, or from the ELR.
                    let asks = self.isr_asks.get(&(topic_id, partition));
                    let unasked: Vec<i32> = state
                        .isr
                        .iter()
                        .copied()
                        .filter(|replica| !isr.contains(replica))
                        .filter(|replica| !elr.contains(replica) && !elr_now.contains(replica))
                        .filter(|replica| match &elr_named {
                            Some(named) => !named
                                .get(&(topic_id, partition))
                                .is_some_and(|named| named.contains(replica)),
                            // An ELR that came and went unseen (a snapshot replaced the
                            // records): its member is recognisable by its shape, alone in the
                            // ISR, leading it or (fenced, it took a lost disk's place)
                            // leaderless.
                            None => {
                                !(state.isr == [*replica]
                                    && (state.leader == *replica || state.leader == -1))
                            }
                        })
                        .filter(|replica| {
                            !asks.into_iter().flatten().any(|(based_on, asked)| {
                                (partition_epoch..state.partition_epoch).contains(based_on)
                                    && asked.contains(replica)
                            })
                        })
                        .collect();
                    if !unasked.is_empty() {
                        self.violation(format!(
                            "node {node} saw the ISR of {}-{partition} grow from {isr:?} to \
                             {:?} with no leader asking for {unasked:?}",
                            topic.name, state.isr
                        ));
                    }
                }
                self.partition_epochs.insert(
                    key,
                    SeenPartition {
                        partition_epoch: state.partition_epoch,
                        leader_epoch: state.leader_epoch,
                        isr: state.isr.clone(),
                        elr: elr_now,
                    },
                );
            }
        }
        NodeView {
            term: raft.term(),
            leader: raft.leader(),
            applied_index,
            unfenced_brokers: image
                .brokers()
                .values()
                .filter(|broker| !broker.fenced)
                .map(|broker| broker.broker_id)
                .collect(),
            topics,
            leaderless,
            leaderless_examples,
        }
    }
}
