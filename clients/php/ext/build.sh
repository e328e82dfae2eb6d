#!/usr/bin/env bash
# Builds the optional C extension (clients/php/ext/sessiond) out of tree, in
# target/php-ext/ at the repository root, so the source directory stays
# clean (phpize writes dozens of files where it runs). Prints the path of
# the built sessiond.so. Idempotent: when sessiond.so is newer than the
# sources and the PHP it was built for is the same, it does nothing (fast
# enough to call before every test run).
#
#   clients/php/ext/build.sh            # builds if needed, prints the .so path
#   php -d extension=$(clients/php/ext/build.sh) …
#
# Needs phpize and php-config (Debian: apt-get install php-dev).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
src="$here/sessiond"
out="${SESSIOND_PHP_EXT_DIR:-$root/target/php-ext}"
so="$out/sessiond.so"
phpize="${PHPIZE:-phpize}"
php_config="${PHP_CONFIG:-php-config}"

command -v "$phpize" >/dev/null || { echo "build.sh: phpize not found (apt-get install php-dev)" >&2; exit 2; }
# The PHP the extension is built for: a build for another API version
# would not load.
stamp="$("$php_config" --version) $("$php_config" --extension-dir)"

if [[ -f "$so" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" \
      && -z "$(find "$src" "$here/build.sh" -newer "$so" -type f -print -quit)" ]]; then
    echo "$so"
    exit 0
fi

build="$out/build"
rm -rf "$build"
mkdir -p "$build"
# phpize works in the directory it runs in: build from a copy
cp "$src"/config.m4 "$src"/*.c "$src"/*.h "$build"/
# quiet unless it fails (autoconf's warnings about phpize's own macros are
# not ours to fix)
if ! (
    cd "$build"
    "$phpize"
    ./configure --with-php-config="$(command -v "$php_config")" --enable-sessiond
    make -j"$(nproc 2>/dev/null || echo 1)" CFLAGS="-O2 -g -Wall -Wextra -Wno-unused-parameter -Werror"
) > "$build/build.log" 2>&1; then
    tail -40 "$build/build.log" >&2
    echo "build.sh: build failed; full log: $build/build.log" >&2
    exit 1
fi
cp "$build/modules/sessiond.so" "$so.tmp"
mv "$so.tmp" "$so"
echo "$stamp" > "$out/stamp"
echo "$so"
