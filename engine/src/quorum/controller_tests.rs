//! The controller's decisions applied to an image: registration and fencing, elections from the
//! ISR (clean and unclean), controlled shutdown, AlterPartition checks, placement, preferred
//! leaders, and snapshots.

use uuid::Uuid;

use super::controller::*;
use super::image::MetadataImage;
use super::planning::PlanningImage;
use super::records::MetadataRecord;
use crate::replication::{BrokerId, PartitionState};

const TIMEOUT_MS: i64 = 9_000;
const TOPIC: Uuid = Uuid::from_u128(0x7031c);

/// An image and a controller, with records applied as the quorum would.
struct Cluster {
    image: MetadataImage,
    controller: Controller,
    next_index: u64,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            image: MetadataImage::new(),
            controller: Controller::new(ControllerConfig {
                broker_session_timeout_ms: TIMEOUT_MS,
                ..ControllerConfig::default()
            }),
            next_index: 1,
        }
    }

    fn apply(&mut self, records: Vec<MetadataRecord>) {
        for record in records {
            self.image
                .apply(self.next_index, &record)
                .unwrap_or_else(|error| panic!("{record:?}: {error}"));
            self.next_index += 1;
        }
    }

    fn epoch(&self, broker_id: BrokerId) -> i64 {
        self.image.broker(broker_id).unwrap().broker_epoch
    }

    /// Registers brokers 1..=count and unfences them with a heartbeat.
    fn with_brokers(count: i32) -> Cluster {
        let mut cluster = Cluster::new();
        for broker_id in 1..=count {
            cluster.register(broker_id, 0);
            cluster.heartbeat(broker_id, 0, false);
        }
        cluster
    }

    fn register(&mut self, broker_id: BrokerId, now_ms: i64) {
        self.register_with(broker_id, now_ms, false);
    }

    /// A new incarnation of `broker_id`; `data_lost` when it found none of its partition data.
    fn register_with(&mut self, broker_id: BrokerId, now_ms: i64, data_lost: bool) {
        let records = self.controller.register_broker(
            &self.image,
            now_ms,
            Registration {
                broker_id,
                incarnation_id: Uuid::from_u128(broker_id as u128 + now_ms as u128),
                host: "127.0.0.1".into(),
                port: 9000 + broker_id,
                rack: None,
                data_lost,
            },
        );
        self.apply(records);
    }

    fn heartbeat(
        &mut self,
        broker_id: BrokerId,
        now_ms: i64,
        want_shut_down: bool,
    ) -> HeartbeatReply {
        let (reply, records) = self
            .controller
            .heartbeat(
                &self.image,
                now_ms,
                Heartbeat {
                    broker_id,
                    broker_epoch: self.epoch(broker_id),
                    want_shut_down,
                },
            )
            .unwrap();
        self.apply(records);
        reply
    }

    fn create(&mut self, partitions: i32, replication_factor: usize) {
        let records = self
            .controller
            .create_topic(
                &self.image,
                "orders",
                TOPIC,
                partitions,
                replication_factor,
                0,
            )
            .unwrap();
        self.apply(records);
    }

    fn partition(&self, partition: i32) -> PartitionState {
        self.image.partition(TOPIC, partition).unwrap().clone()
    }

    fn tick(&mut self, now_ms: i64) {
        let records = self.controller.tick(&self.image, now_ms);
        self.apply(records);
    }
}

#[test]
fn registered_brokers_start_fenced_and_a_heartbeat_unfences_them() {
    let mut cluster = Cluster::new();
    cluster.register(1, 0);
    assert!(cluster.image.broker(1).unwrap().fenced);
    assert!(
        cluster.heartbeat(1, 0, false).is_fenced,
        "the reply says how it was"
    );
    assert!(!cluster.image.broker(1).unwrap().fenced);
    assert_eq!(
        cluster.controller.heartbeat(
            &cluster.image,
            0,
            Heartbeat {
                broker_id: 1,
                broker_epoch: 99,
                want_shut_down: false
            }
        ),
        Err(ControllerError::StaleBrokerEpoch)
    );
}

