#!/usr/bin/env bash
# cairn beside etcd, on this machine: a 3-member etcd (Debian's etcd-server) and a 3-member
# cairn on loopback, both filled with the same key space, then the same workloads through
# three doors, alternating within each round:
#   etcd          etcd's gRPC API          (cairn-loadgen --target etcd)
#   cairn-grpc    cairn's etcd gRPC API    (cairn-loadgen --target etcd, same client)
#   cairn-native  cairn's native protocol  (cairn-loadgen --target native)
# Workloads: puts (256 clients over every member), linearizable and serializable point
# reads (256 clients), txns (256 clients: compare a key's version, then put or read it), and
# single-client puts to the leader. One JSON line per run (with the servers' CPU time per
# operation, user + system of all three members, from /proc), then one table of medians,
# ranges and ratios to etcd.
#
#   bench/compare.sh [ROUNDS] [DURATION_S]    (defaults: 3 10)
#
# Needs `cargo build --release --workspace` first, and etcd + etcdctl 3.4 on the PATH.
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-10}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
BASE=${PORT:-27900}
DIR=$(mktemp -d /tmp/cairn-compare.XXXXXX)
. "$(dirname "$0")/cluster-common.sh"
command -v etcd >/dev/null && command -v etcdctl >/dev/null || {
    echo "etcd and etcdctl are needed (Debian: apt-get install etcd-server etcd-client)" >&2
    exit 2
}
start_cluster
start_etcd
until [ -n "$(leader)" ]; do sleep 0.1; done
LEADER=$(leader)
GRPC=""
for i in 0 1 2; do GRPC+="${GRPC:+,}127.0.0.1:$((BASE + 20 + i))"; done
# The leader's gRPC port: the native one plus 20, as start_cluster lays them out.
LEADER_GRPC="127.0.0.1:$((${LEADER##*:} + 20))"
ETCD_LEADER=$(ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint status -w json |
    python3 -c 'import json,sys
for e in json.load(sys.stdin):
    s = e["Status"]
    if s["leader"] == s["header"]["member_id"]:
        print(e["Endpoint"])')
K="--key-space 100000 --value-size 256"
"$BIN/cairn-loadgen" $K --endpoints "$ENDPOINTS" --workload fill --clients 256 --conns 16 \
    --duration 120 --json >/dev/null 2>&1
"$BIN/cairn-loadgen" $K --target etcd --endpoints "$ETCD_ENDPOINTS" --workload fill \
    --clients 256 --conns 16 --duration 120 --json >/dev/null 2>&1
echo "# 3 members each; cairn leader $LEADER (gRPC $LEADER_GRPC), etcd leader $ETCD_LEADER;" \
    "$ROUNDS rounds of $DURATION s; cairn flags: ${SERVE_FLAGS:---placement unpinned --executors 1}"

# One workload through the three doors: DOOR-WORKLOAD labels.
three() {
    local workload=$1 all=$2 leader_only=$3
    shift 3
    local native_eps=$ENDPOINTS grpc_eps=$GRPC etcd_eps=$ETCD_ENDPOINTS
    if [ -n "$leader_only" ]; then
        native_eps=$LEADER grpc_eps=$LEADER_GRPC etcd_eps=$ETCD_LEADER
    fi
    CPU_PIDS=("${ETCD_PIDS[@]}")
    run "etcd $workload" $K --target etcd --endpoints "$etcd_eps" "$@" --duration "$DURATION"
    CPU_PIDS=("${PIDS[@]}")
    run "cairn-grpc $workload" $K --target etcd --endpoints "$grpc_eps" "$@" --duration "$DURATION"
    run "cairn-native $workload" $K --endpoints "$native_eps" "$@" --duration "$DURATION"
}
OUT="$DIR/runs.jsonl"
for r in $(seq "$ROUNDS"); do
    {
        three put all "" --workload put --clients 256 --conns 16
        three range-l all "" --workload range --consistency l --clients 256 --conns 16
        three range-s all "" --workload range --consistency s --clients 256 --conns 16
        three txn all "" --workload txn --clients 256 --conns 16
        three put-1 leader 1 --workload put --clients 1 --conns 1
    } | tee -a "$OUT"
done
stop_etcd
stop_cluster
python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    door, workload = r["bench"].split(" ", 1)
    runs.setdefault((workload, door), []).append(r)
def pick(rs, f):
    xs = sorted(f(r) for r in rs if f(r) is not None)
    return (statistics.median(xs), xs[0], xs[-1]) if xs else None
def fmt(m, digits=0):
    if m is None:
        return "-"
    med, lo, hi = m
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"
print()
print("| workload | door | ops/s median (range) | x etcd | p99 ms median (range) | p99 / etcd | server CPU us/op | CPU / etcd | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for workload in ["put", "range-l", "range-s", "txn", "put-1"]:
    base = runs.get((workload, "etcd"))
    b_ops = pick(base, lambda r: r.get("qps")) if base else None
    b_p99 = pick(base, lambda r: r.get("p99_ms")) if base else None
    b_cpu = pick(base, lambda r: r.get("server_cpu_us_per_op")) if base else None
    for door in ["etcd", "cairn-grpc", "cairn-native"]:
        rs = runs.get((workload, door))
        if not rs:
            continue
        ops = pick(rs, lambda r: r.get("qps"))
        p99 = pick(rs, lambda r: r.get("p99_ms"))
        cpu = pick(rs, lambda r: r.get("server_cpu_us_per_op"))
        ratio = lambda a, b: f"{a[0] / b[0]:.2f}" if a and b and b[0] else "-"
        print(f"| {workload} | {door} | {fmt(ops)} | {ratio(ops, b_ops)} | {fmt(p99, 2)} | "
              f"{ratio(p99, b_p99)} | {fmt(cpu, 1)} | {ratio(cpu, b_cpu)} | "
              f"{sum(r.get('errors', 0) for r in rs)} |")
EOF
