"""Transactions of real clients against Spate: librdkafka's (confluent-kafka) transactional
producer, read by read_committed and read_uncommitted consumers of confluent-kafka and
kafka-python; offsets sent to the transaction (consume-transform-produce); zombie fencing;
transaction timeouts; and a consume-transform-produce job killed with SIGKILL and restarted
over and over, with the broker restarted too, whose output holds each input exactly once."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka = pytest.importorskip("kafka")
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kafka import KafkaConsumer  # noqa: E402

from conftest import Broker, unique_topic  # noqa: E402

PARTITIONS = 3
WORKER = pathlib.Path(__file__).with_name("eos_worker.py")


def create_topics(broker, *names):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = client.create_topics(
        [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1) for name in names],
        operation_timeout=10)
    for name in names:
        futures[name].result(timeout=30)


def read_confluent(broker, topic, isolation, quiet_s=3.0, timeout_s=60):
    """Every value of `topic` a confluent-kafka consumer with `isolation` reads, until nothing
    new came for `quiet_s`."""
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": f"reader-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": isolation,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    values = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last_new < quiet_s:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            values.append(message.value().decode())
            last_new = time.monotonic()
    finally:
        consumer.close()
    return values


def read_kafka_python(broker, topic, isolation):
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        isolation_level=isolation,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=4000,
    )
    consumer.assign([kafka.TopicPartition(topic, p) for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    try:
        return [message.value.decode() for message in consumer]
    finally:
        consumer.close()


def transactional_producer(broker, transactional_id, **extra):
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "transactional.id": transactional_id,
        **extra,
    })
    producer.init_transactions(30)
    return producer


def test_read_committed_consumers_see_committed_records_and_never_aborted_ones(broker):
    topic = unique_topic("txn")
    create_topics(broker, topic)
    producer = transactional_producer(broker, f"{topic}-producer")
    expected_committed = []
    aborted = []
    for round_index in range(6):
        producer.begin_transaction()
        values = [f"r{round_index}-{i}" for i in range(30)]
        for i, value in enumerate(values):
            producer.produce(topic, key=str(i).encode(), value=value.encode())
        if round_index % 3 == 2:
            producer.flush()
            producer.abort_transaction(30)
            aborted.extend(values)
        else:
            producer.commit_transaction(30)
            expected_committed.extend(values)

    committed_seen = read_confluent(broker, topic, "read_committed")
    assert sorted(committed_seen) == sorted(expected_committed)
    everything = read_confluent(broker, topic, "read_uncommitted")
    assert sorted(everything) == sorted(expected_committed + aborted)

    assert sorted(read_kafka_python(broker, topic, "read_committed")) == sorted(expected_committed)
    assert sorted(read_kafka_python(broker, topic, "read_uncommitted")) == sorted(
        expected_committed + aborted)


def test_an_open_transaction_holds_read_committed_consumers_back(broker):
    topic = unique_topic("txn-open")
    create_topics(broker, topic)
    producer = transactional_producer(broker, f"{topic}-producer")
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"open")
    producer.flush()
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(topic, key=b"k", value=b"after")
    plain.flush()
    # Same key, same partition: the plain record follows the open transaction's and waits for
    # it under read_committed.
    assert read_confluent(broker, topic, "read_committed", quiet_s=2) == []
    assert sorted(read_confluent(broker, topic, "read_uncommitted")) == ["after", "open"]
    producer.commit_transaction(30)
    assert read_confluent(broker, topic, "read_committed") == ["open", "after"]


def test_a_new_producer_with_the_same_transactional_id_fences_the_old_one(broker):
    topic = unique_topic("txn-fence")
    create_topics(broker, topic)
    transactional_id = f"{topic}-producer"
    zombie = transactional_producer(broker, transactional_id)
    zombie.begin_transaction()
    zombie.produce(topic, key=b"k", value=b"zombie")
    zombie.flush()

    successor = transactional_producer(broker, transactional_id)
    successor.begin_transaction()
    successor.produce(topic, key=b"k", value=b"successor")
    successor.commit_transaction(30)

    with pytest.raises(KafkaException) as fenced:
        zombie.produce(topic, key=b"k", value=b"zombie-again")
        zombie.commit_transaction(30)
    assert fenced.value.args[0].fatal() or fenced.value.args[0].txn_requires_abort(), fenced.value
    assert read_confluent(broker, topic, "read_committed") == ["successor"]


def test_a_transaction_past_its_timeout_is_aborted(broker):
    topic = unique_topic("txn-timeout")
    create_topics(broker, topic)
    stalled = transactional_producer(
        broker, f"{topic}-stalled", **{"transaction.timeout.ms": 2000})
    stalled.begin_transaction()
    stalled.produce(topic, key=b"k", value=b"stalled")
    stalled.flush()
    time.sleep(5)
    # The coordinator aborted it: the partition's last stable offset moved on.
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(topic, key=b"k", value=b"later")
    plain.flush()
    assert read_confluent(broker, topic, "read_committed") == ["later"]
    with pytest.raises(KafkaException):
        stalled.commit_transaction(30)


def committed_offsets(broker, group, topic):
    """The group's stable committed offsets. A read_committed consumer (librdkafka's default)
    asks with require_stable and gets UNSTABLE_OFFSET_COMMIT while a transaction holds
    offsets of the group pending: a job incarnation killed between send_offsets_to_transaction
    and its commit leaves them pending until its transaction times out (a minute), as in
    Kafka. read_uncommitted reads the stable offsets without waiting."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "isolation.level": "read_uncommitted"})
    try:
        partitions = consumer.committed(
            [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
        return {tp.partition: tp.offset for tp in partitions}
    finally:
        consumer.close()


def produce_inputs(broker, topic, count):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, key=str(i).encode(), value=f"in-{i}".encode())
    assert producer.flush(30) == 0


def input_ends(broker, topic):
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ends"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def test_offsets_sent_to_a_transaction_commit_with_it_and_survive_a_restart(tmp_path):
    broker = Broker(tmp_path / "data").start()
    try:
        source, sink, group = "eos-in", "eos-out", "eos-group"
        create_topics(broker, source, sink)
        produce_inputs(broker, source, 90)
        consumer = Consumer({
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        })
        consumer.subscribe([source])
        producer = transactional_producer(broker, "eos-transformer")
        done = 0
        aborted_once = False
        deadline = time.monotonic() + 60
        while done < 90 and time.monotonic() < deadline:
            messages = [m for m in consumer.consume(30, 1.0) if not m.error()]
            if not messages:
                continue
            producer.begin_transaction()
            for message in messages:
                producer.produce(sink, key=message.key(), value=b"out-" + message.value())
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30)
            if not aborted_once:
                # The first batch is aborted: neither its records nor its offsets count, so the
                # consumer goes back to where the group's committed offsets are.
                producer.abort_transaction(30)
                aborted_once = True
                committed = consumer.committed(consumer.assignment(), timeout=30)
                for tp in committed:
                    tp.offset = tp.offset if tp.offset >= 0 else 0
                    consumer.seek(tp)
                continue
            producer.commit_transaction(30)
            done += len(messages)
        consumer.close()
        assert done == 90
        assert committed_offsets(broker, group, source) == input_ends(broker, source)

        assert broker.stop() == 0, broker.log()
        broker.start()
        assert committed_offsets(broker, group, source) == input_ends(broker, source)
        out = read_confluent(broker, sink, "read_committed")
        assert sorted(out) == sorted(f"out-in-{i}" for i in range(90))
    finally:
        broker.stop()


