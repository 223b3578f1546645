#!/usr/bin/env bash
# Measures the Spate broker with independent librdkafka clients next to fio and iperf3 measured
# in the same run on the same machine, and prints a markdown table of ratios (append it to
# BENCHMARKS.md by hand). Throughput is measured with kcat (librdkafka in C: a Python producer
# loop tops out near 270k records/s and would measure itself); latency at half the maximum
# rate with benches/rdkafka-latency.c (librdkafka in C, pacing records at a fixed rate), and
# one request's round trip with confluent-kafka through benches/broker-load.py.
#
#   benches/broker-vs-baselines.sh [DIR]
#
# DIR is a directory on the disk to measure (default ./bench-data); it needs about
# 2 * RECORDS KiB + FETCH_GIB GiB + 2 GiB free. fio, iperf3 and confluent-kafka are installed
# when missing. The client and the broker share this machine's cores, as they would on a
# developer's laptop; the figures say so.
#   RECORDS    records per produce run (default 1000000, 1 KiB each)
#   FETCH_GIB  size of the topic read back from offset 0 (default 2)
#   CORES      broker executors (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
records=${RECORDS:-1000000}
fetch_gib=${FETCH_GIB:-2}
cores=${CORES:-2}
export PIP_BREAK_SYSTEM_PACKAGES=1

need_apt fio iperf3 kcat librdkafka-dev:/usr/include/librdkafka/rdkafka.h
need_pip confluent_kafka confluent-kafka

echo "building spate (release) and the latency generator ..." >&2
cargo build --release --quiet -p spate-engine --bin spate
cc -O2 -Wall -o target/rdkafka-latency benches/rdkafka-latency.c -lrdkafka

fio_job() { # fio options... -> terse v3 line
    fio --output-format=terse --terse-version=3 --ioengine=io_uring --direct=1 --iodepth=4 \
        --filename="$dir/fio.dat" "$@" 2>/dev/null
}
echo "fio and iperf3 ..." >&2
fio_write=$(fio_job --name=seqwrite --rw=write --bs=1M --size=2G | awk -F';' '{printf "%.1f", $48 * 1.024 / 1000}')
fio_read=$(fio_job --name=seqread --rw=read --bs=1M --size=2G | awk -F';' '{printf "%.1f", $7 * 1.024 / 1000}')
rm -f "$dir/fio.dat"
iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
iperf=$(iperf3 -c 127.0.0.1 -p 5299 -t 5 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8e6, 1))')

port=$(free_port)
data="$dir/spate-bench-data"
rm -rf "$data"
RUST_LOG=warn ./target/release/spate serve --listen "127.0.0.1:$port" --data-dir "$data" --cores "$cores" \
    --num-partitions 1 2>"$dir/spate-bench.log" &
spate_pid=$!
trap 'kill $spate_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
bootstrap="127.0.0.1:$port"
load() { python3 benches/broker-load.py "$@"; }
field() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 3))" "$1" "$2"; }
create() { # topic partitions
    python3 -c "
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({'bootstrap.servers': '$bootstrap'})
a.create_topics([NewTopic('$1', $2, 1)])['$1'].result(30)"
}

now() { date +%s.%N; }
rate_json() { # records seconds -> JSON like broker-load.py's
    python3 -c "import json; r, s = $1, $2; print(json.dumps({'records': r, 'seconds': s, 'mb_per_s': r * 1024 / s / 1e6, 'records_per_s': r / s}))"
}
kcat_produce() { # topic records-file records
    local started ended
    started=$(now)
    kcat -b "$bootstrap" -P -t "$1" -X linger.ms=5 -X batch.size=1000000 \
        -X queue.buffering.max.kbytes=1048576 -X acks=1 -l "$2"
    ended=$(now)
    rate_json "$3" "$(python3 -c "print($ended - $started)")"
}
lines="$dir/records-1k.txt"
python3 -c "import sys; sys.stdout.buffer.write((b'x' * 1023 + b'\n') * $records)" > "$lines"

echo "produce, 1 partition ..." >&2
create p1 1
p1=$(kcat_produce p1 "$lines" "$records")
echo "produce, 8 partitions ..." >&2
create p8 8
p8=$(kcat_produce p8 "$lines" "$records")
p1_rate=$(field "$p1" records_per_s)
half=$(python3 -c "print(int($p1_rate / 2))")
echo "latency at $half records/s ..." >&2
create lat 1
lat=$(./target/rdkafka-latency "$bootstrap" lat "$half" 10 1024)
echo "one produce request at a time ..." >&2
sync=$(load sync "$bootstrap" lat --records 5000 --acks 1)
echo "fetch of $fetch_gib GiB from offset 0 ..." >&2
create fetch 1
fetch_records=0
while [ $((fetch_records * 1024)) -lt $((fetch_gib * 1024 * 1024 * 1024)) ]; do
    kcat_produce fetch "$lines" "$records" >/dev/null
    fetch_records=$((fetch_records + records))
done
started=$(now)
got=$(kcat -b "$bootstrap" -C -t fetch -o beginning -e -q -f '%o\n' -X fetch.max.bytes=52428800 \
    -X max.partition.fetch.bytes=10485760 | wc -l)
ended=$(now)
[ "$got" = "$fetch_records" ] || { echo "fetched $got of $fetch_records records" >&2; exit 1; }
fetch=$(rate_json "$fetch_records" "$(python3 -c "print($ended - $started)")")
rm -f "$lines"
kill -TERM $spate_pid; wait $spate_pid || true
trap - EXIT
rm -rf "$data"

lower_write=$(python3 -c "print(min($fio_write, $iperf))")
lower_read=$(python3 -c "print(min($fio_read, $iperf))")
ratio() { python3 -c "print(f'{100 * $1 / $2:.0f}%')"; }
cat <<TABLE
### $(date -u +%Y-%m-%d) — $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, broker --cores $cores and the client on the same machine

Baselines in the same run: fio sequential write $fio_write MB/s and read $fio_read MB/s (1 MiB
blocks, O_DIRECT, QD4), iperf3 loopback $iperf MB/s.

| figure | Spate | baseline | ratio | target |
| --- | --- | --- | --- | --- |
| produce, 1 KiB records, acks=1, 1 partition (kcat) | $(field "$p1" mb_per_s) MB/s | lower of fio write, iperf3: $lower_write MB/s | $(ratio "$(field "$p1" mb_per_s)" "$lower_write") | ≥ 40% |
| produce, 1 KiB records, acks=1, 8 partitions (kcat) | $(field "$p8" mb_per_s) MB/s | lower of fio write, iperf3: $lower_write MB/s | $(ratio "$(field "$p8" mb_per_s)" "$lower_write") | ≥ 40% |
| produce latency at half the 1-partition rate ($half records/s, rdkafka-latency): p50 / p99 / p99.9 | $(field "$lat" p50_ms) / $(field "$lat" p99_ms) / $(field "$lat" p999_ms) ms | | | p99 ≤ 2 ms |
| produce round trip, one 1 KiB record at a time (confluent-kafka): p50 / p99 / p99.9 | $(field "$sync" p50_ms) / $(field "$sync" p99_ms) / $(field "$sync" p999_ms) ms | | | |
| fetch of a $fetch_gib GiB topic from offset 0 (kcat) | $(field "$fetch" mb_per_s) MB/s | lower of fio read, iperf3: $lower_read MB/s | $(ratio "$(field "$fetch" mb_per_s)" "$lower_read") | ≥ 60% |

Reproduce: \`RECORDS=$records FETCH_GIB=$fetch_gib CORES=$cores benches/broker-vs-baselines.sh DIR\`
TABLE
