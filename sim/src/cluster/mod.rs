//! The cluster simulation: 3 or 5 Spate nodes as turmoil hosts, each running the real
//! metadata-quorum member ([`spate_engine::quorum::member::QuorumMember`]: raft, the
//! controller, broker registration and heartbeats, topic requests) through a turmoil driver
//! ([`node`]), with its metadata log on simulated storage; an admin client creating topics;
//! faults chosen per seed; safety checked as the run goes ([`world`]) and liveness after a
//! healing phase.
//!
//! # Faults (swarm testing: each seed enables its own subset)
//! Node crashes that lose unsynced writes, or keep a torn prefix of them, and restarts;
//! stops (SIGTERM: a controlled shutdown, then a restart);
//! network partitions isolating a node (symmetric or one way) or the quorum leader; messages
//! held and released (reordered); message latency ranges; clock drift and jumps per node.
//!
//! # Checks
//! Safety, all the time: one quorum leader per term; the same metadata at the same log index
//! on every node; one leader per partition per leader epoch; partition and leader epochs never
//! go back on a node; ISRs never grow (no partition leaders ask here); logs that open after
//! every crash. Liveness, after the faults stop and
//! the healing phase: one leader everyone follows, every node at the same applied index, every
//! broker registered and unfenced, every partition led, every acknowledged topic present.

mod client;
mod disk;
mod node;
mod wire;
mod world;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use spate_engine::quorum::NodeId;
use spate_engine::storage::backend::{CrashMode, SimulatedStorage};

use crate::SimRng;
use disk::SimDisk;
use node::{host_name, NodeSetup};
use world::World;

/// How a cluster run is set up (the seed chooses the rest).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Simulated seconds with faults.
    pub fault_secs: u64,
    /// Simulated seconds without faults before liveness is checked.
    pub heal_secs: u64,
    /// Print every event as it happens.
    pub echo_trace: bool,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            fault_secs: 30,
            heal_secs: 20,
            echo_trace: false,
        }
    }
}

/// What a passing run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSummary {
    /// Digest of every event of the run, in order: equal for equal seeds.
    pub trace_digest: u64,
    /// Events traced.
    pub events: u64,
    /// Simulated time run.
    pub simulated_ms: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// The faults this seed enabled.
    pub faults_enabled: Vec<&'static str>,
    /// Faults injected.
    pub faults_injected: u64,
    /// Crashes among them.
    pub crashes: u64,
    /// Controlled shutdowns that finished (each followed by a restart).
    pub controlled_shutdowns: u64,
    /// Raft terms seen (elections).
    pub terms: usize,
    /// Topic creations acknowledged (and found after healing).
    pub topics_acknowledged: usize,
}

/// A failed run: the seed that replays it, what broke, and the events before it.
#[derive(Debug, Clone)]
pub struct ClusterFailure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub what: String,
    /// The last events before it.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for ClusterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cluster simulation seed {} failed: {}",
            self.seed, self.what
        )?;
        writeln!(
            f,
            "replay: cargo run -p spate-sim --release -- --seed {} --trace",
            self.seed
        )?;
        writeln!(f, "last events:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ClusterFailure {}

/// The faults a seed may enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Crash,
    TornCrash,
    Stop,
    Isolate,
    IsolateLeader,
    OneWay,
    Hold,
    Clock,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::Crash,
        Fault::TornCrash,
        Fault::Stop,
        Fault::Isolate,
        Fault::IsolateLeader,
        Fault::OneWay,
        Fault::Hold,
        Fault::Clock,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::TornCrash => "torn-crash",
            Fault::Stop => "stop",
            Fault::Isolate => "isolate",
            Fault::IsolateLeader => "isolate-leader",
            Fault::OneWay => "one-way",
            Fault::Hold => "hold",
            Fault::Clock => "clock",
        }
    }
}

/// Something to undo at a simulated time.
#[derive(Debug, Clone)]
enum Undo {
    Restart(NodeId),
    Repair(NodeId, NodeId),
    RepairOneWay(NodeId, NodeId),
    Release(NodeId, NodeId),
}