def test_a_consume_transform_produce_job_killed_and_restarted_outputs_each_input_once(tmp_path):
    broker = Broker(tmp_path / "data").start()
    worker = None
    try:
        source, sink = "job-in", "job-out"
        create_topics(broker, source, sink)
        count = 3000
        produce_inputs(broker, source, count)
        ends = input_ends(broker, source)

        def start_worker():
            return subprocess.Popen(
                [sys.executable, str(WORKER), broker.bootstrap, source, sink],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "ab"))

        kills = 0
        broker_restarted = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            worker = start_worker()
            time.sleep(2.0 + 0.5 * kills)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
            if kills == 3 and not broker_restarted:
                # The broker goes down under the job too (the job was killed first, so its
                # open transaction is aborted by the new incarnation's InitProducerId).
                assert broker.stop() == 0, broker.log()
                broker.start()
                broker_restarted = True
            if kills >= 6:
                break
        # The job was killed part-way: some of the input is done, not all.
        progress = sum(max(offset, 0) for offset in committed_offsets(broker, "job-group", source).values())
        assert 0 < progress < count, f"{progress} of {count} inputs done after the kills"
        # Then it runs to the end.
        worker = start_worker()
        while time.monotonic() < deadline:
            if committed_offsets(broker, "job-group", source) == ends:
                break
            time.sleep(1)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert kills >= 6 and broker_restarted
        assert committed_offsets(broker, "job-group", source) == ends
        out = read_confluent(broker, sink, "read_committed", quiet_s=4)
        assert len(out) == count, f"{len(out)} outputs for {count} inputs"
        assert sorted(out) == sorted(f"out-in-{i}" for i in range(count))
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        broker.stop()
