"""Consumer groups with real clients: librdkafka (confluent-kafka), kafka-python and kcat join
groups, share partitions, rebalance when members leave, die or join, and resume from committed
offsets; the admin clients list, describe, alter and delete groups and their offsets."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import TopicPartition as KafkaTopicPartition

from conftest import Broker, unique_topic

PARTITIONS = 12
# The broker's initial rebalance delay: long enough for three consumers started together to
# land in one generation, short enough to keep the tests quick.
INITIAL_DELAY_MS = 1500


@pytest.fixture(scope="module")
def groups_broker(tmp_path_factory):
    spate = Broker(
        tmp_path_factory.mktemp("spate") / "data",
        "--group-initial-rebalance-delay-ms", str(INITIAL_DELAY_MS),
    ).start()
    yield spate
    assert spate.stop() == 0, spate.log()


def create_topic(bootstrap, partitions=PARTITIONS, prefix="groups"):
    topic = unique_topic(prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    return topic


def produce(bootstrap, topic, count, start=0):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        producer.produce(topic, key=str(i).encode(), value=str(i).encode())
    assert producer.flush(30) == 0
    return {str(i) for i in range(start, start + count)}


def confluent_consumer(bootstrap, group, **extra):
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    config.update(extra)
    return Consumer(config)


def python_consumer(bootstrap, group, topic, **extra):
    config = dict(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        partition_assignment_strategy=[RangePartitionAssignor],
    )
    config.update(extra)
    consumer = KafkaConsumer(**config)
    consumer.subscribe([topic])
    return consumer


class Member:
    """A group member polled from the test's thread (librdkafka joins and heartbeats on its
    own threads); every record it processes is committed before it counts as seen."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.seen = []

    def poll_once(self):
        message = self.consumer.poll(0.05)
        if message is None or message.error() is not None:
            return
        self.consumer.commit(message, asynchronous=False)
        self.seen.append(message.value().decode())

    def assignment(self):
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def close(self):
        self.consumer.close()