/// A pair of nodes, smaller first.
fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

/// Runs the cluster simulation for `seed`.
///
/// # Errors
/// The first safety violation, or a liveness check that fails after healing, with the seed
/// and the events before it.
pub fn run_cluster_simulation(
    seed: u64,
    options: &ClusterOptions,
) -> Result<ClusterSummary, ClusterFailure> {
    let mut rng = SimRng::new(seed);
    let node_count: u64 = if rng.chance(30) { 5 } else { 3 };
    let nodes: Vec<NodeId> = (1..=node_count).collect();
    let mut enabled: Vec<Fault> = Fault::ALL.into_iter().filter(|_| rng.chance(50)).collect();
    if enabled.is_empty() && rng.chance(80) {
        enabled.push(Fault::ALL[rng.below(Fault::ALL.len() as u64) as usize]);
    }
    let min_latency_ms = rng.below(3);
    let max_latency_ms = min_latency_ms + 1 + rng.below(40);
    let fault_every_ms = 300 + rng.below(2_700);
    let sync_latency = Duration::from_millis(1 + rng.below(5));

    let world = Rc::new(RefCell::new(World::new(options.echo_trace)));
    world.borrow_mut().event(format!(
        "seed {seed}: {node_count} nodes, faults {:?} every ~{fault_every_ms} ms, latency \
         {min_latency_ms}..{max_latency_ms} ms, fsync {} ms",
        enabled.iter().map(|fault| fault.name()).collect::<Vec<_>>(),
        sync_latency.as_millis()
    ));
    let fault_end_ms = options.fault_secs * 1_000;
    let end_ms = fault_end_ms + options.heal_secs * 1_000;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(end_ms + 60_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(min_latency_ms))
        .max_message_latency(Duration::from_millis(max_latency_ms))
        .build();
    let mut storages = BTreeMap::new();
    for &node in &nodes {
        let storage = SimulatedStorage::new();
        storages.insert(node, storage.clone());
        let setup = NodeSetup {
            node,
            voters: nodes.clone(),
            disk: SimDisk::new(storage, sync_latency),
            world: Rc::clone(&world),
            seed,
            starts: Rc::new(Cell::new(0)),
        };
        sim.host(host_name(node), move || node::run(setup.clone()));
    }
    let client_world = Rc::clone(&world);
    let client_nodes = nodes.clone();
    sim.client(
        "client",
        client::run(client_nodes, client_world, seed ^ 0xc11e, fault_end_ms),
    );

    let fail = |world: &RefCell<World>, what: String| {
        let world = world.borrow();
        ClusterFailure {
            seed,
            what,
            trace_tail: world.trace.tail.iter().cloned().collect(),
        }
    };
    let mut undo: Vec<(u64, Undo)> = Vec::new();
    let mut crashed: BTreeSet<NodeId> = BTreeSet::new();
    // Pairs whose link is partitioned or held: turmoil's hold and release would undo a
    // partition (and a partition drops held messages), so the two never overlap on a pair.
    let mut faulted_links: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
    let mut next_fault_ms = fault_every_ms;
    let mut faults_injected = 0;
    let mut crashes = 0;
    let mut healed = false;
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        world.borrow_mut().now_ms = now_ms;
        if now_ms >= end_ms {
            break;
        }
        if let Err(error) = sim.step() {
            return Err(fail(&world, format!("a host failed: {error}")));
        }
        if let Some(violation) = world.borrow().violations.first() {
            return Err(fail(&world, violation.clone()));
        }
        // A node whose controlled shutdown finished is started again a little later (at
        // once while healing).
        let stopped: Vec<NodeId> = std::mem::take(&mut world.borrow_mut().stopped)
            .into_iter()
            .collect();
        for node in stopped {
            let again_ms = if now_ms >= fault_end_ms {
                now_ms
            } else {
                now_ms + 100 + rng.below(2_000)
            };
            undo.push((again_ms, Undo::Restart(node)));
        }
        // Undo what is due (everything, once the faults stop).
        let heal_now = now_ms >= fault_end_ms && !healed;
        let (due, later): (Vec<_>, Vec<_>) = undo
            .into_iter()
            .partition(|(at_ms, _)| heal_now || *at_ms <= now_ms);
        undo = later;
        for (_, action) in due {
            let mut world = world.borrow_mut();
            match action {
                Undo::Restart(node) => {
                    world.event(format!("restart node {node}"));
                    // The new process resets connections made to the old one.
                    for &other in nodes.iter().filter(|&&other| other != node) {
                        world.break_link(node, other);
                    }
                    drop(world);
                    sim.bounce(host_name(node));
                    crashed.remove(&node);
                }
                Undo::Repair(a, b) => {
                    world.event(format!("repair node {a} <-> node {b}"));
                    sim.repair(host_name(a), host_name(b));
                    faulted_links.remove(&pair(a, b));
                }
                Undo::RepairOneWay(a, b) => {
                    world.event(format!("repair node {a} -> node {b}"));
                    sim.repair_oneway(host_name(a), host_name(b));
                    faulted_links.remove(&pair(a, b));
                }
                Undo::Release(a, b) => {
                    world.event(format!("release node {a} <-> node {b}"));
                    sim.release(host_name(a), host_name(b));
                    faulted_links.remove(&pair(a, b));
                }
            }
        }
        if heal_now {
            healed = true;
            world.borrow_mut().event("faults stop: healing".to_owned());
        }
        if now_ms < fault_end_ms && now_ms >= next_fault_ms && !enabled.is_empty() {
            next_fault_ms = now_ms + fault_every_ms / 2 + rng.below(fault_every_ms);
            let fault = enabled[rng.below(enabled.len() as u64) as usize];
            let node = nodes[rng.below(node_count) as usize];
            let others: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != node).collect();
            let back_ms = now_ms + 200 + rng.below(5_000);
            let mut world = world.borrow_mut();
            match fault {
                Fault::Crash | Fault::TornCrash => {
                    // At most a minority down at once, so the cluster can make progress.
                    if crashed.contains(&node) || (crashed.len() + 1) * 2 > nodes.len() {
                        continue;
                    }
                    let mode = if fault == Fault::TornCrash {
                        CrashMode::TornTail {
                            seed: rng.next_u64(),
                        }
                    } else {
                        CrashMode::DropUnsynced
                    };
                    world.event(format!("crash node {node} ({})", fault.name()));
                    drop(world);
                    sim.crash(host_name(node));
                    storages[&node].crash(mode);
                    crashed.insert(node);
                    crashes += 1;
                    faults_injected += 1;
                    undo.push((back_ms, Undo::Restart(node)));
                }
                Fault::Stop => {
                    // A SIGTERM: the node moves its leaderships away, then stops; counted
                    // with the crashed ones until it is started again.
                    if crashed.contains(&node) || (crashed.len() + 1) * 2 > nodes.len() {
                        continue;
                    }
                    world.event(format!("stop node {node} (controlled shutdown)"));
                    world.stop_requests.insert(node);
                    crashed.insert(node);
                    faults_injected += 1;
                }
                Fault::Isolate | Fault::IsolateLeader => {
                    let target = if fault == Fault::IsolateLeader {
                        world
                            .views
                            .values()
                            .find_map(|view| view.leader)
                            .unwrap_or(node)
                    } else {
                        node
                    };
                    let links: Vec<_> = nodes
                        .iter()
                        .filter(|&&other| other != target)
                        .map(|&other| pair(target, other))
                        .collect();
                    if links.iter().any(|link| faulted_links.contains(link)) {
                        continue;
                    }
                    world.event(format!("isolate node {target} ({})", fault.name()));
                    for &other in nodes.iter().filter(|&&n| n != target) {
                        world.break_link(target, other);
                        sim.partition(host_name(target), host_name(other));
                        faulted_links.insert(pair(target, other));
                        undo.push((back_ms, Undo::Repair(target, other)));
                    }
                    faults_injected += 1;
                }
                Fault::OneWay => {
                    let to = others[rng.below(others.len() as u64) as usize];
                    if !faulted_links.insert(pair(node, to)) {
                        continue;
                    }
                    world.event(format!("drop messages node {node} -> node {to}"));
                    world.break_link(node, to);
                    sim.partition_oneway(host_name(node), host_name(to));
                    undo.push((back_ms, Undo::RepairOneWay(node, to)));
                    faults_injected += 1;
                }
                Fault::Hold => {
                    let other = others[rng.below(others.len() as u64) as usize];
                    if !faulted_links.insert(pair(node, other)) {
                        continue;
                    }
                    world.event(format!("hold messages node {node} <-> node {other}"));
                    sim.hold(host_name(node), host_name(other));
                    let release_ms = now_ms + 50 + rng.below(2_000);
                    undo.push((release_ms, Undo::Release(node, other)));
                    faults_injected += 1;
                }
                Fault::Clock => {
                    let drift_permille = rng.below(101) as i64 - 50;
                    let jump_ms = rng.below(3_000) as i64;
                    world.skew_clock(node, now_ms, drift_permille, jump_ms);
                    faults_injected += 1;
                    world.event(format!(
                        "clock of node {node}: drift {drift_permille}‰, jumps {jump_ms} ms"
                    ));
                }
            }
        }
    }
    check_liveness(&world.borrow(), &nodes).map_err(|what| fail(&world, what))?;
    let world = world.borrow();
    Ok(ClusterSummary {
        trace_digest: world.trace.digest,
        events: world.trace.events,
        simulated_ms: end_ms,
        nodes: nodes.len(),
        faults_enabled: enabled.iter().map(|fault| fault.name()).collect(),
        faults_injected,
        crashes,
        controlled_shutdowns: world.clean_stops,
        terms: world.terms_seen.len(),
        topics_acknowledged: world.acknowledged_topics.len(),
    })
}

