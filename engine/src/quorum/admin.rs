//! Topic administration in a cluster, and what a node's shards learn of the metadata.
//!
//! A broker checks CreateTopics and DeleteTopics against its own catalog (names, configs,
//! counts), then hands what passed to its quorum member, which sends it to the active
//! controller (or runs it, when it is the controller). The controller turns it into metadata
//! records ([`plan`]), proposes them, and answers once they are applied ([`outcome`]): a topic
//! created is one in the applied image under the id the controller chose, so a record lost to
//! a leader change, or beaten by another creation of the same name, is never reported as done.
//! The broker that asked answers its client only once its own shards have the change, so the
//! client's next Metadata request, to it, shows it.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::broker::catalog::{ClusterLayout, LayoutBroker, MetadataTopic};
use crate::broker::quotas::{EntityName, QuotaConfigs, QuotaEntity, QuotaValue};
use crate::quorum::controller::AlterPartition;
use crate::quorum::image::QuotaEntityNames;
use crate::quorum::{Controller, ControllerError, MetadataImage, MetadataRecord};

/// Kafka's config resource type for a topic.
const TOPIC_RESOURCE: i8 = 2;

/// A topic to create, already checked by the broker that asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicToCreate {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
}

/// A partition leader's ISR change (AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChange {
    /// The leader asking (filled in by its quorum driver).
    pub broker_id: i32,
    /// Its registration's epoch (filled in by its quorum driver), -1 until then.
    pub broker_epoch: i64,
    /// The partition's topic.
    pub topic_id: Uuid,
    /// The partition.
    pub partition: i32,
    /// The leader epoch it leads at.
    pub leader_epoch: i32,
    /// The partition epoch the change is based on.
    pub partition_epoch: i32,
    /// The ISR wanted, sorted.
    pub isr: Vec<i32>,
}

/// One partition's reassignment (AlterPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The topic, by name.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The replicas to move to, preferred leader first; `None` cancels the one in progress.
    pub target: Option<Vec<i32>>,
}

/// One entity's quota changes (AlterClientQuotas).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaChange {
    /// The entity: (user, client id) as stored.
    pub entity: QuotaEntityNames,
    /// Key to new value as text, or `None` to remove it.
    pub values: BTreeMap<String, Option<String>>,
}

/// A change for the active controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicAdmin {
    /// CreateTopics.
    Create(Vec<TopicToCreate>),
    /// DeleteTopics, by name.
    Delete(Vec<String>),
    /// AlterPartition: one leader's ISR change.
    AlterIsr(IsrChange),
    /// AlterPartitionReassignments.
    Reassign(Vec<Reassignment>),
    /// CreatePartitions: (topic, new partition count), already checked by the broker.
    AddPartitions(Vec<(String, i32)>),
    /// AlterConfigs / IncrementalAlterConfigs of a topic: its whole new set of overrides,
    /// already checked by the broker.
    SetTopicConfigs {
        /// The topic.
        topic: String,
        /// Every override it is to have.
        configs: BTreeMap<String, String>,
    },
    /// AlterClientQuotas: per entity, values set (`Some`) or removed (`None`), already
    /// checked by the broker.
    AlterClientQuotas(Vec<QuotaChange>),
    /// AllocateProducerIds: a block of producer ids for a broker; the broker reads it from the
    /// applied metadata by `request_id`.
    AllocateProducerIds {
        /// The broker.
        broker_id: i32,
        /// Unique among the broker's requests.
        request_id: u64,
    },
}