#[test]
fn topics_are_spread_over_the_eligible_brokers() {
    let mut cluster = Cluster::with_brokers(3);
    assert_eq!(
        cluster
            .controller
            .create_topic(&cluster.image, "orders", TOPIC, 3, 4, 0),
        Err(ControllerError::InvalidReplicationFactor)
    );
    cluster.create(3, 3);
    let leaders: Vec<BrokerId> = (0..3).map(|p| cluster.partition(p).leader).collect();
    assert_eq!(leaders, [1, 2, 3], "preferred leaders spread");
    assert_eq!(cluster.partition(1).replicas, [2, 3, 1]);
    assert_eq!(cluster.partition(1).isr, [2, 3, 1]);
    assert_eq!(
        cluster
            .controller
            .create_topic(&cluster.image, "orders", Uuid::from_u128(1), 1, 1, 0),
        Err(ControllerError::TopicAlreadyExists)
    );
}

#[test]
fn a_silent_broker_is_fenced_and_its_partitions_get_new_leaders_from_the_isr() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(2, 3);
    let before = cluster.partition(0);
    assert_eq!(before.leader, 1);
    // 2 and 3 keep heartbeating; 1 goes silent.
    for now_ms in (1_000..=TIMEOUT_MS).step_by(1_000) {
        cluster.heartbeat(2, now_ms, false);
        cluster.heartbeat(3, now_ms, false);
        cluster.tick(now_ms);
    }
    assert!(cluster.image.broker(1).unwrap().fenced);
    let after = cluster.partition(0);
    assert_eq!(after.leader, 2, "next in assignment order, from the ISR");
    assert_eq!(after.isr, [2, 3]);
    assert_eq!(after.leader_epoch, before.leader_epoch + 1);
    assert!(after.partition_epoch > before.partition_epoch);
    let other = cluster.partition(1);
    assert_eq!((other.leader, other.isr.clone()), (2, vec![2, 3]));
    assert_eq!(other.leader_epoch, 0, "its leader did not change");
}

#[test]
fn a_broker_whose_heartbeat_connection_closed_is_fenced_at_the_next_tick() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    assert_eq!(cluster.partition(0).leader, 1);
    let epoch = cluster.epoch(1);
    // An older registration's connection closing changes nothing.
    cluster
        .controller
        .connection_lost(&cluster.image, 1, epoch - 1, 500);
    cluster.tick(500);
    assert!(!cluster.image.broker(1).unwrap().fenced);
    cluster
        .controller
        .connection_lost(&cluster.image, 1, epoch, 600);
    cluster.tick(600);
    assert!(
        cluster.image.broker(1).unwrap().fenced,
        "long before its session ends"
    );
    assert_eq!(cluster.partition(0).leader, 2);
}

#[test]
fn the_last_in_sync_replica_is_waited_for_unless_unclean_election_is_allowed() {
    for unclean in [false, true] {
        let mut cluster = Cluster::with_brokers(3);
        cluster.create(1, 3);
        if unclean {
            cluster.apply(vec![MetadataRecord::Config {
                resource_type: 2,
                resource_name: "orders".into(),
                key: UNCLEAN_LEADER_ELECTION.into(),
                value: Some("true".into()),
            }]);
        }
        // 1 dies, then 2: the ISR shrinks to 3; then 3 dies too.
        cluster.heartbeat(2, 5_000, false);
        cluster.heartbeat(3, 5_000, false);
        cluster.tick(TIMEOUT_MS);
        cluster.heartbeat(3, 12_000, false);
        cluster.tick(5_000 + TIMEOUT_MS);
        assert_eq!(cluster.partition(0).isr, [3]);
        assert_eq!(cluster.partition(0).leader, 3);
        cluster.tick(12_000 + TIMEOUT_MS);
        let leaderless = cluster.partition(0);
        assert_eq!(leaderless.leader, -1);
        assert_eq!(leaderless.isr, [3], "the last in-sync replica stays");
        // Broker 1 comes back (a new registration): it is not in the ISR.
        cluster.register(1, 30_000);
        cluster.heartbeat(1, 30_000, false);
        let state = cluster.partition(0);
        if unclean {
            assert_eq!((state.leader, state.isr.clone()), (1, vec![1]), "unclean");
        } else {
            assert_eq!(state.leader, -1, "clean: waits for 3");
            cluster.register(3, 31_000);
            cluster.heartbeat(3, 31_000, false);
            assert_eq!(cluster.partition(0).leader, 3);
        }
    }
}

