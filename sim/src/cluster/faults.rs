//! The faults of a cluster run: which a seed enables (swarm testing), when each is injected,
//! and when it is undone.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use spate_engine::quorum::NodeId;
use spate_engine::storage::backend::{CrashMode, SimulatedStorage};

use super::node::host_name;
use super::replicas::DATA_DIR;
use super::world::World;
use crate::SimRng;

/// The faults a seed may enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Crash,
    TornCrash,
    DiskLoss,
    Stop,
    Isolate,
    IsolateLeader,
    Cut,
    OneWay,
    Hold,
    Clock,
    ReadCorruption,
}

impl Fault {
    pub(crate) const ALL: [Fault; 11] = [
        Fault::Crash,
        Fault::TornCrash,
        Fault::DiskLoss,
        Fault::Stop,
        Fault::Isolate,
        Fault::IsolateLeader,
        Fault::Cut,
        Fault::OneWay,
        Fault::Hold,
        Fault::Clock,
        Fault::ReadCorruption,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::TornCrash => "torn-crash",
            Fault::DiskLoss => "disk-loss",
            Fault::Stop => "stop",
            Fault::Isolate => "isolate",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Cut => "cut",
            Fault::OneWay => "one-way",
            Fault::Hold => "hold",
            Fault::Clock => "clock",
            Fault::ReadCorruption => "read-corruption",
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
    StopCorruption(NodeId),
}

/// One read in this many of a corrupting disk returns a flipped byte.
const READ_CORRUPTION_ONE_IN: u64 = 20;

/// A pair of nodes, smaller first.
fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

impl Fault {
    /// The faults a seed enables: each with even odds; when none is, usually one anyway.
    pub(crate) fn choose(rng: &mut SimRng) -> Vec<Fault> {
        let mut enabled: Vec<Fault> = Fault::ALL.into_iter().filter(|_| rng.chance(50)).collect();
        if enabled.is_empty() && rng.chance(80) {
            enabled.push(Fault::ALL[rng.below(Fault::ALL.len() as u64) as usize]);
        }
        enabled
    }
}

/// The faults injected so far, and what is still to undo.
pub(crate) struct Faults {
    nodes: Vec<NodeId>,
    enabled: Vec<Fault>,
    every_ms: u64,
    next_ms: u64,
    /// Every node's disk, to crash.
    storages: BTreeMap<NodeId, SimulatedStorage>,
    undo: Vec<(u64, Undo)>,
    /// Nodes crashed or stopping, until started again.
    down: BTreeSet<NodeId>,
    /// Nodes whose disk was lost, with their broker epoch then, until they register again
    /// (registering with `data_lost` takes them out of the ISRs): the controller still
    /// counts them as whole copies meanwhile.
    lost: BTreeMap<NodeId, i64>,
    /// Nodes whose disk returns corrupted reads now and then.
    corrupting: BTreeSet<NodeId>,
    /// Pairs whose link is partitioned or held: turmoil's hold and release would undo a
    /// partition (and a partition drops held messages), so the two never overlap on a pair.
    faulted_links: BTreeSet<(NodeId, NodeId)>,
    /// Faults injected.
    pub(crate) injected: u64,
    /// Crashes among them.
    pub(crate) crashes: u64,
}

impl Faults {
    pub(crate) fn new(
        nodes: Vec<NodeId>,
        enabled: Vec<Fault>,
        every_ms: u64,
        storages: BTreeMap<NodeId, SimulatedStorage>,
    ) -> Faults {
        Faults {
            nodes,
            enabled,
            every_ms,
            next_ms: every_ms,
            storages,
            undo: Vec::new(),
            down: BTreeSet::new(),
            lost: BTreeMap::new(),
            corrupting: BTreeSet::new(),
            faulted_links: BTreeSet::new(),
            injected: 0,
            crashes: 0,
        }
    }

    /// A node whose controlled shutdown finished is started again a little later (at once
    /// while `healing`).
    pub(crate) fn restart_stopped(
        &mut self,
        world: &RefCell<World>,
        rng: &mut SimRng,
        now_ms: u64,
        healing: bool,
    ) {
        let stopped = std::mem::take(&mut world.borrow_mut().stopped);
        for node in stopped {
            let again_ms = if healing {
                now_ms
            } else {
                now_ms + 100 + rng.below(2_000)
            };
            self.undo.push((again_ms, Undo::Restart(node)));
        }
    }

