#!/usr/bin/env bash
# Runs the same `c20 bench` workloads against a 3-member etcd and a 3-member c20 on this machine,
# one after the other in one run, and prints a side-by-side table.
#
#   scripts/bench-vs-etcd.sh [--total N] [--quick] [--watch-only] [--only NAME,NAME...]
#                            [--c20-flags "FLAGS"] [--c20-only]
#
# Besides the KV workloads it runs `c20 bench-watch` (1,000 watchers on 10 streams: put-to-event
# latency at 100 puts/s, then event throughput); --watch-only runs just that. --only runs just
# the named KV workloads (and no watch), e.g. --only txn-cas-low,txn-cas-high. --c20-flags adds
# flags to every `c20 serve` (to measure one optimisation on and off); --c20-only skips etcd.
#
# Needs Debian's etcd-server (/usr/bin/etcd). Both clusters run on 127.0.0.1 with fsync on,
# data in a temporary directory; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL=20000
WATCH_ONLY=0
ONLY=""
C20_FLAGS=""
FLAVORS="etcd c20"
while [ $# -gt 0 ]; do
    case "$1" in
        --total) TOTAL="$2"; shift 2 ;;
        --quick) TOTAL=2000; shift ;;
        --watch-only) WATCH_ONLY=1; shift ;;
        --only) ONLY="$2"; shift 2 ;;
        --c20-flags) C20_FLAGS="$2"; shift 2 ;;
        --c20-only) FLAVORS="c20"; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
need_etcd_and_c20
start_work_dir

# put-1 goes to the first endpoint, whatever its role; put-1-leader and put-1-follower go to the
# member that leads and to one that follows when the workload starts, so that both stores are
# measured in the same role (a write sent to a follower is forwarded to the leader).
WORKLOADS=(
    "put-1:--workload put --clients 1 --conns 1"
    "put-1-leader:--workload put --clients 1 --conns 1"
    "put-1-follower:--workload put --clients 1 --conns 1"
    "put-100:--workload put --clients 100 --conns 10"
    "get-strong-100:--workload get --consistency strong --clients 100 --conns 10 --key-space 10000"
    "get-eventual-100:--workload get --consistency eventual --clients 100 --conns 10 --key-space 10000"
    "txn-cas-100:--workload txn-cas --clients 100 --conns 10 --key-space 10000"
    "txn-cas-low:--workload txn-cas --clients 100 --conns 10 --key-space 100000"
    "txn-cas-high:--workload txn-cas --clients 100 --conns 10 --key-space 10"
    "mixed-100:--workload mixed --clients 100 --conns 10 --key-space 10000"
)

declare -A RES
declare -A WATCH
[ "$WATCH_ONLY" = 1 ] && WORKLOADS=()
if [ -n "$ONLY" ]; then
    KEEP=()
    for w in "${WORKLOADS[@]}"; do
        case ",$ONLY," in *",${w%%:*},"*) KEEP+=("$w") ;; esac
    done
    WORKLOADS=("${KEEP[@]}")
fi
for flavor in $FLAVORS; do
    start_cluster "$flavor"
    if [ -z "$ONLY" ]; then
        WATCH[$flavor]=$("$C20" bench-watch --endpoints "$ENDPOINTS" --watchers 1000 --streams 10 --json)
    fi
    for w in "${WORKLOADS[@]}"; do
        name=${w%%:*}; args=${w#*:}
        # Only the one-client rows run a tenth of the requests (put-100 runs them all).
        total=$TOTAL; case "$name" in put-1 | put-1-*) total=$((TOTAL / 10)) ;; esac
        endpoints=$ENDPOINTS
        case "$name" in
            *-leader) endpoints=$(member_with_role leader) ;;
            *-follower) endpoints=$(member_with_role follower) ;;
        esac
        # shellcheck disable=SC2086
        RES[$flavor/$name]=$("$C20" bench --endpoints "$endpoints" $args --val-size 256 --total "$total" --json)
    done
    stop_cluster
done

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
if [ "$FLAVORS" = c20 ]; then
    printf '%-18s | %12s %9s %9s | %9s\n' workload "c20 ops/s" "p50 ms" "p99 ms" requests
    for w in "${WORKLOADS[@]}"; do
        c=${RES[c20/${w%%:*}]}
        printf '%-18s | %12s %9s %9s | %9s\n' "${w%%:*}" "$(field "$c" ops_per_s)" "$(field "$c" p50_ms)" \
            "$(field "$c" p99_ms)" "$(field "$c" total)"
    done
    exit 0
fi
if [ -z "$ONLY" ]; then
    printf '%-18s | %12s %9s %9s | %12s %9s %9s\n' watch "etcd ev/s" "p50 ms" "p99 ms" "c20 ev/s" "p50 ms" "p99 ms"
    printf '%-18s | %12s %9s %9s | %12s %9s %9s\n' "1000 watchers" \
        "$(field "${WATCH[etcd]}" events_per_s)" "$(field "${WATCH[etcd]}" latency_p50_ms)" "$(field "${WATCH[etcd]}" latency_p99_ms)" \
        "$(field "${WATCH[c20]}" events_per_s)" "$(field "${WATCH[c20]}" latency_p50_ms)" "$(field "${WATCH[c20]}" latency_p99_ms)"
fi
[ "$WATCH_ONLY" = 1 ] && exit 0
printf '%-18s | %12s %9s %9s | %12s %9s %9s | %7s\n' workload "etcd ops/s" "p50 ms" "p99 ms" "c20 ops/s" "p50 ms" "p99 ms" "c20/etcd"
for w in "${WORKLOADS[@]}"; do
    name=${w%%:*}
    e=${RES[etcd/$name]}; c=${RES[c20/$name]}
    eo=$(field "$e" ops_per_s); co=$(field "$c" ops_per_s)
    printf '%-18s | %12s %9s %9s | %12s %9s %9s | %7.2f\n' "$name" \
        "$eo" "$(field "$e" p50_ms)" "$(field "$e" p99_ms)" \
        "$co" "$(field "$c" p50_ms)" "$(field "$c" p99_ms)" \
        "$(python3 -c "print($co/$eo)")"
done
printf '%-18s | %12s | %12s | %9s\n' workload "etcd conflicts" "c20 conflicts" requests
for w in "${WORKLOADS[@]}"; do
    name=${w%%:*}
    printf '%-18s | %12s | %12s | %9s\n' "$name" "$(field "${RES[etcd/$name]}" conflicts)" \
        "$(field "${RES[c20/$name]}" conflicts)" "$(field "${RES[c20/$name]}" total)"
done
echo "errors: $(for k in "${!RES[@]}"; do printf '%s=%s ' "$k" "$(field "${RES[$k]}" errors)"; done)"
