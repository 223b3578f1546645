//! The cluster simulation: 3 or 5 Spate nodes as turmoil hosts, each running the real
//! metadata-quorum member ([`spate_engine::quorum::member::QuorumMember`]: raft, the
//! controller, broker registration and heartbeats, topic requests) through a turmoil driver
//! ([`node`]), with its metadata log on simulated storage; the engine's partition replicas
//! ([`replicas`]), group coordinators ([`groups`]) and transaction coordinators ([`txns`]) on
//! each node; an admin client creating topics, producers ([`producer`]), transactional
//! producers with a `read_committed` reader ([`txn_producer`]) and a consumer group
//! ([`consumer`]); faults chosen per seed; safety checked as the run goes ([`world`],
//! [`consumer`], [`txn_producer`]) and liveness after a healing phase.
//!
//! # Faults (swarm testing: each seed enables its own subset)
//! Node crashes that lose unsynced writes, or keep a torn prefix of them, and restarts;
//! stops (SIGTERM: a controlled shutdown, then a restart); the loss of a node's partition
//! disk; network partitions isolating a node (symmetric or one way) or the quorum leader, and
//! cut links; messages held and released (reordered); message latency ranges; clock drift and
//! jumps per node; consumers killed (some mid-rebalance) and stalled past their session.
//!
//! # Checks
//! Safety, all the time: one quorum leader per term; the same metadata at the same log index
//! on every node; one leader per partition per leader epoch; partition and leader epochs never
//! go back on a node; ISRs grow only as leaders ask; high watermarks never go back within a
//! leader epoch; logs that open after every crash; the group checks of [`consumer`]; no task
//! panics. Liveness, after the faults stop and the healing phase: one leader everyone follows,
//! every node at the same applied index, every broker registered and unfenced, every partition
//! led, every acknowledged topic present; every replica caught up and holding what the
//! producers were told; the group Stable, its offsets committed to the log ends, every
//! acknowledged record consumed; every transaction ended, committed or aborted whole, as its
//! producer was told ([`txn_producer::check`]).

mod client;
mod consumer;
mod disk;
mod faults;
mod groups;
mod node;
mod producer;
mod replicas;
mod txn_producer;
mod txns;
mod wire;
mod world;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_engine::history;
use spate_engine::quorum::NodeId;
use spate_engine::storage::backend::SimulatedStorage;

use crate::SimRng;
use disk::SimDisk;
use faults::{Fault, Faults};
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
    /// Records the producers sent.
    pub records_sent: usize,
    /// Records acknowledged with `acks=all` (and found in every replica after healing).
    pub records_acknowledged: usize,
    /// Generations of the consumer group that handed out partitions (rebalances).
    pub group_generations: usize,
    /// Distinct records the consumer group consumed.
    pub records_consumed: usize,
    /// Offset commits acknowledged to the group's members.
    pub commits_acknowledged: u64,
    /// Transactions whose commit was acknowledged to their producer.
    pub transactions_committed: u64,
    /// Transactions whose abort was acknowledged to their producer.
    pub transactions_aborted: u64,
    /// Transactional records committed in the log after healing.
    pub transactional_records_committed: usize,
    /// Transactional records aborted in the log after healing.
    pub transactional_records_aborted: usize,
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

