<?php

declare(strict_types=1);

/*
 * Corpus for the extension's differential tests (tests/ExtensionTest.php):
 * random $_SESSION contents encoded by PHP's own session serializers
 * (session_encode() under `php`, `php_serialize` and `php_binary`), with
 * shared objects and PHP references across keys, binary strings and nested
 * arrays. Runs in its own process: session_start() must come before any
 * output, which phpunit has long produced. Prints JSON: a list of
 * [handler, base64 of the session string].
 *
 *   php gen-sessions.php <count> <seed>
 */

$count = (int) ($argv[1] ?? 100);
mt_srand((int) ($argv[2] ?? 1));
$dir = sys_get_temp_dir() . '/sessiond-gen-' . getmypid();
@mkdir($dir);
ini_set('session.save_handler', 'files');
ini_set('session.save_path', $dir);
ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '0');
ini_set('session.cache_limiter', '');

function rnd_string(): string
{
    $alphabet = ['a', 'b', 'z', '|', ';', '"', '}', '{', ':', "\0", "\n", "\r", '\\', 'é', "\xff", '!', '.', '0', '9', ' '];
    $s = '';
    for ($i = 0, $n = mt_rand(0, 12); $i < $n; $i++) {
        $s .= $alphabet[mt_rand(0, count($alphabet) - 1)];
    }
    return $s;
}

function rnd_key(): string|int
{
    switch (mt_rand(0, 7)) {
        case 0:
            return mt_rand(-5, 100); // numeric keys (php/php_binary skip them)
        case 1:
            return (string) mt_rand(0, 50) . 'x';
        case 2:
            return '_sf2_attributes';
        case 3:
            return str_repeat('k', mt_rand(100, 140)); // php_binary: over 127 is skipped
        default:
            return 'k' . rnd_string();
    }
}

function rnd_value(int $depth, array &$pool): mixed
{
    $t = mt_rand(0, $depth > 3 ? 7 : 11);
    switch ($t) {
        case 0: return mt_rand(PHP_INT_MIN, PHP_INT_MAX);
        case 1: return mt_rand(-1000, 1000);
        case 2: return rnd_string();
        case 3: return mt_rand(0, 1) === 1;
        case 4: return null;
        case 5: return [1.5, -0.0, 1e300, 0.1, NAN, INF][mt_rand(0, 5)];
        case 6: return str_repeat(rnd_string(), mt_rand(1, 40));
        case 7: return $pool !== [] ? $pool[array_rand($pool)] : 'none'; // a shared object: r:N
        case 8:
        case 9:
            $a = [];
            for ($i = 0, $n = mt_rand(0, 4); $i < $n; $i++) {
                $a[rnd_key()] = rnd_value($depth + 1, $pool);
            }
            return $a;
        case 10:
            $o = new stdClass();
            $o->{'p' . mt_rand(0, 9)} = rnd_value($depth + 1, $pool);
            $pool[] = $o;
            return $o;
        default:
            $o = new ArrayObject([rnd_value($depth + 1, $pool)]);
            $pool[] = $o;
            return $o;
    }
}

$out = [];
foreach (['php', 'php_serialize', 'php_binary'] as $handler) {
    ini_set('session.serialize_handler', $handler);
    session_id('gen' . bin2hex(random_bytes(6)));
    session_start();
    for ($i = 0; $i < $count; $i++) {
        $pool = [];
        $data = [];
        for ($k = 0, $n = mt_rand(0, 8); $k < $n; $k++) {
            $data[rnd_key()] = rnd_value(0, $pool);
        }
        if (mt_rand(0, 3) === 0) {
            // a PHP reference shared by two keys: R:N
            $shared = [mt_rand()];
            $data['r1'] = &$shared;
            $data['r2'] = &$shared;
        }
        $_SESSION = $data;
        unset($shared);
        $enc = @session_encode();
        if (is_string($enc)) {
            $out[] = [$handler, base64_encode($enc)];
        }
    }
    $_SESSION = [];
    session_abort();
}
// session_start() left a file per session in $dir (session_abort() keeps it).
foreach (glob($dir . '/sess_*') ?: [] as $file) {
    @unlink($file);
}
@rmdir($dir);
echo json_encode($out);
