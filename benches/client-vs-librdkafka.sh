#!/usr/bin/env bash
# Spate's client (`spate bench produce|consume`) against librdkafka (kcat) with the same
# settings, side by side in one run against one Spate broker, and prints a markdown table of
# ratios (append it to BENCHMARKS.md by hand).
#
#   benches/client-vs-librdkafka.sh [DIR]
#
# DIR holds the broker's data (default ./bench-data; needs about 4 * RECORDS KiB free).
# Each round produces RECORDS records of 1023 bytes (kcat's 1 KiB lines less the newline) to a
# fresh single-partition topic with each client, then reads each topic back from offset 0 with
# the other client's reader too; the order of the two clients alternates between rounds, and
# the table shows the median of the rounds.
#   RECORDS  records per run (default 1000000)
#   ROUNDS   rounds (default 3)
#   CORES    broker executors (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
records=${RECORDS:-1000000}
rounds=${ROUNDS:-3}
cores=${CORES:-2}

need_apt kcat
echo "building spate (release) ..." >&2
cargo build --release --quiet -p spate-engine --bin spate
spate=./target/release/spate

port=$(free_port)
data="$dir/client-bench-data"
rm -rf "$data"
RUST_LOG=warn $spate serve --listen "127.0.0.1:$port" --data-dir "$data" --cores "$cores" \
    --num-partitions 1 2>"$dir/client-bench.log" &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
bootstrap="127.0.0.1:$port"

lines="$dir/records-1k.txt"
python3 -c "import sys; sys.stdout.buffer.write((b'x' * 1023 + b'\n') * $records)" > "$lines"
now() { date +%s.%N; }
# Records per second of a timed command: records start end.
rate() { python3 -c "print(round($1 / ($3 - $2)))"; }
settings=(-X acks=1 -X linger.ms=5 -X batch.size=1000000 -X queue.buffering.max.kbytes=1048576)

kcat_produce() { # topic -> records/s
    local started ended
    $spate topic create "$1" --partitions 1 --bootstrap-server "$bootstrap" >/dev/null
    started=$(now)
    kcat -b "$bootstrap" -P -t "$1" "${settings[@]}" -l "$lines"
    ended=$(now)
    rate "$records" "$started" "$ended"
}
spate_produce() { # topic -> records/s
    $spate bench produce --topic "$1" --records "$records" --duration 3600 --record-size 1023 \
        --acks 1 --linger-ms 5 --batch-size 1000000 --property buffer.memory=1073741824 \
        --bootstrap-server "$bootstrap" --output json |
        python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["records"] == '"$records"', r; print(round(r["records_per_second"]))'
}
kcat_consume() { # topic -> records/s
    local started ended got
    started=$(now)
    got=$(kcat -b "$bootstrap" -C -t "$1" -o beginning -e -q -f '%o\n' -X fetch.max.bytes=52428800 \
        -X max.partition.fetch.bytes=10485760 | wc -l)
    ended=$(now)
    [ "$got" = "$records" ] || { echo "kcat read $got of $records records" >&2; exit 1; }
    rate "$records" "$started" "$ended"
}
spate_consume() { # topic -> records/s
    $spate bench consume --topic "$1" --records "$records" --duration 3600 \
        --property fetch.max.bytes=52428800 --property max.partition.fetch.bytes=10485760 \
        --bootstrap-server "$bootstrap" --output json |
        python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["records"] == '"$records"', r; print(round(r["records_per_second"]))'
}

declare -a kp sp kc sc
for round in $(seq "$rounds"); do
    echo "round $round of $rounds ..." >&2
    if [ $((round % 2)) = 1 ]; then
        kp+=("$(kcat_produce "k$round")"); sp+=("$(spate_produce "s$round")")
        kc+=("$(kcat_consume "s$round")"); sc+=("$(spate_consume "k$round")")
    else
        sp+=("$(spate_produce "s$round")"); kp+=("$(kcat_produce "k$round")")
        sc+=("$(spate_consume "k$round")"); kc+=("$(kcat_consume "s$round")")
    fi
done
rm -f "$lines"
kill -TERM $broker; wait $broker || true
trap - EXIT
rm -rf "$data"

mib() { python3 -c "print(f'{$1 * 1023 / 1048576:.0f}')"; }
ratio() { python3 -c "print(f'{100 * $1 / $2:.0f}%')"; }
kp_m=$(median "${kp[@]}"); sp_m=$(median "${sp[@]}"); kc_m=$(median "${kc[@]}"); sc_m=$(median "${sc[@]}")
cat <<TABLE
### $(date -u +%Y-%m-%d) — $(nproc) cores, broker --cores $cores, both clients on the same machine, medians of $rounds rounds

| figure | spate bench | librdkafka (kcat) | ratio | target |
| --- | --- | --- | --- | --- |
| produce $records × 1023 B, 1 partition, acks=1, linger.ms=5, batch.size=1000000, no compression | $sp_m records/s ($(mib "$sp_m") MiB/s) | $kp_m records/s ($(mib "$kp_m") MiB/s) | $(ratio "$sp_m" "$kp_m") | ≥ 100% |
| consume the same from offset 0, fetch.max.bytes=50 MiB, max.partition.fetch.bytes=10 MiB | $sc_m records/s ($(mib "$sc_m") MiB/s) | $kc_m records/s ($(mib "$kc_m") MiB/s) | $(ratio "$sc_m" "$kc_m") | ≥ 100% |

Rounds (spate/kcat records/s): produce ${sp[*]} / ${kp[*]}; consume ${sc[*]} / ${kc[*]}.
Reproduce: \`RECORDS=$records ROUNDS=$rounds CORES=$cores benches/client-vs-librdkafka.sh DIR\`
TABLE
