#!/usr/bin/env bash
# Resident memory of every member after N distinct keys were written, etcd and c20 side by side.
#
#   scripts/bench-memory.sh [--keys N] [--c20-flags "FLAGS"] [--c20-only]
#
# For each of a 3-member etcd (Debian's etcd-server) and a 3-node c20 on loopback, fsync on and
# default settings: N puts of distinct keys (8-byte keys, 256-byte values, 100 clients over 10
# connections, one key per put), then every member's VmRSS and VmHWM from /proc and the size of
# its data directory. RSS counts both anonymous memory (the heap) and mapped file pages
# (etcd's bbolt file is mapped); the anon column is the heap alone. Prints a table, stops both. Default N is 1,000,000.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=1000000
C20_FLAGS=""
FLAVORS="etcd c20"
while [ $# -gt 0 ]; do
    case "$1" in
        --keys) KEYS="$2"; shift 2 ;;
        --c20-flags) C20_FLAGS="$2"; shift 2 ;;
        --c20-only) FLAVORS="c20"; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
need_etcd_and_c20
start_work_dir

# A /proc/PID/status field (VmRSS, VmHWM) in MiB.
mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
printf '%-6s %-6s | %10s %10s %14s %14s | %9s %9s\n' flavor member "RSS MiB" "anon MiB" "peak RSS MiB" "data dir MiB" "puts/s" errors
for flavor in $FLAVORS; do
    start_cluster "$flavor"
    report=$("$C20" bench --endpoints "$ENDPOINTS" --workload put --clients 100 --conns 10 \
        --key-space "$KEYS" --total "$KEYS" --sequential-keys --val-size 256 --json)
    ops=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ops_per_s"], r["errors"])' "$report")
    for i in 0 1 2; do
        pid=${PIDS[$i]}
        # shellcheck disable=SC2086
        printf '%-6s %-6s | %10s %10s %14s %14s | %9s %9s\n' "$flavor" "n$((i+1))" \
            "$(mib "$pid" VmRSS)" "$(mib "$pid" RssAnon)" "$(mib "$pid" VmHWM)" \
            "$(du -sm "$WORK/$flavor/n$((i+1))" | cut -f1)" $ops
    done
    stop_cluster
done
