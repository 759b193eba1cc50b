#!/usr/bin/env bash
# Resident memory of every member after N distinct keys were written, etcd and c20 side by side.
#
#   scripts/bench-memory.sh [--keys N] [--c20-flags "FLAGS"] [--c20-only]
#
# For each of a 3-member etcd (Debian's etcd-server) and a 3-node c20 on loopback, fsync on and
# default settings: N puts of distinct keys (8-byte keys, 256-byte values, 100 clients over 10
# connections, one key per put), then every member's VmRSS and VmHWM from /proc and the size of
# its data directory. RSS counts both anonymous memory (the heap) and mapped file pages
# (etcd's bbolt file is mapped); the anon column is the heap alone. RSS is read twice: as the
# load ends, and once the members have settled (no member's RSS moved by 1 MiB or more over
# three one-second readings; at most 60 s), since a snapshot or a checkpoint may be under way
# as the load ends. Prints a table, stops both. Default N is 1,000,000.
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
# Waits until no member's RSS moved by 1 MiB or more over three readings a second apart (at
# most 60 s); prints how many seconds that took, or "60+" when it did not settle.
settle() {
    local prev="" now steady=0 t
    for t in $(seq 1 60); do
        sleep 1
        now=$(for pid in "${PIDS[@]}"; do awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status"; done)
        if [ -n "$prev" ] && python3 -c 'import sys; a, b = (list(map(int, x.split())) for x in sys.argv[1:]); sys.exit(0 if all(abs(x - y) < 1024 for x, y in zip(a, b)) else 1)' "$prev" "$now"; then
            steady=$((steady + 1))
            if [ "$steady" -ge 2 ]; then echo "$t"; return; fi
        else
            steady=0
        fi
        prev=$now
    done
    echo "60+"
}
printf '%-6s %-6s | %10s %10s %10s %14s %14s | %9s %9s %9s\n' flavor member "RSS at end" "settled" "anon MiB" "peak RSS MiB" "data dir MiB" "settled s" "puts/s" errors
for flavor in $FLAVORS; do
    start_cluster "$flavor"
    report=$("$C20" bench --endpoints "$ENDPOINTS" --workload put --clients 100 --conns 10 \
        --key-space "$KEYS" --total "$KEYS" --sequential-keys --val-size 256 --json)
    ops=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ops_per_s"], r["errors"])' "$report")
    at_end=()
    for pid in "${PIDS[@]}"; do at_end+=("$(mib "$pid" VmRSS)"); done
    waited=$(settle)
    for i in 0 1 2; do
        pid=${PIDS[$i]}
        # shellcheck disable=SC2086
        printf '%-6s %-6s | %10s %10s %10s %14s %14s | %9s %9s %9s\n' "$flavor" "n$((i+1))" \
            "${at_end[$i]}" "$(mib "$pid" VmRSS)" "$(mib "$pid" RssAnon)" "$(mib "$pid" VmHWM)" \
            "$(du -sm "$WORK/$flavor/n$((i+1))" | cut -f1)" "$waited" $ops
    done
    stop_cluster
done