/// After healing: one leader everyone follows, one applied index, every broker unfenced,
/// every partition led, every acknowledged topic present.
fn check_liveness(world: &World, nodes: &[NodeId]) -> Result<(), String> {
    let views: Vec<_> = nodes
        .iter()
        .map(|node| {
            world
                .views
                .get(node)
                .map(|view| (*node, view))
                .ok_or_else(|| format!("node {node} reported nothing after healing"))
        })
        .collect::<Result<_, _>>()?;
    let leaders: BTreeSet<Option<NodeId>> = views.iter().map(|(_, view)| view.leader).collect();
    let leader = match leaders.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(leader)] => *leader,
        _ => {
            let each: Vec<String> = views
                .iter()
                .map(|(node, view)| {
                    format!(
                        "node {node}: leader {:?} term {} applied {}",
                        view.leader, view.term, view.applied_index
                    )
                })
                .collect();
            return Err(format!(
                "after healing the nodes do not follow one leader: {}",
                each.join("; ")
            ));
        }
    };
    let applied: BTreeSet<u64> = views.iter().map(|(_, view)| view.applied_index).collect();
    if applied.len() != 1 {
        return Err(format!("after healing the nodes applied {applied:?}"));
    }
    let all: BTreeSet<i32> = nodes.iter().map(|&node| node as i32).collect();
    for (node, view) in views {
        if view.unfenced_brokers != all {
            return Err(format!(
                "after healing node {node} (leader {leader}) has unfenced brokers {:?}",
                view.unfenced_brokers
            ));
        }
        if view.leaderless > 0 {
            return Err(format!(
                "after healing node {node} has {} partitions without a leader: {}",
                view.leaderless,
                view.leaderless_examples.join(", ")
            ));
        }
        let missing: Vec<_> = world.acknowledged_topics.difference(&view.topics).collect();
        if !missing.is_empty() {
            return Err(format!(
                "acknowledged topics {missing:?} are missing on node {node}"
            ));
        }
    }
    Ok(())
}