#[test]
fn controlled_shutdown_moves_leadership_away_before_the_broker_may_exit() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(3, 3);
    let reply = cluster.heartbeat(1, 100, true);
    assert!(!reply.should_shut_down, "it still led when it asked");
    assert!(cluster.image.broker(1).unwrap().in_controlled_shutdown);
    for partition in 0..3 {
        let state = cluster.partition(partition);
        assert_ne!(state.leader, 1);
        assert!(!state.isr.contains(&1));
    }
    assert!(cluster.heartbeat(1, 200, true).should_shut_down);
}

#[test]
fn alter_partition_is_checked_as_kafka_checks_it() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    let state = cluster.partition(0);
    let request = |isr: Vec<BrokerId>| AlterPartition {
        broker_id: 1,
        broker_epoch: cluster.epoch(1),
        topic_id: TOPIC,
        partition: 0,
        leader_epoch: state.leader_epoch,
        partition_epoch: state.partition_epoch,
        isr,
    };
    let check =
        |request: AlterPartition| cluster.controller.alter_partition(&cluster.image, &request);
    assert_eq!(
        check(AlterPartition {
            broker_id: 2,
            broker_epoch: cluster.epoch(2),
            ..request(vec![2, 3])
        }),
        Err(ControllerError::NotLeader)
    );
    assert_eq!(
        check(AlterPartition {
            broker_epoch: 1234,
            ..request(vec![1])
        }),
        Err(ControllerError::StaleBrokerEpoch)
    );
    assert_eq!(
        check(AlterPartition {
            partition_epoch: state.partition_epoch - 1,
            ..request(vec![1])
        }),
        Err(ControllerError::InvalidUpdateVersion)
    );
    assert_eq!(
        check(AlterPartition {
            partition: 5,
            ..request(vec![1])
        }),
        Err(ControllerError::UnknownTopicOrPartition)
    );
    assert_eq!(check(request(vec![2, 3])), Err(ControllerError::InvalidIsr));
    assert_eq!(check(request(vec![1, 2, 3])), Ok(vec![]), "no change");
    let shrink = check(request(vec![1, 2])).unwrap();
    cluster.apply(shrink);
    let shrunk = cluster.partition(0);
    assert_eq!(shrunk.isr, [1, 2]);
    assert_eq!(shrunk.partition_epoch, state.partition_epoch + 1);
    assert_eq!(shrunk.leader_epoch, state.leader_epoch);
    // Broker 3 is fenced: it may not come back into the ISR.
    cluster.apply(vec![MetadataRecord::BrokerRegistrationChange {
        broker_id: 3,
        broker_epoch: cluster.epoch(3),
        fenced: Some(true),
        in_controlled_shutdown: None,
    }]);
    let expand = AlterPartition {
        broker_id: 1,
        broker_epoch: cluster.epoch(1),
        topic_id: TOPIC,
        partition: 0,
        leader_epoch: shrunk.leader_epoch,
        partition_epoch: shrunk.partition_epoch,
        isr: vec![1, 2, 3],
    };
    assert_eq!(
        cluster.controller.alter_partition(&cluster.image, &expand),
        Err(ControllerError::IneligibleReplica)
    );
    // An old leader epoch is fenced.
    cluster.apply(vec![MetadataRecord::PartitionChange {
        topic_id: TOPIC,
        partition: 0,
        isr: None,
        leader: Some(2),
        replicas: None,
    }]);
    assert_eq!(
        cluster.controller.alter_partition(
            &cluster.image,
            &AlterPartition {
                partition_epoch: cluster.partition(0).partition_epoch,
                isr: vec![1, 2],
                ..expand
            }
        ),
        Err(ControllerError::FencedLeaderEpoch)
    );
}

