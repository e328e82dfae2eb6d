#!/usr/bin/env bash
# Chaos: a randomized fault run over a three-node cluster of real sessiond
# processes (crates/sessiond-server/tests/cluster_chaos.rs). One fault at a
# time, chosen at random: SIGKILL and restart, SIGSTOP then SIGCONT, SIGTERM
# and restart, and, as root, a node cut off from its peers in network
# namespaces then healed; under a load of locked increments and once-only
# payments. Exits non-zero on a lost increment, a payment acknowledged twice,
# or a counter history that is not linearizable. Prints the time from each
# fault to the first acknowledged write, and p50/p99 at the end.
#
#   scripts/chaos.sh --minutes 30              # a long run
#   scripts/chaos.sh --seconds 60              # the short form (scripts/test.sh)
#   scripts/chaos.sh --minutes 5 --seed 1234   # repeat a run's fault choices
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) seconds=$(( $2 * 60 )); shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N | --seconds N] [--seed S]" >&2; exit 2 ;;
  esac
done
case "$seconds" in
  ''|*[!0-9]*) echo "--minutes/--seconds take a whole number" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || echo "chaos: not root, so no partitions (network namespaces need root)" >&2

export CHAOS_SECONDS=$seconds
[ -n "$seed" ] && export CHAOS_SEED=$seed
exec cargo test -q -p sessiond-server --test cluster_chaos -- --ignored --nocapture --test-threads 1
