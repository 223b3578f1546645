"""spate.EmbeddedBroker: brokers inside the Python process."""

import os
import socket

import pytest

import spate


def test_several_brokers_run_in_one_process_on_different_ports(tmp_path):
    with spate.EmbeddedBroker() as first, spate.EmbeddedBroker(tmp_path / "second") as second:
        assert first.port != second.port
        for broker, value in [(first, b"one"), (second, b"two")]:
            with spate.Producer(broker.bootstrap_servers) as producer:
                producer.send("shared-name", value).result(timeout=10)
        for broker, value in [(first, b"one"), (second, b"two")]:
            with spate.Consumer(broker.bootstrap_servers, topics=["shared-name"],
                                auto_offset_reset="earliest") as consumer:
                assert [r.value for r in consumer.poll(timeout_ms=5000)] == [value]
        temporary = first.data_dir
        assert temporary.is_dir()
    assert not temporary.exists(), "a temporary data directory is removed on stop"
    assert (tmp_path / "second").is_dir(), "a given data directory is kept"
    assert not first.running


def test_data_survives_a_restart_in_the_given_directory(tmp_path):
    with spate.EmbeddedBroker(tmp_path) as broker:
        with spate.Producer(broker.bootstrap_servers) as producer:
            producer.send("kept", b"durable").result(timeout=10)
    with spate.EmbeddedBroker(str(tmp_path)) as broker:
        with spate.Consumer(broker.bootstrap_servers, topics=["kept"],
                            auto_offset_reset="earliest") as consumer:
            assert [r.value for r in consumer.poll(timeout_ms=5000)] == [b"durable"]


def test_fixed_port_and_settings(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with spate.EmbeddedBroker(port=port, num_partitions=3, auto_create_topics=True,
                              topic_defaults={"log.retention.ms": 60_000}) as broker:
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        with spate.Producer(broker.bootstrap_servers) as producer:
            producer.send("auto", b"x").result(timeout=10)
        with spate.Admin(broker.bootstrap_servers) as admin:
            assert len(admin.describe_topic("auto")["partitions"]) == 3
        # The port is taken while it runs.
        with pytest.raises(spate.BrokerError, match="cannot listen"):
            spate.EmbeddedBroker(port=port)
        # So is the data directory, by a lock.
        with pytest.raises(spate.BrokerError, match="another Spate broker"):
            spate.EmbeddedBroker(data_dir=broker.data_dir)


def test_unknown_and_ill_typed_settings_are_config_errors():
    with pytest.raises(spate.ConfigError, match="no_such_setting"):
        spate.EmbeddedBroker(no_such_setting=1)
    with pytest.raises(spate.ConfigError, match="num_partitions"):
        spate.EmbeddedBroker(num_partitions="many")


def test_stop_is_idempotent_and_repr_says_so():
    broker = spate.EmbeddedBroker()
    assert "stopped" not in repr(broker)
    broker.stop()
    broker.stop()
    assert "stopped" in repr(broker)
    assert not os.path.exists(broker.data_dir)


def test_a_broker_never_stopped_is_stopped_at_exit(tmp_path):
    import subprocess
    import sys

    kept = tmp_path / "kept"
    script = (
        "import spate\n"
        "temporary = spate.EmbeddedBroker()\n"
        f"kept = spate.EmbeddedBroker({str(kept)!r})\n"
        "with spate.Producer(kept.bootstrap_servers) as producer:\n"
        "    producer.send('t', b'x').result(timeout=10)\n"
        "print(temporary.data_dir)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    temporary = result.stdout.strip()
    assert temporary and not os.path.exists(temporary), "the temporary directory is removed"
    # The kept broker kept what was acknowledged.
    with spate.EmbeddedBroker(kept) as again:
        with spate.Consumer(again.bootstrap_servers, topics=["t"],
                            auto_offset_reset="earliest") as consumer:
            assert [r.value for r in consumer.poll(timeout_ms=5000)] == [b"x"]