#[test]
fn preferred_leaders_return_once_back_in_sync() {
    let mut cluster = Cluster::with_brokers(2);
    cluster.create(1, 2);
    cluster.apply(vec![MetadataRecord::PartitionChange {
        topic_id: TOPIC,
        partition: 0,
        isr: Some(vec![2]),
        leader: Some(2),
        replicas: None,
    }]);
    assert!(cluster
        .controller
        .preferred_leader_elections(&cluster.image)
        .is_empty());
    cluster.apply(vec![MetadataRecord::PartitionChange {
        topic_id: TOPIC,
        partition: 0,
        isr: Some(vec![1, 2]),
        leader: None,
        replicas: None,
    }]);
    let records = cluster
        .controller
        .preferred_leader_elections(&cluster.image);
    cluster.apply(records);
    assert_eq!(cluster.partition(0).leader, 1);
}

#[test]
fn records_that_do_not_fit_are_refused_whole() {
    let mut cluster = Cluster::with_brokers(2);
    cluster.create(1, 2);
    let before = cluster.image.clone();
    for record in [
        MetadataRecord::PartitionChange {
            topic_id: TOPIC,
            partition: 0,
            isr: Some(vec![2]),
            leader: Some(1),
            replicas: None,
        },
        MetadataRecord::PartitionChange {
            topic_id: TOPIC,
            partition: 9,
            isr: None,
            leader: Some(1),
            replicas: None,
        },
        MetadataRecord::BrokerRegistrationChange {
            broker_id: 1,
            broker_epoch: -5,
            fenced: Some(true),
            in_controlled_shutdown: None,
        },
        MetadataRecord::Topic {
            name: "orders".into(),
            topic_id: Uuid::from_u128(2),
        },
    ] {
        let index = cluster.next_index;
        cluster.next_index += 1;
        assert!(cluster.image.apply(index, &record).is_err(), "{record:?}");
        assert_eq!(
            cluster.image.partition(TOPIC, 0),
            before.partition(TOPIC, 0)
        );
        assert_eq!(cluster.image.brokers(), before.brokers());
    }
}

#[test]
fn a_snapshot_rebuilds_the_same_image() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(4, 2);
    cluster.apply(vec![MetadataRecord::Config {
        resource_type: 2,
        resource_name: "orders".into(),
        key: "retention.ms".into(),
        value: Some("1000".into()),
    }]);
    cluster.heartbeat(2, 10, true);
    let snapshot = cluster.image.to_snapshot();
    let rebuilt = MetadataImage::from_snapshot(&snapshot).unwrap();
    assert_eq!(rebuilt, cluster.image);
}

#[test]
fn two_brokers_fenced_in_one_tick_leave_the_third_leading() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    assert_eq!(cluster.partition(0).leader, 1);
    let (epoch_1, epoch_2) = (cluster.epoch(1), cluster.epoch(2));
    cluster
        .controller
        .connection_lost(&cluster.image, 1, epoch_1, 100);
    cluster
        .controller
        .connection_lost(&cluster.image, 2, epoch_2, 100);
    cluster.tick(100);
    assert!(cluster.image.broker(1).unwrap().fenced);
    assert!(cluster.image.broker(2).unwrap().fenced);
    let state = cluster.partition(0);
    assert_eq!((state.leader, state.isr), (3, vec![3]));
}

