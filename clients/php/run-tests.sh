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
# The suite runs in three passes: with the handler's optional C extension
# (clients/php/ext, built by ext/build.sh into target/php-ext/; needs
# phpize from php-dev) loaded in every PHP process, and without it, since
# the handler must behave the same either way; and "native": the extension
# loaded and SESSIOND_PHP_NATIVE=1, which makes the test apps
# (tests/app/_init.php) install the extension's C save handler
# (session.save_handler=sessiond) instead of the PHP class, running the
# tests that drive the handler through those apps (phpunit.xml.dist's
# `native` suite). The extension is loaded
# through PHP_INI_SCAN_DIR (the system's ini directory plus one holding
# `extension=…/sessiond.so`) rather than `-d extension=…` on one command
# line: the suite starts PHP in many ways (php -S servers, php-fpm, CLI
# scripts, `php -r`), and all of them read that directory.
#
# Environment: SESSIOND_BIN (server binary to use), SESSIOND_TEST_URI (use a
# running server instead of starting one), SESSIOND_SKIP_BUILD=1,
# SESSIOND_TEST_KEEP=1 (keep logs and data in the temp dir it prints),
# SESSIOND_TEST_WEB_SERVERS (size of the php -S pool, default 12),
# SESSIOND_PHP_EXT=off (run only without the extension, e.g. where php-dev
# cannot be installed), SESSIOND_PHP_EXT=only (only the two passes with it),
# SESSIOND_PHP_EXT=native (only the native pass).
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

ext_mode="${SESSIOND_PHP_EXT:-both}"
case "$ext_mode" in
    both|only|off|native) ;;
    *) echo "run-tests.sh: SESSIOND_PHP_EXT must be both, only, native or off" >&2; exit 2 ;;
esac
so=""
if [[ "$ext_mode" != off ]]; then
    command -v phpize >/dev/null || { echo "run-tests.sh: phpize not found: apt-get install php-dev (or SESSIOND_PHP_EXT=off to test without the C extension)" >&2; exit 2; }
    so="$(bash "$here/ext/build.sh")"
    # the native pass needs the extension's save handler: no such handler is
    # an error, never a pass skipped in silence
    php -d "extension=$so" -r 'exit(function_exists("sessiond_native_info") && @ini_set("session.save_handler", "sessiond") !== false ? 0 : 1);' \
        || { echo "run-tests.sh: $so has no native save handler (no sessiond_native_info(), or session.save_handler=sessiond refused)" >&2; exit 2; }
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
# One pass of the suite. $1: the sessiond.so to load in every PHP process,
# or '' for none; $2: 1 for the native pass; the rest: phpunit's arguments.
run_suite() {
    local ext="$1" native="$2"
    shift 2
    # SESSIOND_PHP_NATIVE reaches every PHP process the suite starts (php -S
    # and php-fpm get phpunit's environment, see tests/Support/Env.php)
    local envs=(SESSIOND_TEST_EXT="$ext" SESSIOND_PHP_NATIVE="$native")
    local suite=()
    if [[ "$native" == 1 ]]; then
        suite=(--testsuite native)
    fi
    if [[ -n "$ext" ]]; then
        mkdir -p "$tmp/ini"
        echo "extension=$ext" > "$tmp/ini/99-sessiond-tests.ini"
        # an empty entry (the leading ':') keeps the system's directory
        envs+=(PHP_INI_SCAN_DIR="${PHP_INI_SCAN_DIR-}:$tmp/ini")
    fi
    : > "$SESSIOND_TEST_PIDFILE"
    # setsid: phpunit leads its own process group, which cleanup() can stop whole
    env "${envs[@]}" setsid "$phpunit" --configuration "$here/phpunit.xml.dist" ${suite[@]+"${suite[@]}"} "$@" &
    phpunit_pid=$!
    local st=0
    wait "$phpunit_pid" || st=$?
    phpunit_pid=""
    return "$st"
}

# Every pass runs even when an earlier one failed; the script fails if any did.
failed=()

if [[ -n "$so" && "$ext_mode" != native ]]; then
    echo "run-tests.sh: with the C extension ($so)" >&2
    run_suite "$so" 0 "$@" || failed+=("with the extension")
fi
if [[ -n "$so" ]]; then
    echo "run-tests.sh: native: the extension's C save handler (session.save_handler=sessiond)" >&2
    rm -rf "$tmp/suite"
    run_suite "$so" 1 "$@" || failed+=("native")
fi
if [[ "$ext_mode" == both || "$ext_mode" == off ]]; then
    echo "run-tests.sh: without the C extension" >&2
    rm -rf "$tmp/suite"
    run_suite "" 0 "$@" || failed+=("without the extension")
fi
if (( ${#failed[@]} )); then
    printf -v list '%s, ' "${failed[@]}"
    echo "run-tests.sh: FAILED: ${list%, }" >&2
    exit 1
fi
