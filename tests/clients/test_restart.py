"""Stopping and starting the broker keeps every topic and record; a second broker on the same
data directory is refused."""

import subprocess

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from conftest import SPATE_BIN, Broker  # noqa: E402


def test_restart_keeps_topics_and_data(tmp_path):
    broker = Broker(tmp_path / "data").start()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 2})
    for i in range(5000):
        producer.produce("restart-topic", key=str(i % 7).encode(), value=f"v{i}".encode())
        producer.poll(0)
    assert producer.flush(30) == 0
    del producer
    assert broker.stop() == 0, broker.log()

    broker.start()
    try:
        reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "restart",
                           "enable.auto.commit": False})
        metadata = reader.list_topics("restart-topic", timeout=10)
        assert metadata.topics["restart-topic"].error is None
        reader.assign([TopicPartition("restart-topic", 0, 0)])
        values = []
        while len(values) < 5000:
            message = reader.poll(10)
            assert message is not None, f"only {len(values)} records after restart"
            if not message.error():
                values.append(message.value())
        assert values == [f"v{i}".encode() for i in range(5000)]
        reader.close()
    finally:
        assert broker.stop() == 0, broker.log()


def test_second_broker_on_the_same_data_dir_is_refused(tmp_path):
    broker = Broker(tmp_path / "data").start()
    try:
        second = Broker(tmp_path / "data")
        result = subprocess.run(second.command(), capture_output=True, timeout=30)
        assert result.returncode != 0
        assert b"another Spate broker is using the data directory" in result.stderr
    finally:
        assert broker.stop() == 0


def test_serve_help_lists_every_setting():
    help_text = subprocess.run([SPATE_BIN, "serve", "--help"], capture_output=True, check=True).stdout
    for flag in [b"--listen", b"--data-dir", b"--cores", b"--config", b"--metrics-listen",
                 b"--socket-request-max-bytes", b"--max-connections", b"--topic-default"]:
        assert flag in help_text