    /// Undoes what is due by `now_ms`, or everything with `all`.
    pub(crate) fn undo_due(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        world: &RefCell<World>,
        now_ms: u64,
        all: bool,
    ) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.undo)
            .into_iter()
            .partition(|(at_ms, _)| all || *at_ms <= now_ms);
        self.undo = later;
        for (_, action) in due {
            let mut world = world.borrow_mut();
            match action {
                Undo::Restart(node) => {
                    world.event(format!("restart node {node}"));
                    if self.corrupting.remove(&node) {
                        self.storages[&node].set_read_corruption(None);
                    }
                    // The new process resets connections made to the old one.
                    for &other in self.nodes.iter().filter(|&&other| other != node) {
                        world.break_link(node, other);
                    }
                    drop(world);
                    sim.bounce(host_name(node));
                    self.down.remove(&node);
                }
                Undo::Repair(a, b) => {
                    world.event(format!("repair node {a} <-> node {b}"));
                    sim.repair(host_name(a), host_name(b));
                    self.faulted_links.remove(&pair(a, b));
                }
                Undo::RepairOneWay(a, b) => {
                    world.event(format!("repair node {a} -> node {b}"));
                    sim.repair_oneway(host_name(a), host_name(b));
                    self.faulted_links.remove(&pair(a, b));
                }
                Undo::StopCorruption(node) => {
                    if self.corrupting.remove(&node) {
                        world.event(format!("reads of node {node}'s disk are sound again"));
                        self.storages[&node].set_read_corruption(None);
                    }
                }
                Undo::Release(a, b) => {
                    world.event(format!("release node {a} <-> node {b}"));
                    sim.release(host_name(a), host_name(b));
                    self.faulted_links.remove(&pair(a, b));
                }
            }
        }
    }

    /// The nodes whose disk was lost and that have not registered since; forgets the others.
    fn lost_unregistered(&mut self, world: &World) -> BTreeSet<NodeId> {
        self.lost
            .retain(|&node, broker_epoch| world.broker_epoch(node) <= *broker_epoch);
        self.lost.keys().copied().collect()
    }

    /// Injects the next fault when it is due: one of the enabled kinds, on a node drawn at
    /// random; skipped when it would take down a majority or overlap a fault on a link.
    pub(crate) fn inject(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        world: &RefCell<World>,
        rng: &mut SimRng,
        now_ms: u64,
    ) {
        if now_ms < self.next_ms || self.enabled.is_empty() {
            return;
        }
        let nodes = &self.nodes.clone();
        self.next_ms = now_ms + self.every_ms / 2 + rng.below(self.every_ms);
        let fault = self.enabled[rng.below(self.enabled.len() as u64) as usize];
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        let others: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != node).collect();
        let back_ms = now_ms + 200 + rng.below(5_000);
        let mut world = world.borrow_mut();
        // A node holding the only whole in-sync copy of a partition, the others lost with
        // their disks and not yet registered again, is left alone: a second fault there
        // exceeds the minority (the controller would elect a replica holding nothing).
        let lost = self.lost_unregistered(&world);
        let last_copy = |node: NodeId| world.holds_last_copy(node, &lost);
        match fault {
            Fault::Crash | Fault::TornCrash | Fault::DiskLoss => {
                // At most a minority down at once, so the cluster can make progress.
                if self.down.contains(&node) || (self.down.len() + 1) * 2 > nodes.len() {
                    return;
                }
                // A lost disk loses synced data too: `acks=all` promises to survive a minority
                // of each partition's replicas failing, and a replica still catching up
                // (outside the ISR) is not yet a whole copy, so it counts as faulty. This
                // keeps the last in-sync copies of a partition from being destroyed (Kafka
                // promises no more: as long as one in-sync replica survives).
                if last_copy(node)
                    || fault == Fault::DiskLoss
                        && world.disk_loss_exceeds_minority(node, &self.down, &lost)
                {
                    return;
                }
                let broker_epoch = world.broker_epoch(node);
                let mode = if fault == Fault::TornCrash {
                    CrashMode::TornTail {
                        seed: rng.next_u64(),
                    }
                } else {
                    CrashMode::DropUnsynced
                };
                world.event(format!("crash node {node} ({})", fault.name()));
                // Read corruption is a fault of the running node; the restarted one reads
                // its disk soundly (recovery would cut a "torn" tail a bad read showed).
                if self.corrupting.remove(&node) {
                    self.storages[&node].set_read_corruption(None);
                }
                drop(world);
                sim.crash(host_name(node));
                self.storages[&node].crash(mode);
                if fault == Fault::DiskLoss {
                    // The partitions' disk is replaced by an empty one; the metadata log
                    // lives on a disk of its own (as Kafka's `metadata.log.dir` allows).
                    self.storages[&node].lose_tree(Path::new(DATA_DIR));
                    self.lost.insert(node, broker_epoch);
                }
                self.down.insert(node);
                self.crashes += 1;
                self.injected += 1;
                self.undo.push((back_ms, Undo::Restart(node)));
            }
            Fault::Stop => {
                // A SIGTERM: the node moves its leaderships away, then stops; counted with
                // the crashed ones until it is started again.
                if self.down.contains(&node)
                    || (self.down.len() + 1) * 2 > nodes.len()
                    || last_copy(node)
                {
                    return;
                }
                world.event(format!("stop node {node} (controlled shutdown)"));
                world.stop_requests.insert(node);
                self.down.insert(node);
                self.injected += 1;
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
                let overlaps = nodes
                    .iter()
                    .filter(|&&other| other != target)
                    .any(|&other| self.faulted_links.contains(&pair(target, other)));
                if overlaps || last_copy(target) {
                    return;
                }
                world.event(format!("isolate node {target} ({})", fault.name()));
                for &other in nodes.iter().filter(|&&n| n != target) {
                    world.break_link(target, other);
                    sim.partition(host_name(target), host_name(other));
                    self.faulted_links.insert(pair(target, other));
                    self.undo.push((back_ms, Undo::Repair(target, other)));
                }
                self.injected += 1;
            }
            Fault::Cut => {
                // One link down both ways, the rest of the network up: the two nodes still
                // reach each other's peers (a partial partition).
                let other = others[rng.below(others.len() as u64) as usize];
                if last_copy(node) || last_copy(other) {
                    return;
                }
                if !self.faulted_links.insert(pair(node, other)) {
                    return;
                }
                world.event(format!("cut node {node} <-> node {other}"));
                world.break_link(node, other);
                sim.partition(host_name(node), host_name(other));
                self.undo.push((back_ms, Undo::Repair(node, other)));
                self.injected += 1;
            }
            Fault::OneWay => {
                let to = others[rng.below(others.len() as u64) as usize];
                if last_copy(node) || last_copy(to) {
                    return;
                }
                if !self.faulted_links.insert(pair(node, to)) {
                    return;
                }
                world.event(format!("drop messages node {node} -> node {to}"));
                world.break_link(node, to);
                sim.partition_oneway(host_name(node), host_name(to));
                self.undo.push((back_ms, Undo::RepairOneWay(node, to)));
                self.injected += 1;
            }
            Fault::Hold => {
                let other = others[rng.below(others.len() as u64) as usize];
                if last_copy(node) || last_copy(other) {
                    return;
                }
                if !self.faulted_links.insert(pair(node, other)) {
                    return;
                }
                world.event(format!("hold messages node {node} <-> node {other}"));
                sim.hold(host_name(node), host_name(other));
                let release_ms = now_ms + 50 + rng.below(2_000);
                self.undo.push((release_ms, Undo::Release(node, other)));
                self.injected += 1;
            }
            Fault::ReadCorruption => {
                if self.down.contains(&node) || last_copy(node) || !self.corrupting.insert(node) {
                    return;
                }
                world.event(format!(
                    "reads of node {node}'s disk flip a byte now and then"
                ));
                self.storages[&node].set_read_corruption(Some((
                    Path::new(DATA_DIR),
                    READ_CORRUPTION_ONE_IN,
                    rng.next_u64(),
                )));
                self.undo.push((back_ms, Undo::StopCorruption(node)));
                self.injected += 1;
            }
            Fault::Clock => {
                let drift_permille = rng.below(101) as i64 - 50;
                let jump_ms = rng.below(3_000) as i64;
                world.skew_clock(node, now_ms, drift_permille, jump_ms);
                self.injected += 1;
                world.event(format!(
                    "clock of node {node}: drift {drift_permille}‰, jumps {jump_ms} ms"
                ));
            }
        }
    }
}
