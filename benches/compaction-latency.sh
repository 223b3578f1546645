#!/usr/bin/env bash
# Produce latency while the log cleaner runs, against the same broker with the cleaner off,
# in one run. A compacted topic is filled with DIRTY_MIB of 1 KiB records whose keys are 1%
# distinct (kcat); then rdkafka-latency (benches/rdkafka-latency.c, librdkafka) produces RATE
# records/s of 1 KiB to another topic for SECONDS: first on a broker started with the cleaner
# off, then right after a restart with it on (a pass over the whole dirty log starts at once).
# Prints a markdown row per run and the ratio of the p99s.
#
#   benches/compaction-latency.sh [DIR]
#
#   DIRTY_MIB  dirty log to clean (default 2048)
#   RATE       records/s of the latency producer (default 5000)
#   SECONDS_EACH  length of each latency run (default 10)
#   CLEANER_RATE  log_cleaner_io_max_bytes_per_second (default: the broker's, 50 MiB/s;
#                 0 for no limit)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
dirty_mib=${DIRTY_MIB:-2048}
rate=${RATE:-5000}
seconds=${SECONDS_EACH:-10}
cleaner_rate=${CLEANER_RATE:-}
export PIP_BREAK_SYSTEM_PACKAGES=1

need_apt kcat librdkafka-dev:/usr/include/librdkafka/rdkafka.h
need_pip confluent_kafka confluent-kafka

echo "building spate (release) and the latency generator ..." >&2
cargo build --release --quiet -p spate-engine --bin spate
cc -O2 -Wall -o target/rdkafka-latency benches/rdkafka-latency.c -lrdkafka

port=$(free_port)
bootstrap="127.0.0.1:$port"
data="$dir/spate-compaction-data"
log="$dir/spate-compaction.log"
rm -rf "$data"
spate_pid=
start() { # cleaner on|off
    local enable=true
    [ "$1" = off ] && enable=false
    local limit=()
    [ -n "$cleaner_rate" ] && limit=(--log-cleaner-io-max-bytes-per-second "$cleaner_rate")
    RUST_LOG=info ./target/release/spate serve --listen "$bootstrap" --data-dir "$data" --cores 2 \
        --log-cleaner-enable "$enable" --log-cleaner-backoff-ms 200 "${limit[@]}" >>"$log" 2>&1 &
    spate_pid=$!
    for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && return; sleep 0.1; done
    echo "the broker did not start" >&2; exit 1
}
stop() { kill "$spate_pid"; wait "$spate_pid" || true; }
rm -f "$log"
trap 'kill $spate_pid 2>/dev/null || true; rm -rf "$data"' EXIT
create() { # topic configs...
    python3 -c "
import sys
from confluent_kafka.admin import AdminClient, NewTopic
configs = dict(arg.split('=') for arg in sys.argv[2:])
a = AdminClient({'bootstrap.servers': '$bootstrap'})
a.create_topics([NewTopic(sys.argv[1], 1, 1, config=configs)])[sys.argv[1]].result(30)" "$@"
}
latency() { # topic -> JSON
    ./target/rdkafka-latency "$bootstrap" "$1" "$rate" "$seconds" 1024
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }

start off
create dirty cleanup.policy=compact segment.bytes=67108864 min.cleanable.dirty.ratio=0.01
create latency
records=$((dirty_mib * 1024))
keys=$((records / 100))
echo "filling $dirty_mib MiB of dirty log ($records records, $keys keys) ..." >&2
python3 -c "
import sys
out = sys.stdout.buffer
value = b'v' * 1000
for n in range($records):
    out.write(b'key-%08d:' % ((n * 2654435761) % $keys) + value + b'\n')" |
    kcat -b "$bootstrap" -P -t dirty -K: -X linger.ms=20 -X batch.size=1000000 \
        -X queue.buffering.max.kbytes=1048576
without=$(latency latency)
stop
start on
with=$(latency latency)
sleep 1
cleaned=$(grep -c "compacted topic=dirty" "$log" || true)  # this run's log only (removed below)
stop
echo "| cleaner | p50 | p99 | p99.9 | max |"
echo "| --- | --- | --- | --- | --- |"
echo "| off | $(field "$without" p50_ms) ms | $(field "$without" p99_ms) ms | $(field "$without" p999_ms) ms | $(field "$without" max_ms) ms |"
echo "| running | $(field "$with" p50_ms) ms | $(field "$with" p99_ms) ms | $(field "$with" p999_ms) ms | $(field "$with" max_ms) ms |"
python3 -c "print('p99 ratio (running / off): %.2f' % ($(field "$with" p99_ms) / max($(field "$without" p99_ms), 0.001)))"
echo "cleaner passes over the dirty topic during the run: $cleaned" >&2
grep "compacted topic=dirty" "$log" | head -3 >&2 || true
