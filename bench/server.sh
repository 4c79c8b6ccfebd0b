#!/usr/bin/env bash
# The single-member benchmarks of tuning.md, against a fresh member on this machine:
# fills the key space, then durable puts (256 clients), single-client puts, and serializable
# and linearizable point reads. One JSON line per run on stdout.
#
#   bench/server.sh [PLACEMENT] [DURATION_S]     (defaults: spread 10)
#
# Needs `cargo build --release --workspace` first.
set -euo pipefail
PLACEMENT=${1:-spread}
DURATION=${2:-10}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
ADDR=127.0.0.1:${PORT:-23780}
PEER=http://127.0.0.1:${PEER_PORT:-23781}
DIR=$(mktemp -d /tmp/cairn-bench.XXXXXX)
"$BIN/cairn" serve --data-dir "$DIR" --listen-native-addr "$ADDR" --listen-peer-urls "$PEER" \
    --listen-client-urls http://127.0.0.1:0 \
    --placement "$PLACEMENT" --log-level warn &
PID=$!
trap 'kill -9 $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
until "$BIN/cairn" --endpoints "$ADDR" endpoint status >/dev/null 2>&1; do sleep 0.05; done
lg() { "$BIN/cairn-loadgen" --endpoints "$ADDR" --key-space 100000 --value-size 256 --json "$@" 2>/dev/null; }
lg --workload fill --clients 256 --conns 16 --duration 60 >/dev/null
echo "# placement=$PLACEMENT"
lg --workload put --clients 256 --conns 16 --duration "$DURATION"
lg --workload put --clients 1 --conns 1 --duration "$DURATION"
lg --workload range --consistency s --clients 256 --conns 16 --duration "$DURATION"
lg --workload range --consistency l --clients 256 --conns 16 --duration "$DURATION"
kill -TERM $PID
wait $PID
