#!/usr/bin/env bash
# The lock and lease benchmarks of tuning.md on a 3-member loopback cluster:
#   - uncontended: one client acquiring and releasing one lock, through the leader;
#   - contended: 16 clients (over every member) on one lock: hand-offs per second;
#   - leases: 16 clients renewing their leases back to back;
#   - with etcd installed (Debian's etcd-server), the two lock runs against a 3-member etcd
#     through its v3lock service (`cairn-loadgen --target etcd`), in the same rounds.
# Rounds alternate them; one JSON line per run on stdout, with the members' CPU time per
# operation (user + system, all three processes, from /proc).
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
WITH_ETCD=""
if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    start_etcd
    WITH_ETCD=1
fi
until [ -n "$(leader)" ]; do sleep 0.1; done
LEADER=$(leader)
echo "# 3 members, leader $LEADER; $ROUNDS rounds of $DURATION s${WITH_ETCD:+; etcd $ETCD_ENDPOINTS}"
for r in $(seq "$ROUNDS"); do
    unset CPU_PIDS
    run lock-uncontended --endpoints "$LEADER" --workload lock --clients 1 --locks 1 --duration "$DURATION"
    run lock-16-on-1 --endpoints "$ENDPOINTS" --workload lock --clients 16 --locks 1 --duration "$DURATION"
    run lease-keepalive-16 --endpoints "$ENDPOINTS" --workload lease --clients 16 --duration "$DURATION"
    if [ -n "$WITH_ETCD" ]; then
        CPU_PIDS=("${ETCD_PIDS[@]}")
        run etcd-lock-16-on-1 --target etcd --endpoints "$ETCD_ENDPOINTS" --workload lock \
            --clients 16 --conns 3 --locks 1 --duration "$DURATION"
        run etcd-lock-uncontended --target etcd --endpoints "${ETCD_ENDPOINTS%%,*}" \
            --workload lock --clients 1 --locks 1 --duration "$DURATION"
    fi
done
[ -z "$WITH_ETCD" ] || stop_etcd
stop_cluster
