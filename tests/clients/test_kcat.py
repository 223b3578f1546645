"""kcat (librdkafka's command line client) against Spate."""

import shutil
import subprocess

import pytest

from conftest import unique_topic

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")


def kcat(broker, *args, input=None):
    return subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=input, capture_output=True, timeout=60, check=True,
    )


def test_metadata_lists_the_broker_and_topics(broker):
    topic = unique_topic("kcat-meta")
    kcat(broker, "-P", "-t", topic, input=b"one\n")
    listing = kcat(broker, "-L").stdout.decode()
    assert f"broker 1 at {broker.bootstrap}" in listing
    assert f'topic "{topic}" with 1 partitions' in listing


def test_produce_and_consume_with_keys_and_headers(broker):
    topic = unique_topic("kcat-data")
    lines = [f"key-{i}:value {i}" for i in range(50)]
    kcat(broker, "-P", "-t", topic, "-K:", "-H", "source=kcat", "-H", "n=1",
         input=("\n".join(lines) + "\n").encode())
    out = kcat(broker, "-C", "-t", topic, "-e", "-f", r"%o|%k|%s|%h\n").stdout.decode()
    rows = [line.split("|") for line in out.splitlines() if line]
    assert [int(row[0]) for row in rows] == list(range(50))
    assert [f"{row[1]}:{row[2]}" for row in rows] == lines
    assert all(row[3] == "source=kcat,n=1" for row in rows)


def test_consume_from_an_offset(broker):
    topic = unique_topic("kcat-offset")
    kcat(broker, "-P", "-t", topic, input=("\n".join(str(i) for i in range(10)) + "\n").encode())
    out = kcat(broker, "-C", "-t", topic, "-o", "7", "-e", "-f", r"%s\n").stdout.decode()
    assert out.split() == ["7", "8", "9"]
