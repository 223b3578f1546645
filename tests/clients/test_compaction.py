"""Log compaction seen by real clients: a compacted topic read from the beginning returns
exactly the latest value of each key (confluent-kafka, kafka-python and kcat), offsets keep
their gaps, tombstones go after delete.retention.ms, and a keyless record is refused."""

import re
import shutil
import subprocess
import time

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import (  # noqa: E402
    AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic,
)

from conftest import Broker, unique_topic  # noqa: E402

KEYS = 50
ROUNDS = 40


@pytest.fixture(scope="module")
def cleaning_broker(tmp_path_factory):
    """A broker whose cleaner looks for work every 200 ms."""
    spate = Broker(
        tmp_path_factory.mktemp("spate") / "data",
        "--log-cleaner-backoff-ms", "200",
        "--auto-create-topics", "false",
    ).start()
    yield spate
    assert spate.stop() == 0, spate.log()


def create_compacted_topic(broker, name, **extra):
    configs = {
        "cleanup.policy": "compact",
        "segment.bytes": "16384",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "1000",
        **extra,
    }
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = client.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1, config=configs)],
        operation_timeout=10,
    )
    futures[name].result(timeout=30)


def produce(broker, topic, pairs):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0, "batch.num.messages": 7})
    for key, value in pairs:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def read_all(broker, topic, timeout_s=30):
    """Every record from the beginning to the end of partition 0: (offset, key, value)."""
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": unique_topic("reader"),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    consumer.subscribe([topic])
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    return records
                raise KafkaException(message.error())
            records.append((message.offset(), message.key(), message.value()))
    finally:
        consumer.close()
    raise AssertionError(f"did not reach the end of {topic}; read {len(records)}")


