#!/usr/bin/env python3
"""A librdkafka (confluent-kafka) load generator for benches/broker-vs-baselines.sh.

    broker-load.py produce  BOOTSTRAP TOPIC --records N --size B [--acks 1]
    broker-load.py latency  BOOTSTRAP TOPIC --rate R --seconds S --size B [--acks 1]
    broker-load.py consume  BOOTSTRAP TOPIC --partitions P --records N
    broker-load.py sync     BOOTSTRAP TOPIC --records N --size B [--acks 1]

Each prints one JSON object. Latency is measured from when each record was due to be sent at
the fixed rate (not from when the send call returned), so that a stalled broker shows up in the
percentiles instead of slowing the sender (coordinated omission corrected)."""

import argparse
import json
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def producer(bootstrap, acks, linger_ms):
    return Producer({
        "bootstrap.servers": bootstrap,
        "acks": str(acks),
        "linger.ms": linger_ms,
        "batch.size": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "queue.buffering.max.messages": 1_000_000,
        "compression.type": "none",
        "enable.idempotence": False,
    })


def produce(args):
    client = producer(args.bootstrap, args.acks, 5)
    value = b"x" * args.size
    failed = []

    def on_delivery(error, _message):
        if error is not None:
            failed.append(error)

    started = time.perf_counter()
    for _ in range(args.records):
        while True:
            try:
                client.produce(args.topic, value, on_delivery=on_delivery)
                break
            except BufferError:
                client.poll(0.001)
        client.poll(0)
    assert client.flush(300) == 0
    elapsed = time.perf_counter() - started
    assert not failed, failed[:3]
    print(json.dumps({
        "records": args.records,
        "seconds": elapsed,
        "mb_per_s": args.records * args.size / elapsed / 1e6,
        "records_per_s": args.records / elapsed,
    }))


def percentile(sorted_values, fraction):
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def latency(args):
    client = producer(args.bootstrap, args.acks, 0)
    value = b"y" * args.size
    latencies_ms = []
    failed = []
    interval = 1.0 / args.rate
    total = int(args.rate * args.seconds)
    started = time.perf_counter()

    def on_delivery_for(due):
        def on_delivery(error, _message):
            if error is not None:
                failed.append(error)
            else:
                latencies_ms.append((time.perf_counter() - due) * 1000)
        return on_delivery

    for i in range(total):
        due = started + i * interval
        while True:
            now = time.perf_counter()
            if now >= due:
                break
            client.poll(min(due - now, 0.0005))
        client.produce(args.topic, value, on_delivery=on_delivery_for(due))
        client.poll(0)
    assert client.flush(60) == 0
    assert not failed, failed[:3]
    latencies_ms.sort()
    print(json.dumps({
        "rate": args.rate,
        "records": total,
        "p50_ms": percentile(latencies_ms, 0.50),
        "p99_ms": percentile(latencies_ms, 0.99),
        "p999_ms": percentile(latencies_ms, 0.999),
        "max_ms": latencies_ms[-1],
    }))


def sync(args):
    """One record at a time, each flushed before the next: the round trip of one produce
    request through the client and the broker, with nothing queued."""
    client = producer(args.bootstrap, args.acks, 0)
    value = b"z" * args.size
    client.produce(args.topic, value)
    assert client.flush(30) == 0
    latencies_ms = []
    for _ in range(args.records):
        started = time.perf_counter()
        client.produce(args.topic, value)
        assert client.flush(30) == 0
        latencies_ms.append((time.perf_counter() - started) * 1000)
    latencies_ms.sort()
    print(json.dumps({
        "records": args.records,
        "p50_ms": percentile(latencies_ms, 0.50),
        "p99_ms": percentile(latencies_ms, 0.99),
        "p999_ms": percentile(latencies_ms, 0.999),
        "max_ms": latencies_ms[-1],
    }))


def consume(args):
    client = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "spate-bench",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "queued.max.messages.kbytes": 1_048_576,
    })
    client.assign([TopicPartition(args.topic, p, 0) for p in range(args.partitions)])
    count = 0
    size = 0
    started = time.perf_counter()
    while count < args.records:
        for message in client.consume(num_messages=10_000, timeout=10):
            if message.error():
                continue
            count += 1
            size += len(message.value())
    elapsed = time.perf_counter() - started
    client.close()
    print(json.dumps({"records": count, "seconds": elapsed, "mb_per_s": size / elapsed / 1e6}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("produce", "latency", "consume", "sync"):
        command = commands.add_parser(name)
        command.add_argument("bootstrap")
        command.add_argument("topic")
        command.add_argument("--records", type=int, default=1_000_000)
        command.add_argument("--size", type=int, default=1024)
        command.add_argument("--acks", default="1")
        command.add_argument("--rate", type=float, default=10_000)
        command.add_argument("--seconds", type=float, default=10)
        command.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    {"produce": produce, "latency": latency, "consume": consume, "sync": sync}[args.command](args)


if __name__ == "__main__":
    main()