class PythonMember:
    """A kafka-python member, polled on its own thread as applications do: kafka-python 3
    makes progress on a rebalance only inside poll(), and drops a JoinGroup answer that
    arrives between two short polls, so one thread cannot round-robin several members."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.seen = []
        self.owned = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            batches = self.consumer.poll(timeout_ms=200, max_records=100)
            for tp, records in batches.items():
                for record in records:
                    self.seen.append(record.value.decode())
                if records:
                    self.consumer.commit({tp: _offset_and_metadata(records[-1].offset + 1)})
            self.owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        self.consumer.close()

    def poll_once(self):
        time.sleep(0.01)

    def assignment(self):
        return set(self.owned)

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def _offset_and_metadata(offset):
    from kafka.structs import OffsetAndMetadata
    try:
        return OffsetAndMetadata(offset, "", -1)
    except TypeError:
        return OffsetAndMetadata(offset, "")


def poll_until(members, condition, timeout_s, what, detail=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for member in members:
            member.poll_once()
        if condition():
            return
    sizes = [len(member.assignment()) for member in members]
    more = f"; {detail()}" if detail else ""
    pytest.fail(f"timed out waiting for {what}; assignments {sizes}{more}")


def all_seen(members):
    return [value for member in members for value in member.seen]


def share_then_shrink(bootstrap, members, topic):
    """Three members each get a third of the partitions; after one closes, the other two own
    all of them and finish the topic from the committed offsets: nothing lost or repeated."""
    expected = produce(bootstrap, topic, 600)
    poll_until(
        members,
        lambda: all(len(member.assignment()) == PARTITIONS // 3 for member in members),
        60,
        "an even share of partitions",
    )
    owned = set().union(*(member.assignment() for member in members))
    assert len(owned) == PARTITIONS
    poll_until(members, lambda: len(all_seen(members)) >= 200, 60, "some records")
    leaving, rest = members[0], members[1:]
    leaving.close()
    expected |= produce(bootstrap, topic, 300, start=600)
    poll_until(
        rest,
        lambda: sum(len(member.assignment()) for member in rest) == PARTITIONS
        and len(set(all_seen(members))) == len(expected),
        60,
        "the remaining members to take over and read everything",
    )
    assert {len(member.assignment()) for member in rest} == {PARTITIONS // 2}
    seen = all_seen(members)
    assert set(seen) == expected
    assert len(seen) == len(expected), "a committed record was delivered twice"
    for member in rest:
        member.close()


def test_confluent_consumers_share_partitions_and_take_over_from_a_leaver(groups_broker):
    topic = create_topic(groups_broker.bootstrap)
    group = unique_topic("confluent-group")
    members = []
    for _ in range(3):
        consumer = confluent_consumer(groups_broker.bootstrap, group)
        consumer.subscribe([topic])
        members.append(Member(consumer))
    share_then_shrink(groups_broker.bootstrap, members, topic)


def test_kafka_python_consumers_share_partitions_and_take_over_from_a_leaver(groups_broker):
    topic = create_topic(groups_broker.bootstrap)
    group = unique_topic("python-group")
    members = [
        PythonMember(python_consumer(groups_broker.bootstrap, group, topic)) for _ in range(3)
    ]
    share_then_shrink(groups_broker.bootstrap, members, topic)


def test_a_group_mixing_librdkafka_and_kafka_python_members(groups_broker):
    topic = create_topic(groups_broker.bootstrap)
    group = unique_topic("mixed-group")
    members = []
    for kind in ["confluent", "python", "confluent"]:
        if kind == "confluent":
            consumer = confluent_consumer(
                groups_broker.bootstrap, group, **{"partition.assignment.strategy": "range"}
            )
            consumer.subscribe([topic])
        else:
            members.append(PythonMember(python_consumer(groups_broker.bootstrap, group, topic)))
            continue
        members.append(Member(consumer))
    share_then_shrink(groups_broker.bootstrap, members, topic)


KILLED_MEMBER = r"""
import sys
from confluent_kafka import Consumer
bootstrap, group, topic = sys.argv[1:4]
consumer = Consumer({
    "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
    "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
})
consumer.subscribe([topic])
while True:
    message = consumer.poll(0.1)
    if message is not None and message.error() is None:
        print("processing", message.value().decode(), flush=True)
        consumer.commit(message, asynchronous=False)
        print("seen", message.value().decode(), flush=True)
    print("owns", len(consumer.assignment()), flush=True)