/// Runs the cluster simulation for `seed`.
///
/// # Errors
/// The first safety violation, or a liveness check that fails after healing, with the seed
/// and the events before it.
pub fn run_cluster_simulation(
    seed: u64,
    options: &ClusterOptions,
) -> Result<ClusterSummary, ClusterFailure> {
    let _watchdog = Watchdog::start(seed);
    record_panics();
    PANIC.with(|panic| panic.borrow_mut().take());
    let mut rng = SimRng::new(seed);
    let node_count: u64 = if rng.chance(30) { 5 } else { 3 };
    let nodes: Vec<NodeId> = (1..=node_count).collect();
    let enabled = Fault::choose(&mut rng);
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
        // Every step polls every host: 2 ms steps run the simulation half again as fast as
        // 1 ms ones, and fsyncs (1-5 ms) and latencies still differ from step to step.
        .tick_duration(Duration::from_millis(2))
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
    sim.client(
        "producers",
        producer::run_all(
            nodes.clone(),
            Rc::clone(&world),
            seed,
            fault_end_ms,
            end_ms - 2_000,
        ),
    );

    sim.client(
        "transactions",
        txn_producer::run_all(
            nodes.clone(),
            Rc::clone(&world),
            seed ^ 0x7a_c0de,
            fault_end_ms,
        ),
    );
    sim.client(
        "consumers",
        consumer::run_all(
            nodes.clone(),
            Rc::clone(&world),
            seed ^ 0xc0_5e,
            fault_end_ms,
            end_ms - 2_000,
        ),
    );

    let fail = |world: &RefCell<World>, what: String| {
        let world = world.borrow();
        ClusterFailure {
            seed,
            what,
            trace_tail: world.trace.tail.iter().cloned().collect(),
        }
    };
    let mut faults = Faults::new(nodes.clone(), enabled.clone(), fault_every_ms, storages);
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
        if let Some(panic) = PANIC.with(|panic| panic.borrow_mut().take()) {
            return Err(fail(&world, format!("a task panicked: {panic}")));
        }
        if let Some(violation) = world.borrow().violations.first() {
            return Err(fail(&world, violation.clone()));
        }
        faults.restart_stopped(&world, &mut rng, now_ms, now_ms >= fault_end_ms);
        // Undo what is due (everything, once the faults stop).
        let heal_now = now_ms >= fault_end_ms && !healed;
        faults.undo_due(&mut sim, &world, now_ms, heal_now);
        if heal_now {
            healed = true;
            world.borrow_mut().event("faults stop: healing".to_owned());
        }
        if now_ms < fault_end_ms {
            faults.inject(&mut sim, &world, &mut rng, now_ms);
        }
    }
    check_liveness(&world.borrow(), &nodes).map_err(|what| fail(&world, what))?;
    let produced = check_replicas(&world.borrow(), &nodes).map_err(|what| fail(&world, what))?;
    check_group(&world.borrow()).map_err(|what| fail(&world, what))?;
    let transactions = txn_producer::check(&world.borrow()).map_err(|what| fail(&world, what))?;
    let world = world.borrow();
    Ok(ClusterSummary {
        trace_digest: world.trace.digest,
        events: world.trace.events,
        simulated_ms: end_ms,
        nodes: nodes.len(),
        faults_enabled: enabled.iter().map(|fault| fault.name()).collect(),
        faults_injected: faults.injected,
        crashes: faults.crashes,
        controlled_shutdowns: world.clean_stops,
        terms: world.terms_seen.len(),
        topics_acknowledged: world.acknowledged_topics.len(),
        records_sent: produced.sent,
        records_acknowledged: produced.acknowledged,
        group_generations: world.groups.generations.len(),
        records_consumed: world.groups.consumed.len(),
        commits_acknowledged: world.groups.commits_acknowledged,
        transactions_committed: world.txns.commits_acknowledged,
        transactions_aborted: world.txns.aborts_acknowledged,
        transactional_records_committed: transactions.committed_records,
        transactional_records_aborted: transactions.aborted_records,
    })
}

