#!/usr/bin/env bash
# Installs what the race lab runs on Debian, when missing: PHP (cli, fpm,
# phpredis, php-memcached), nginx, redis-server, memcached, and Symfony and
# Laravel for the framework rows. The lab also
# runs without some of them (it skips those handlers, or serves PHP with
# `php -S`), but the full table and CI need them all.
set -euo pipefail

has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
php_ext() { has php && php -r "exit(extension_loaded('$1') ? 0 : 1);" 2>/dev/null; }

need=()
has php || need+=(php-cli)
compgen -G '/usr/sbin/php-fpm*' >/dev/null || has php-fpm || need+=(php-fpm)
php_ext redis || need+=(php-redis)
php_ext memcached || need+=(php-memcached)
has nginx || need+=(nginx)
has redis-server || need+=(redis-server)
has memcached || need+=(memcached)
# The framework rows (symfony-*, laravel-*): Debian's Symfony 5.4 and Laravel 8.83.
[ -f /usr/share/php/Symfony/Component/HttpFoundation/autoload.php ] || need+=(php-symfony-http-foundation)
[ -f /usr/share/php/Illuminate/autoload.php ] || need+=(php-laravel-framework)

if [ ${#need[@]} -gt 0 ]; then
  echo "racelab-deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # RUNLEVEL=1 asks invoke-rc.d not to start the packages' own nginx,
  # php-fpm, redis and memcached services where runlevel(8) honours it; the
  # lab starts private ones on free ports either way, so they never clash.
  $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
