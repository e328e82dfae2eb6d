<?php

declare(strict_types=1);

/*
 * Micro-benchmarks of the handler's CPU-heavy pieces, without I/O, with the
 * sessiond C extension's functions and with the PHP code (both in one
 * process: the handler's $native switches). µs per call, the best of 7
 * rounds of 5,000 calls (the machine is shared: the best round is the one
 * least disturbed). See docs/benchmarks.md "PHP handler: where the time goes".
 *
 *   php -d extension=target/php-ext/sessiond.so clients/php/tools/microbench.php
 */

require dirname(__DIR__) . '/src/autoload.php';

use Sessiond\Codec;
use Sessiond\Connection;
use Sessiond\SessionHandler;

// The benchmark page's session: ten 100-byte strings and a counter.
$session = [];
for ($i = 0; $i < 10; $i++) {
    $session["k$i"] = str_repeat(chr(97 + $i), 100);
}
$session['counter'] = 41;
$fields = [];
foreach ($session as $k => $v) {
    array_push($fields, $k, 7, Codec::encodeValue($v));
}
// LOCK.ACQUIRE's reply: [token, [id, created, ttl, [key, version, value, …]]]
$reply = "*2\r\n:12\r\n*4\r\n$16\r\nsid0123456789abc\r\n:1700000000\r\n:1440\r\n*" . count($fields) . "\r\n";
foreach ($fields as $f) {
    $reply .= is_int($f) ? ":$f\r\n" : '$' . strlen($f) . "\r\n$f\r\n";
}
$phpSession = Codec::encodeSession(['counter' => 42] + $session, 'php');
$uri = 'tcp://127.0.0.1:6380?lock_mode=session&persistent=1';
$h = new SessionHandler($uri);
$conn = new Connection('tcp://127.0.0.1:6380');

$readReply = Closure::bind(function (string $buf): mixed {
    $this->buf = $buf;
    $this->pos = 0;
    return $this->readReply(microtime(true) + 5);
}, $conn, Connection::class);
$absorb = Closure::bind(fn (array $f): array => $this->absorbRead('sid0123456789abc', ['sid0123456789abc', 1, 1, $f]), $h, SessionHandler::class);
$delta = Closure::bind(fn (array $new): array => $this->delta($this->splitNested($new)), $h, SessionHandler::class);
$encode = Closure::bind(static fn (array $c): string => (Connection::$native ? sessiond_resp_encode($c) : null) ?? Connection::encode($c), null, Connection::class);
$absorb($fields); // the read set delta() compares with
$new = Codec::splitSession($phpSession, 'php');
$commit = [['SESSION.COMMIT', 'sid0123456789abc', 'TTL', 1440, 'FENCE', 12, 'UNLOCK', 'SET', 'counter', '42']];

$pieces = [
    "parse the LOCK.ACQUIRE reply (11 keys: " . (4 + count($fields) + 2) . " RESP elements)" => fn () => $readReply($reply),
    'Codec::splitSession() (session string -> 11 field encodings)' => fn () => Codec::splitSession($phpSession, 'php'),
    'absorbRead() (11 fields -> values, read set)' => fn () => $absorb($fields),
    'Codec::encodeSession() (values -> session string for read())' => fn () => Codec::encodeSession($session, 'php'),
    'splitNested() + delta() (what changed)' => fn () => $delta($new),
    'encode the SESSION.COMMIT request' => fn () => $encode($commit),
    'new SessionHandler($uri)' => fn () => new SessionHandler($uri),
];

function bench(callable $f): float
{
    $best = INF;
    for ($round = 0; $round < 7; $round++) {
        $t = hrtime(true);
        for ($i = 0; $i < 5000; $i++) {
            $f();
        }
        $best = min($best, (hrtime(true) - $t) / 5000 / 1000);
    }
    return $best;
}

$ext = extension_loaded('sessiond');
printf("%-66s %8s %8s\n", 'piece (µs per call)', 'PHP', $ext ? 'C ext' : '(no ext)');
foreach ($pieces as $name => $f) {
    Connection::$native = Codec::$native = SessionHandler::$native = false;
    $php = bench($f);
    $c = NAN;
    if ($ext) {
        Connection::$native = Codec::$native = SessionHandler::$native = true;
        $c = bench($f);
    }
    printf("%-66s %8.2f %8.2f\n", $name, $php, $c);
}
