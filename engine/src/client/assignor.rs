//! Partition assignment for consumer groups, run by the group leader: Kafka's `range`,
//! `roundrobin` and `cooperative-sticky` assignors, and the consumer protocol's subscription and
//! assignment bytes (`ConsumerProtocolSubscription`/`ConsumerProtocolAssignment`, a 2-byte
//! version then the struct) that carry them through JoinGroup and SyncGroup.
//!
//! Pure functions over ordered maps, so the same members and partitions always give the same
//! assignment. Members are ordered as the Java client orders them (`group.instance.id` when both
//! have one, then member id), so a Spate leader and a Java or librdkafka leader hand out `range`
//! and `roundrobin` assignments alike.
//!
//! `cooperative-sticky` (KIP-429) keeps every partition with its current owner as far as
//! balance allows, and never hands a partition straight from one member to another: a partition
//! that must move is left out of this generation's assignment, its owner revokes it and rejoins,
//! and the next rebalance gives it to its new member.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    consumer_protocol_assignment, consumer_protocol_subscription, ConsumerProtocolAssignment,
    ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::config::Assignor;
use super::error::ClientError;

/// A topic and a partition of it.
pub type TopicPartition = (String, i32);

/// The consumer protocol version Spate writes, as the Java client does (owned partitions from
/// v1, the generation from v2, the rack from v3).
const CONSUMER_PROTOCOL_VERSION: i16 = 3;

/// What a member told the group in JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscription {
    /// Topics it subscribes to.
    pub topics: Vec<String>,
    /// Partitions it owns now (for the sticky assignor).
    pub owned: Vec<TopicPartition>,
    /// The generation in which it got them; -1 when it owns nothing.
    pub generation: i32,
}

/// One member of the group, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member id.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
    /// Its subscription.
    pub subscription: Subscription,
}

/// Java's `MemberInfo` order: by instance id when both members have one, else by member id.
fn member_order(left: &Member, right: &Member) -> Ordering {
    match (&left.group_instance_id, &right.group_instance_id) {
        (Some(left_instance), Some(right_instance)) => left_instance
            .cmp(right_instance)
            .then_with(|| left.member_id.cmp(&right.member_id)),
        _ => left.member_id.cmp(&right.member_id),
    }
}

/// Each member's partitions under `assignor`, given the partition count of every topic that
/// exists. Every member appears in the result, possibly with nothing.
pub fn assign(
    assignor: Assignor,
    members: &[Member],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|left, right| member_order(left, right));
    let mut assignment = match assignor {
        Assignor::Range => assign_range(&sorted, partition_counts),
        Assignor::RoundRobin => assign_round_robin(&sorted, partition_counts),
        Assignor::CooperativeSticky => assign_cooperative_sticky(&sorted, partition_counts),
    };
    for member in members {
        let partitions = assignment.entry(member.member_id.clone()).or_default();
        partitions.sort();
        debug_assert!(partitions
            .iter()
            .all(|(topic, _)| member.subscription.topics.contains(topic)));
    }
    assignment
}

/// Per topic, the subscribers in order each take a contiguous range; the first
/// `partitions % subscribers` take one more.
fn assign_range(
    members: &[&Member],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut assignment: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
    for (topic, &count) in partition_counts {
        let subscribers: Vec<&&Member> = members
            .iter()
            .filter(|member| member.subscription.topics.contains(topic))
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let subscriber_count = i32::try_from(subscribers.len()).unwrap_or(i32::MAX);
        let each = count / subscriber_count;
        let extra = count % subscriber_count;
        for (index, member) in (0..).zip(&subscribers) {
            let start = each * index + index.min(extra);
            let length = each + i32::from(index < extra);
            assignment
                .entry(member.member_id.clone())
                .or_default()
                .extend((start..start + length).map(|partition| (topic.clone(), partition)));
        }
    }
    assignment
}

/// Every partition in (topic, partition) order goes to the next member in turn that subscribes
/// to its topic.
fn assign_round_robin(
    members: &[&Member],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut assignment: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
    if members.is_empty() {
        return assignment;
    }
    let mut next = 0;
    for (topic, &count) in partition_counts {
        if !members
            .iter()
            .any(|member| member.subscription.topics.contains(topic))
        {
            continue;
        }
        for partition in 0..count {
            while !members[next % members.len()]
                .subscription
                .topics
                .contains(topic)
            {
                next += 1;
            }
            assignment
                .entry(members[next % members.len()].member_id.clone())
                .or_default()
                .push((topic.clone(), partition));
            next += 1;
        }
    }
    assignment
}