#[test]
fn a_fencing_planned_while_another_is_in_flight_builds_on_it() {
    // The controller proposes broker 1's fencing; before the quorum commits it, broker 2's
    // session ends too. Planned on the applied image alone, broker 2's change would name
    // broker 1 (still leader there) and undo the first: fenced broker 2 left leading.
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    let (epoch_1, epoch_2) = (cluster.epoch(1), cluster.epoch(2));
    let mut planning = PlanningImage::new();
    let mut in_flight = Vec::new();
    let mut propose = |cluster: &mut Cluster, planning: &mut PlanningImage, records| {
        for record in records {
            let index = cluster.next_index + in_flight.len() as u64;
            planning.proposed(&cluster.image, index, std::slice::from_ref(&record));
            in_flight.push(record);
        }
    };
    cluster
        .controller
        .connection_lost(&cluster.image, 1, epoch_1, 100);
    let first = cluster.controller.tick(planning.view(&cluster.image), 100);
    propose(&mut cluster, &mut planning, first);
    assert_eq!(
        planning
            .view(&cluster.image)
            .partition(TOPIC, 0)
            .unwrap()
            .leader,
        2,
        "planned ahead of the applied image"
    );
    cluster
        .controller
        .connection_lost(&cluster.image, 2, epoch_2, 200);
    let second = cluster.controller.tick(planning.view(&cluster.image), 200);
    propose(&mut cluster, &mut planning, second);
    let records = std::mem::take(&mut in_flight);
    cluster.apply(records);
    planning.caught_up(&cluster.image);
    assert!(std::ptr::eq(planning.view(&cluster.image), &cluster.image));
    let state = cluster.partition(0);
    assert_eq!((state.leader, state.isr), (3, vec![3]));
}

impl Cluster {
    fn reassign(&mut self, target: Option<&[BrokerId]>) -> Result<(), ControllerError> {
        let records = self.controller.reassign(&self.image, TOPIC, 0, target)?;
        self.apply(records);
        Ok(())
    }

    /// The partition's leader asks for `isr`, as its AlterPartition would.
    fn alter_isr(&mut self, isr: Vec<BrokerId>) {
        let state = self.partition(0);
        let request = AlterPartition {
            broker_id: state.leader,
            broker_epoch: self.epoch(state.leader),
            topic_id: TOPIC,
            partition: 0,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        };
        let records = self
            .controller
            .alter_partition(&self.image, &request)
            .unwrap();
        self.apply(records);
    }
}

#[test]
fn a_reassignment_adds_the_new_replicas_then_drops_the_old_once_they_are_in_sync() {
    let mut cluster = Cluster::with_brokers(4);
    cluster.create(1, 3);
    let before = cluster.partition(0);
    assert_eq!((before.replicas.clone(), before.leader), (vec![1, 2, 3], 1));
    cluster.reassign(Some(&[2, 3, 4])).unwrap();
    let moving = cluster.partition(0);
    assert_eq!(
        moving.replicas,
        [2, 3, 4, 1],
        "the target, then the leaving"
    );
    assert_eq!(moving.adding_replicas, [4]);
    assert_eq!(moving.removing_replicas, [1]);
    assert_eq!(
        (moving.leader, moving.leader_epoch),
        (1, before.leader_epoch)
    );
    assert_eq!(moving.isr, [1, 2, 3], "broker 4 joins once it caught up");
    let snapshot = cluster.image.to_snapshot();
    assert_eq!(
        MetadataImage::from_snapshot(&snapshot).unwrap(),
        cluster.image
    );

    // The leader adds broker 4 to the ISR: every target replica is in sync, so it completes.
    cluster.alter_isr(vec![1, 2, 3, 4]);
    let after = cluster.partition(0);
    assert_eq!(after.replicas, [2, 3, 4]);
    assert_eq!(after.isr, [2, 3, 4]);
    assert_eq!(after.leader, 2, "leadership leaves the removed broker");
    assert_eq!(after.leader_epoch, before.leader_epoch + 1);
    assert!(after.adding_replicas.is_empty() && after.removing_replicas.is_empty());
}

#[test]
fn a_reassignment_within_the_isr_completes_at_once_and_one_in_progress_can_be_cancelled() {
    let mut cluster = Cluster::with_brokers(4);
    cluster.create(1, 3);
    cluster.reassign(Some(&[3, 2])).unwrap();
    let shrunk = cluster.partition(0);
    assert_eq!(
        (shrunk.replicas.clone(), shrunk.isr.clone()),
        (vec![3, 2], vec![2, 3])
    );
    assert_eq!(shrunk.leader, 3);
    assert_eq!(
        cluster.reassign(None),
        Err(ControllerError::NoReassignmentInProgress)
    );

    cluster.reassign(Some(&[4, 1])).unwrap();
    assert_eq!(cluster.partition(0).replicas, [4, 1, 3, 2]);
    cluster.reassign(None).unwrap();
    let back = cluster.partition(0);
    assert_eq!(back.replicas, [3, 2], "back to the replicas before it");
    assert_eq!(back.isr, [2, 3]);
    assert!(back.adding_replicas.is_empty() && back.removing_replicas.is_empty());
}