/// After healing, the consumer group against the producers' topic: Stable with every member,
/// each partition's committed offset at its log end (everything consumed and committed), and
/// every acknowledged record consumed.
fn check_group(world: &World) -> Result<(), String> {
    let group = consumer::GROUP;
    let view = world
        .groups
        .final_view
        .as_ref()
        .ok_or_else(|| format!("after healing the coordinator of {group} did not answer"))?;
    if view.state != "Stable" || view.members != consumer::MEMBERS {
        return Err(format!(
            "after healing {group} is {} with {} members, not Stable with {}",
            view.state,
            view.members,
            consumer::MEMBERS
        ));
    }
    let mut log_ends = BTreeMap::new();
    for dump in world.dumps.values().flatten() {
        if dump.topic == producer::TOPIC && dump.leading {
            log_ends.insert(dump.partition, dump.log_end_offset);
        }
    }
    for (partition, log_end) in log_ends {
        let committed = view.committed.get(&partition).copied().unwrap_or(-1);
        if committed != log_end {
            return Err(format!(
                "after healing {group} committed {committed} for {}-{partition}, whose log ends \
                 at {log_end}",
                producer::TOPIC
            ));
        }
    }
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for operation in &world.history.operations {
        match operation {
            history::Operation::Send {
                producer,
                seq,
                value,
                ..
            } => {
                values.insert((*producer, *seq), value);
            }
            history::Operation::Acked { producer, seq, .. } => {
                if let Some(value) = values.get(&(*producer, *seq)) {
                    if !world.groups.consumed.contains(*value) {
                        missing.push((*value).clone());
                    }
                }
            }
            _ => {}
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} acknowledged records were never consumed by {group}, first: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    Ok(())
}

/// After healing, the replicas of the producers' topic against what the producers were told
/// ([`spate_engine::history::check`]: no acknowledged write lost, no record at two offsets,
/// replicas identical below the high watermark, send order kept, nothing invented), and
/// every replica of it and of the transactional producers' topic caught up and identical
/// ([`check_caught_up`]).
fn check_replicas(world: &World, nodes: &[NodeId]) -> Result<history::Summary, String> {
    check_caught_up(world, nodes, txn_producer::TOPIC)?;
    if world.history.operations.is_empty() {
        return Ok(history::Summary::default());
    }
    let high_watermarks = check_caught_up(world, nodes, producer::TOPIC)?;
    let mut logs = Vec::new();
    for (&node, dumps) in &world.dumps {
        for dump in dumps.iter().filter(|dump| dump.topic == producer::TOPIC) {
            logs.push(history::ReplicaLog {
                node: node as i32,
                partition: dump.partition,
                records: dump.records.clone(),
            });
        }
    }
    history::check(&world.history, &logs, &high_watermarks).map_err(|violations| {
        let shown: Vec<String> = violations
            .iter()
            .take(5)
            .map(|violation| format!("{violation:?}"))
            .collect();
        format!(
            "{} replication violations, first: {}",
            violations.len(),
            shown.join("; ")
        )
    })
}

/// After healing, every partition of `topic`: one leader, its high watermark at its log end,
/// every replica's log ending there too and byte-identical to the leader's below it. The high
/// watermark of each partition.
fn check_caught_up(
    world: &World,
    nodes: &[NodeId],
    topic: &str,
) -> Result<BTreeMap<i32, i64>, String> {
    let mut high_watermarks = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<(NodeId, &replicas::ReplicaDump)>> = BTreeMap::new();
    for &node in nodes {
        let dumps = world
            .dumps
            .get(&node)
            .ok_or_else(|| format!("node {node} did not report its replicas after healing"))?;
        for dump in dumps.iter().filter(|dump| dump.topic == topic) {
            by_partition
                .entry(dump.partition)
                .or_default()
                .push((node, dump));
        }
    }
    for (partition, replicas) in &by_partition {
        let name = format!("{topic}-{partition}");
        let leaders: Vec<_> = replicas.iter().filter(|(_, dump)| dump.leading).collect();
        let [(leader, leading)] = leaders.as_slice() else {
            return Err(format!(
                "after healing {name} has {} leading replicas",
                leaders.len()
            ));
        };
        if leading.high_watermark != leading.log_end_offset {
            return Err(format!(
                "after healing the high watermark of {name} on its leader {leader} is {}, its \
                 log ends at {}",
                leading.high_watermark, leading.log_end_offset
            ));
        }
        let leader_batches: BTreeMap<i64, (i64, u64)> = leading
            .batches
            .iter()
            .map(|&(base, last, digest)| (base, (last, digest)))
            .collect();
        for (node, dump) in replicas {
            for &(base, last, digest) in &dump.batches {
                if last >= leading.high_watermark {
                    break;
                }
                if leader_batches.get(&base) != Some(&(last, digest)) {
                    return Err(format!(
                        "after healing the batch of {name} at offset {base} on node {node} \
                         differs from its leader {leader}'s below the high watermark {}",
                        leading.high_watermark
                    ));
                }
            }
            if dump.log_end_offset != leading.log_end_offset {
                return Err(format!(
                    "after healing the replica of {name} on node {node} ends at {}, its leader \
                     {leader}'s at {}",
                    dump.log_end_offset, leading.log_end_offset
                ));
            }
        }
        high_watermarks.insert(*partition, leading.high_watermark);
    }
    Ok(high_watermarks)
}

thread_local! {
    /// The first panic on this thread since the last step: a task of a simulated host that
    /// panics ends only that task (tokio catches it), so the run checks for one after every
    /// step.
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once per process, a panic hook that records each panic for [`PANIC`] before
/// printing it as the default hook does.
fn record_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANIC.with(|panic| {
                if let Ok(mut panic) = panic.try_borrow_mut() {
                    panic.get_or_insert_with(|| info.to_string());
                }
            });
            print(info);
        }));
    });
}

/// Wall time a seed may take before the run is declared stuck (a seed takes well under a
/// second in an optimized build, ten in a debug one).
const SEED_WALL_LIMIT: Duration = Duration::from_secs(300);

/// Ends the process when a seed runs past [`SEED_WALL_LIMIT`] of wall time: a host that never
/// yields (a livelock) keeps turmoil from ever advancing simulated time, so the seed would
/// otherwise hang its test run for good. Wall time decides only whether to give up, never
/// what the simulation does.
struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(seed: u64) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let watched = Arc::clone(&done);
        std::thread::spawn(move || {
            let started = Instant::now();
            while !watched.load(Ordering::SeqCst) {
                if started.elapsed() > SEED_WALL_LIMIT {
                    eprintln!(
                        "cluster simulation seed {seed} did not finish in {} s of wall time: a \
                         host that never yields freezes simulated time; replay: cargo run -p \
                         spate-sim --release -- --seed {seed} --trace",
                        SEED_WALL_LIMIT.as_secs()
                    );
                    std::process::exit(101);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
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
