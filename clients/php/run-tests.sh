#!/usr/bin/env bash
# Runs the PHP client's test suite against a real sessiond.
#
#   clients/php/run-tests.sh [phpunit arguments…]
#
# Builds the server first when target/debug/sessiond is missing or older than
# the server sources (cargo build -p sessiond-server), then runs Debian's
# `phpunit` (or vendor/bin/phpunit if composer installed one). The suite's
# bootstrap starts `sessiond serve --port 0` on a temporary data dir and
# `php -S` with PHP_CLI_SERVER_WORKERS=12 for the concurrency tests.
#
# Environment: SESSIOND_BIN (server binary to use), SESSIOND_TEST_URI (use a
# running server instead of starting one), SESSIOND_SKIP_BUILD=1,
# SESSIOND_TEST_KEEP=1 (keep logs in /tmp/sessiond-php-tests-*).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

for tool in php; do
    command -v "$tool" >/dev/null || { echo "run-tests.sh: $tool not found (apt-get install php-cli)" >&2; exit 2; }
done
php -r 'exit(PHP_VERSION_ID >= 80100 ? 0 : 1);' || { echo "run-tests.sh: PHP 8.1+ required" >&2; exit 2; }
for ext in session posix pcntl; do
    php -r "exit(extension_loaded('$ext') ? 0 : 1);" || { echo "run-tests.sh: PHP extension $ext missing" >&2; exit 2; }
done

if [[ -n "${SESSIOND_TEST_URI:-}" ]]; then
    :
elif [[ -n "${SESSIOND_BIN:-}" ]]; then
    [[ -x "$SESSIOND_BIN" ]] || { echo "run-tests.sh: SESSIOND_BIN=$SESSIOND_BIN is not executable" >&2; exit 2; }
elif [[ "${SESSIOND_SKIP_BUILD:-0}" != 1 ]]; then
    bin="$root/target/debug/sessiond"
    if [[ ! -x "$bin" ]] || [[ -n "$(find "$root"/crates/*/src "$root"/crates/*/Cargo.toml "$root/Cargo.toml" "$root/Cargo.lock" -newer "$bin" -type f \( -name '*.rs' -o -name 'Cargo.*' \) -print -quit 2>/dev/null)" ]]; then
        echo "run-tests.sh: building sessiond (cargo build -p sessiond-server)…" >&2
        (cd "$root" && cargo build -p sessiond-server)
    fi
fi

if [[ -x "$here/vendor/bin/phpunit" ]]; then
    phpunit="$here/vendor/bin/phpunit"
elif command -v phpunit >/dev/null; then
    phpunit="$(command -v phpunit)"
else
    echo "run-tests.sh: phpunit not found (apt-get install phpunit, or composer install)" >&2
    exit 2
fi

cd "$here"
exec "$phpunit" --configuration "$here/phpunit.xml.dist" "$@"
