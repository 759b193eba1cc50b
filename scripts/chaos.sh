#!/usr/bin/env bash
# Real-process chaos for longer than the test suite runs it: a 3-member c20 cluster (peer
# traffic through user-space proxies) under writes and linearizable reads while the leader is
# killed with SIGKILL and restarted, members are cut off from their peers, and every peer link
# turns slow and lossy, in turn; then no acknowledged write may be missing, revisions may never
# go back, and HashKV must agree.
#
#   scripts/chaos.sh [--minutes M] [--seed S] [--etcd]
#
# The last lines give the seed, the kills, partitions, acknowledged writes and reads. --etcd
# runs the same against the real etcd (checks the test). See crates/c20-cli/tests/chaos.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=5
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="$2"; shift 2 ;;
        --seed) export C20_CHAOS_SEED="$2"; shift 2 ;;
        --etcd) export C20_TESTS_USE_ETCD=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
export C20_CHAOS_SECS=$((MINUTES * 60))
exec cargo test --release -p c20-cli --test chaos -- --nocapture
