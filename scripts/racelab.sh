#!/usr/bin/env bash
# The race lab in one command: builds sessiond and racelab (release), then
# runs every scenario on every handler and writes the table, racelab.json
# and the SVG timelines to racelab-out/ (see docs/racelab.md).
#
#   bash scripts/racelab.sh [racelab options…]     e.g. --iterations 1 --check
#
# Set RACELAB_PROFILE=debug to reuse a debug build (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${RACELAB_PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release -p sessiond-server -p racelab
else
  cargo build -p sessiond-server -p racelab
fi
exec "target/$profile/racelab" "$@"
