"""The spate command line's producer against real clients: what `spate produce` writes,
librdkafka (confluent-kafka) reads back exactly, with keys, headers and every codec, and a key
lands on the partition the Java client's partitioner (librdkafka's murmur2_random,
kafka-python's default) picks for it."""

import json
import subprocess

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer

from conftest import SPATE_BIN, unique_topic

PARTITIONS = 6


def create(bootstrap, partitions=PARTITIONS):
    topic = unique_topic("cli")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    return topic


def read_all(bootstrap, topic, count, partitions=PARTITIONS):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("reader"),
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages = []
    while len(messages) < count:
        message = consumer.poll(10)
        assert message is not None, f"read {len(messages)} of {count}"
        if message.error() is None:
            messages.append(message)
    consumer.close()
    return messages


def spate_produce(bootstrap, topic, lines, *args):
    return subprocess.run(
        [SPATE_BIN, "produce", topic, "--bootstrap-server", bootstrap, *args],
        input="".join(line + "\n" for line in lines),
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_spate_produce_is_read_back_by_librdkafka(broker, codec):
    topic = create(broker.bootstrap)
    lines = [f"key-{i}:value-{i}" for i in range(2000)]
    result = spate_produce(
        broker.bootstrap, topic, lines,
        "--key-separator", ":", "--header", "source=spate-cli",
        "--property", f"compression.type={codec}", "--property", "acks=all",
    )
    assert result.returncode == 0, result.stderr
    assert "produced 2000 of 2000 records" in result.stderr
    messages = read_all(broker.bootstrap, topic, len(lines))
    got = {(m.key().decode(), m.value().decode()) for m in messages}
    assert got == {tuple(line.split(":", 1)) for line in lines}
    assert all(m.headers() == [("source", b"spate-cli")] for m in messages)
    # Within a partition, the order of standard input is kept.
    for partition in range(PARTITIONS):
        values = [int(m.value().decode().split("-")[1]) for m in messages if m.partition() == partition]
        assert values == sorted(values)


def test_a_key_lands_on_the_same_partition_from_all_three_clients(broker):
    keys = [f"customer-{i}" for i in range(300)]
    placement = {}

    spate_topic = create(broker.bootstrap)
    result = spate_produce(broker.bootstrap, spate_topic, [f"{key}:x" for key in keys],
                           "--key-separator", ":")
    assert result.returncode == 0, result.stderr
    placement["spate"] = {m.key().decode(): m.partition()
                          for m in read_all(broker.bootstrap, spate_topic, len(keys))}

    librdkafka_topic = create(broker.bootstrap)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    for key in keys:
        producer.produce(librdkafka_topic, key=key, value=b"x")
    assert producer.flush(30) == 0
    placement["librdkafka"] = {m.key().decode(): m.partition()
                               for m in read_all(broker.bootstrap, librdkafka_topic, len(keys))}

    python_topic = create(broker.bootstrap)
    python_producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    for key in keys:
        python_producer.send(python_topic, key=key.encode(), value=b"x")
    python_producer.flush(30)
    python_producer.close()
    placement["kafka-python"] = {m.key().decode(): m.partition()
                                 for m in read_all(broker.bootstrap, python_topic, len(keys))}

    assert placement["spate"] == placement["librdkafka"] == placement["kafka-python"]
    assert len(set(placement["spate"].values())) == PARTITIONS


def test_spate_produce_reports_an_unknown_partition(broker):
    topic = create(broker.bootstrap, partitions=1)
    result = spate_produce(broker.bootstrap, topic, ["a"], "--partition", "5")
    assert result.returncode == 3, result.stderr
    assert "UNKNOWN_TOPIC_OR_PARTITION" in result.stderr


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_spate_consume_reads_what_librdkafka_wrote(broker, codec):
    topic = create(broker.bootstrap)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec,
                         "linger.ms": 5})
    for i in range(1000):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", headers=[("n", str(i).encode())])
    assert producer.flush(30) == 0
    result = subprocess.run(
        [SPATE_BIN, "consume", topic, "--bootstrap-server", broker.bootstrap,
         "--from-beginning", "--exit-at-end", "--output", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 1000
    assert {(r["key"], r["value"]) for r in records} == {(f"k{i}", f"v{i}") for i in range(1000)}
    assert all(r["headers"] == [["n", r["value"][1:]]] for r in records)
    for partition in range(PARTITIONS):
        offsets = [r["offset"] for r in records if r["partition"] == partition]
        assert offsets == list(range(len(offsets)))


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kafka_python_reads_what_spate_produce_wrote(broker, codec):
    topic = create(broker.bootstrap)
    lines = [f"key-{i}:value-{i}" for i in range(500)]
    result = spate_produce(broker.bootstrap, topic, lines, "--key-separator", ":",
                           "--header", "source=spate-cli", "--property", f"compression.type={codec}")
    assert result.returncode == 0, result.stderr
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    messages = []
    for message in consumer:
        messages.append(message)
        if len(messages) == len(lines):
            break
    consumer.close()
    assert {(m.key.decode(), m.value.decode()) for m in messages} == \
        {tuple(line.split(":", 1)) for line in lines}
    assert all(m.headers == [("source", b"spate-cli")] for m in messages)


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_spate_consume_reads_what_kafka_python_wrote(broker, codec):
    topic = create(broker.bootstrap)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                             compression_type=codec, linger_ms=5)
    for i in range(500):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(),
                      headers=[("n", str(i).encode())])
    producer.flush(30)
    producer.close()
    result = subprocess.run(
        [SPATE_BIN, "consume", topic, "--bootstrap-server", broker.bootstrap,
         "--from-beginning", "--exit-at-end", "--output", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(r["key"], r["value"]) for r in records} == {(f"k{i}", f"v{i}") for i in range(500)}
    assert all(r["headers"] == [["n", r["value"][1:]]] for r in records)


def test_spate_consume_from_an_offset_and_a_timestamp(broker):
    topic = create(broker.bootstrap, partitions=1)
    result = spate_produce(broker.bootstrap, topic, [f"line-{i}" for i in range(10)])
    assert result.returncode == 0, result.stderr

    def consume(*args):
        return subprocess.run(
            [SPATE_BIN, "consume", topic, "--bootstrap-server", broker.bootstrap, *args],
            capture_output=True, text=True, timeout=60,
        )

    result = consume("--offset", "7", "--exit-at-end", "--format", "%o %s\\n")
    assert result.stdout.splitlines() == ["7 line-7", "8 line-8", "9 line-9"], result.stderr
    result = consume("--from-beginning", "--max-messages", "2")
    assert result.stdout.splitlines() == ["line-0", "line-1"]
    result = consume("--timestamp", "4102444800000", "--exit-at-end")  # the year 2100
    assert result.returncode == 0 and result.stdout == ""
    # In a group: from the beginning once, then from the committed offsets (nothing new).
    result = consume("--group", "g", "--from-beginning", "--exit-at-end")
    assert result.returncode == 0 and result.stdout.splitlines() == [f"line-{i}" for i in range(10)]
    result = consume("--group", "g", "--from-beginning", "--exit-at-end")
    assert result.returncode == 0 and result.stdout == "", result.stdout
    # A group decides the partitions and the offsets: --partition and --offset are refused.
    result = consume("--group", "g", "--partition", "0")
    assert result.returncode == 2 and "cannot be used with" in result.stderr
    missing = subprocess.run(
        [SPATE_BIN, "consume", "no-such-topic", "--bootstrap-server", broker.bootstrap,
         "--exit-at-end"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 3 and "UNKNOWN_TOPIC_OR_PARTITION" in missing.stderr


def test_spate_group_list_describe_and_delete(broker):
    topic = create(broker.bootstrap, partitions=3)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(30):
        producer.produce(topic, key=f"k{i}", value=b"v")
    assert producer.flush(30) == 0
    group = unique_topic("cli-group")
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    while seen < 20:
        message = consumer.poll(10)
        assert message is not None
        if message.error() is None:
            seen += 1
            consumer.commit(message, asynchronous=False)

    def spate(*args):
        return subprocess.run([SPATE_BIN, "group", *args, "--bootstrap-server", broker.bootstrap],
                              capture_output=True, text=True, timeout=60)

    listed = spate("list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert {"group_id": group, "protocol_type": "consumer", "state": "Stable"} in json.loads(listed.stdout)
    described = spate("describe", group, "--output", "json")
    assert described.returncode == 0, described.stderr
    info = json.loads(described.stdout)
    assert info["state"] == "Stable" and info["assignor"] == "range"
    (member,) = info["members"]
    assert sorted(tuple(p) for p in member["assignment"]) == [(topic, 0), (topic, 1), (topic, 2)]
    assert sum(offset["committed"] for offset in info["offsets"]) == 20
    # Lag per committed partition: its log end offset minus the committed offset.
    consumer_ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in range(3)}
    for offset in info["offsets"]:
        assert offset["end"] == consumer_ends[offset["partition"]]
        assert offset["lag"] == offset["end"] - offset["committed"] >= 0
    table = spate("describe", group)
    assert "LAG" in table.stdout and "Stable" in table.stdout, table.stdout

    refused = spate("delete", group)
    assert refused.returncode == 3 and "NON_EMPTY_GROUP" in refused.stderr
    consumer.close()
    deleted = spate("delete", group)
    assert deleted.returncode == 0, deleted.stderr
    missing = spate("describe", group)
    assert missing.returncode == 3 and "GROUP_ID_NOT_FOUND" in missing.stderr
