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
run() {
    local label=$1
    shift
    local before after out ops
    before=$(cpu_ticks)
    out=$("$BIN/cairn-loadgen" --json "$@" 2>/dev/null)
    after=$(cpu_ticks)
    ops=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ops"])' "$out")
    python3 -c 'import json,sys
r = json.loads(sys.argv[1]); ops = int(sys.argv[2]); ticks = int(sys.argv[3]); hz = int(sys.argv[4])
r["bench"] = sys.argv[5]
r["server_cpu_us_per_op"] = round(ticks * 1e6 / hz / ops, 2) if ops else None
print(json.dumps(r))' "$out" "$ops" "$((after - before))" "$HZ" "$label"
}
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
echo "# 3 members, leader $LEADER; $ROUNDS rounds of $DURATION s"
for r in $(seq "$ROUNDS"); do
    run lock-uncontended --endpoints "$LEADER" --workload lock --clients 1 --locks 1 --duration "$DURATION"
    run lock-16-on-1 --endpoints "$ENDPOINTS" --workload lock --clients 16 --locks 1 --duration "$DURATION"
    run lease-keepalive-16 --endpoints "$ENDPOINTS" --workload lease --clients 16 --duration "$DURATION"
done
stop_cluster