"""


def test_a_killed_member_is_evicted_after_its_session_timeout(groups_broker, tmp_path):
    topic = create_topic(groups_broker.bootstrap)
    group = unique_topic("killed-group")
    expected = produce(groups_broker.bootstrap, topic, 300)
    output = open(tmp_path / "member.out", "w+")
    doomed = subprocess.Popen(
        [sys.executable, "-c", KILLED_MEMBER, groups_broker.bootstrap, group, topic],
        stdout=output,
        stderr=subprocess.DEVNULL,
    )
    try:
        members = []
        for _ in range(2):
            consumer = confluent_consumer(groups_broker.bootstrap, group)
            consumer.subscribe([topic])
            members.append(Member(consumer))

        def doomed_owns_a_share():
            output.seek(0)
            lines = output.read().splitlines()
            return any(line == f"owns {PARTITIONS // 3}" for line in lines[-20:])

        poll_until(
            members,
            lambda: all(len(m.assignment()) == PARTITIONS // 3 for m in members)
            and doomed_owns_a_share(),
            60,
            "three members with a share each",
        )
        poll_until(members, lambda: len(all_seen(members)) >= 100, 60, "some records")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        killed_at = time.monotonic()
        poll_until(
            members,
            lambda: sum(len(m.assignment()) for m in members) == PARTITIONS,
            60,
            "the dead member's partitions to move",
        )
        moved_after_s = time.monotonic() - killed_at
        # Evicted by the session timeout (6 s), not before, and not much after.
        assert 4.0 <= moved_after_s <= 30.0, moved_after_s
        expected |= produce(groups_broker.bootstrap, topic, 100, start=300)
        output.seek(0)
        lines = output.read().splitlines()
        seen_by_doomed = {line.split(" ", 1)[1] for line in lines if line.startswith("seen ")}
        processed_by_doomed = {
            line.split(" ", 1)[1] for line in lines if line.startswith("processing ")
        }
        poll_until(
            members,
            lambda: set(all_seen(members)) | processed_by_doomed == expected,
            60,
            "every record",
            lambda: "missing "
            + str(sorted(expected - set(all_seen(members)) - processed_by_doomed, key=int))
            + f", the dead member's last lines {lines[-10:]}",
        )
        # A commit the dead member saw acknowledged is never delivered again; the record it was
        # committing when it died may be (its commit may or may not have landed).
        assert not set(all_seen(members)) & seen_by_doomed
        assert len(set(all_seen(members)) & processed_by_doomed) <= 1
        for member in members:
            member.close()
    finally:
        if doomed.poll() is None:
            doomed.kill()


def test_cooperative_sticky_revokes_only_the_partitions_that_move(groups_broker):
    topic = create_topic(groups_broker.bootstrap)
    group = unique_topic("cooperative-group")
    events = {"first": [], "second": []}

    def listener(name):
        def on_assign(consumer, partitions):
            events[name].append(("assign", sorted(tp.partition for tp in partitions)))

        def on_revoke(consumer, partitions):
            events[name].append(("revoke", sorted(tp.partition for tp in partitions)))

        return {"on_assign": on_assign, "on_revoke": on_revoke}

    first = confluent_consumer(
        groups_broker.bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"}
    )
    first.subscribe([topic], **listener("first"))
    member_first = Member(first)
    poll_until([member_first], lambda: len(first.assignment()) == PARTITIONS, 60, "all partitions")
    kept_before = {tp.partition for tp in first.assignment()}
    second = confluent_consumer(
        groups_broker.bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"}
    )
    second.subscribe([topic], **listener("second"))
    member_second = Member(second)
    members = [member_first, member_second]
    poll_until(
        members,
        lambda: len(first.assignment()) == PARTITIONS // 2
        and len(second.assignment()) == PARTITIONS // 2,
        60,
        "an even split",
    )
    revoked = [partitions for kind, partitions in events["first"] if kind == "revoke"]
    # Incremental: only the six partitions that moved were revoked, never all twelve.
    assert revoked and all(len(partitions) == PARTITIONS // 2 for partitions in revoked), events
    kept = {tp.partition for tp in first.assignment()}
    moved = {tp.partition for tp in second.assignment()}
    assert kept | moved == kept_before and not kept & moved
    assert set(revoked[-1]) == moved
    for member in members:
        member.close()


def test_two_groups_read_the_same_topic_independently(groups_broker):
    topic = create_topic(groups_broker.bootstrap, partitions=3)
    expected = produce(groups_broker.bootstrap, topic, 90)
    readers = []
    for group in (unique_topic("left"), unique_topic("right")):
        consumer = confluent_consumer(groups_broker.bootstrap, group)
        consumer.subscribe([topic])
        readers.append(Member(consumer))
    poll_until(
        readers,
        lambda: all(set(member.seen) == expected for member in readers),
        60,
        "both groups to read everything",
    )
    for member in readers:
        member.close()


def test_lag_from_committed_offsets_and_watermarks(groups_broker):
    topic = create_topic(groups_broker.bootstrap, partitions=1)
    produce(groups_broker.bootstrap, topic, 100)
    group = unique_topic("lag-group")
    consumer = confluent_consumer(groups_broker.bootstrap, group)
    consumer.assign([TopicPartition(topic, 0, 0)])
    consumed = 0
    deadline = time.monotonic() + 30
    while consumed < 40 and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            consumed += 1
            if consumed == 40:
                # A consumer without a group (assign) commits with generation -1.
                consumer.commit(message, asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    assert (committed, low, high) == (40, 0, 100)
    assert high - committed == 60
    consumer.close()


def test_admin_clients_list_describe_alter_and_delete(groups_broker):
    bootstrap = groups_broker.bootstrap
    topic = create_topic(bootstrap, partitions=2)
    produce(bootstrap, topic, 20)
    group = unique_topic("admin-group")
    consumer = confluent_consumer(bootstrap, group, **{"client.id": "admin-test-client"})
    consumer.subscribe([topic])
    member = Member(consumer)
    poll_until([member], lambda: len(member.seen) == 20, 60, "all records")
    admin = AdminClient({"bootstrap.servers": bootstrap})

    listed = admin.list_consumer_groups(request_timeout=10).result()
    assert group in {entry.group_id for entry in listed.valid}
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    assert description.state.name == "STABLE"
    assert description.partition_assignor == "range"
    (only,) = description.members
    assert only.client_id == "admin-test-client"
    assert {(tp.topic, tp.partition) for tp in only.assignment.topic_partitions} == {
        (topic, 0),
        (topic, 1),
    }

    offsets = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=10
    )[group].result()
    assert sum(tp.offset for tp in offsets.topic_partitions if tp.topic == topic) == 20

    # Neither an active group nor the offsets of topics it reads can be deleted.
    python_admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    assert python_admin.delete_groups([group]) == {group: "NonEmptyGroupError"}
    refused = python_admin.delete_group_offsets(group, [KafkaTopicPartition(topic, 0)])
    assert refused[KafkaTopicPartition(topic, 0)].__name__ == "GroupSubscribedToTopicError"
    member.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = admin.describe_consumer_groups([group], request_timeout=10)[group].result().state
        if state.name == "EMPTY":
            break
        time.sleep(0.2)
    assert state.name == "EMPTY"

    altered = admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])], request_timeout=10
    )[group].result()
    assert altered.topic_partitions[0].error is None
    offsets = python_admin.list_group_offsets(group)[group]
    assert offsets[KafkaTopicPartition(topic, 0)].offset == 3

    # OffsetDelete (kafka-python) removes one partition's offset once nobody reads it.
    deleted = python_admin.delete_group_offsets(group, [KafkaTopicPartition(topic, 1)])
    assert deleted[KafkaTopicPartition(topic, 1)].__name__ == "NoError"
    offsets = python_admin.list_group_offsets(group)[group]
    assert KafkaTopicPartition(topic, 1) not in offsets

    described = python_admin.describe_groups([group])
    assert described[group]["group_state"] == "Empty"

    # ListGroups with a state filter, and OffsetFetch for several groups at once (v8).
    empty = admin.list_consumer_groups(
        states={ConsumerGroupState.EMPTY}, request_timeout=10
    ).result()
    assert group in {entry.group_id for entry in empty.valid}
    stable = admin.list_consumer_groups(
        states={ConsumerGroupState.STABLE}, request_timeout=10
    ).result()
    assert group not in {entry.group_id for entry in stable.valid}
    other = unique_topic("admin-other-group")
    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(other, [TopicPartition(topic, 1, 9)])], request_timeout=10
    )[other].result()
    both = python_admin.list_group_offsets([group, other])
    assert both[group][KafkaTopicPartition(topic, 0)].offset == 3
    assert both[other][KafkaTopicPartition(topic, 1)].offset == 9

    result = admin.delete_consumer_groups([group], request_timeout=10)[group].result()
    assert result is None
    listed = admin.list_consumer_groups(request_timeout=10).result()
    assert group not in {entry.group_id for entry in listed.valid}
    python_admin.close()


def test_kcat_balanced_consumer_joins_and_commits(groups_broker):
    topic = create_topic(groups_broker.bootstrap, partitions=2)
    expected = produce(groups_broker.bootstrap, topic, 10)
    group = unique_topic("kcat-group")
    result = subprocess.run(
        [
            "kcat", "-b", groups_broker.bootstrap, "-G", group, topic,
            "-X", "auto.offset.reset=earliest", "-c", "10", "-f", "%s\n", "-q",
        ],
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == expected
    admin = AdminClient({"bootstrap.servers": groups_broker.bootstrap})
    deadline = time.monotonic() + 20
    total = 0
    while time.monotonic() < deadline:
        offsets = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=10
        )[group].result()
        total = sum(max(tp.offset, 0) for tp in offsets.topic_partitions)
        if total == 10:
            break
        time.sleep(0.2)
    assert total == 10, "kcat commits what it consumed when it leaves"


def test_offsets_and_membership_survive_a_broker_restart(tmp_path):
    spate = Broker(tmp_path / "data", "--group-initial-rebalance-delay-ms", "0")
    spate.start()
    try:
        topic = create_topic(spate.bootstrap, partitions=2)
        produce(spate.bootstrap, topic, 50)
        group = unique_topic("restart-group")
        consumer = confluent_consumer(spate.bootstrap, group, **{"session.timeout.ms": 30000})
        consumer.subscribe([topic])
        member = Member(consumer)
        poll_until([member], lambda: len(member.seen) == 50, 60, "all records")
        admin = AdminClient({"bootstrap.servers": spate.bootstrap})
        before = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        assert before.state.name == "STABLE"

        assert spate.stop() == 0, spate.log()
        spate.start()

        admin = AdminClient({"bootstrap.servers": spate.bootstrap})
        after = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        assert after.state.name == "STABLE", "membership is restored from __consumer_offsets"
        assert [m.member_id for m in after.members] == [m.member_id for m in before.members]
        offsets = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=10
        )[group].result()
        assert sum(tp.offset for tp in offsets.topic_partitions) == 50
        # The member carries on: new records arrive without a rebalance or a repeat.
        expected = produce(spate.bootstrap, topic, 10, start=50)
        poll_until([member], lambda: set(member.seen[50:]) == expected, 60, "new records")
        assert len(member.seen) == 60
        member.close()
    finally:
        spate.stop()


def test_a_restarted_static_member_keeps_its_partitions_without_a_rebalance(groups_broker):
    topic = create_topic(groups_broker.bootstrap, partitions=4)
    group = unique_topic("static-group")
    rebalances = {"a": 0, "b": 0}

    def counted(name):
        def on_assign(consumer, partitions):
            rebalances[name] += 1

        return {"on_assign": on_assign}

    def start(name):
        consumer = confluent_consumer(
            groups_broker.bootstrap,
            group,
            **{"group.instance.id": f"host-{name}", "session.timeout.ms": 30000},
        )
        consumer.subscribe([topic], **counted(name))
        return Member(consumer)

    first, second = start("a"), start("b")
    poll_until(
        [first, second],
        lambda: len(first.assignment()) == 2 and len(second.assignment()) == 2,
        60,
        "two static members with two partitions each",
    )
    owned_by_first = first.assignment()
    assigned_to_second = rebalances["b"]
    # A static member closes without leaving the group, and comes back with the same id.
    first.close()
    restarted = start("a")
    poll_until(
        [restarted, second],
        lambda: restarted.assignment() == owned_by_first,
        60,
        "the restarted member to get its partitions back",
    )
    for _ in range(20):
        second.poll_once()
    assert rebalances["b"] == assigned_to_second, "the other member saw no rebalance"
    assert second.assignment() and not second.assignment() & owned_by_first
    restarted.close()
    second.close()


def test_an_acknowledged_commit_survives_a_broker_crash(tmp_path):
    spate = Broker(tmp_path / "data")
    spate.start()
    try:
        topic = create_topic(spate.bootstrap, partitions=1)
        produce(spate.bootstrap, topic, 10)
        group = unique_topic("crash-group")
        consumer = confluent_consumer(spate.bootstrap, group)
        consumer.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
        consumer.close()
        spate.process.kill()
        spate.process.wait()
        spate.start()
        admin = AdminClient({"bootstrap.servers": spate.bootstrap})
        offsets = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=10
        )[group].result()
        assert [(tp.partition, tp.offset) for tp in offsets.topic_partitions] == [(0, 7)]
    finally:
        spate.stop()


def test_roundrobin_members_interleave_the_partitions(groups_broker):
    topic = create_topic(groups_broker.bootstrap)
    group = unique_topic("roundrobin-group")
    members = []
    for _ in range(2):
        consumer = confluent_consumer(
            groups_broker.bootstrap, group, **{"partition.assignment.strategy": "roundrobin"}
        )
        consumer.subscribe([topic])
        members.append(Member(consumer))
    poll_until(
        members,
        lambda: all(len(member.assignment()) == PARTITIONS // 2 for member in members),
        60,
        "six partitions each",
    )
    owned = [sorted(partition for _, partition in member.assignment()) for member in members]
    # The roundrobin assignor deals partitions out one at a time: evens to one, odds to the other.
    assert sorted(owned) == [list(range(0, PARTITIONS, 2)), list(range(1, PARTITIONS, 2))]
    for member in members:
        member.close()
