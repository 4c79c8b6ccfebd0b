#!/usr/bin/env bash
# The watch benchmarks of tuning.md on a 3-member loopback cluster:
#   - 10,000 watchers (spread over the members) while 10,000 puts/s go on: delivery
#     latency from each put's acknowledgement to its event, events missing;
#   - 100,000 watchers on one member of a fresh cluster: that member's resident memory
#     before and after they are created and at the end of the run, with 1,000 puts/s
#     delivered to them.
# Each is run ROUNDS times; one JSON line per run on stdout, with the members' CPU time
# per put (user + system, all three processes, from /proc).
#
#   bench/watch.sh [ROUNDS] [DURATION_S]    (defaults: 3 10)
#
# Needs `cargo build --release --workspace` first.
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-10}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
BASE=${PORT:-24900}
DIR=$(mktemp -d /tmp/cairn-watch.XXXXXX)
. "$(dirname "$0")/cluster-common.sh"
run_watch() {
    local label=$1
    shift
    local before after out
    before=$(cpu_ticks)
    out=$("$BIN/cairn-loadgen" --workload watch --value-size 256 --json "$@" 2>/dev/null)
    after=$(cpu_ticks)
    python3 -c 'import json,sys
lines = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
w = next(l["watch"] for l in lines if "watch" in l)
puts = next(l for l in lines if "ops" in l)
w["bench"] = sys.argv[4]
w["put_p99_ms"] = puts["p99_ms"]
ops = puts["ops"]
w["server_cpu_us_per_put"] = round(int(sys.argv[2]) * 1e6 / int(sys.argv[3]) / ops, 2) if ops else None
print(json.dumps(w))' "$out" "$((after - before))" "$HZ" "$label"
}
echo "# 3 members; $ROUNDS rounds of $DURATION s"
start_cluster
# A warm-up run, not reported: the first run on a fresh cluster also creates the 10,000
# keys and grows the tree file and the members' memory.
run_watch "warm-up" --endpoints "$ENDPOINTS" --watchers 10000 --watch-conns 6 \
    --key-space 10000 --rate 10000 --clients 64 --conns 6 --duration 5 >/dev/null
for r in $(seq "$ROUNDS"); do
    run_watch "watchers-10k-puts-10k" --endpoints "$ENDPOINTS" --watchers 10000 --watch-conns 6 \
        --key-space 10000 --rate 10000 --clients 64 --conns 6 --duration "$DURATION"
done
stop_cluster
for r in $(seq "$ROUNDS"); do
    # A fresh cluster each round: member 0's memory is measured from the same start, and
    # nothing of an earlier run or of a restart's replay is given back while the watchers
    # are created.
    start_cluster
    sleep 2
    run_watch "watchers-100k-one-member" --endpoints "127.0.0.1:$BASE" --watchers 100000 --watch-conns 10 \
        --key-space 100000 --rate 1000 --clients 16 --conns 2 --duration "$DURATION" \
        --server-pid "${PIDS[0]}"
    stop_cluster
done
