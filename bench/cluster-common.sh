# Sourced by bench/lock.sh and bench/watch.sh. Defines:
#   start_cluster: starts 3 fresh members on loopback (ports from $BASE; native
#     127.0.0.1:BASE+i, peers BASE+10+i) in a new directory under $DIR, with the
#     `cairn serve` flags in $SERVE_FLAGS (default: one unpinned executor each, the
#     placement tuning.md gives for several members sharing few cores), sets NAMES,
#     CLUSTER, ENDPOINTS and PIDS, and waits until the cluster is healthy;
#   leader: the native endpoint of the member that leads now (empty if none);
#   stop_cluster: stops them (SIGTERM, then waits) and deletes their data;
#   cpu_ticks: the members' user + system clock ticks so far; HZ;
#   run LABEL LOADGEN-ARGS...: one cairn-loadgen run (--json), printed as its JSON line
#     with "bench": LABEL and the members' CPU time per operation added.
# Whatever is left running is killed on exit, and $DIR deleted.
PIDS=()
ROUND_DIR=""
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
start_cluster() {
    ROUND_DIR=$(mktemp -d "$DIR/cluster.XXXXXX")
    for i in 0 1 2; do
        local peer=http://127.0.0.1:$((BASE + 10 + i))
        "$BIN/cairn" serve --name "${NAMES[$i]}" --data-dir "$ROUND_DIR/${NAMES[$i]}" \
            --listen-native-addr "127.0.0.1:$((BASE + i))" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$CLUSTER" --log-level warn \
            ${SERVE_FLAGS:---placement unpinned --executors 1} &
        PIDS+=($!)
    done
    until "$BIN/cairn" --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1; do sleep 0.1; done
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
    local before after out
    before=$(cpu_ticks)
    out=$("$BIN/cairn-loadgen" --json "$@" 2>/dev/null)
    after=$(cpu_ticks)
    python3 -c 'import json,sys
r = json.loads(sys.argv[1]); ticks = int(sys.argv[2]); hz = int(sys.argv[3])
r["bench"] = sys.argv[4]
ops = r.get("ops", 0)
r["server_cpu_us_per_op"] = round(ticks * 1e6 / hz / ops, 2) if ops else None
print(json.dumps(r))' "$out" "$((after - before))" "$HZ" "$label"
}