impl TopicAdmin {
    /// Number of items, each of which gets a result.
    pub fn len(&self) -> usize {
        match self {
            TopicAdmin::Create(topics) => topics.len(),
            TopicAdmin::Delete(names) => names.len(),
            TopicAdmin::AlterIsr(_) => 1,
            TopicAdmin::Reassign(partitions) => partitions.len(),
            TopicAdmin::AddPartitions(topics) => topics.len(),
            TopicAdmin::SetTopicConfigs { .. } => 1,
            TopicAdmin::AlterClientQuotas(changes) => changes.len(),
            TopicAdmin::AllocateProducerIds { .. } => 1,
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One item's result: done, or a Kafka error code and message.
pub type ItemResult = Result<(), (i16, String)>;

/// The same error for every item of `admin`.
pub fn all_failed(admin: &TopicAdmin, error: ResponseError, message: &str) -> Vec<ItemResult> {
    vec![Err((error.code(), message.to_owned())); admin.len()]
}

/// What the controller expects to see applied for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The topic exists under this id.
    Created { name: String, topic_id: Uuid },
    /// The topic is gone.
    Deleted { name: String },
    /// The partition's ISR is the one asked for.
    IsrChanged {
        topic_id: Uuid,
        partition: i32,
        isr: Vec<i32>,
    },
    /// The partition moves to (or has moved to) `target`, or, for `None`, is not moving.
    Reassigned {
        topic_id: Uuid,
        partition: i32,
        target: Option<Vec<i32>>,
    },
    /// The topic has at least this many partitions.
    PartitionsAdded { topic_id: Uuid, partitions: i32 },
    /// The topic's overrides are exactly these.
    ConfigsSet {
        topic: String,
        configs: BTreeMap<String, String>,
    },
    /// The entity's quota values are as changed.
    QuotasSet(QuotaChange),
    /// The broker's latest producer id block answers this request.
    ProducerIdsAllocated { broker_id: i32, request_id: u64 },
    /// Refused before anything was proposed.
    Refused(i16, String),
}

/// The controller's records for `admin`, and what each item expects once they apply.
/// `in_flight` holds names whose creation is proposed but not yet applied, which another
/// creation may not take; `random` supplies topic ids and placement starts.
pub fn plan(
    controller: &Controller,
    image: &MetadataImage,
    admin: TopicAdmin,
    in_flight: &BTreeSet<String>,
    mut random: impl FnMut() -> u64,
) -> (Vec<MetadataRecord>, Vec<Expected>) {
    let mut records = Vec::new();
    let mut expected = Vec::new();
    let refused = |error: ControllerError, detail: String| {
        Expected::Refused(error.response_error().code(), format!("{error}: {detail}"))
    };
    match admin {
        TopicAdmin::Create(topics) => {
            let mut taken = in_flight.clone();
            let mut replicas = Controller::replicas_per_broker(image);
            for topic in topics {
                if taken.contains(&topic.name) {
                    expected.push(refused(ControllerError::TopicAlreadyExists, topic.name));
                    continue;
                }
                let topic_id = Uuid::from_u64_pair(random(), random());
                let start = random() as usize;
                let created = controller
                    .create_topic(
                        image,
                        &topic.name,
                        topic_id,
                        topic.partitions,
                        topic.replication_factor,
                        start,
                    )
                    .and_then(|created| {
                        controller.check_partition_limit(&mut replicas, &created)?;
                        Ok(created)
                    });
                match created {
                    Ok(created) => {
                        records.extend(created);
                        records.extend(topic.configs.into_iter().map(|(key, value)| {
                            MetadataRecord::Config {
                                resource_type: TOPIC_RESOURCE,
                                resource_name: topic.name.clone(),
                                key,
                                value: Some(value),
                            }
                        }));
                        taken.insert(topic.name.clone());
                        expected.push(Expected::Created {
                            name: topic.name,
                            topic_id,
                        });
                    }
                    Err(error) => expected.push(refused(error, topic.name)),
                }
            }
        }
        TopicAdmin::AlterIsr(change) => {
            let request = AlterPartition {
                broker_id: change.broker_id,
                broker_epoch: change.broker_epoch,
                topic_id: change.topic_id,
                partition: change.partition,
                leader_epoch: change.leader_epoch,
                partition_epoch: change.partition_epoch,
                isr: change.isr.clone(),
            };
            match controller.alter_partition(image, &request) {
                Ok(changes) => {
                    records.extend(changes);
                    let mut isr = change.isr;
                    isr.sort_unstable();
                    expected.push(Expected::IsrChanged {
                        topic_id: change.topic_id,
                        partition: change.partition,
                        isr,
                    });
                }
                Err(error) => expected.push(refused(error, format!("{}", change.partition))),
            }
        }
        TopicAdmin::Reassign(partitions) => {
            for item in partitions {
                let described = format!("{}-{}", item.topic, item.partition);
                let Some(topic_id) = image.topic_id(&item.topic) else {
                    expected.push(refused(ControllerError::UnknownTopicOrPartition, described));
                    continue;
                };
                match controller.reassign(image, topic_id, item.partition, item.target.as_deref()) {
                    Ok(changes) => {
                        records.extend(changes);
                        expected.push(Expected::Reassigned {
                            topic_id,
                            partition: item.partition,
                            target: item.target,
                        });
                    }
                    Err(error) => expected.push(refused(error, described)),
                }
            }
        }
        TopicAdmin::AddPartitions(topics) => {
            let mut replicas = Controller::replicas_per_broker(image);
            for (name, partitions) in topics {
                let Some(topic_id) = image.topic_id(&name) else {
                    expected.push(refused(ControllerError::UnknownTopicOrPartition, name));
                    continue;
                };
                let start = random() as usize;
                let added = controller
                    .add_partitions(image, topic_id, partitions, start)
                    .and_then(|added| {
                        controller.check_partition_limit(&mut replicas, &added)?;
                        Ok(added)
                    });
                match added {
                    Ok(added) => {
                        records.extend(added);
                        expected.push(Expected::PartitionsAdded {
                            topic_id,
                            partitions,
                        });
                    }
                    Err(error) => expected.push(refused(error, name)),
                }
            }
        }
        TopicAdmin::SetTopicConfigs { topic, configs } => {
            if image.topic_id(&topic).is_none() {
                expected.push(refused(ControllerError::UnknownTopicOrPartition, topic));
            } else {
                let current = image
                    .configs(TOPIC_RESOURCE, &topic)
                    .cloned()
                    .unwrap_or_default();
                for key in current.keys().filter(|key| !configs.contains_key(*key)) {
                    records.push(MetadataRecord::Config {
                        resource_type: TOPIC_RESOURCE,
                        resource_name: topic.clone(),
                        key: key.clone(),
                        value: None,
                    });
                }
                for (key, value) in &configs {
                    if current.get(key) != Some(value) {
                        records.push(MetadataRecord::Config {
                            resource_type: TOPIC_RESOURCE,
                            resource_name: topic.clone(),
                            key: key.clone(),
                            value: Some(value.clone()),
                        });
                    }
                }
                expected.push(Expected::ConfigsSet { topic, configs });
            }
        }
        TopicAdmin::AlterClientQuotas(changes) => {
            for change in changes {
                let (user, client_id) = change.entity.clone();
                for (key, value) in &change.values {
                    records.push(MetadataRecord::ClientQuota {
                        user: user.clone(),
                        client_id: client_id.clone(),
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
                expected.push(Expected::QuotasSet(change));
            }
        }
        TopicAdmin::AllocateProducerIds {
            broker_id,
            request_id,
        } => {
            records.push(MetadataRecord::AllocateProducerIds {
                broker_id,
                request_id,
            });
            expected.push(Expected::ProducerIdsAllocated {
                broker_id,
                request_id,
            });
        }
        TopicAdmin::Delete(names) => {
            for name in names {
                match image.topic_id(&name) {
                    Some(topic_id) => {
                        records.push(MetadataRecord::RemoveTopic { topic_id });
                        expected.push(Expected::Deleted { name });
                    }
                    None => expected.push(refused(ControllerError::UnknownTopicOrPartition, name)),
                }
            }
        }
    }
    (records, expected)
}

/// Each item's result once the image has applied the planned records (or others in their
/// place, after a leader change).
pub fn outcome(image: &MetadataImage, expected: &[Expected]) -> Vec<ItemResult> {
    let not_controller = || {
        Err((
            ResponseError::NotController.code(),
            "the controller changed before the change was committed; retry".to_owned(),
        ))
    };
    expected
        .iter()
        .map(|expected| match expected {
            Expected::Refused(code, message) => Err((*code, message.clone())),
            Expected::ProducerIdsAllocated {
                broker_id,
                request_id,
            } => match image.producer_id_block(*broker_id) {
                Some((answered, _)) if answered == *request_id => Ok(()),
                _ => not_controller(),
            },
            Expected::Created { name, topic_id } => match image.topic_id(name) {
                Some(id) if id == *topic_id => Ok(()),
                Some(_) => Err((
                    ResponseError::TopicAlreadyExists.code(),
                    format!("topic {name:?} already exists"),
                )),
                None => not_controller(),
            },
            Expected::Deleted { name } => match image.topic_id(name) {
                None => Ok(()),
                Some(_) => not_controller(),
            },
            Expected::IsrChanged {
                topic_id,
                partition,
                isr,
            } => match image.partition(*topic_id, *partition) {
                Some(state) if sorted(&state.isr) == *isr => Ok(()),
                Some(_) => Err((
                    ResponseError::InvalidUpdateVersion.code(),
                    "the partition changed meanwhile".to_owned(),
                )),
                None => Err((
                    ResponseError::UnknownTopicOrPartition.code(),
                    "the partition is gone".to_owned(),
                )),
            },
            Expected::PartitionsAdded {
                topic_id,
                partitions,
            } => match image.topics().get(topic_id) {
                Some(topic) if topic.partitions.len() as i32 >= *partitions => Ok(()),
                Some(_) => not_controller(),
                None => Err((
                    ResponseError::UnknownTopicOrPartition.code(),
                    "the topic is gone".to_owned(),
                )),
            },
            Expected::QuotasSet(change) => {
                let now = image.client_quotas().get(&change.entity);
                let applied = change
                    .values
                    .iter()
                    .all(|(key, value)| now.and_then(|values| values.get(key)) == value.as_ref());
                if applied {
                    Ok(())
                } else {
                    not_controller()
                }
            }
            Expected::ConfigsSet { topic, configs } => {
                let now = image
                    .configs(TOPIC_RESOURCE, topic)
                    .cloned()
                    .unwrap_or_default();
                if &now == configs {
                    Ok(())
                } else {
                    not_controller()
                }
            }
            Expected::Reassigned {
                topic_id,
                partition,
                target,
            } => match (image.partition(*topic_id, *partition), target) {
                (Some(state), Some(target)) if state.replicas.starts_with(target) => Ok(()),
                (Some(state), None)
                    if state.adding_replicas.is_empty() && state.removing_replicas.is_empty() =>
                {
                    Ok(())
                }
                (Some(_), _) => not_controller(),
                (None, _) => Err((
                    ResponseError::UnknownTopicOrPartition.code(),
                    "the partition is gone".to_owned(),
                )),
            },
        })
        .collect()
}

fn sorted(isr: &[i32]) -> Vec<i32> {
    let mut isr = isr.to_vec();
    isr.sort_unstable();
    isr
}

/// The topics and layout a node's shards serve from the applied `image`, with `controller`
/// as the active controller.
pub fn layout_of(
    image: &MetadataImage,
    controller: Option<u64>,
) -> (Vec<MetadataTopic>, ClusterLayout) {
    let mut topics = Vec::new();
    let mut partitions = BTreeMap::new();
    for (&topic_id, topic) in image.topics() {
        topics.push(MetadataTopic {
            name: topic.name.clone(),
            id: topic_id,
            partitions: topic.partitions.len() as i32,
            configs: image
                .configs(TOPIC_RESOURCE, &topic.name)
                .cloned()
                .unwrap_or_default(),
        });
        for (&index, state) in &topic.partitions {
            partitions.insert((topic_id, index), state.clone());
        }
    }
    let brokers = image
        .brokers()
        .values()
        .filter(|broker| !broker.fenced)
        .map(|broker| {
            (
                broker.broker_id,
                LayoutBroker {
                    host: broker.host.clone(),
                    port: broker.port,
                },
            )
        })
        .collect();
    let layout = ClusterLayout {
        controller_id: controller
            .and_then(|leader| i32::try_from(leader).ok())
            .unwrap_or(-1),
        brokers,
        partitions,
        producer_id_blocks: image
            .brokers()
            .keys()
            .filter_map(|&broker_id| Some((broker_id, image.producer_id_block(broker_id)?)))
            .collect(),
        client_quotas: client_quotas_of(image),
    };
    (topics, layout)
}

/// The image's client quotas, typed. A value that does not parse (no broker writes one) is
/// left out.
fn client_quotas_of(image: &MetadataImage) -> QuotaConfigs {
    let mut quotas = QuotaConfigs::new();
    for ((user, client_id), values) in image.client_quotas() {
        let entity = QuotaEntity {
            user: user.as_deref().map(EntityName::from_stored),
            client_id: client_id.as_deref().map(EntityName::from_stored),
        };
        let values: BTreeMap<String, QuotaValue> = values
            .iter()
            .filter_map(|(key, value)| Some((key.clone(), QuotaValue(value.parse().ok()?))))
            .collect();
        if !values.is_empty() {
            quotas.insert(entity, values);
        }
    }
    quotas
}

/// The cluster id every node of the quorum `voters` reports: derived from the quorum list, so
/// that all nodes agree without a record for it.
pub fn cluster_id_of(voters: &[(u64, std::net::SocketAddr)]) -> String {
    // FNV-1a, twice with different offsets: stable across builds and platforms.
    let text: String = voters
        .iter()
        .map(|(id, address)| format!("{id}@{address},"))
        .collect();
    let fnv = |offset: u64| {
        text.bytes().fold(offset, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::ControllerConfig;

    fn image_with_brokers(ids: &[i32]) -> MetadataImage {
        let mut image = MetadataImage::new();
        let mut index = 0;
        for &broker_id in ids {
            index += 1;
            image
                .apply(
                    index,
                    &MetadataRecord::RegisterBroker {
                        broker_id,
                        incarnation_id: Uuid::from_u64_pair(1, broker_id as u64),
                        host: "127.0.0.1".into(),
                        port: 9000 + broker_id,
                        rack: None,
                    },
                )
                .unwrap();
            index += 1;
            image
                .apply(
                    index,
                    &MetadataRecord::BrokerRegistrationChange {
                        broker_id,
                        broker_epoch: (index - 1) as i64,
                        fenced: Some(false),
                        in_controlled_shutdown: None,
                    },
                )
                .unwrap();
        }
        image
    }

    fn apply_all(image: &mut MetadataImage, records: &[MetadataRecord]) {
        for record in records {
            let index = image.last_applied_index() + 1;
            image.apply(index, record).unwrap();
        }
    }

    fn create(name: &str, partitions: i32) -> TopicToCreate {
        TopicToCreate {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
        }
    }

    #[test]
    fn a_creation_is_done_only_once_its_records_apply_under_its_id() {
        let controller = Controller::new(ControllerConfig::default());
        let mut image = image_with_brokers(&[1, 2, 3]);
        let mut seed = 0;
        let mut random = || {
            seed += 1;
            seed
        };
        let admin = TopicAdmin::Create(vec![create("orders", 6), create("bad", 0)]);
        let (records, expected) = plan(&controller, &image, admin, &BTreeSet::new(), &mut random);
        assert!(
            matches!(expected[1], Expected::Refused(code, _) if code == ResponseError::InvalidPartitions.code())
        );
        let before = outcome(&image, &expected);
        assert_eq!(
            before[0].as_ref().unwrap_err().0,
            ResponseError::NotController.code()
        );
        apply_all(&mut image, &records);
        let after = outcome(&image, &expected);
        assert_eq!(after[0], Ok(()));
        let (topics, layout) = layout_of(&image, Some(2));
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].partitions, 6);
        assert_eq!(topics[0].configs["retention.ms"], "1000");
        assert_eq!(layout.controller_id, 2);
        assert_eq!(layout.brokers.len(), 3);
        let leaders: BTreeSet<i32> = layout
            .partitions
            .values()
            .map(|state| state.leader)
            .collect();
        assert_eq!(leaders, [1, 2, 3].into(), "spread over the brokers");

        // A second creation of the name, planned while the first is in flight or after it.
        let again = TopicAdmin::Create(vec![create("orders", 1)]);
        let in_flight = ["orders".to_string()].into();
        let (records, expected) = plan(
            &controller,
            &MetadataImage::new(),
            again.clone(),
            &in_flight,
            &mut random,
        );
        assert!(records.is_empty());
        assert!(
            matches!(expected[0], Expected::Refused(code, _) if code == ResponseError::TopicAlreadyExists.code())
        );
        let (records, _) = plan(&controller, &image, again, &BTreeSet::new(), &mut random);
        assert!(records.is_empty());

        let (records, expected) = plan(
            &controller,
            &image,
            TopicAdmin::Delete(vec!["orders".into(), "nope".into()]),
            &BTreeSet::new(),
            &mut random,
        );
        apply_all(&mut image, &records);
        let results = outcome(&image, &expected);
        assert_eq!(results[0], Ok(()));
        assert_eq!(
            results[1].as_ref().unwrap_err().0,
            ResponseError::UnknownTopicOrPartition.code()
        );
        assert!(layout_of(&image, None).0.is_empty());
    }

    #[test]
    fn new_partitions_that_would_put_a_broker_over_its_limit_are_refused() {
        let controller = Controller::new(ControllerConfig {
            partitions_per_broker_max: 4,
            ..ControllerConfig::default()
        });
        let mut image = image_with_brokers(&[1, 2]);
        let mut seed = 0;
        let mut random = || {
            seed += 1;
            seed
        };
        let topic = |name: &str, partitions, replication_factor| TopicToCreate {
            name: name.into(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        };
        let (records, expected) = plan(
            &controller,
            &image,
            TopicAdmin::Create(vec![topic("a", 4, 1)]),
            &BTreeSet::new(),
            &mut random,
        );
        apply_all(&mut image, &records);
        assert_eq!(outcome(&image, &expected), [Ok(())]);
        // Two replicas each now. "b" brings both to four; "c", in the same request, would
        // bring one to five.
        let (records, expected) = plan(
            &controller,
            &image,
            TopicAdmin::Create(vec![topic("b", 2, 2), topic("c", 1, 1)]),
            &BTreeSet::new(),
            &mut random,
        );
        apply_all(&mut image, &records);
        let results = outcome(&image, &expected);
        assert_eq!(results[0], Ok(()));
        let (code, message) = results[1].clone().unwrap_err();
        assert_eq!(code, ResponseError::InvalidPartitions.code());
        assert!(message.contains("max_partitions_per_broker"), "{message}");
        assert!(image.topic_id("c").is_none());
        let (records, expected) = plan(
            &controller,
            &image,
            TopicAdmin::AddPartitions(vec![("a".into(), 5)]),
            &BTreeSet::new(),
            &mut random,
        );
        assert!(records.is_empty());
        assert_eq!(
            outcome(&image, &expected)[0].as_ref().unwrap_err().0,
            ResponseError::InvalidPartitions.code()
        );
    }

    #[test]
    fn client_quotas_are_metadata_every_broker_applies() {
        let controller = Controller::new(ControllerConfig::default());
        let mut image = image_with_brokers(&[1]);
        let mut random = || 0;
        let change = |client_id: &str, values: &[(&str, Option<&str>)]| QuotaChange {
            entity: (None, Some(client_id.to_owned())),
            values: values
                .iter()
                .map(|(key, value)| (key.to_string(), value.map(str::to_owned)))
                .collect(),
        };
        let admin = TopicAdmin::AlterClientQuotas(vec![
            change(
                "fast",
                &[
                    ("producer_byte_rate", Some("1048576")),
                    ("request_percentage", Some("12.5")),
                ],
            ),
            change("<default>", &[("consumer_byte_rate", Some("2048"))]),
        ]);
        let (records, expected) = plan(&controller, &image, admin, &BTreeSet::new(), &mut random);
        assert_eq!(records.len(), 3);
        assert_eq!(
            outcome(&image, &expected)[0].as_ref().unwrap_err().0,
            ResponseError::NotController.code(),
            "not done before it applies"
        );
        apply_all(&mut image, &records);
        assert_eq!(outcome(&image, &expected), [Ok(()), Ok(())]);
        let quotas = layout_of(&image, None).1.client_quotas;
        let fast = QuotaEntity {
            user: None,
            client_id: Some(EntityName::Named("fast".into())),
        };
        assert_eq!(quotas[&fast]["producer_byte_rate"], QuotaValue(1048576.0));
        assert_eq!(quotas[&fast]["request_percentage"], QuotaValue(12.5));
        let default = QuotaEntity {
            user: None,
            client_id: Some(EntityName::Default),
        };
        assert_eq!(quotas[&default]["consumer_byte_rate"], QuotaValue(2048.0));
        // A snapshot carries them.
        let restored = MetadataImage::from_snapshot(&image.to_snapshot()).unwrap();
        assert_eq!(restored.client_quotas(), image.client_quotas());
        // Removing every value of an entity removes the entity.
        let admin = TopicAdmin::AlterClientQuotas(vec![change(
            "fast",
            &[("producer_byte_rate", None), ("request_percentage", None)],
        )]);
        let (records, expected) = plan(&controller, &image, admin, &BTreeSet::new(), &mut random);
        apply_all(&mut image, &records);
        assert_eq!(outcome(&image, &expected), [Ok(())]);
        let quotas = layout_of(&image, None).1.client_quotas;
        assert!(!quotas.contains_key(&fast));
        assert!(quotas.contains_key(&default));
    }

    #[test]
    fn every_node_derives_the_same_cluster_id() {
        let voters = [
            (1, "127.0.0.1:1".parse().unwrap()),
            (2, "127.0.0.1:2".parse().unwrap()),
        ];
        assert_eq!(cluster_id_of(&voters), cluster_id_of(&voters));
        assert_ne!(cluster_id_of(&voters), cluster_id_of(&voters[..1]));
        assert_eq!(cluster_id_of(&voters).len(), 32);
    }
}
