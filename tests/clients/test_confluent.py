"""confluent-kafka (librdkafka) against Spate: admin, a 100,000-record round trip with every
compression codec, reads by offset and by timestamp, and the errors clients act on."""

import time

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import (  # noqa: E402
    AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic,
)

from conftest import unique_topic  # noqa: E402

CODECS = ["gzip", "snappy", "lz4", "zstd"]
RECORDS = 100_000


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create_topic(broker, name, partitions, **configs):
    client = admin(broker)  # must outlive the future
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=configs)],
        operation_timeout=10,
    )
    futures[name].result(timeout=30)


def consumer(broker, **extra):
    config = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": "spate-test-no-commits",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }
    config.update(extra)
    return Consumer(config)


def record(i, codec):
    key = f"key-{i % 997}".encode()
    value = (f"value-{i}-" + "x" * (i % 300)).encode()
    headers = [("seq", str(i).encode()), ("codec", codec.encode())]
    return key, value, headers


def test_round_trip_of_100000_records_with_every_codec(strict_broker):
    topic = unique_topic("confluent-roundtrip")
    create_topic(strict_broker, topic, 6)
    base_ts = int(time.time() * 1000) - 1_000_000
    delivered = {}  # (partition, offset) -> record index

    per_codec = RECORDS // len(CODECS)
    for n, codec in enumerate(CODECS):
        producer = Producer({
            "bootstrap.servers": strict_broker.bootstrap,
            "compression.type": codec,
            "linger.ms": 5,
            "acks": "all",
        })
        errors = []

        def on_delivery(index):
            def delivered_one(error, message):
                if error is not None:
                    errors.append(error)
                else:
                    delivered[(message.partition(), message.offset())] = index
            return delivered_one

        for i in range(n * per_codec, (n + 1) * per_codec):
            key, value, headers = record(i, codec)
            while True:
                try:
                    producer.produce(topic, value=value, key=key, headers=headers,
                                     timestamp=base_ts + i, on_delivery=on_delivery(i))
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        assert producer.flush(60) == 0
        assert errors == []
    assert len(delivered) == RECORDS

    reader = consumer(strict_broker)
    reader.assign([TopicPartition(topic, p, 0) for p in range(6)])
    seen = {}
    eof = set()
    while len(eof) < 6:
        message = reader.poll(5)
        assert message is not None, f"stalled after {len(seen)} records"
        if message.error():
            assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
            if len(seen) == RECORDS or all(
                sum(1 for (p, _) in seen if p == part) == sum(1 for (p, _) in delivered if p == part)
                for part in [message.partition()]
            ):
                eof.add(message.partition())
            continue
        at = (message.partition(), message.offset())
        i = delivered[at]
        codec = CODECS[i // per_codec]
        key, value, headers = record(i, codec)
        assert message.key() == key
        assert message.value() == value
        assert message.headers() == headers
        assert message.timestamp() == (confluent_kafka.TIMESTAMP_CREATE_TIME, base_ts + i)
        seen[at] = i
    reader.close()
    assert seen == delivered
    for partition in range(6):
        offsets = sorted(o for (p, o) in seen if p == partition)
        assert offsets == list(range(len(offsets)))
        indexes = [seen[(partition, o)] for o in offsets]
        assert indexes == sorted(indexes), "per-partition order is the order produced"


def produce_values(broker, topic, values, partition=0, timestamps=None):
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for n, value in enumerate(values):
        ts = timestamps[n] if timestamps else 0
        producer.produce(topic, value=value, partition=partition, timestamp=ts)
    assert producer.flush(30) == 0


def consume_values(reader, count, timeout_s=20):
    values = []
    deadline = time.monotonic() + timeout_s
    while len(values) < count and time.monotonic() < deadline:
        message = reader.poll(1)
        if message is None or message.error():
            continue
        values.append((message.offset(), message.value()))
    return values


def test_read_from_an_offset_and_from_a_timestamp(strict_broker):
    topic = unique_topic("confluent-seek")
    create_topic(strict_broker, topic, 1)
    base = 1_700_000_000_000
    produce_values(strict_broker, topic, [str(i).encode() for i in range(100)],
                   timestamps=[base + 10 * i for i in range(100)])
    reader = consumer(strict_broker)
    reader.assign([TopicPartition(topic, 0, 42)])
    assert consume_values(reader, 3)[:3] == [(42, b"42"), (43, b"43"), (44, b"44")]
    found = reader.offsets_for_times([TopicPartition(topic, 0, base + 555)], timeout=10)
    assert found[0].offset == 56
    reader.assign([TopicPartition(topic, 0, found[0].offset)])
    assert consume_values(reader, 1)[0] == (56, b"56")
    low, high = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    assert (low, high) == (0, 100)
    reader.close()


def test_consuming_a_missing_topic_reports_it(strict_broker):
    # Without consumer groups (a later issue) there is no subscribe(); an assigned consumer
    # learns of the missing topic from metadata and from the offset lookup.
    reader = consumer(strict_broker)
    missing = unique_topic("confluent-missing")
    metadata = reader.list_topics(missing, timeout=10)
    assert metadata.topics[missing].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    with pytest.raises(KafkaException) as raised:
        reader.get_watermark_offsets(TopicPartition(missing, 0), timeout=10)
    # librdkafka decides from the metadata, as it does against Kafka.
    assert raised.value.args[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION)
    reader.close()


def test_oversized_record_is_refused(strict_broker):
    topic = unique_topic("confluent-big")
    create_topic(strict_broker, topic, 1, **{"max.message.bytes": "10000"})
    producer = Producer({"bootstrap.servers": strict_broker.bootstrap, "message.max.bytes": 10_000_000})
    errors = []
    producer.produce(topic, value=b"x" * 100_000, on_delivery=lambda error, _: errors.append(error))
    producer.flush(30)
    assert [error.code() for error in errors] == [KafkaError.MSG_SIZE_TOO_LARGE]


def test_producing_to_a_deleted_topic_fails(strict_broker):
    topic = unique_topic("confluent-deleted")
    create_topic(strict_broker, topic, 1)
    client = admin(strict_broker)
    client.delete_topics([topic])[topic].result(timeout=30)
    producer = Producer({
        "bootstrap.servers": strict_broker.bootstrap,
        "message.timeout.ms": 5000,
        "allow.auto.create.topics": False,
    })
    errors = []
    producer.produce(topic, value=b"late", on_delivery=lambda error, _: errors.append(error))
    producer.flush(30)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                                KafkaError._MSG_TIMED_OUT)