/// See the module docs. Steps: keep each valid claim (a partition claimed by two members goes
/// to the higher generation, and to neither on a tie); give unclaimed partitions to the
/// eligible member with the fewest; move partitions from the fullest to the emptiest eligible
/// member until no move narrows the gap; then withhold every partition that changes owner.
fn assign_cooperative_sticky(
    members: &[&Member],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let eligible = |member: &Member, (topic, partition): &TopicPartition| {
        member.subscription.topics.contains(topic)
            && partition_counts
                .get(topic)
                .is_some_and(|&count| (0..count).contains(partition))
    };
    // Current owners, by claim.
    let mut claims: BTreeMap<TopicPartition, Vec<(i32, usize)>> = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        for partition in &member.subscription.owned {
            if eligible(member, partition) {
                claims
                    .entry(partition.clone())
                    .or_default()
                    .push((member.subscription.generation, index));
            }
        }
    }
    let mut owner: BTreeMap<TopicPartition, usize> = BTreeMap::new();
    for (partition, mut claimants) in claims {
        claimants.sort_unstable();
        let (generation, index) = claimants[claimants.len() - 1];
        let tied = claimants.len() > 1 && claimants[claimants.len() - 2].0 == generation;
        if !tied {
            owner.insert(partition, index);
        }
    }

    let mut assigned: Vec<BTreeSet<TopicPartition>> = vec![BTreeSet::new(); members.len()];
    for (partition, &index) in &owner {
        assigned[index].insert(partition.clone());
    }
    // Unclaimed partitions, the most constrained (fewest eligible members) first.
    let mut unclaimed: Vec<(usize, TopicPartition)> = partition_counts
        .iter()
        .flat_map(|(topic, &count)| (0..count).map(move |partition| (topic.clone(), partition)))
        .filter(|partition| !owner.contains_key(partition))
        .map(|partition| {
            let candidates = members
                .iter()
                .filter(|member| eligible(member, &partition))
                .count();
            (candidates, partition)
        })
        .filter(|(candidates, _)| *candidates > 0)
        .collect();
    unclaimed.sort();
    for (_, partition) in unclaimed {
        let emptiest = (0..members.len())
            .filter(|&index| eligible(members[index], &partition))
            .min_by_key(|&index| (assigned[index].len(), index))
            .expect("only partitions with an eligible member are left");
        assigned[emptiest].insert(partition);
    }
    // Balance: each move takes a partition from a member with at least two more than an
    // eligible receiver, so the sum of squared counts falls and the loop ends.
    loop {
        let mut best: Option<(usize, usize, TopicPartition)> = None;
        for giver in 0..members.len() {
            for partition in assigned[giver].iter().rev() {
                for receiver in 0..members.len() {
                    if assigned[giver].len() < assigned[receiver].len() + 2
                        || !eligible(members[receiver], partition)
                    {
                        continue;
                    }
                    let gap = assigned[giver].len() - assigned[receiver].len();
                    let better = best.as_ref().is_none_or(|(best_giver, best_receiver, _)| {
                        gap > assigned[*best_giver].len() - assigned[*best_receiver].len()
                    });
                    if better {
                        best = Some((giver, receiver, partition.clone()));
                    }
                }
            }
        }
        let Some((giver, receiver, partition)) = best else {
            break;
        };
        assigned[giver].remove(&partition);
        assigned[receiver].insert(partition);
    }

    let mut assignment = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        let partitions: Vec<TopicPartition> = assigned[index]
            .iter()
            .filter(|partition| {
                owner
                    .get(*partition)
                    .is_none_or(|&current| current == index)
            })
            .cloned()
            .collect();
        assignment.insert(member.member_id.clone(), partitions);
    }
    assignment
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Groups partitions by topic, in order.
fn by_topic(partitions: &[TopicPartition]) -> BTreeMap<&str, Vec<i32>> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        topics.entry(topic).or_default().push(*partition);
    }
    topics
}

fn versioned<T: Encodable>(message: &T, version: i16) -> Bytes {
    let mut bytes = BytesMut::new();
    bytes.put_i16(version);
    message
        .encode(&mut bytes, version)
        .expect("every field of the consumer protocol is set for its version");
    bytes.freeze()
}

