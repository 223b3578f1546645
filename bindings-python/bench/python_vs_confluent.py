#!/usr/bin/env python3
"""Python producer and consumer throughput: the spate package next to confluent-kafka
(librdkafka), in one run, against the same broker, with 1 KiB values.

    python3 bindings-python/bench/python_vs_confluent.py [--records N] [--bootstrap HOST:PORT]

Without --bootstrap it starts `spate serve` (target/release/spate, or $SPATE_BIN) on a free
port with its data in a temporary directory. Each client produces N records to a topic of
its own (acks=1, linger.ms=5, no compression), then reads them back from the start (no
group); the figures are records and MiB per second, and spate's as a ratio of
confluent-kafka's. Rounds alternate between the clients so that drift on a noisy machine
hits both.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import confluent_kafka

import spate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VALUE = bytes(range(256)) * 4  # 1 KiB


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_broker():
    binary = os.environ.get("SPATE_BIN") or os.path.join(REPO, "target", "release", "spate")
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: cargo build --release --bin spate")
    data = tempfile.mkdtemp(prefix="spate-pybench-")
    port = free_port()
    process = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, data, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit("spate serve did not start")


def spate_produce(servers, topic, records):
    with spate.Producer(servers, acks=1, linger_ms=5) as producer:
        started = time.perf_counter()
        for _ in range(records):
            producer.send(topic, VALUE, partition=0)
        producer.flush()
        return time.perf_counter() - started


def confluent_produce(servers, topic, records):
    producer = confluent_kafka.Producer({
        "bootstrap.servers": servers, "acks": 1, "linger.ms": 5,
        "queue.buffering.max.messages": 1_000_000,
    })
    started = time.perf_counter()
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, VALUE, partition=0)
                break
            except BufferError:
                producer.poll(0.001)
    producer.flush()
    return time.perf_counter() - started


def spate_consume(servers, topic, records):
    with spate.Consumer(servers, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        started = time.perf_counter()
        seen = 0
        while seen < records:
            for record in consumer.poll(timeout_ms=1000, max_records=500):
                assert len(record.value) == len(VALUE)
                seen += 1
        return time.perf_counter() - started


def confluent_consume(servers, topic, records):
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": servers, "group.id": f"bench-{topic}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    started = time.perf_counter()
    seen = 0
    while seen < records:
        for message in consumer.consume(num_messages=500, timeout=1):
            if message.error():
                continue
            assert len(message.value()) == len(VALUE)
            seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    process = data = None
    servers = args.bootstrap
    if servers is None:
        process, data, servers = start_broker()
    try:
        best = {}
        for round_index in range(args.rounds):
            for client, produce, consume in [
                ("spate", spate_produce, spate_consume),
                ("confluent-kafka", confluent_produce, confluent_consume),
            ]:
                topic = f"pybench-{client}-{round_index}-{os.getpid()}"
                with spate.Admin(servers) as admin:
                    admin.create_topic(topic, num_partitions=1)
                produce_s = produce(servers, topic, args.records)
                consume_s = consume(servers, topic, args.records)
                for what, seconds in [("produce", produce_s), ("consume", consume_s)]:
                    rate = args.records / seconds
                    best[(client, what)] = max(best.get((client, what), 0), rate)
        mib = len(VALUE) / (1 << 20)
        print(f"{args.records} records of 1 KiB, best of {args.rounds} rounds, one partition")
        print(f"{'':10} {'spate rec/s':>12} {'MiB/s':>8} {'confluent rec/s':>16} {'MiB/s':>8} {'ratio':>7}")
        for what in ("produce", "consume"):
            ours = best[("spate", what)]
            theirs = best[("confluent-kafka", what)]
            print(f"{what:10} {ours:12.0f} {ours * mib:8.1f} {theirs:16.0f} {theirs * mib:8.1f} "
                  f"{ours / theirs:7.0%}")
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
