#!/usr/bin/env bash
# Runs the PHP client's test suite against a real sessiond.
#
#   clients/php/run-tests.sh [phpunit arguments…]
#
# Server binary: $SESSIOND_BIN, else target/debug/sessiond (what
# `cargo test --workspace` leaves behind, so CI does not build twice); it is
# (re)built with `cargo build -p sessiond-server` only when missing or older
# than the server sources. Then Debian's `phpunit` (or vendor/bin/phpunit if
# composer installed one) runs the suite, whose bootstrap starts
# `sessiond serve --port 0` on a temporary data dir and a pool of `php -S`
# servers on free ports for the concurrency tests.
#
# Every process the suite starts is stopped when it ends, even when phpunit
# is killed or the run is interrupted: phpunit runs in its own process group
# and records the servers it starts in a pid file that the EXIT trap below
# walks.
#
# Environment: SESSIOND_BIN (server binary to use), SESSIOND_TEST_URI (use a
# running server instead of starting one), SESSIOND_SKIP_BUILD=1,
# SESSIOND_TEST_KEEP=1 (keep logs and data in the temp dir it prints),
# SESSIOND_TEST_WEB_SERVERS (size of the php -S pool, default 12).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

command -v php >/dev/null || { echo "run-tests.sh: php not found (apt-get install php-cli)" >&2; exit 2; }
php -r 'exit(PHP_VERSION_ID >= 80100 ? 0 : 1);' || { echo "run-tests.sh: PHP 8.1+ required" >&2; exit 2; }
# session: the handler; posix + pcntl (signal constants): the tests kill processes
for ext in session posix pcntl; do
    php -r "exit(extension_loaded('$ext') ? 0 : 1);" || { echo "run-tests.sh: PHP extension $ext missing" >&2; exit 2; }
done
command -v setsid >/dev/null || { echo "run-tests.sh: setsid not found (util-linux)" >&2; exit 2; }

if [[ -n "${SESSIOND_TEST_URI:-}" ]]; then
    :
elif [[ -n "${SESSIOND_BIN:-}" ]]; then
    [[ -x "$SESSIOND_BIN" ]] || { echo "run-tests.sh: SESSIOND_BIN=$SESSIOND_BIN is not executable" >&2; exit 2; }
else
    bin="$root/target/debug/sessiond"
    stale=""
    if [[ -x "$bin" ]]; then
        stale="$(find "$root"/crates/*/src "$root"/crates/*/Cargo.toml "$root/Cargo.toml" "$root/Cargo.lock" \
            -newer "$bin" -type f \( -name '*.rs' -o -name 'Cargo.*' \) -print -quit 2>/dev/null || true)"
    fi
    if [[ ! -x "$bin" || -n "$stale" ]]; then
        if [[ "${SESSIOND_SKIP_BUILD:-0}" == 1 ]]; then
            [[ -x "$bin" ]] || { echo "run-tests.sh: $bin missing and SESSIOND_SKIP_BUILD=1" >&2; exit 2; }
        else
            command -v cargo >/dev/null || { echo "run-tests.sh: $bin missing or stale and cargo not found" >&2; exit 2; }
            echo "run-tests.sh: building sessiond (cargo build -p sessiond-server)…" >&2
            (cd "$root" && cargo build -p sessiond-server)
        fi
    fi
    export SESSIOND_BIN="$bin"
fi

if [[ -x "$here/vendor/bin/phpunit" ]]; then
    phpunit="$here/vendor/bin/phpunit"
elif command -v phpunit >/dev/null; then
    phpunit="$(command -v phpunit)"
else
    echo "run-tests.sh: phpunit not found (apt-get install phpunit, or composer install)" >&2
    exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/sessiond-php-tests.XXXXXX")"
export SESSIOND_TEST_TMPDIR="$tmp"
export SESSIOND_TEST_PIDFILE="$tmp/pids"
: > "$SESSIOND_TEST_PIDFILE"
phpunit_pid=""

# Stops what is left: phpunit's process group (it and the CLI processes the
# tests start), then each server group from the pid file, but only a process
# whose command line names our temp dir, so a reused pid is never hit.
cleanup() {
    local rc=$? pid pids=()
    trap - EXIT INT TERM
    if [[ -n "$phpunit_pid" ]]; then
        kill -TERM -- "-$phpunit_pid" 2>/dev/null || true
    fi
    [[ -f "$SESSIOND_TEST_PIDFILE" ]] && while read -r pid; do
        if [[ -n "$pid" ]] && tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$tmp"; then
            pids+=("$pid")
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
    done < "$SESSIOND_TEST_PIDFILE"
    for pid in ${phpunit_pid:+"$phpunit_pid"} ${pids[@]+"${pids[@]}"}; do
        for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 -- "-$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    done
    if [[ "${SESSIOND_TEST_KEEP:-0}" == 1 ]]; then
        echo "run-tests.sh: logs kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$here"
# setsid: phpunit leads its own process group, which cleanup() can stop whole
setsid "$phpunit" --configuration "$here/phpunit.xml.dist" "$@" &
phpunit_pid=$!
wait "$phpunit_pid"
