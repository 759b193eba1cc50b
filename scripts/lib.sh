# Shared by the benchmark scripts (sourced, not run).

# Prints N free loopback ports, found by binding port 0.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PY
}

# Checks for etcd, builds c20 in release mode and sets C20 to the binary. With C20_BIN set,
# uses that binary instead and builds nothing (to measure an earlier build).
need_etcd_and_c20() {
    command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
    if [ -n "${C20_BIN:-}" ]; then
        C20=$C20_BIN
        return
    fi
    cargo build --release -q -p c20-cli
    C20=target/release/c20
}

# Makes a scratch directory WORK and arranges that every member started with start_cluster is
# stopped and WORK removed when the script exits.
start_work_dir() {
    WORK=$(mktemp -d /tmp/c20-bench-XXXXXX)
    PIDS=()
    trap cleanup EXIT
}

cleanup() {
    stop_cluster
    rm -rf "$WORK"
}

# Starts a 3-member cluster of `flavor` (etcd or c20, c20 with $C20_FLAGS) on free loopback
# ports, data under $WORK/flavor; sets ENDPOINTS and appends the members' PIDs to PIDS.
start_cluster() {
    local flavor=$1 ports cluster="" i
    # What earlier work left to write back (a build, the cluster before) goes to the disk now,
    # not during this cluster's run (docs/BENCHMARKS.md, "Order of the two stores").
    sync
    read -r -a ports <<<"$(free_ports 6)"
    for i in 0 1 2; do cluster+="n$((i+1))=http://127.0.0.1:${ports[$((i*2+1))]},"; done
    cluster=${cluster%,}
    ENDPOINTS=""
    for i in 0 1 2; do
        local c=${ports[$((i*2))]} p=${ports[$((i*2+1))]}
        local args=(--name "n$((i+1))" --data-dir "$WORK/$flavor/n$((i+1))"
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c"
            --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p"
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$flavor")
        if [ "$flavor" = etcd ]; then
            etcd "${args[@]}" >"$WORK/$flavor-n$((i+1)).log" 2>&1 &
        else
            # shellcheck disable=SC2086
            "$C20" serve "${args[@]}" $C20_FLAGS >"$WORK/$flavor-n$((i+1)).log" 2>&1 &
        fi
        PIDS+=($!)
        ENDPOINTS+="127.0.0.1:$c,"
    done
    ENDPOINTS=${ENDPOINTS%,}
    for _ in $(seq 1 200); do
        if ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "$flavor cluster did not become healthy" >&2; exit 1
}

# Prints the client endpoint (host:port) of the member of the running cluster that leads (role
# leader) or of one that follows (role follower), as `endpoint status` reports them.
member_with_role() {
    ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint status -w json | python3 -c '
import json, sys
role = sys.argv[1]
members = json.load(sys.stdin)
for m in members:
    leads = m["Status"]["leader"] == m["Status"]["header"]["member_id"]
    if leads == (role == "leader"):
        print(m["Endpoint"].split("://")[-1])
        break
else:
    sys.exit("no member is " + role)
' "$1"
}

stop_cluster() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
