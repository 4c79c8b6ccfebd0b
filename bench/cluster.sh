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
. "$(dirname "$0")/cluster-common.sh"
SERVE_FLAGS="--placement $PLACEMENT --executors $EXECUTORS"
start_cluster
until [ -n "$(leader)" ]; do sleep 0.1; done
LEADER=$(leader)
"$BIN/cairn-loadgen" --endpoints "$ENDPOINTS" --key-space 100000 --value-size 256 \
    --workload fill --clients 256 --conns 16 --duration 120 --json >/dev/null 2>&1
echo "# 3 members, placement=$PLACEMENT executors=$EXECUTORS, leader $LEADER"
K="--key-space 100000 --value-size 256"
run put-256 $K --endpoints "$ENDPOINTS" --workload put --clients 256 --conns 16 --duration "$DURATION"
run range-l-256 $K --endpoints "$ENDPOINTS" --workload range --consistency l --clients 256 --conns 16 --duration "$DURATION"
run put-1 $K --endpoints "$LEADER" --workload put --clients 1 --conns 1 --duration "$DURATION"
stop_cluster
