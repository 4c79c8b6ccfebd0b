# Sourced by bench/lock.sh and bench/watch.sh. Defines:
#   start_cluster: starts 3 fresh members on loopback (ports from $BASE; native
#     127.0.0.1:BASE+i, peers BASE+10+i, gRPC BASE+20+i) in a new directory under $DIR,
#     with the `cairn serve` flags in $SERVE_FLAGS (default: one unpinned executor each,
#     the placement tuning.md gives for several members sharing few cores), sets NAMES,
#     CLUSTER, ENDPOINTS and PIDS, and waits until the cluster is healthy;
#   leader: the native endpoint of the member that leads now (empty if none);
#   start_etcd / stop_etcd: the same for a 3-member etcd (Debian's etcd-server) on ports
#     from BASE+100 (clients BASE+100+i, peers BASE+110+i), setting ETCD_ENDPOINTS and
#     ETCD_PIDS;
#   stop_cluster: stops them (SIGTERM, then waits) and deletes their data;
#   cpu_ticks [PID...]: the user + system clock ticks so far of those processes (default:
#     cairn's members); HZ;
#   run LABEL LOADGEN-ARGS...: one cairn-loadgen run ($LOADGEN if set; --json), printed as its JSON line
#     with "bench": LABEL and the CPU time per operation of the processes in CPU_PIDS
#     (default: cairn's members) added.
# Whatever is left running is killed on exit, and $DIR deleted.
PIDS=()
ROUND_DIR=""
cleanup() {
    for p in "${PIDS[@]}" "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
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
start_cluster() {
    ROUND_DIR=$(mktemp -d "$DIR/cluster.XXXXXX")
    for i in 0 1 2; do
        local peer=http://127.0.0.1:$((BASE + 10 + i))
        "$BIN/cairn" serve --name "${NAMES[$i]}" --data-dir "$ROUND_DIR/${NAMES[$i]}" \
            --listen-native-addr "127.0.0.1:$((BASE + i))" \
            --listen-client-urls "http://127.0.0.1:$((BASE + 20 + i))" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$CLUSTER" --log-level warn \
            ${SERVE_FLAGS:---placement unpinned --executors 1} &
        PIDS+=($!)
    done
    until "$BIN/cairn" --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1; do sleep 0.1; done
}
ETCD_PIDS=()
start_etcd() {
    ETCD_DIR=$(mktemp -d "$DIR/etcd.XXXXXX")
    local cluster="" i
    ETCD_ENDPOINTS=""
    for i in 0 1 2; do
        cluster+="${cluster:+,}e$i=http://127.0.0.1:$((BASE + 110 + i))"
        ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}127.0.0.1:$((BASE + 100 + i))"
    done
    for i in 0 1 2; do
        etcd --name "e$i" --data-dir "$ETCD_DIR/e$i" \
            --listen-client-urls "http://127.0.0.1:$((BASE + 100 + i))" \
            --advertise-client-urls "http://127.0.0.1:$((BASE + 100 + i))" \
            --listen-peer-urls "http://127.0.0.1:$((BASE + 110 + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 110 + i))" \
            --initial-cluster "$cluster" --log-level warn >/dev/null 2>&1 &
        ETCD_PIDS+=($!)
    done
    until ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1; do
        sleep 0.1
    done
}
stop_etcd() {
    for p in "${ETCD_PIDS[@]}"; do kill -TERM "$p"; done
    for p in "${ETCD_PIDS[@]}"; do wait "$p" || true; done
    ETCD_PIDS=()
    rm -rf "$ETCD_DIR"
}
leader() {
    "$BIN/cairn" --endpoints "$ENDPOINTS" endpoint status -w json 2>/dev/null |
        python3 -c 'import json,sys
for e in json.load(sys.stdin):
    s = e.get("Status", {})
    if s.get("leader") and s.get("leader") == s.get("header", {}).get("member_id"):
        print(e["Endpoint"])' 2>/dev/null || true
}
stop_cluster() {
    for p in "${PIDS[@]}"; do kill -TERM "$p"; done
    for p in "${PIDS[@]}"; do wait "$p" || true; done
    PIDS=()
    rm -rf "$ROUND_DIR"
}
cpu_ticks() {
    local t=0 p
    local pids=("$@")
    [ ${#pids[@]} -gt 0 ] || pids=("${PIDS[@]}")
    for p in "${pids[@]}"; do
        read -r -a f <"/proc/$p/stat"
        t=$((t + f[13] + f[14]))
    done
    echo $t
}
HZ=$(getconf CLK_TCK)
run() {
    local label=$1
    shift
    local before after out
    local pids=("${PIDS[@]}")
    if [ -n "${CPU_PIDS+x}" ]; then pids=("${CPU_PIDS[@]}"); fi
    before=$(cpu_ticks "${pids[@]}")
    out=$("${LOADGEN:-$BIN/cairn-loadgen}" --json "$@" 2>/dev/null)
    after=$(cpu_ticks "${pids[@]}")
    python3 -c 'import json,sys
r = json.loads(sys.argv[1]); ticks = int(sys.argv[2]); hz = int(sys.argv[3])
r["bench"] = sys.argv[4]
ops = r.get("ops", 0)
r["server_cpu_us_per_op"] = round(ticks * 1e6 / hz / ops, 2) if ops else None
print(json.dumps(r))' "$out" "$((after - before))" "$HZ" "$label"
}
