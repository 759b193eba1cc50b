#!/usr/bin/env bash
# Compares two builds of c20 on this machine: runs the same `c20 bench` workload against a fresh
# 3-member cluster of each, alternating A, B, A, B... so that the machine's drift hits both.
#
#   scripts/bench-ab.sh BIN_A BIN_B [--rounds N] [--total N] [--bench "ARGS"] [--c20-flags "FLAGS"]
#
# BIN_A and BIN_B are `c20` binaries (copy target/release/c20 aside before rebuilding). Each
# round starts a cluster of one build, runs the workload twice (the first run warms it up and is
# printed too), and stops it; the bench client is the binary under test. Default workload:
# put, 100 clients over 10 connections, 256-byte values, 60,000 requests.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { echo "usage: $0 BIN_A BIN_B [--rounds N] [--total N] [--bench ARGS] [--c20-flags FLAGS]" >&2; exit 2; }
BIN_A=$(realpath "$1"); BIN_B=$(realpath "$2"); shift 2
ROUNDS=2
TOTAL=60000
BENCH="--workload put --clients 100 --conns 10 --val-size 256"
C20_FLAGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --total) TOTAL="$2"; shift 2 ;;
        --bench) BENCH="$2"; shift 2 ;;
        --c20-flags) C20_FLAGS="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
command -v etcdctl >/dev/null || { echo "etcdctl not found: apt-get install etcd-client" >&2; exit 1; }
start_work_dir

printf '%-5s %-3s | %10s %9s %9s\n' round bin "ops/s" "p50 ms" "p99 ms"
for round in $(seq 1 "$ROUNDS"); do
    for which in A B; do
        if [ "$which" = A ]; then C20=$BIN_A; else C20=$BIN_B; fi
        start_cluster c20
        for _ in 1 2; do
            # shellcheck disable=SC2086
            out=$("$C20" bench --endpoints "$ENDPOINTS" $BENCH --total "$TOTAL" --json)
            python3 - "$out" "$round" "$which" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print(f"{sys.argv[2]:<5} {sys.argv[3]:<3} | {d['ops_per_s']:>10} {d['p50_ms']:>9} {d['p99_ms']:>9}")
PY
        done
        stop_cluster
        rm -rf "$WORK/c20"
    done
done
