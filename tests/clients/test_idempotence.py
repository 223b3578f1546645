"""Idempotent producers of real clients against Spate: librdkafka (confluent-kafka) and
kafka-python ask InitProducerId for a producer id, send sequenced batches with up to five in
flight, and every record arrives exactly once, in order per partition, also across a broker
restart in the middle of producing."""

import re
import time

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka = pytest.importorskip("kafka")
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from conftest import Broker, unique_topic  # noqa: E402

PARTITIONS = 4


def create_topic(broker, name):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = client.create_topics(
        [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)], operation_timeout=10)
    futures[name].result(timeout=30)


def read_all(broker, topic, expected, timeout_s=60):
    """Every record of `topic` as (partition, key, value), until `expected` arrived or the
    partitions stay at their ends for a while after the deadline."""
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": "idempotence-reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            seen.append((message.partition(), message.key().decode(), message.value().decode()))
        # Anything past the expected count would be a duplicate: give it time to show up.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                seen.append((message.partition(), message.key().decode(), message.value().decode()))
    finally:
        consumer.close()
    return seen


def check_exactly_once_in_order(seen, count):
    values = [value for _, _, value in seen]
    assert len(values) == count, f"{len(values)} records read, {count} sent"
    assert sorted(values, key=lambda value: int(value.split("-")[1])) == \
        [f"v-{i}" for i in range(count)], "every record once"
    # Records of one key go to one partition and arrive in the order they were sent.
    last_by_key = {}
    for partition, key, value in seen:
        number = int(value.split("-")[1])
        previous = last_by_key.get(key)
        assert previous is None or previous[0] == partition, f"{key} on two partitions"
        assert previous is None or previous[1] < number, f"{key}: {number} after {previous[1]}"
        last_by_key[key] = (partition, number)


def init_producer_id_requests(broker):
    found = re.search(r'spate_requests_total\{api="InitProducerId"\} (\d+)', broker.metrics())
    return int(found.group(1)) if found else 0


def test_librdkafka_idempotent_producer_delivers_each_record_once(strict_broker):
    topic = unique_topic("idempotent-librdkafka")
    create_topic(strict_broker, topic)
    before = init_producer_id_requests(strict_broker)
    producer = Producer({
        "bootstrap.servers": strict_broker.bootstrap,
        "enable.idempotence": True,
        "linger.ms": 2,
        "batch.num.messages": 50,
        "max.in.flight.requests.per.connection": 5,
    })
    errors = []

    def delivered(error, _message):
        if error is not None:
            errors.append(error)

    count = 20_000
    for i in range(count):
        producer.produce(topic, key=f"key-{i % 101}", value=f"v-{i}", on_delivery=delivered)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == []
    assert init_producer_id_requests(strict_broker) > before, "the producer asked for an id"
    check_exactly_once_in_order(read_all(strict_broker, topic, count), count)


def test_kafka_python_idempotent_producer_delivers_each_record_once(strict_broker):
    topic = unique_topic("idempotent-kafka-python")
    create_topic(strict_broker, topic)
    before = init_producer_id_requests(strict_broker)
    producer = KafkaProducer(bootstrap_servers=strict_broker.bootstrap, enable_idempotence=True,
                             acks="all", linger_ms=2)
    count = 5_000
    futures = [producer.send(topic, key=f"key-{i % 101}".encode(), value=f"v-{i}".encode())
               for i in range(count)]
    producer.flush(timeout=60)
    for future in futures:
        future.get(timeout=30)
    producer.close()
    assert init_producer_id_requests(strict_broker) > before, "the producer asked for an id"
    check_exactly_once_in_order(read_all(strict_broker, topic, count), count)


def test_librdkafka_idempotent_producer_across_a_broker_restart(tmp_path):
    """The broker stops (SIGTERM) and comes back on the same port while an idempotent producer
    keeps sending: requests in flight are retried, and none is stored twice."""
    broker = Broker(tmp_path / "data").start()
    try:
        topic = unique_topic("idempotent-restart")
        create_topic(broker, topic)
        producer = Producer({
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        })
        errors = []

        def delivered(error, _message):
            if error is not None:
                errors.append(error)

        count = 6_000
        for i in range(count):
            producer.produce(topic, key=f"key-{i % 53}", value=f"v-{i}", on_delivery=delivered)
            producer.poll(0)
            if i == count // 2:
                assert broker.stop() == 0, broker.log()
                broker.start()
        assert producer.flush(120) == 0
        assert errors == []
        check_exactly_once_in_order(read_all(broker, topic, count), count)
    finally:
        assert broker.stop() == 0, broker.log()


def test_spates_own_clients_are_idempotent_by_default(strict_broker):
    """The `spate` command line and the `spate` Python package produce through Spate's client
    library, which turns idempotence on by default with acks=all (as the Java client)."""
    import subprocess

    from conftest import SPATE_BIN

    topic = unique_topic("idempotent-spate")
    create_topic(strict_broker, topic)
    before = init_producer_id_requests(strict_broker)
    produced = subprocess.run(
        [SPATE_BIN, "produce", topic, "--bootstrap-server", strict_broker.bootstrap],
        input="".join(f"v-{i}\n" for i in range(100)), capture_output=True, text=True,
        timeout=120)
    assert produced.returncode == 0, produced.stderr
    after_cli = init_producer_id_requests(strict_broker)
    assert after_cli > before, "spate produce asked for a producer id"

    spate = pytest.importorskip("spate")
    with spate.Producer(strict_broker.bootstrap) as producer:
        for i in range(100, 200):
            producer.send(topic, f"v-{i}", key=f"key-{i % 7}".encode())
        producer.flush(timeout=30)
    assert init_producer_id_requests(strict_broker) > after_cli, "spate.Producer asked too"
    with pytest.raises(spate.ConfigError):
        spate.Producer(strict_broker.bootstrap, acks="1", enable_idempotence=True)
