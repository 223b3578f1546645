#!/usr/bin/env bash
# Idempotent produce throughput against plain produce, measured in the same run on the same
# broker: kcat (librdkafka) sends 1 KiB records with acks=all to a fresh one-partition topic,
# with enable.idempotence=false and =true in alternating rounds, and the script prints a
# markdown row per round and the ratio of the medians (append it to BENCHMARKS.md by hand).
#
#   benches/idempotence-vs-plain.sh [DIR]
#
# DIR holds the broker's data (default ./bench-data); it needs about 2 * ROUNDS * RECORDS KiB.
#   RECORDS  records per run (default 500000, 1 KiB each)
#   ROUNDS   rounds of (plain, idempotent) (default 3)
#   CORES    broker executors (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
records=${RECORDS:-500000}
rounds=${ROUNDS:-3}
cores=${CORES:-2}
export PIP_BREAK_SYSTEM_PACKAGES=1

need_apt kcat
need_pip confluent_kafka confluent-kafka

echo "building spate (release) ..." >&2
cargo build --release --quiet -p spate-engine --bin spate
port=$(free_port)
metrics_port=$(free_port)
data="$dir/spate-idempotence-data"
rm -rf "$data"
RUST_LOG=warn ./target/release/spate serve --listen "127.0.0.1:$port" --data-dir "$data" \
    --cores "$cores" --metrics-listen "127.0.0.1:$metrics_port" 2>"$dir/spate-idempotence.log" &
spate_pid=$!
trap 'kill $spate_pid 2>/dev/null || true; rm -rf "$data" "$lines"' EXIT
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
bootstrap="127.0.0.1:$port"
create() { # topic
    python3 -c "
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({'bootstrap.servers': '$bootstrap'})
a.create_topics([NewTopic('$1', 1, 1)])['$1'].result(30)"
}
now() { date +%s.%N; }
init_producer_ids() {
    python3 -c "
import re, urllib.request
text = urllib.request.urlopen('http://127.0.0.1:$metrics_port/metrics').read().decode()
found = re.search(r'spate_requests_total\{api=\"InitProducerId\"\} (\d+)', text)
print(int(found.group(1)) if found else 0)"
}
produce() { # topic idempotence -> MB/s
    local started ended
    started=$(now)
    kcat -b "$bootstrap" -P -t "$1" -X linger.ms=5 -X batch.size=1000000 \
        -X queue.buffering.max.kbytes=1048576 -X acks=all -X enable.idempotence="$2" -l "$lines"
    ended=$(now)
    python3 -c "print(round($records * 1024 / ($ended - $started) / 1e6, 1))"
}
lines="$dir/idempotence-records-1k.txt"
python3 -c "import sys; sys.stdout.buffer.write((b'x' * 1023 + b'\n') * $records)" > "$lines"

plain_rates=()
idempotent_rates=()
echo "| round | plain (acks=all) | idempotent (acks=all) | ratio |"
echo "| --- | --- | --- | --- |"
for round in $(seq "$rounds"); do
    create "plain-$round"
    plain=$(produce "plain-$round" false)
    before=$(init_producer_ids)
    create "idempotent-$round"
    idempotent=$(produce "idempotent-$round" true)
    if [ "$(init_producer_ids)" -le "$before" ]; then
        echo "kcat did not ask for a producer id: idempotence was not on" >&2
        exit 1
    fi
    plain_rates+=("$plain")
    idempotent_rates+=("$idempotent")
    echo "| $round | $plain MB/s | $idempotent MB/s | $(python3 -c "print(f'{$idempotent / $plain:.0%}')") |"
done
plain_median=$(median "${plain_rates[@]}")
idempotent_median=$(median "${idempotent_rates[@]}")
echo "| median | $plain_median MB/s | $idempotent_median MB/s | $(python3 -c "print(f'{$idempotent_median / $plain_median:.0%}')") |"