def wait_for(condition, timeout_s=30, what="the cleaner"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def history(rounds=ROUNDS, keys=KEYS):
    """Every key written `rounds` times; the last value of each key says so."""
    pairs = []
    for round_ in range(rounds):
        for key in range(keys):
            last = "last" if round_ == rounds - 1 else "old"
            pairs.append((f"key-{key}".encode(), f"{last}-{round_}-{key}-{'x' * 40}".encode()))
    return pairs


def latest(pairs):
    values = {}
    for key, value in pairs:
        values[key] = value
    return values


def test_a_compacted_topic_read_from_the_beginning_holds_the_latest_value_of_each_key(cleaning_broker):
    topic = unique_topic("compacted")
    create_compacted_topic(cleaning_broker, topic)
    pairs = history()
    produce(cleaning_broker, topic, pairs)
    # Another round rolls the segments holding the last values, so that they can be cleaned.
    filler = [(f"other-{n}".encode(), b"y" * 200) for n in range(200)]
    produce(cleaning_broker, topic, filler)
    expected = latest(pairs + filler)

    def compacted():
        records = read_all(cleaning_broker, topic)
        keys = [key for _, key, _ in records]
        cleaned = [r for r in records if r[1].startswith(b"key-")]
        return records if len(cleaned) == KEYS and len(set(keys)) == len(keys) else None

    records = wait_for(compacted, timeout_s=60, what="the topic to be compacted")
    assert {key: value for _, key, value in records} == expected
    offsets = [offset for offset, _, _ in records]
    assert offsets == sorted(offsets)
    assert offsets[-1] == len(pairs) + len(filler) - 1, "offsets are kept, with gaps"
    assert offsets[0] > 0
    for _, key, value in records:
        if key.startswith(b"key-"):
            assert value.startswith(b"last-")

    # kafka-python reads the same from the beginning, skipping the gaps.
    kafka = pytest.importorskip("kafka")
    reader = kafka.KafkaConsumer(
        topic, bootstrap_servers=cleaning_broker.bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=5000,
    )
    read = [(m.offset, m.key, m.value) for m in reader]
    reader.close()
    assert read == records

    # kcat too.
    if shutil.which("kcat"):
        out = subprocess.run(
            ["kcat", "-C", "-b", cleaning_broker.bootstrap, "-t", topic, "-o", "beginning", "-e",
             "-f", "%o %k\n"],
            capture_output=True, timeout=60, check=True,
        ).stdout.decode().split("\n")
        assert [line.split(" ")[0] for line in out if line] == [str(o) for o in offsets]


def test_tombstones_remove_a_key_after_delete_retention(cleaning_broker):
    topic = unique_topic("tombstones")
    create_compacted_topic(cleaning_broker, topic)
    pairs = [(f"key-{n}".encode(), b"v" * 100) for n in range(100)]
    produce(cleaning_broker, topic, pairs)
    tombstones = [(f"key-{n}".encode(), None) for n in range(0, 100, 2)]
    produce(cleaning_broker, topic, tombstones)
    filler = [(f"pad-{n}".encode(), b"p" * 300) for n in range(300)]
    produce(cleaning_broker, topic, filler)

    def gone():
        records = read_all(cleaning_broker, topic)
        keys = {key for _, key, _ in records}
        deleted = {f"key-{n}".encode() for n in range(0, 100, 2)}
        return records if not (keys & deleted) else None

    # The tombstones stay for delete.retention.ms (1 s) after they were first cleaned, then
    # a later pass (more writes make the log dirty again) removes them.
    def gone_after_more_writes():
        produce(cleaning_broker, topic, [(f"pad-{n}".encode(), b"q" * 300) for n in range(100)])
        return gone()

    records = wait_for(gone_after_more_writes, timeout_s=60, what="the tombstones to go")
    kept = {key for _, key, _ in records if key.startswith(b"key-")}
    assert kept == {f"key-{n}".encode() for n in range(1, 100, 2)}


def test_a_record_without_a_key_is_refused(cleaning_broker):
    topic = unique_topic("keyless")
    create_compacted_topic(cleaning_broker, topic)
    errors = []
    producer = Producer({"bootstrap.servers": cleaning_broker.bootstrap, "retries": 0})
    producer.produce(topic, value=b"no key", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(30)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == confluent_kafka.KafkaError.INVALID_RECORD, errors[0]


def test_cleanup_policy_is_described_and_altered(cleaning_broker):
    topic = unique_topic("policy")
    create_compacted_topic(cleaning_broker, topic)
    client = AdminClient({"bootstrap.servers": cleaning_broker.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = client.describe_configs([resource])[resource].result(timeout=30)
    assert described["cleanup.policy"].value == "compact"
    assert described["min.cleanable.dirty.ratio"].value == "0.01"
    assert described["delete.retention.ms"].value == "1000"


def test_consumer_offsets_are_compacted_and_commits_survive_it(tmp_path):
    """__consumer_offsets is compacted: with small segments (set with AlterConfigs, as on
    Kafka), a group committing over and over is cleaned down, and after a restart the
    coordinator replays the cleaned log to the latest commit of each partition."""
    broker = Broker(tmp_path / "data", "--log-cleaner-backoff-ms", "200", "--offsets-topic-num-partitions", "1").start()
    try:
        topic = unique_topic("committed")
        create_compacted_topic(broker, topic)
        produce(broker, topic, [(b"k", b"v")])
        group = unique_topic("group")
        consumer = Consumer({
            "bootstrap.servers": broker.bootstrap, "group.id": group,
            "enable.auto.commit": False,
        })
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
        client = AdminClient({"bootstrap.servers": broker.bootstrap})
        resource = ConfigResource(ConfigResource.Type.TOPIC, "__consumer_offsets", incremental_configs=[
            ConfigEntry("segment.bytes", "16384", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("min.cleanable.dirty.ratio", "0.01", incremental_operation=AlterConfigOpType.SET),
        ])
        for future in client.incremental_alter_configs([resource]).values():
            future.result(timeout=30)
        described = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "__consumer_offsets")])
        configs = list(described.values())[0].result(timeout=30)
        assert configs["cleanup.policy"].value == "compact"
        for offset in range(1, 1500):
            consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        consumer.close()

        def offsets_removed():
            lines = broker.log_path.read_text(errors="replace").splitlines()
            removed = [
                int(re.search(r"records_removed=(\d+)", line).group(1))
                for line in lines
                if "compacted" in line and "__consumer_offsets" in line
            ]
            return sum(removed) >= 1000

        wait_for(offsets_removed, timeout_s=60, what="__consumer_offsets to be compacted")
    finally:
        assert broker.stop() == 0, broker.log()
    broker.start()
    try:
        reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
        committed = reader.committed([TopicPartition(topic, 0)], timeout=30)
        assert committed[0].offset == 1499
        reader.close()
    finally:
        assert broker.stop() == 0, broker.log()
