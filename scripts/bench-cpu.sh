#!/usr/bin/env bash
# Measures what a workload costs each member in CPU time: runs the same `c20 bench` workload
# against a fresh 3-member cluster for each variant, alternating variants round by round, and
# prints ops/s, latency and the CPU time (user + system) each member spent per request.
#
#   scripts/bench-cpu.sh [--flavor c20|etcd] [--rounds N] [--total N] [--bench "ARGS"]
#                        [--to leader|all] [--threads] [--variant "C20 FLAGS"]...
#
# CPU per request is steadier than throughput on a small shared machine, so it shows what an
# optimisation saves even when ops/s drift from run to run. Each --variant is a set of flags for
# `c20 serve` (give it several times to compare them; default: one variant, no flags). --to
# leader sends the workload to the member that leads (the default for one client), --to all
# spreads it over every member. --threads also prints, for each run, the CPU per request of the
# members' threads by thread name (summed over the members). Default workload: put, 1 client,
# 256-byte values, 3,000 requests.
# Honours C20_BIN (see scripts/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOR=c20
ROUNDS=2
TOTAL=3000
BENCH="--workload put --clients 1 --conns 1 --val-size 256"
TO=""
THREADS=0
VARIANTS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --flavor) FLAVOR="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --total) TOTAL="$2"; shift 2 ;;
        --bench) BENCH="$2"; shift 2 ;;
        --to) TO="$2"; shift 2 ;;
        --threads) THREADS=1; shift ;;
        --variant) VARIANTS+=("$2"); shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=("")
if [ -z "$TO" ]; then
    case "$BENCH" in *"--clients 1 "*|*"--clients 1") TO=leader ;; *) TO=all ;; esac
fi

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
need_etcd_and_c20
start_work_dir

# CPU time (user + system, in clock ticks) a process or thread has used so far, from its stat file.
used() { awk '{print $14 + $15}' "$1"; }
# The same for each member.
ticks() { for p in "${PIDS[@]}"; do used "/proc/$p/stat"; done; }
# The same for each thread of each member: "pid/tid name ticks", one line each; a thread that
# ends while it is read is left out.
thread_ticks() {
    local p t name n
    for p in "${PIDS[@]}"; do
        for t in /proc/"$p"/task/*; do
            { name=$(tr ' ' _ <"$t/comm") && n=$(used "$t/stat"); } 2>/dev/null || continue
            echo "$p/${t##*/} $name $n"
        done
    done
}

printf '%-5s %-28s | %9s %8s %8s | %s\n' round variant "ops/s" "p50 ms" "p99 ms" "CPU us per request, each member (* leads)"
for round in $(seq 1 "$ROUNDS"); do
    for variant in "${VARIANTS[@]}"; do
        C20_FLAGS=$variant
        start_cluster "$FLAVOR"
        endpoints=$ENDPOINTS
        leader=$(member_with_role leader)
        [ "$TO" = leader ] && endpoints=$leader
        # A warm-up run, not measured.
        # shellcheck disable=SC2086
        "$C20" bench --endpoints "$endpoints" $BENCH --total $((TOTAL / 5 + 1)) --json >/dev/null
        [ "$THREADS" = 1 ] && threads_before=$(thread_ticks)
        read -r -a before <<<"$(ticks | tr '\n' ' ')"
        # shellcheck disable=SC2086
        out=$("$C20" bench --endpoints "$endpoints" $BENCH --total "$TOTAL" --json)
        read -r -a after <<<"$(ticks | tr '\n' ' ')"
        [ "$THREADS" = 1 ] && threads_after=$(thread_ticks)
        hz=$(getconf CLK_TCK)
        per=""
        for i in "${!PIDS[@]}"; do
            us=$(( (after[i] - before[i]) * 1000000 / hz / TOTAL ))
            mark=""
            [ "$(cut -d, -f"$((i + 1))" <<<"$ENDPOINTS")" = "$leader" ] && mark="*"
            per+="$us$mark "
        done
        python3 - "$out" "$round" "${variant:-(defaults)}" "$per" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print(f"{sys.argv[2]:<5} {sys.argv[3]:<28} | {d['ops_per_s']:>9} {d['p50_ms']:>8} {d['p99_ms']:>8} | {sys.argv[4]}")
PY
        if [ "$THREADS" = 1 ]; then
            members=$(( ($(IFS=+; echo "${after[*]}")) - ($(IFS=+; echo "${before[*]}")) ))
            python3 - "$threads_before" "$threads_after" "$hz" "$TOTAL" "$members" <<'PY'
import collections, sys
def load(text):
    rows = (line.split() for line in text.splitlines())
    return {r[0]: (r[1], int(r[2])) for r in rows if len(r) == 3}
before, after = load(sys.argv[1]), load(sys.argv[2])
hz, total, members = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
by_name = collections.Counter()
for tid, (name, t) in after.items():
    by_name[name] += t - before.get(tid, (name, 0))[1]
# Threads that ended during the run are gone from /proc: what the members used beyond the
# threads still there is theirs.
by_name["(threads that ended)"] = members - sum(by_name.values())
us = lambda t: f"{t * 1e6 / hz / total:.1f}"
cells = [f"{name} {us(t)}" for name, t in by_name.most_common() if t > 0]
print("      CPU us per request by thread (all members): " + ", ".join(cells))
PY
        fi
        stop_cluster
        rm -rf "${WORK:?}/$FLAVOR"
    done
done
