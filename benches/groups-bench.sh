#!/usr/bin/env bash
# Consumer group figures against a live broker, with the produce baseline measured in the same
# run: how soon a group of MEMBERS members over PARTITIONS partitions is Stable after its last
# member joins, and what 10,000 heartbeats per second cost a producer, at its maximum rate
# (kcat) and at half of it (benches/rdkafka-latency.c). Prints a markdown table (append it to
# BENCHMARKS.md by hand).
#
#   benches/groups-bench.sh [DIR]
#
# DIR holds the broker's data (default ./bench-data). The members are benches' group-bench
# tool: one thread and connection per member, the classic protocol with range assignment, a
# heartbeat every 100 ms while waiting. The broker runs with group.initial.rebalance.delay.ms=0
# so that the figure is the coordinator's, not the configured delay.
#   MEMBERS     members (default 100)
#   PARTITIONS  partitions of the group's topic (default 1000)
#   RECORDS     records per produce run (default 1000000, 1 KiB each)
#   CORES       broker executors (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
members=${MEMBERS:-100}
partitions=${PARTITIONS:-1000}
records=${RECORDS:-1000000}
cores=${CORES:-2}
export PIP_BREAK_SYSTEM_PACKAGES=1

need_apt kcat librdkafka-dev:/usr/include/librdkafka/rdkafka.h
need_pip confluent_kafka confluent-kafka

echo "building spate, group-bench (release) and the latency generator ..." >&2
cargo build --release --quiet -p spate-engine --bin spate -p spate-benches --bin group-bench
cc -O2 -Wall -o target/rdkafka-latency benches/rdkafka-latency.c -lrdkafka

port=$(free_port)
data="$dir/spate-groups-bench-data"
rm -rf "$data"
RUST_LOG=warn ./target/release/spate serve --listen "127.0.0.1:$port" --data-dir "$data" --cores "$cores" \
    --group-initial-rebalance-delay-ms 0 2>"$dir/spate-groups-bench.log" &
spate_pid=$!
trap 'kill $spate_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
bootstrap="127.0.0.1:$port"
field() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 3))" "$1" "$2"; }
create() { # topic partitions
    python3 -c "
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({'bootstrap.servers': '$bootstrap'})
a.create_topics([NewTopic('$1', $2, 1)])['$1'].result(30)"
}
now() { date +%s.%N; }
kcat_rate() { # topic -> records per second
    local started ended
    started=$(now)
    kcat -b "$bootstrap" -P -t "$1" -X linger.ms=5 -X batch.size=1000000 \
        -X queue.buffering.max.kbytes=1048576 -X acks=1 -l "$lines"
    ended=$(now)
    python3 -c "print(round($records / ($ended - $started)))"
}
lines="$dir/records-1k.txt"
python3 -c "import sys; sys.stdout.buffer.write((b'x' * 1023 + b'\n') * $records)" > "$lines"
group_bench() { ./target/release/group-bench --bootstrap "$bootstrap" --members "$members" --partitions "$partitions" "$@"; }

echo "a group of $members members over $partitions partitions ..." >&2
stable=$(group_bench stable)
echo "produce alone ..." >&2
create alone 1
alone=$(kcat_rate alone)
half=$((alone / 2))
paced() { # topic -> rdkafka-latency's JSON with the achieved rate (records over wall time) added
    local started ended out
    started=$(now)
    out=$(./target/rdkafka-latency "$bootstrap" "$1" "$half" 10 1024)
    ended=$(now)
    python3 -c "import json,sys; o=json.loads(sys.argv[1]); o['achieved_per_s']=o['records']/($ended-$started); print(json.dumps(o))" "$out"
}
create half-alone 1
half_alone=$(paced half-alone)
echo "produce while the group heartbeats 10,000 times a second ..." >&2
heartbeat_seconds=$(python3 -c "print(int($records / $alone * 1.5 + 30))")
group_bench heartbeats --rate 10000 --seconds "$heartbeat_seconds" > "$dir/heartbeats.json" &
beats_pid=$!
sleep 5 # the group forms and the heartbeats reach their rate
create beside 1
beside=$(kcat_rate beside)
create half-beside 1
half_beside=$(paced half-beside)
wait $beats_pid
beats=$(cat "$dir/heartbeats.json")
rm -f "$lines" "$dir/heartbeats.json"
kill -TERM $spate_pid; wait $spate_pid || true
trap - EXIT
rm -rf "$data"

loss() { python3 -c "print(f'{100 * (1 - $1 / $2):.1f}%')"; }
cat <<TABLE
### $(date -u +%Y-%m-%d) — consumer groups, $(nproc) cores, broker --cores $cores, clients on the same machine

| figure | measured | baseline in the same run | ratio | target |
| --- | --- | --- | --- | --- |
| $members members over $partitions partitions: Stable after the last member's first JoinGroup (group-bench) | $(field "$stable" stable_after_last_join_ms) ms | | | < 500 ms |
| heartbeats, $members members (group-bench): achieved / p50 / p99 | $(field "$beats" heartbeats_per_s)/s, $(field "$beats" p50_ms) / $(field "$beats" p99_ms) ms | target 10000/s | | ≥ 10000/s |
| produce at full rate, 1 KiB, 1 partition (kcat), beside 10,000 heartbeats/s | $beside records/s | alone: $alone records/s | loss $(loss "$beside" "$alone") | |
| produce paced at half the full rate ($half records/s for 10 s, rdkafka-latency) beside the heartbeats: achieved rate, p50 / p99 latency | $(field "$half_beside" achieved_per_s) records/s, $(field "$half_beside" p50_ms) / $(field "$half_beside" p99_ms) ms | alone: $(field "$half_alone" achieved_per_s) records/s, $(field "$half_alone" p50_ms) / $(field "$half_alone" p99_ms) ms | loss $(loss "$(field "$half_beside" achieved_per_s)" "$(field "$half_alone" achieved_per_s)") | loss < 10% |

Reproduce: \`MEMBERS=$members PARTITIONS=$partitions RECORDS=$records CORES=$cores benches/groups-bench.sh DIR\`
TABLE
