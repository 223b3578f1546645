#!/usr/bin/env bash
# Three local brokers with RF=3 and acks=all against one broker with acks=1, in one run on one
# machine, and the failover time after a SIGKILL of the partition leader. Prints a markdown
# table (append it to BENCHMARKS.md by hand).
#
#   benches/cluster-vs-single.sh [DIR]
#
# DIR holds the brokers' data (default ./bench-data).
#   RECORDS  records of 1 KiB per produce run (default 300000)
#   ROUNDS   rounds; the table shows medians (default 3)
#   CORES    executors per broker (default 1: four brokers share this machine's cores)
#   RATE     records/s for the latency runs (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
records=${RECORDS:-300000}
rounds=${ROUNDS:-3}
cores=${CORES:-1}
rate=${RATE:-2000}

need_pip confluent_kafka confluent-kafka
echo "building spate (release) ..." >&2
cargo build --release --quiet -p spate-engine --bin spate
spate=./target/release/spate
wait_port() { for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1))" 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# One broker.
single_port=$(free_port)
rm -rf "$dir/single"
RUST_LOG=warn $spate serve --listen "127.0.0.1:$single_port" --data-dir "$dir/single" \
    --cores "$cores" 2>"$dir/single.log" &
pids+=($!)
wait_port "$single_port"
single="127.0.0.1:$single_port"

# Three brokers, each a controller too, with default timings.
quorum=""
declare -a ports
for node in 1 2 3; do
    ports[$node]=$(free_port)
    quorum+="${quorum:+,}$node@127.0.0.1:$(free_port)"
done
declare -a node_pids
for node in 1 2 3; do
    rm -rf "$dir/node-$node"
    RUST_LOG=info $spate serve --node-id "$node" --listen "127.0.0.1:${ports[$node]}" \
        --data-dir "$dir/node-$node" --cores "$cores" --controller-quorum "$quorum" \
        2>"$dir/node-$node.log" &
    node_pids[$node]=$!
    pids+=($!)
done
for node in 1 2 3; do wait_port "${ports[$node]}"; done
cluster="127.0.0.1:${ports[1]},127.0.0.1:${ports[2]},127.0.0.1:${ports[3]}"
for _ in $(seq 100); do
    [ "$($spate cluster info --bootstrap-server "$cluster" --output json 2>/dev/null |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["brokers"]))' 2>/dev/null)" = 3 ] && break
    sleep 0.2
done

bench() { # bootstrap topic acks [extra...] -> "records/s p99_ms"
    local bootstrap=$1 topic=$2 acks=$3
    shift 3
    $spate bench produce --topic "$topic" --records "$records" --duration 3600 --record-size 1024 \
        --acks "$acks" --linger-ms 5 --batch-size 1000000 --property buffer.memory=1073741824 \
        --bootstrap-server "$bootstrap" --output json "$@" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["records_per_second"]), r["latency_ms"]["p99"])'
}

declare -a st sl ct cl slat clat
for round in $(seq "$rounds"); do
    $spate topic create "s$round" --partitions 1 --bootstrap-server "$single" >/dev/null
    $spate topic create "c$round" --partitions 1 --replication-factor 3 \
        --config min.insync.replicas=2 --bootstrap-server "$cluster" >/dev/null
    sleep 1
    read -r t l < <(bench "$single" "s$round" 1); st+=("$t")
    read -r t l < <(bench "$cluster" "c$round" all); ct+=("$t")
    # Latency at a fixed rate, measured from each record's due time.
    read -r _ l < <(records=$((rate * 10)) bench "$single" "s$round" 1 --rate "$rate"); slat+=("$l")
    read -r _ l < <(records=$((rate * 10)) bench "$cluster" "c$round" all --rate "$rate"); clat+=("$l")
    echo "round $round: single acks=1 ${st[-1]}/s p99 ${slat[-1]} ms; RF=3 acks=all ${ct[-1]}/s p99 ${clat[-1]} ms" >&2
done

# Failover: a producer (acks=all) sends one record every 5 ms to a fresh RF=3 topic; its leader
# is SIGKILLed; the figure is from the kill to the first record acknowledged after it.
$spate topic create failover --partitions 1 --replication-factor 3 \
    --config min.insync.replicas=2 --bootstrap-server "$cluster" >/dev/null
sleep 2
leader=$($spate topic describe failover --bootstrap-server "$cluster" --output json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"][0]["leader"])')
failover=$(CLUSTER="$cluster" LEADER_PID="${node_pids[$leader]}" python3 - <<'EOF'
import os, signal, time
from confluent_kafka import Producer
producer = Producer({"bootstrap.servers": os.environ["CLUSTER"], "acks": "all", "linger.ms": 0,
                     "enable.idempotence": False, "message.timeout.ms": 60000})
acked = []
def on_delivery(error, message):
    if error is None:
        acked.append(time.monotonic())
for _ in range(200):
    producer.produce("failover", b"x" * 100, on_delivery=on_delivery)
    producer.poll(0.005)
producer.flush(10)
killed = time.monotonic()
os.kill(int(os.environ["LEADER_PID"]), signal.SIGKILL)
while time.monotonic() - killed < 30 and not any(t > killed for t in acked):
    producer.produce("failover", b"x" * 100, on_delivery=on_delivery)
    producer.poll(0.005)
producer.flush(30)
after = [t for t in acked if t > killed]
print(round((min(after) - killed) * 1000) if after else "none")
EOF
)

ms=$(median "${st[@]}"); mc=$(median "${ct[@]}")
ls_=$(median "${slat[@]}"); lc=$(median "${clat[@]}")
ratio=$(python3 -c "print(round(100 * $mc / $ms))")
cat <<TABLE
| figure | 3 brokers, RF=3, acks=all, min.insync.replicas=2 | 1 broker, acks=1 | ratio |
| --- | --- | --- | --- |
| produce $records × 1 KiB, 1 partition, linger.ms=5 | $(printf '%.0f' "$mc") records/s | $(printf '%.0f' "$ms") records/s | $ratio% |
| p99 latency at $rate records/s (from due time) | $lc ms | $ls_ ms | |
| failover: leader SIGKILLed → first acks=all record acknowledged (defaults) | $failover ms | | target < 2000 ms |

Rounds: single ${st[*]} records/s, p99 ${slat[*]} ms; cluster ${ct[*]} records/s, p99 ${clat[*]} ms.
TABLE