#[test]
fn bad_reassignments_are_refused() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    for target in [&[][..], &[1, 1], &[1, 9]] {
        assert_eq!(
            cluster.reassign(Some(target)),
            Err(ControllerError::InvalidReplicaAssignment),
            "{target:?}"
        );
    }
    assert_eq!(
        cluster
            .controller
            .reassign(&cluster.image, TOPIC, 7, Some(&[1])),
        Err(ControllerError::UnknownTopicOrPartition)
    );
}

#[test]
fn a_decision_only_partly_committed_is_finished_at_the_next_tick() {
    // The simulation found it (seed 1148): a controller's unfencing of a broker committed,
    // the elections proposed with it lost to a change of quorum leader.
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(3, 2);
    let led_by = |cluster: &Cluster, broker: BrokerId| {
        (0..3)
            .filter(|&partition| cluster.partition(partition).leader == broker)
            .count()
    };
    // Broker 1's partitions lose their leader with the ISR shrunk to it, as when the others
    // had left before; then broker 1 is fenced; then unfenced with no elections.
    let mut records = Vec::new();
    for partition in 0..3 {
        let state = cluster.partition(partition);
        if state.replicas.contains(&1) {
            records.push(MetadataRecord::PartitionChange {
                topic_id: TOPIC,
                partition,
                isr: Some(vec![1]),
                leader: Some(-1),
                replicas: None,
            });
        }
    }
    assert!(!records.is_empty());
    let waiting = records.len();
    cluster.apply(records);
    let epoch = cluster.epoch(1);
    cluster.apply(vec![MetadataRecord::BrokerRegistrationChange {
        broker_id: 1,
        broker_epoch: epoch,
        fenced: Some(false),
        in_controlled_shutdown: None,
    }]);
    assert_eq!(led_by(&cluster, 1), 0);
    cluster.tick(1_000);
    assert_eq!(
        led_by(&cluster, 1),
        waiting,
        "broker 1 leads what waited for it"
    );
    // The other half: broker 2 fenced, but its leaderships and ISR places left behind.
    let epoch = cluster.epoch(2);
    cluster.apply(vec![MetadataRecord::BrokerRegistrationChange {
        broker_id: 2,
        broker_epoch: epoch,
        fenced: Some(true),
        in_controlled_shutdown: None,
    }]);
    cluster.tick(2_000);
    for partition in 0..3 {
        let state = cluster.partition(partition);
        assert_ne!(state.leader, 2, "{state:?}");
        assert!(
            !state.isr.contains(&2) || state.isr == [2],
            "only as the last in-sync replica: {state:?}"
        );
    }
    // Nothing left to do: the next tick proposes nothing.
    assert!(cluster.controller.tick(&cluster.image, 2_050).is_empty());
}

impl Cluster {
    fn min_insync_replicas(&mut self, value: &str) {
        self.apply(vec![MetadataRecord::Config {
            resource_type: 2,
            resource_name: "orders".into(),
            key: "min.insync.replicas".into(),
            value: Some(value.into()),
        }]);
    }

    fn elr(&self) -> Vec<BrokerId> {
        self.image.elr(TOPIC, 0).to_vec()
    }
}

