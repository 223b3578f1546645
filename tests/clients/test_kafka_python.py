"""kafka-python against Spate: the 100,000-record round trip with every codec, reads by offset
and by timestamp, and the errors clients act on.

kafka-python 3 turns idempotence on by default (InitProducerId, sequenced batches): the round
trip keeps that default; the other tests turn it off where they test something else."""

import time

import pytest

kafka = pytest.importorskip("kafka")
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402
from kafka.errors import (  # noqa: E402
    KafkaTimeoutError, MessageSizeTooLargeError, TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

from conftest import unique_topic  # noqa: E402

CODECS = ["gzip", "snappy", "lz4", "zstd"]
RECORDS = 100_000


def create_topic(broker, name, partitions, configs=None):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
    finally:
        admin.close()


def record(i, codec):
    key = f"key-{i % 991}".encode()
    value = (f"kp-value-{i}-" + "y" * (i % 250)).encode()
    headers = [("seq", str(i).encode()), ("codec", codec.encode())]
    return key, value, headers


def assigned_consumer(broker, partitions):
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )
    consumer.assign(partitions)
    return consumer


def test_round_trip_of_100000_records_with_every_codec(strict_broker):
    topic = unique_topic("kafka-python-roundtrip")
    create_topic(strict_broker, topic, 6)
    base_ts = int(time.time() * 1000) - 2_000_000
    delivered = {}
    per_codec = RECORDS // len(CODECS)
    for n, codec in enumerate(CODECS):
        producer = KafkaProducer(bootstrap_servers=strict_broker.bootstrap,
                                 compression_type=codec, linger_ms=5, acks="all")
        futures = []
        for i in range(n * per_codec, (n + 1) * per_codec):
            key, value, headers = record(i, codec)
            futures.append((i, producer.send(topic, value=value, key=key, headers=headers,
                                             timestamp_ms=base_ts + i)))
        producer.flush(timeout=120)
        for i, future in futures:
            metadata = future.get(timeout=60)
            delivered[(metadata.partition, metadata.offset)] = i
        producer.close()
    assert len(delivered) == RECORDS

    consumer = assigned_consumer(strict_broker, [TopicPartition(topic, p) for p in range(6)])
    seen = {}
    for message in consumer:
        at = (message.partition, message.offset)
        i = delivered[at]
        key, value, headers = record(i, CODECS[i // per_codec])
        assert (message.key, message.value) == (key, value)
        assert list(message.headers) == headers
        assert message.timestamp == base_ts + i
        seen[at] = i
        if len(seen) == RECORDS:
            break
    consumer.close()
    assert seen == delivered
    for partition in range(6):
        offsets = sorted(o for (p, o) in seen if p == partition)
        assert offsets == list(range(len(offsets)))
        indexes = [seen[(partition, o)] for o in offsets]
        assert indexes == sorted(indexes)


def test_read_from_an_offset_and_from_a_timestamp(strict_broker):
    topic = unique_topic("kafka-python-seek")
    create_topic(strict_broker, topic, 1)
    base = 1_600_000_000_000
    producer = KafkaProducer(bootstrap_servers=strict_broker.bootstrap, enable_idempotence=False)
    for i in range(100):
        producer.send(topic, value=str(i).encode(), partition=0, timestamp_ms=base + 10 * i)
    producer.flush(timeout=30)
    producer.close()
    partition = TopicPartition(topic, 0)
    consumer = assigned_consumer(strict_broker, [partition])
    consumer.seek(partition, 42)
    first = next(consumer)
    assert (first.offset, first.value) == (42, b"42")
    found = consumer.offsets_for_times({partition: base + 555})[partition]
    assert (found.offset, found.timestamp) == (56, base + 560)
    assert consumer.beginning_offsets([partition])[partition] == 0
    assert consumer.end_offsets([partition])[partition] == 100
    consumer.seek(partition, found.offset)
    assert next(consumer).value == b"56"
    consumer.close()


def test_errors_clients_act_on(strict_broker):
    topic = unique_topic("kafka-python-errors")
    create_topic(strict_broker, topic, 1, {"max.message.bytes": "10000"})
    with pytest.raises(TopicAlreadyExistsError):
        create_topic(strict_broker, topic, 1)

    producer = KafkaProducer(bootstrap_servers=strict_broker.bootstrap, max_request_size=10_000_000,
                             enable_idempotence=False,
                             max_block_ms=5000)
    with pytest.raises(MessageSizeTooLargeError):
        producer.send(topic, value=b"z" * 100_000).get(timeout=30)
    # A topic that does not exist (and is not created on demand): the producer times out
    # waiting for its metadata, as it does against Kafka.
    with pytest.raises((KafkaTimeoutError, UnknownTopicOrPartitionError)):
        producer.send(unique_topic("kafka-python-missing"), value=b"v").get(timeout=30)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=strict_broker.bootstrap)
    assert not consumer.partitions_for_topic(unique_topic("kafka-python-missing"))
    consumer.close()
