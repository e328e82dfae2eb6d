<?php

declare(strict_types=1);

/*
 * The handler's CPU per request without a web server: N times in one
 * process what a request does (register(), session_start() on an existing
 * session, one change, session_write_close(), the end-of-request cleanup),
 * with the process's user and system CPU from getrusage(). The same for
 * phpredis with `--phpredis tcp://host:port` (locking on unless
 * `--no-locking`). See docs/benchmarks.md "PHP handler: where the time goes".
 *
 *   php [-d extension=target/php-ext/sessiond.so] clients/php/tools/cli-loop.php 'tcp://127.0.0.1:6380?persistent=1' [cycles]
 *   php clients/php/tools/cli-loop.php --phpredis tcp://127.0.0.1:6379 [cycles] [--no-locking]
 *   php -d extension=target/php-ext/sessiond.so clients/php/tools/cli-loop.php --native 'tcp://127.0.0.1:6380?persistent=1' [cycles]
 *
 * --native: the extension's save handler (session.save_handler = sessiond).
 */

require dirname(__DIR__) . '/src/autoload.php';

$args = array_slice($argv, 1);
$redis = false;
$native = false;
$locking = !in_array('--no-locking', $args, true);
$args = array_values(array_diff($args, ['--no-locking']));
if (($args[0] ?? '') === '--phpredis') {
    $redis = true;
    array_shift($args);
} elseif (($args[0] ?? '') === '--native') {
    $native = true;
    array_shift($args);
}
$uri = $args[0] ?? 'tcp://127.0.0.1:6380';
$cycles = (int) ($args[1] ?? 4000);

ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '1');
ini_set('session.cache_limiter', '');
ini_set('session.gc_probability', '0');
if ($redis) {
    ini_set('session.save_handler', 'redis');
    ini_set('session.save_path', $uri);
    ini_set('redis.session.locking_enabled', $locking ? '1' : '0');
} elseif ($native) {
    ini_set('session.save_handler', 'sessiond');
    ini_set('session.save_path', $uri);
}

$cycle = function (?string $id) use ($redis, $native, $uri): string {
    $h = null;
    if (!$redis && !$native) {
        $h = Sessiond\SessionHandler::register($uri);
    }
    if ($id !== null) {
        session_id($id);
    }
    session_start();
    if (!isset($_SESSION['k0'])) {
        for ($i = 0; $i < 10; $i++) {
            $_SESSION["k$i"] = str_repeat(chr(97 + $i), 100);
        }
        $_SESSION['counter'] = 0;
    }
    $_SESSION['counter']++;
    $id = session_id();
    session_write_close();
    $h?->releaseAll(); // what the shutdown function does at the end of a request
    return $id;
};

$id = $cycle(null);
for ($i = 0; $i < 200; $i++) {
    $cycle($id); // warm up
}
$r0 = getrusage();
$t0 = hrtime(true);
for ($i = 0; $i < $cycles; $i++) {
    $cycle($id);
}
$wall = (hrtime(true) - $t0) / 1e3 / $cycles;
$r1 = getrusage();
$us = static fn (array $r, string $k): float => $r["ru_$k.tv_sec"] * 1e6 + $r["ru_$k.tv_usec"];
printf(
    "%s: %d cycles, µs per cycle: wall %.1f, user %.1f, system %.1f (extension %s)\n",
    $redis ? 'phpredis' . ($locking ? ' (locking on)' : ' (no locking)') : ($native ? 'sessiond (native save handler)' : 'sessiond'),
    $cycles,
    $wall,
    ($us($r1, 'utime') - $us($r0, 'utime')) / $cycles,
    ($us($r1, 'stime') - $us($r0, 'stime')) / $cycles,
    extension_loaded('sessiond') ? 'loaded' : 'not loaded',
);
