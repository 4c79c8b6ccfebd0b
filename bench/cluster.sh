#!/usr/bin/env bash
# The 3-member cluster benchmarks of tuning.md: starts 3 members on loopback on this
# machine, fills the key space, then runs durable puts (256 clients over every member),
# linearizable point reads (256 clients over every member), and single-client puts (to the
# leader), and stops the members. One JSON line per run on stdout, with the members' CPU
# time per operation (user + system, all three processes, from /proc) beside it.
#
#   bench/cluster.sh [DURATION_S] [PLACEMENT] [EXECUTORS]    (defaults: 10 unpinned 1)
#
# Needs `cargo build --release --workspace` first.
set -euo pipefail
DURATION=${1:-10}
PLACEMENT=${2:-unpinned}
EXECUTORS=${3:-1}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
BASE=${PORT:-23900}
DIR=$(mktemp -d /tmp/cairn-cluster.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

NAMES=(m0 m1 m2)
CLUSTER=""
ENDPOINTS=""
for i in 0 1 2; do
    CLUSTER+="${CLUSTER:+,}${NAMES[$i]}=http://127.0.0.1:$((BASE + 10 + i))"
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((BASE + i))"
done
for i in 0 1 2; do
    peer=http://127.0.0.1:$((BASE + 10 + i))
    "$BIN/cairn" serve --name "${NAMES[$i]}" --data-dir "$DIR/${NAMES[$i]}" \
        --listen-native-addr "127.0.0.1:$((BASE + i))" \
        --listen-client-urls "http://127.0.0.1:$((BASE + 20 + i))" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$CLUSTER" --placement "$PLACEMENT" --executors "$EXECUTORS" \
        --log-level warn &
    PIDS+=($!)
done
leader() {
    "$BIN/cairn" --endpoints "$ENDPOINTS" endpoint status -w json 2>/dev/null |
        python3 -c 'import json,sys
for e in json.load(sys.stdin):
    s = e.get("Status", {})
    if s.get("leader") and s.get("leader") == s.get("header", {}).get("member_id"):
        print(e["Endpoint"])' 2>/dev/null || true
}
until [ -n "$(leader)" ]; do sleep 0.1; done
LEADER=$(leader)
# Clock ticks of CPU the members used so far.
cpu_ticks() {
    local t=0
    for p in "${PIDS[@]}"; do
        read -r -a f <"/proc/$p/stat"
        t=$((t + f[13] + f[14]))
    done
    echo $t
}
HZ=$(getconf CLK_TCK)
run() {
    local label=$1
    shift
    local before after out ops
    before=$(cpu_ticks)
    out=$("$BIN/cairn-loadgen" --key-space 100000 --value-size 256 --json "$@" 2>/dev/null)
    after=$(cpu_ticks)
    ops=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ops"])' "$out")
    python3 -c 'import json,sys
r = json.loads(sys.argv[1]); ops = int(sys.argv[2]); ticks = int(sys.argv[3]); hz = int(sys.argv[4])
r["bench"] = sys.argv[5]
r["server_cpu_us_per_op"] = round(ticks * 1e6 / hz / ops, 2) if ops else None
print(json.dumps(r))' "$out" "$ops" "$((after - before))" "$HZ" "$label"
}
"$BIN/cairn-loadgen" --endpoints "$ENDPOINTS" --key-space 100000 --value-size 256 \
    --workload fill --clients 256 --conns 16 --duration 120 --json >/dev/null 2>&1
echo "# 3 members, placement=$PLACEMENT executors=$EXECUTORS, leader $LEADER"
run put-256 --endpoints "$ENDPOINTS" --workload put --clients 256 --conns 16 --duration "$DURATION"
run range-l-256 --endpoints "$ENDPOINTS" --workload range --consistency l --clients 256 --conns 16 --duration "$DURATION"
run put-1 --endpoints "$LEADER" --workload put --clients 1 --conns 1 --duration "$DURATION"
for p in "${PIDS[@]}"; do kill -TERM "$p"; done
for p in "${PIDS[@]}"; do wait "$p" || true; done
PIDS=()
