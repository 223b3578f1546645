#!/usr/bin/env bash
# Failover when the killed partition leader is also the active controller: three release
# brokers (each a controller and a broker, default timings), a 3-partition RF=3 topic with
# min.insync.replicas=2, a confluent-kafka producer (acks=all) writing to the partition the
# controller leads; the controller is SIGKILLed and the figure runs from the kill to the first
# record acknowledged after it. Prints one line per round.
#
#   benches/controller-failover.sh [DIR]     # ROUNDS (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data/controller-failover}
rounds=${ROUNDS:-3}
need_pip confluent_kafka confluent-kafka
cargo build --release --quiet -p spate-engine --bin spate
spate=./target/release/spate
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
for round in $(seq "$rounds"); do
    rm -rf "$dir"; mkdir -p "$dir"
    quorum=$(for node in 1 2 3; do printf '%s@127.0.0.1:%s,' "$node" "$(free_port)"; done)
    quorum=${quorum%,}
    declare -A ports node_pids
    for node in 1 2 3; do
        ports[$node]=$(free_port)
        RUST_LOG=info $spate serve --node-id "$node" --listen "127.0.0.1:${ports[$node]}" \
            --data-dir "$dir/node-$node" --cores 1 --controller-quorum "$quorum" \
            2> "$dir/node-$node.log" &
        node_pids[$node]=$!
        pids+=($!)
        disown "$!"   # no job-control notice when it is killed
    done
    bootstrap="127.0.0.1:${ports[1]},127.0.0.1:${ports[2]},127.0.0.1:${ports[3]}"
    for _ in $(seq 100); do
        [ "$($spate cluster info --bootstrap-server "127.0.0.1:${ports[1]}" --output json 2>/dev/null |
            python3 -c 'import json,sys; print(len(json.load(sys.stdin)["brokers"]))' 2>/dev/null)" = 3 ] && break
        sleep 0.1
    done
    $spate topic create failover --partitions 3 --replication-factor 3 \
        --config min.insync.replicas=2 --bootstrap-server "127.0.0.1:${ports[1]}" > /dev/null
    sleep 1
    controller=$($spate cluster info --bootstrap-server "127.0.0.1:${ports[1]}" --output json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["controller_id"])')
    partition=$($spate topic describe failover --bootstrap-server "127.0.0.1:${ports[1]}" --output json |
        python3 -c "import json,sys; print([p['partition'] for p in json.load(sys.stdin)['partitions'] if p['leader'] == $controller][0])")
    BOOTSTRAP="$bootstrap" PARTITION="$partition" VICTIM="${node_pids[$controller]}" python3 - <<'PY' 2>/dev/null
import os, signal, time
from confluent_kafka import Producer
acked = []
producer = Producer({"bootstrap.servers": os.environ["BOOTSTRAP"], "acks": "all", "linger.ms": 0})
def on_delivery(error, message):
    if error is None:
        acked.append(time.monotonic())
partition = int(os.environ["PARTITION"])
for _ in range(100):
    producer.produce("failover", b"x" * 100, partition=partition, on_delivery=on_delivery)
    producer.poll(0.005)
producer.flush(10)
killed = time.monotonic()
os.kill(int(os.environ["VICTIM"]), signal.SIGKILL)
while time.monotonic() - killed < 30 and not any(t > killed for t in acked):
    producer.produce("failover", b"x" * 100, partition=partition, on_delivery=on_delivery)
    producer.poll(0.005)
print(f"controller and partition leader killed: first acks=all record after {round((min(t for t in acked if t > killed) - killed) * 1000)} ms")
PY
    cleanup
    pids=()
    unset ports node_pids
done
