#!/usr/bin/env bash
# Transactional produce against idempotent produce, measured in the same run on the same
# broker with librdkafka (confluent-kafka): 1 KiB records with acks=all to fresh
# one-partition topics, an idempotent producer and a transactional one committing every
# TXN_RECORDS records, in alternating rounds. Prints a markdown row per round (throughput of
# each, their ratio, and the transactional producer's commit_transaction latency p50/p99,
# which includes sending the transaction's last records) and the medians.
#
#   benches/transactions.sh [DIR]
#
# DIR holds the broker's data (default ./bench-data).
#   RECORDS      records per run (default 200000, 1 KiB each)
#   TXN_RECORDS  records per transaction (default 100)
#   ROUNDS       rounds of (idempotent, transactional) (default 3)
#   CORES        broker executors (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
export RECORDS=${RECORDS:-200000}
export TXN_RECORDS=${TXN_RECORDS:-100}
export ROUNDS=${ROUNDS:-3}
cores=${CORES:-2}
export PIP_BREAK_SYSTEM_PACKAGES=1
need_pip confluent_kafka confluent-kafka

echo "building spate (release) ..." >&2
cargo build --release --quiet -p spate-engine --bin spate
port=$(free_port)
data="$dir/spate-transactions-data"
rm -rf "$data"
RUST_LOG=warn ./target/release/spate serve --listen "127.0.0.1:$port" --data-dir "$data" \
    --cores "$cores" 2>"$dir/spate-transactions.log" &
spate_pid=$!
trap 'kill $spate_pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
export BOOTSTRAP="127.0.0.1:$port"
python3 - <<'PYTHON'
import os, statistics, time
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = os.environ["BOOTSTRAP"]
records = int(os.environ["RECORDS"])
per_txn = int(os.environ["TXN_RECORDS"])
rounds = int(os.environ["ROUNDS"])
value = b"x" * 1024
common = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
          "batch.size": 1000000, "queue.buffering.max.kbytes": 1048576}

admin = AdminClient({"bootstrap.servers": bootstrap})

def create(topic):
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)

def idempotent(topic):
    producer = Producer({**common, "enable.idempotence": True})
    started = time.monotonic()
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, value, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(120) == 0
    return records * 1024 / (time.monotonic() - started) / 1e6

def transactional(topic, round_index):
    producer = Producer({**common, "transactional.id": f"bench-{round_index}"})
    producer.init_transactions(30)
    commits = []
    started = time.monotonic()
    for first in range(0, records, per_txn):
        producer.begin_transaction()
        for _ in range(min(per_txn, records - first)):
            producer.produce(topic, value, partition=0)
        before = time.monotonic()
        producer.commit_transaction(60)
        commits.append(time.monotonic() - before)
    rate = records * 1024 / (time.monotonic() - started) / 1e6
    commits.sort()
    p50 = commits[len(commits) // 2] * 1000
    p99 = commits[min(len(commits) - 1, int(len(commits) * 0.99))] * 1000
    return rate, p50, p99

rows = []
print(f"| round | idempotent (acks=all) | transactional ({per_txn}/txn) | ratio | commit p50 | commit p99 |")
print("| --- | --- | --- | --- | --- | --- |")
for round_index in range(1, rounds + 1):
    create(f"idem-{round_index}")
    base = idempotent(f"idem-{round_index}")
    create(f"txn-{round_index}")
    rate, p50, p99 = transactional(f"txn-{round_index}", round_index)
    rows.append((base, rate, p50, p99))
    print(f"| {round_index} | {base:.1f} MB/s | {rate:.1f} MB/s | {rate / base:.0%} | {p50:.2f} ms | {p99:.2f} ms |")
median = lambda values: statistics.median(values)
base, rate = median([r[0] for r in rows]), median([r[1] for r in rows])
print(f"| median | {base:.1f} MB/s | {rate:.1f} MB/s | {rate / base:.0%} | "
      f"{median([r[2] for r in rows]):.2f} ms | {median([r[3] for r in rows]):.2f} ms |")
PYTHON