def test_admin_client_manages_topics_and_configs(strict_broker):
    client = admin(strict_broker)
    topic = unique_topic("confluent-admin")
    client.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                                   config={"retention.ms": "3600000"})])[topic].result(timeout=30)
    assert topic in client.list_topics(timeout=10).topics
    assert len(client.list_topics(topic, timeout=10).topics[topic].partitions) == 3

    duplicate = client.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic]
    with pytest.raises(KafkaException) as raised:
        duplicate.result(timeout=30)
    assert raised.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    too_replicated = client.create_topics([NewTopic(unique_topic("rf"), 1, 3)])
    with pytest.raises(KafkaException) as raised:
        list(too_replicated.values())[0].result(timeout=30)
    assert raised.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR

    bad_name = client.create_topics([NewTopic("bad/name", 1, 1)])["bad/name"]
    with pytest.raises(KafkaException) as raised:
        bad_name.result(timeout=30)
    assert raised.value.args[0].code() == KafkaError.TOPIC_EXCEPTION

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = client.describe_configs([resource])[resource].result(timeout=30)
    assert described["retention.ms"].value == "3600000"
    assert described["segment.bytes"].value == "1073741824"

    change = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", "20000", incremental_operation=AlterConfigOpType.SET),
    ])
    client.incremental_alter_configs([change])[change].result(timeout=30)
    described = client.describe_configs([resource])[resource].result(timeout=30)
    assert described["retention.ms"].value == "60000"
    assert described["max.message.bytes"].value == "20000"

    bad = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as raised:
        client.incremental_alter_configs([bad])[bad].result(timeout=30)
    assert raised.value.args[0].code() == KafkaError.INVALID_CONFIG

    client.create_partitions([NewPartitions(topic, 5)])[topic].result(timeout=30)
    assert len(client.list_topics(topic, timeout=10).topics[topic].partitions) == 5
    with pytest.raises(KafkaException) as raised:
        client.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=30)
    assert raised.value.args[0].code() == KafkaError.INVALID_PARTITIONS

    produce_values(strict_broker, topic, [b"a", b"b", b"c", b"d"], partition=4)
    deleted = client.delete_records([TopicPartition(topic, 4, 2)])
    result = list(deleted.values())[0].result(timeout=30)
    assert result.low_watermark == 2
    reader = consumer(strict_broker)
    low, high = reader.get_watermark_offsets(TopicPartition(topic, 4), timeout=10)
    reader.close()
    assert (low, high) == (2, 4)

    client.delete_topics([topic])[topic].result(timeout=30)
    deadline = time.monotonic() + 10
    while topic in client.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    assert topic not in client.list_topics(timeout=10).topics
