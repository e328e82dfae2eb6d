#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with the Rust toolchain:
# installs what the tests need (redis-cli; redis-server and memcached for
# the benchmark tool's test and the race lab; PHP, php-fpm and nginx for the
# PHP client's tests and the race lab; Debian's Symfony and Laravel for the
# framework tests and the race lab's framework rows; cargo-afl for fuzzing),
# checks formatting and lints, then runs every test (the power-loss crash
# test and the disk-full tests among them), short fuzzing and soak runs, the
# package test, and a short race lab run as sessiond's end-to-end acceptance
# test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# redis-server and memcached: the benchmark tool's test runs them.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v memcached >/dev/null 2>&1 || need+=(memcached)
# etcd 3.4: the cluster benchmark compares with it (its quick test runs it).
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# PHP client tests (clients/php/run-tests.sh): php-cli brings the session,
# posix and pcntl extensions they use, phpunit the runner, php-fpm and nginx
# the production-like setup of tests/FpmTest.php; setsid (util-linux) is part
# of every Debian install.
command -v php >/dev/null 2>&1 || need+=(php-cli)
command -v phpunit >/dev/null 2>&1 || need+=(phpunit)
compgen -G '/usr/sbin/php-fpm*' >/dev/null || need+=(php-fpm)
[ -x /usr/sbin/nginx ] || need+=(nginx)
# phpize (php-dev): run-tests.sh builds the handler's optional C extension
# (clients/php/ext/build.sh, into target/php-ext/) and runs the suite with it
# loaded, then without.
command -v phpize >/dev/null 2>&1 || need+=(php-dev)
# The framework tests (clients/php/tests/SymfonyTest.php, LaravelTest.php)
# run Debian's Symfony 5.4 and Laravel 8.83 packages.
[ -f /usr/share/php/Symfony/Component/HttpKernel/autoload.php ] || need+=(php-symfony-http-kernel php-symfony-http-foundation php-symfony-event-dispatcher php-psr-container)
[ -f /usr/share/php/Illuminate/Foundation/Application.php ] || need+=(php-laravel-framework)
# openssl: the PHP handler's TLS test (clients/php/tests/TlsTest.php) makes
# its certificates with it.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The metrics test reads scrapes with the reference Prometheus parsers; the
# package test builds a .deb (dpkg-deb is part of every Debian install).
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
# redis-py: the admin commands as operators' scripts call them.
/usr/bin/python3 -c 'import redis' 2>/dev/null || need+=(python3-redis)
# The cluster's partition tests (tests/cluster_partition.rs, chaos.sh) make
# network namespaces, veth pairs and bridges with iproute2's `ip` (as root).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

bash scripts/racelab-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

# The Debian package: built from the debug binary, installed, started with
# its shipped config, removed.
bash scripts/package-test.sh --profile dev

# Fuzzing, short: the request parser and command parsing under AFL++
# (cargo-afl, stable toolchain; installed on first use), 25 s per target.
# Fails on any crash or hang found, which it copies to fuzz/regressions/.
bash scripts/fuzz.sh --seconds 25

# Soak, short: a mixed session load against the debug binary for 45 s.
# Fails on any error, any lost update, or resident memory that keeps growing.
bash scripts/soak.sh --seconds 45

# Chaos, short: a three-node cluster under locked increments and once-only
# payments for 60 s while random nodes are killed, stopped, restarted and
# (as root) partitioned. Fails on any lost increment, double payment or
# non-linearizable history.
bash scripts/chaos.sh --seconds 60

# The PHP session handler against the target/debug/sessiond that
# `cargo test` just built (it builds one only if missing or stale): the
# whole suite with the C extension loaded, then without it.
bash clients/php/run-tests.sh

# The race lab, short: one iteration of every scenario on every handler
# (about a minute). Exits non-zero if a sessiond row contradicts what
# sessiond claims (lost updates, duplicate payments, re-logins, fast requests
# held up where it says they are not) or if any sessiond request failed.
# Peers' wrong rows are the expected finding and do not fail the run.
RACELAB_PROFILE=debug bash scripts/racelab.sh --iterations 1 --check --out target/racelab-ci
