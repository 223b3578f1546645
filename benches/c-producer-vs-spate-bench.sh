#!/usr/bin/env bash
# The C producer (bindings-c/examples/producer.c over libspate.a, -O2) against
# `spate bench produce` at the same settings, side by side in one run against one broker;
# prints a markdown table of the ratio (append it to BENCHMARKS.md by hand).
#
#   benches/c-producer-vs-spate-bench.sh [DIR]
#
# DIR holds the broker's data (default ./bench-data). Each round, each producer writes
# RECORDS records of 1 KiB with 10 distinct keys (acks=all, linger.ms=5, batch.size=1000000,
# no compression) to a fresh one-partition topic; the order alternates between rounds and the
# table shows the median.
#   RECORDS  records per run (default 500000)
#   ROUNDS   rounds (default 3)
#   CORES    broker executors (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
records=${RECORDS:-500000}
rounds=${ROUNDS:-3}
cores=${CORES:-2}

echo "building spate and libspate (release) ..." >&2
cargo build --release --quiet -p spate-engine --bin spate
cargo build --release --quiet -p spate-c
spate=./target/release/spate
producer="$dir/c-producer"
cc -std=c11 -O2 -Wall -Wextra -Werror -Ibindings-c/include bindings-c/examples/producer.c \
    target/release/libspate.a -lpthread -ldl -lm -o "$producer"

port=$(free_port)
data="$dir/c-bench-data"
rm -rf "$data"
RUST_LOG=warn $spate serve --listen "127.0.0.1:$port" --data-dir "$data" --cores "$cores" \
    --num-partitions 1 2>"$dir/c-bench.log" &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
bootstrap="127.0.0.1:$port"

run_c() { # topic -> records/s
    "$producer" "$bootstrap" "$1" "$records" 1024 2>&1 >/dev/null | sed -n 's/^\([0-9]*\) records\/s$/\1/p'
}
run_spate() { # topic -> records/s
    $spate bench produce --bootstrap-server "$bootstrap" --topic "$1" --records "$records" \
        --record-size 1024 --keys 10 --acks all --linger-ms 5 --batch-size 1000000 \
        --duration 600 --output json |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["records_per_second"]))'
}

c_rates=()
spate_rates=()
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then
        c_rates+=("$(run_c "c-$round")")
        spate_rates+=("$(run_spate "s-$round")")
    else
        spate_rates+=("$(run_spate "s-$round")")
        c_rates+=("$(run_c "c-$round")")
    fi
    echo "round $round: C ${c_rates[-1]} records/s, spate bench ${spate_rates[-1]} records/s" >&2
done
c=$(median "${c_rates[@]}")
s=$(median "${spate_rates[@]}")
echo
echo "| figure | C producer (libspate) | spate bench produce | ratio | target |"
echo "| --- | --- | --- | --- | --- |"
python3 - "$c" "$s" "$records" <<'PY'
import sys
c, s, n = (int(x) for x in sys.argv[1:])
print(f"| produce {n} x 1 KiB, 10 keys, 1 partition, acks=all, linger.ms=5 | "
      f"{c:,} records/s ({c / 1024:.0f} MiB/s) | {s:,} records/s ({s / 1024:.0f} MiB/s) | "
      f"{c / s:.0%} | >= 90% |")
PY
