#!/usr/bin/env bash
# The lock and lease benchmarks of tuning.md on a 3-member loopback cluster:
#   - uncontended: one client acquiring and releasing one lock, through the leader;
#   - contended: 16 clients (over every member) on one lock: hand-offs per second;
#   - leases: 16 clients renewing their leases back to back.
# Rounds alternate the three; one JSON line per run on stdout, with the members' CPU time
# per operation (user + system, all three processes, from /proc).
#
#   bench/lock.sh [ROUNDS] [DURATION_S]    (defaults: 3 10)
#
# Needs `cargo build --release --workspace` first.
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-10}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
BASE=${PORT:-25900}
DIR=$(mktemp -d /tmp/cairn-lock.XXXXXX)
. "$(dirname "$0")/cluster-common.sh"
start_cluster
until [ -n "$(leader)" ]; do sleep 0.1; done
LEADER=$(leader)
echo "# 3 members, leader $LEADER; $ROUNDS rounds of $DURATION s"
for r in $(seq "$ROUNDS"); do
    run lock-uncontended --endpoints "$LEADER" --workload lock --clients 1 --locks 1 --duration "$DURATION"
    run lock-16-on-1 --endpoints "$ENDPOINTS" --workload lock --clients 16 --locks 1 --duration "$DURATION"
    run lease-keepalive-16 --endpoints "$ENDPOINTS" --workload lease --clients 16 --duration "$DURATION"
done
stop_cluster
