#!/usr/bin/env bash
# Restart time of a member holding many keys: fills KEYS keys of VALUE_SIZE bytes through
# `cairn serve`, then restarts it after SIGKILL and after SIGTERM, timing from the start of
# the new process to the first successful serializable read of the last key written.
#
#   bench/restart.sh [KEYS] [VALUE_SIZE]      (defaults: 2000000 256)
#
# Needs `cargo build --release --workspace` first.
set -euo pipefail
KEYS=${1:-2000000}
VALUE_SIZE=${2:-256}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
ADDR=127.0.0.1:${PORT:-23790}
DIR=$(mktemp -d /tmp/cairn-restart.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

start() {
    "$BIN/cairn" serve --data-dir "$DIR/data" --listen-native-addr "$ADDR" \
        --listen-client-urls http://127.0.0.1:0 --log-level warn &
    PID=$!
}
last_key=$(printf "%016d" $((KEYS - 1)))
wait_ready() {
    until [ -n "$("$BIN/cairn" --endpoints "$ADDR" get --consistency s --print-value-only \
        "$last_key" 2>/dev/null)" ]; do
        kill -0 "$PID" || { echo "the member exited" >&2; exit 1; }
        sleep 0.005
    done
}
stop() {
    kill "-$1" "$PID"
    while kill -0 "$PID" 2>/dev/null; do sleep 0.01; done
}

start
sleep 0.5
echo "filling $KEYS keys of $VALUE_SIZE bytes..." >&2
"$BIN/cairn-loadgen" --endpoints "$ADDR" --workload fill --key-space "$KEYS" \
    --value-size "$VALUE_SIZE" --clients 256 --conns 16 --duration 600 --json 2>/dev/null
wait_ready
for sig in KILL TERM KILL TERM; do
    stop $sig
    t0=$(date +%s%N)
    start
    wait_ready
    t1=$(date +%s%N)
    echo "{\"keys\":$KEYS,\"value_size\":$VALUE_SIZE,\"after\":\"SIG$sig\",\"ready_ms\":$(((t1 - t0) / 1000000))}"
done
stop TERM
PID=
