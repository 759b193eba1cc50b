#!/usr/bin/env bash
# Snapshot and membership figures for etcd and c20, side by side in one run, 3 members each on
# 127.0.0.1 with fsync on and the same flags (--snapshot-count 5000):
#
#   catch-up   a follower is stopped while KEYS keys are written (256-byte random values,
#              `c20 bench --workload put --fresh-values`), then restarted: seconds from its
#              restart until its revision equals the leader's, and whether it got a snapshot;
#   backup     `etcdctl snapshot save` of that data: file size and seconds, and the raw size
#              of the data (keys + values);
#   promote    `etcdctl member add --learner`, start the new member with
#              --initial-cluster-state existing, retry `member promote` until accepted:
#              seconds from the accepted add to the promotion.
#
#   scripts/bench-snapshot.sh [--keys N]     (default 100000)
#
# Needs Debian's etcd-server (/usr/bin/etcd) and etcd-client (etcdctl). Everything started here
# is stopped on exit; C20_BENCH_KEEP=1 keeps the data and logs.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=100000
while [ $# -gt 0 ]; do
    case "$1" in
        --keys) KEYS="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
need_etcd_and_c20
WORK=$(mktemp -d /tmp/c20-bench-snap-XXXXXX)
declare -A PID
cleanup() {
    for p in "${PID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PID[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${C20_BENCH_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
export ETCDCTL_API=3

now() { python3 -c 'import time; print(time.monotonic())'; }
elapsed() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

# start_member flavor name client-port peer-port initial-cluster state
start_member() {
    local flavor=$1 name=$2 c=$3 p=$4 cluster=$5 state=$6
    local args=(--name "$name" --data-dir "$WORK/$flavor/$name"
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c"
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p"
        --initial-cluster "$cluster" --initial-cluster-state "$state"
        --initial-cluster-token "snap-$flavor" --snapshot-count 5000)
    if [ "$flavor" = etcd ]; then
        etcd "${args[@]}" >>"$WORK/$flavor-$name.log" 2>&1 &
    else
        "$C20" serve "${args[@]}" >>"$WORK/$flavor-$name.log" 2>&1 &
    fi
    PID[$flavor/$name]=$!
}

stop_member() {
    local key=$1
    kill -TERM "${PID[$key]}" 2>/dev/null || true
    wait "${PID[$key]}" 2>/dev/null || true
    unset "PID[$key]"
}

wait_healthy() {
    for _ in $(seq 1 600); do
        if etcdctl --endpoints "$1" endpoint health >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "$1 did not become healthy" >&2; exit 1
}

revision() {
    etcdctl --endpoints "$1" endpoint status -w json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])' 2>/dev/null || echo 0
}

declare -A R
for flavor in etcd c20; do
    read -r -a ports <<<"$(free_ports 8)"
    cluster=""
    for i in 0 1 2; do cluster+="n$((i+1))=http://127.0.0.1:${ports[$((i*2+1))]},"; done
    cluster=${cluster%,}
    for i in 0 1 2; do start_member "$flavor" "n$((i+1))" "${ports[$((i*2))]}" "${ports[$((i*2+1))]}" "$cluster" new; done
    eps="127.0.0.1:${ports[0]},127.0.0.1:${ports[2]},127.0.0.1:${ports[4]}"
    wait_healthy "$eps"

    # catch-up: n3 misses KEYS writes.
    stop_member "$flavor/n3"
    "$C20" bench --endpoints "127.0.0.1:${ports[0]},127.0.0.1:${ports[2]}" --workload put \
        --clients 100 --conns 10 --total "$KEYS" --key-space "$KEYS" --key-size 16 \
        --val-size 256 --fresh-values --json >"$WORK/$flavor-load.json"
    target=$(revision "127.0.0.1:${ports[0]}")
    t0=$(now)
    start_member "$flavor" n3 "${ports[4]}" "${ports[5]}" "$cluster" new
    deadline=$(( $(date +%s) + 300 ))
    while [ "$(revision "127.0.0.1:${ports[4]}")" -lt "$target" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "$flavor: n3 never caught up" >&2; exit 1; }
        sleep 0.05
    done
    R[$flavor/catchup]=$(elapsed "$t0")
    if grep -qiE 'installed a snapshot|applied incoming snapshot|restored snapshot|applying snapshot' "$WORK/$flavor-n3.log"; then
        R[$flavor/via]=snapshot
    else
        R[$flavor/via]=log
    fi

    # backup
    t0=$(now)
    etcdctl --endpoints "127.0.0.1:${ports[0]}" snapshot save "$WORK/$flavor.db" >/dev/null 2>&1
    R[$flavor/save]=$(elapsed "$t0")
    R[$flavor/size]=$(stat -c %s "$WORK/$flavor.db")

    # promote (etcd refuses a member add until every member has been connected for a while:
    # the clock starts once the add is accepted)
    deadline=$(( $(date +%s) + 120 ))
    until etcdctl --endpoints "$eps" member list 2>/dev/null | grep -q "http://127.0.0.1:${ports[7]}"; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "$flavor: member add never accepted" >&2; exit 1; }
        etcdctl --endpoints "$eps" member add n4 --learner \
            --peer-urls "http://127.0.0.1:${ports[7]}" >/dev/null 2>&1 || sleep 0.2
    done
    t0=$(now)
    id=$(etcdctl --endpoints "$eps" member list | grep "http://127.0.0.1:${ports[7]}" | cut -d, -f1)
    start_member "$flavor" n4 "${ports[6]}" "${ports[7]}" "$cluster,n4=http://127.0.0.1:${ports[7]}" existing
    deadline=$(( $(date +%s) + 120 ))
    until err=$(etcdctl --endpoints "$eps" member promote "$id" 2>&1); do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "$flavor: promote of $id never accepted: $err" >&2; exit 1; }
        sleep 0.05
    done
    R[$flavor/promote]=$(elapsed "$t0")

    for key in "${!PID[@]}"; do
        case "$key" in "$flavor"/*) stop_member "$key" ;; esac
    done
done

raw=$((KEYS * (16 + 256)))
echo "$KEYS keys (16-byte keys, 256-byte random values), raw data $raw bytes"
printf '%-28s | %12s | %12s\n' figure etcd c20
printf '%-28s | %12s | %12s\n' "follower catch-up (s)" "${R[etcd/catchup]}" "${R[c20/catchup]}"
printf '%-28s | %12s | %12s\n' "  caught up through" "${R[etcd/via]}" "${R[c20/via]}"
printf '%-28s | %12s | %12s\n' "backup size (bytes)" "${R[etcd/size]}" "${R[c20/size]}"
printf '%-28s | %12s | %12s\n' "  raw / backup" \
    "$(python3 -c "print(f'{$raw/${R[etcd/size]}:.2f}')")" "$(python3 -c "print(f'{$raw/${R[c20/size]}:.2f}')")"
printf '%-28s | %12s | %12s\n' "backup save (s)" "${R[etcd/save]}" "${R[c20/save]}"
printf '%-28s | %12s | %12s\n' "member add -> promoted (s)" "${R[etcd/promote]}" "${R[c20/promote]}"
