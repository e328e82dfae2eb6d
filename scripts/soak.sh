#!/usr/bin/env bash
# Soak: a mixed session load (create, read, commit, lock/unlock, regenerate,
# destroy, 1 s TTL expiry, shared counters) against a real sessiond binary.
# Prints resident memory over time; exits non-zero on any error, any lost
# update, or memory that keeps growing.
#
#   scripts/soak.sh --minutes 30            # the real soak
#   scripts/soak.sh --seconds 45            # the short form (scripts/test.sh)
#   scripts/soak.sh --minutes 10 --release  # against a release build
#
# Other flags go to the load (crates/sessiond-server/examples/soak.rs):
# --workers N, --durability always|everysec|no, --max-rss-growth PCT.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
args=()
for a in "$@"; do
  case "$a" in
    --release) profile=release ;;
    *) args+=("$a") ;;
  esac
done
if [ "$profile" = release ]; then
  cargo build -q --release -p sessiond-server --bin sessiond --example soak
else
  cargo build -q -p sessiond-server --bin sessiond --example soak
fi
exec "target/$profile/examples/soak" --server "target/$profile/sessiond" "${args[@]}"