/// KIP-966's eligible leader replicas: a replica fenced out of an ISR already below
/// min.insync.replicas holds every committed record; when the last in-sync replica comes back
/// from a lost disk, it gives way to that replica instead of being elected empty.
#[test]
fn replicas_fenced_below_min_insync_stay_electable_and_a_lost_disk_gives_way_to_them() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    cluster.min_insync_replicas("2");
    // 1 dies: the ISR [2, 3] is still at min.insync.replicas, so commits go on without 1.
    cluster.heartbeat(2, 5_000, false);
    cluster.heartbeat(3, 5_000, false);
    cluster.tick(TIMEOUT_MS);
    let state = cluster.partition(0);
    assert_eq!((state.leader, state.isr), (2, vec![2, 3]));
    assert!(cluster.elr().is_empty());
    // 2 dies: the ISR [3] is below it; nothing commits without 2 any more.
    cluster.heartbeat(3, 12_000, false);
    cluster.tick(5_000 + TIMEOUT_MS);
    let state = cluster.partition(0);
    assert_eq!((state.leader, state.isr), (3, vec![3]));
    assert_eq!(cluster.elr(), [2]);
    let snapshot = cluster.image.to_snapshot();
    assert_eq!(
        MetadataImage::from_snapshot(&snapshot).unwrap(),
        cluster.image
    );
    // 3 restarts with a lost disk before its session ended: it leaves the ISR, 2 takes its
    // place (and waits, fenced) rather than 3 leading without the records.
    cluster.register_with(3, 13_000, true);
    let state = cluster.partition(0);
    assert_eq!((state.leader, state.isr), (-1, vec![2]));
    assert!(cluster.elr().is_empty());
    cluster.heartbeat(3, 13_000, false);
    assert_eq!(
        cluster.partition(0).leader,
        -1,
        "3 has nothing to lead with"
    );
    cluster.register(2, 14_000);
    cluster.heartbeat(2, 14_000, false);
    assert_eq!(cluster.partition(0).leader, 2);
}

#[test]
fn a_leaders_shrink_below_min_insync_keeps_the_removed_electable_until_the_isr_recovers() {
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    cluster.min_insync_replicas("2");
    cluster.alter_isr(vec![1, 2]);
    assert!(cluster.elr().is_empty(), "still at min.insync.replicas");
    cluster.alter_isr(vec![1]);
    assert_eq!(cluster.elr(), [2]);
    // The leader dies: 2, out of the ISR but with every committed record, is elected.
    for now_ms in (1_000..=TIMEOUT_MS).step_by(1_000) {
        cluster.heartbeat(2, now_ms, false);
        cluster.heartbeat(3, now_ms, false);
        cluster.tick(now_ms);
    }
    let state = cluster.partition(0);
    assert_eq!((state.leader, state.isr), (2, vec![2]));
    assert_eq!(
        cluster.elr(),
        [1],
        "the fenced last in-sync replica holds every committed record too"
    );
    // Back at min.insync.replicas, no ELR is kept.
    cluster.alter_isr(vec![2, 3]);
    assert!(cluster.elr().is_empty());
    // A lower min.insync.replicas lets records commit without the ELR: it is cleared.
    cluster.alter_isr(vec![2]);
    assert_eq!(cluster.elr(), [3]);
    cluster.min_insync_replicas("1");
    assert!(cluster.elr().is_empty());
    // Without min.insync.replicas above 1 there is no ELR.
    let mut plain = Cluster::with_brokers(2);
    plain.create(1, 2);
    plain.alter_isr(vec![1]);
    assert!(plain.elr().is_empty());
}

#[test]
fn a_reassignment_that_removes_eligible_leader_replicas_forgets_them() {
    // Found in review: moved away, a replica deletes its copy; back in the replicas later, it
    // must not be electable from an ELR it was left in.
    let mut cluster = Cluster::with_brokers(3);
    cluster.create(1, 3);
    cluster.min_insync_replicas("2");
    cluster.alter_isr(vec![1]);
    assert_eq!(cluster.elr(), [2, 3]);
    // The target [1] is in sync already: the move completes at once.
    cluster.reassign(Some(&[1])).unwrap();
    assert_eq!(cluster.partition(0).replicas, [1]);
    assert!(cluster.elr().is_empty());
    let snapshot = cluster.image.to_snapshot();
    assert_eq!(
        MetadataImage::from_snapshot(&snapshot).unwrap(),
        cluster.image
    );
}