/// The subscription bytes for JoinGroup's protocol metadata.
pub fn encode_subscription(subscription: &Subscription) -> Bytes {
    let message = ConsumerProtocolSubscription::default()
        .with_topics(
            subscription
                .topics
                .iter()
                .map(|topic| text(topic))
                .collect(),
        )
        .with_owned_partitions(
            by_topic(&subscription.owned)
                .into_iter()
                .map(|(topic, partitions)| {
                    consumer_protocol_subscription::TopicPartition::default()
                        .with_topic(TopicName(text(topic)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
        .with_generation_id(subscription.generation);
    versioned(&message, CONSUMER_PROTOCOL_VERSION)
}

/// Reads a member's subscription from JoinGroup's protocol metadata, whichever version its
/// client wrote (fields after those of the version are ignored, as Kafka's clients do).
///
/// # Errors
/// [`ClientError::Protocol`] when the bytes do not decode.
pub fn decode_subscription(bytes: &Bytes) -> Result<Subscription, ClientError> {
    let (version, mut body) = split_version(bytes)?;
    let message = ConsumerProtocolSubscription::decode(&mut body, version)
        .map_err(|error| ClientError::Protocol(format!("a member's subscription: {error}")))?;
    Ok(Subscription {
        topics: message
            .topics
            .iter()
            .map(|topic| topic.to_string())
            .collect(),
        owned: message
            .owned_partitions
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(move |partition| (topic.topic.0.to_string(), *partition))
            })
            .collect(),
        generation: if version >= 2 {
            message.generation_id
        } else {
            -1
        },
    })
}

/// The assignment bytes for SyncGroup.
pub fn encode_assignment(partitions: &[TopicPartition]) -> Bytes {
    let message = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic(partitions)
            .into_iter()
            .map(|(topic, partitions)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(TopicName(text(topic)))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    versioned(&message, CONSUMER_PROTOCOL_VERSION)
}

/// Reads this member's partitions from SyncGroup's assignment, sorted; empty bytes are an empty
/// assignment (a member the leader gave nothing).
///
/// # Errors
/// [`ClientError::Protocol`] when the bytes do not decode.
pub fn decode_assignment(bytes: &Bytes) -> Result<Vec<TopicPartition>, ClientError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let (version, mut body) = split_version(bytes)?;
    let message = ConsumerProtocolAssignment::decode(&mut body, version)
        .map_err(|error| ClientError::Protocol(format!("the group's assignment: {error}")))?;
    let mut partitions: Vec<TopicPartition> = message
        .assigned_partitions
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(move |partition| (topic.topic.0.to_string(), *partition))
        })
        .collect();
    partitions.sort();
    partitions.dedup();
    Ok(partitions)
}

/// The version prefix, clamped to the highest version this client reads (later versions only
/// add fields at the end).
fn split_version(bytes: &Bytes) -> Result<(i16, Bytes), ClientError> {
    if bytes.len() < 2 {
        return Err(ClientError::Protocol(
            "consumer protocol bytes without a version".into(),
        ));
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    if version < 0 {
        return Err(ClientError::Protocol(format!(
            "consumer protocol version {version}"
        )));
    }
    Ok((version.min(CONSUMER_PROTOCOL_VERSION), bytes.slice(2..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str]) -> Member {
        Member {
            member_id: id.to_owned(),
            group_instance_id: None,
            subscription: Subscription {
                topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
                owned: Vec::new(),
                generation: -1,
            },
        }
    }

    fn counts(topics: &[(&str, i32)]) -> BTreeMap<String, i32> {
        topics
            .iter()
            .map(|(topic, count)| ((*topic).to_owned(), *count))
            .collect()
    }

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        (topic.to_owned(), partition)
    }

    #[test]
    fn range_gives_each_member_a_contiguous_range_per_topic_with_the_first_taking_extras() {
        // Kafka's RangeAssignor javadoc example: C0 gets t0p0, t0p1, t1p0, t1p1; C1 t0p2, t1p2.
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let assignment = assign(Assignor::Range, &members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(
            assignment["C0"],
            [tp("t0", 0), tp("t0", 1), tp("t1", 0), tp("t1", 1)]
        );
        assert_eq!(assignment["C1"], [tp("t0", 2), tp("t1", 2)]);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn_skipping_members_not_subscribed() {
        // Kafka's RoundRobinAssignor javadoc example with unequal subscriptions.
        let members = [
            member("C0", &["t0"]),
            member("C1", &["t0", "t1"]),
            member("C2", &["t0", "t1", "t2"]),
        ];
        let assignment = assign(
            Assignor::RoundRobin,
            &members,
            &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]),
        );
        assert_eq!(assignment["C0"], [tp("t0", 0)]);
        assert_eq!(assignment["C1"], [tp("t1", 0)]);
        assert_eq!(
            assignment["C2"],
            [tp("t1", 1), tp("t2", 0), tp("t2", 1), tp("t2", 2)]
        );
    }

    #[test]
    fn static_members_are_ordered_by_instance_id() {
        let mut first = member("zzz", &["t"]);
        first.group_instance_id = Some("a".into());
        let mut second = member("aaa", &["t"]);
        second.group_instance_id = Some("b".into());
        let assignment = assign(Assignor::Range, &[second, first], &counts(&[("t", 2)]));
        assert_eq!(assignment["zzz"], [tp("t", 0)]);
        assert_eq!(assignment["aaa"], [tp("t", 1)]);
    }

    #[test]
    fn cooperative_sticky_withholds_a_moving_partition_until_its_owner_revokes_it() {
        // Generation 1: one member owns all four partitions. A second member joins.
        let mut owner = member("A", &["t"]);
        owner.subscription.owned = (0..4).map(|partition| tp("t", partition)).collect();
        owner.subscription.generation = 1;
        let newcomer = member("B", &["t"]);
        let partitions = counts(&[("t", 4)]);
        let first = assign(
            Assignor::CooperativeSticky,
            &[owner.clone(), newcomer.clone()],
            &partitions,
        );
        // A keeps two and gives up two; B gets nothing yet, as the two still belong to A.
        assert_eq!(first["A"].len(), 2);
        assert!(first["B"].is_empty());
        // A revoked two and rejoins owning its two; now B gets the others.
        owner.subscription.owned = first["A"].clone();
        owner.subscription.generation = 2;
        let second = assign(Assignor::CooperativeSticky, &[owner, newcomer], &partitions);
        assert_eq!(second["A"], first["A"]);
        assert_eq!(second["B"].len(), 2);
        assert!(second["B"]
            .iter()
            .all(|partition| !first["A"].contains(partition)));
    }

    #[test]
    fn cooperative_sticky_gives_a_partition_claimed_twice_to_the_newer_generation() {
        let mut stale = member("A", &["t"]);
        stale.subscription.owned = vec![tp("t", 0)];
        stale.subscription.generation = 1;
        let mut fresh = member("B", &["t"]);
        fresh.subscription.owned = vec![tp("t", 0)];
        fresh.subscription.generation = 2;
        let assignment = assign(
            Assignor::CooperativeSticky,
            &[stale, fresh],
            &counts(&[("t", 2)]),
        );
        assert_eq!(assignment["B"], [tp("t", 0)]);
        assert_eq!(assignment["A"], [tp("t", 1)]);
    }

    #[test]
    fn subscription_and_assignment_bytes_round_trip() {
        let subscription = Subscription {
            topics: vec!["a".into(), "b".into()],
            owned: vec![tp("a", 0), tp("a", 2), tp("b", 1)],
            generation: 7,
        };
        assert_eq!(
            decode_subscription(&encode_subscription(&subscription)).unwrap(),
            subscription
        );
        let partitions = vec![tp("a", 1), tp("b", 0), tp("b", 3)];
        assert_eq!(
            decode_assignment(&encode_assignment(&partitions)).unwrap(),
            partitions
        );
        assert_eq!(decode_assignment(&Bytes::new()).unwrap(), []);
        assert!(decode_subscription(&Bytes::from_static(&[0])).is_err());
    }

    #[test]
    fn a_version_0_subscription_from_an_old_client_reads_with_no_owned_partitions() {
        let message = ConsumerProtocolSubscription::default().with_topics(vec![text("t")]);
        let subscription = decode_subscription(&versioned(&message, 0)).unwrap();
        assert_eq!(subscription.topics, ["t"]);
        assert!(subscription.owned.is_empty());
        assert_eq!(subscription.generation, -1);
    }

    /// Members subscribing to random subsets of three topics, with random partition counts.
    fn scenario() -> impl Strategy<Value = (Vec<Member>, BTreeMap<String, i32>)> {
        let topics = ["a", "b", "c"];
        (
            proptest::collection::vec(proptest::sample::subsequence(topics.to_vec(), 1..=3), 1..7),
            proptest::collection::vec(0..9i32, 3),
        )
            .prop_map(move |(subscriptions, sizes)| {
                let members = subscriptions
                    .iter()
                    .enumerate()
                    .map(|(index, subscribed)| member(&format!("m{index}"), subscribed))
                    .collect();
                let partition_counts = topics
                    .iter()
                    .zip(sizes)
                    .map(|(topic, count)| ((*topic).to_owned(), count))
                    .collect();
                (members, partition_counts)
            })
    }

    /// Every partition some member subscribes to goes to exactly one member that subscribes to
    /// its topic.
    fn check_complete(
        members: &[Member],
        partition_counts: &BTreeMap<String, i32>,
        assignment: &BTreeMap<String, Vec<TopicPartition>>,
    ) {
        let mut seen = BTreeSet::new();
        for member in members {
            for partition in &assignment[&member.member_id] {
                assert!(member.subscription.topics.contains(&partition.0));
                assert!(seen.insert(partition.clone()), "{partition:?} twice");
            }
        }
        for (topic, &count) in partition_counts {
            let subscribed = members
                .iter()
                .any(|member| member.subscription.topics.contains(topic));
            for partition in 0..count {
                assert_eq!(seen.contains(&tp(topic, partition)), subscribed);
            }
        }
    }

    fn spread(assignment: &BTreeMap<String, Vec<TopicPartition>>) -> usize {
        let sizes = assignment.values().map(Vec::len);
        sizes.clone().max().unwrap_or(0) - sizes.min().unwrap_or(0)
    }

    proptest! {
        #[test]
        fn every_assignor_assigns_each_subscribed_partition_once(
            (members, partition_counts) in scenario()
        ) {
            for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
                let assignment = assign(assignor, &members, &partition_counts);
                check_complete(&members, &partition_counts, &assignment);
            }
        }

        #[test]
        fn with_equal_subscriptions_members_differ_by_at_most_one_partition(
            member_count in 1usize..7, sizes in proptest::collection::vec(0..9i32, 2)
        ) {
            let members: Vec<Member> =
                (0..member_count).map(|index| member(&format!("m{index}"), &["a", "b"])).collect();
            let partition_counts = counts(&[("a", sizes[0]), ("b", sizes[1])]);
            for assignor in [Assignor::RoundRobin, Assignor::CooperativeSticky] {
                prop_assert!(spread(&assign(assignor, &members, &partition_counts)) <= 1);
            }
        }

        /// Two cooperative rounds after members come and go: the first keeps every partition
        /// that stays with its owner and withholds the moving ones; the second, with owners
        /// having revoked them, completes a balanced assignment.
        #[test]
        fn cooperative_sticky_converges_in_two_rounds_without_taking_from_an_owner(
            before in 1usize..6, after in 1usize..6, partitions in 0..20i32
        ) {
            let partition_counts = counts(&[("t", partitions)]);
            let old: Vec<Member> = (0..before).map(|index| member(&format!("m{index}"), &["t"])).collect();
            let settled = assign(Assignor::CooperativeSticky, &old, &partition_counts);
            let mut members: Vec<Member> = (0..after)
                .map(|index| {
                    let mut next = member(&format!("m{index}"), &["t"]);
                    if let Some(owned) = settled.get(&next.member_id) {
                        next.subscription.owned = owned.clone();
                        next.subscription.generation = 1;
                    }
                    next
                })
                .collect();
            let first = assign(Assignor::CooperativeSticky, &members, &partition_counts);
            for member in &members {
                let kept = &first[&member.member_id];
                for partition in kept {
                    // Nothing is taken from another member that still owns it.
                    prop_assert!(members.iter().all(|other| other.member_id == member.member_id
                        || !other.subscription.owned.contains(partition)));
                }
            }
            for member in &mut members {
                member.subscription.owned = first[&member.member_id].clone();
                member.subscription.generation = 2;
            }
            let second = assign(Assignor::CooperativeSticky, &members, &partition_counts);
            check_complete(&members, &partition_counts, &second);
            prop_assert!(spread(&second) <= 1);
            for member in &members {
                for partition in &member.subscription.owned {
                    prop_assert!(second[&member.member_id].contains(partition), "sticky");
                }
            }
        }
    }
}
