"""Spate's group consumer (through `spate consume --group`) with librdkafka's in one group: under
each assignor the members share the partitions, whichever client leads, and every record is
read once; `spate consume --group` commits exactly what it printed."""

import json
import signal
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import SPATE_BIN, Broker, unique_topic

PARTITIONS = 6


@pytest.fixture(scope="module")
def group_broker(tmp_path_factory):
    spate = Broker(
        tmp_path_factory.mktemp("spate") / "data",
        "--group-initial-rebalance-delay-ms", "0",
    ).start()
    yield spate
    assert spate.stop() == 0, spate.log()


def create(bootstrap, partitions=PARTITIONS):
    topic = unique_topic("spate-group")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    return topic


def produce(bootstrap, topic, count, start=0):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        producer.produce(topic, key=f"k{i}".encode(), value=str(i).encode())
    assert producer.flush(30) == 0


def describe(bootstrap, group):
    result = subprocess.run(
        [SPATE_BIN, "group", "describe", group, "--bootstrap-server", bootstrap, "--output", "json"],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


class SpateMember:
    """`spate consume --group` in a subprocess; its JSON records are collected on a thread."""

    def __init__(self, bootstrap, topic, group, assignor):
        self.records = []
        self.process = subprocess.Popen(
            [SPATE_BIN, "consume", topic, "--group", group, "--from-beginning",
             "--bootstrap-server", bootstrap, "--output", "json",
             "--property", f"partition.assignment.strategy={assignor}",
             "--property", "heartbeat.interval.ms=300",
             "--property", "client.id=spate-member"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.records.append(json.loads(line))

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        assert code == 0, self.process.stderr.read()


class LibrdkafkaMember:
    """A confluent-kafka consumer polling on a thread."""

    def __init__(self, bootstrap, topic, group, assignor):
        self.records = []
        self.running = True
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "client.id": "librdkafka-member",
            "auto.offset.reset": "earliest", "partition.assignment.strategy": assignor,
            "heartbeat.interval.ms": 300,
        })
        self.consumer.subscribe([topic])
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while self.running:
            message = self.consumer.poll(0.2)
            if message is not None and message.error() is None:
                self.records.append({"partition": message.partition(),
                                     "value": message.value().decode()})
        self.consumer.close()

    def stop(self):
        self.running = False
        self.thread.join(timeout=60)


def settled(bootstrap, group, members):
    """The group's description once it is Stable with `members` members whose assignments
    cover every partition once; None before."""
    info = describe(bootstrap, group)
    if info is None or info["state"] != "Stable" or len(info["members"]) != members:
        return None
    owned = [tuple(partition) for member in info["members"] for partition in member["assignment"]]
    if sorted(partition for _, partition in owned) != list(range(PARTITIONS)):
        return None
    return info


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_spate_and_librdkafka_consumers_share_one_group(group_broker, assignor):
    bootstrap = group_broker.bootstrap
    topic = create(bootstrap)
    group = unique_topic(f"mixed-{assignor}")
    # Members join one after another, so that both kinds lead a generation at some point.
    members = []
    for kind in [SpateMember, LibrdkafkaMember, SpateMember, LibrdkafkaMember]:
        members.append(kind(bootstrap, topic, group, assignor))
        time.sleep(1)
    try:
        deadline = time.monotonic() + 90
        info = None
        while info is None:
            assert time.monotonic() < deadline, describe(bootstrap, group)
            time.sleep(0.5)
            info = settled(bootstrap, group, 4)
        clients = sorted(member["client_id"] for member in info["members"])
        assert clients == ["librdkafka-member"] * 2 + ["spate-member"] * 2
        # Fair shares: six partitions over four members.
        assert sorted(len(member["assignment"]) for member in info["members"]) == [1, 1, 2, 2]

        produce(bootstrap, topic, 1200)
        deadline = time.monotonic() + 90
        while sum(len(member.records) for member in members) < 1200:
            assert time.monotonic() < deadline, [len(member.records) for member in members]
            time.sleep(0.2)
        time.sleep(1)
        values = [record["value"] for member in members for record in member.records]
        assert sorted(values, key=int) == [str(i) for i in range(1200)], "lost or read twice"
        assert all(member.records for member in members), [len(m.records) for m in members]
        # Each member read only the partitions the group gave it.
        partitions = [{record["partition"] for record in member.records} for member in members]
        for index, first in enumerate(partitions):
            for second in partitions[index + 1:]:
                assert not first & second
    finally:
        for member in members:
            member.stop()


def test_spate_consume_in_a_group_commits_exactly_what_it_printed(group_broker):
    bootstrap = group_broker.bootstrap
    topic = create(bootstrap, partitions=1)
    produce(bootstrap, topic, 100)
    group = unique_topic("printed")

    def consume(count):
        result = subprocess.run(
            [SPATE_BIN, "consume", topic, "--group", group, "--from-beginning",
             "--max-messages", str(count), "--bootstrap-server", bootstrap],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert consume(30) == [str(i) for i in range(30)]
    info = describe(bootstrap, group)
    assert [(o["partition"], o["committed"]) for o in info["offsets"]] == [(0, 30)]
    # The next run starts where the last one stopped, not at the beginning.
    assert consume(70) == [str(i) for i in range(30, 100)]
    info = describe(bootstrap, group)
    assert info["state"] == "Empty" and info["offsets"][0]["lag"] == 0
