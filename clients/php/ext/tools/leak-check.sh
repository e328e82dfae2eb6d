#!/usr/bin/env bash
# Runs tools/leak-loop.php under valgrind with PHP's own allocator off
# (USE_ZEND_ALLOC=0, so every emalloc is a malloc valgrind sees) and fails
# on any memory error or definite leak. Not part of CI (valgrind is slow and
# not installed there); run it after changing sessiond.c.
#
#   clients/php/ext/tools/leak-check.sh [iterations]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v valgrind >/dev/null || { echo "leak-check.sh: valgrind not found (apt-get install valgrind)" >&2; exit 2; }
so="$(bash "$here/../build.sh")"
USE_ZEND_ALLOC=0 ZEND_DONT_UNLOAD_MODULES=1 valgrind --leak-check=full --errors-for-leak-kinds=definite \
    --error-exitcode=3 --quiet php -n -d "extension=$so" "$here/leak-loop.php" "${1:-300}"
