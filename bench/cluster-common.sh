# Sourced by bench/lock.sh and bench/watch.sh. Defines:
#   start_cluster: starts 3 fresh members on loopback (ports from $BASE; native
#     127.0.0.1:BASE+i, peers BASE+10+i, gRPC BASE+20+i) in a new directory under $DIR, sets NAMES,
#     CLUSTER, ENDPOINTS and PIDS, and waits until the cluster is healthy;
#   stop_cluster: stops them (SIGTERM, then waits) and deletes their data;
#   cpu_ticks: the members' user + system clock ticks so far; HZ.
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
            --listen-client-urls "http://127.0.0.1:$((BASE + 20 + i))" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$CLUSTER" --log-level warn &
        PIDS+=($!)
    done
    until "$BIN/cairn" --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1; do sleep 0.1; done
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
