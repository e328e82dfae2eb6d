<?php

declare(strict_types=1);

namespace Sessiond\Tests\Support;

use Sessiond\Connection;

/**
 * Base of the suite. Concurrency tests order requests by evidence, never by
 * sleeping: a request reports that it got somewhere (?ready=NAME), waits for
 * the test to let it go on (?gate=NAME), and the server's LOCK.INFO shows who
 * holds a lock and who waits for it. Every wait here is a hang guard (30 s),
 * far beyond anything a correct run needs even on a loaded machine; no test
 * asserts that something was fast.
 */
abstract class TestCase extends \PHPUnit\Framework\TestCase
{
    protected const HANG_GUARD = 30.0;

    protected Http $http;
    protected Connection $redis;
    /** @var list<string> gates of this test, opened in tearDown so no request stays parked */
    private array $gates = [];
    /** @var list<resource> CLI processes of this test, killed in tearDown */
    private array $procs = [];

    protected function setUp(): void
    {
        Env::ensureWebServers();
        $this->http = Env::http();
        $this->redis = Env::connection();
    }

    protected function tearDown(): void
    {
        foreach ($this->gates as $g) {
            $this->openGate($g);
        }
        Http::drain();
        foreach ($this->procs as $p) {
            if (is_resource($p)) {
                $st = proc_get_status($p);
                if ($st['running']) {
                    posix_kill($st['pid'], SIGKILL);
                }
                proc_close($p);
            }
        }
        $this->redis->close();
    }

    /**
     * run-tests.sh's native pass (SESSIOND_PHP_NATIVE=1): the test apps
     * install the extension's C save handler instead of the PHP class (see
     * tests/app/_init.php).
     */
    public static function nativePass(): bool
    {
        return getenv('SESSIOND_PHP_NATIVE') === '1';
    }

    /**
     * Skips a test of a class that runs in the native pass when it needs the
     * PHP class itself (its per-key API, its bootstrap, ...): $why in one line.
     */
    protected function skipUnderNative(string $why): void
    {
        if (self::nativePass()) {
            $this->markTestSkipped("native save handler pass: $why");
        }
    }

    /** Creates a session through the app and returns its id. */
    protected function newSession(array $init = []): string
    {
        $r = $this->http->get('/new.php?init=' . rawurlencode(json_encode($init, JSON_FORCE_OBJECT)));
        $this->assertSame(200, $r['status'], $r['body']);
        $this->assertIsArray($r['json'], $r['body']);
        $this->assertNotNull($r['cookie'], 'new.php must send a session cookie');
        $this->assertSame($r['cookie'], $r['json']['id']);
        return $r['json']['id'];
    }

    /** @return array<string, array{0:int,1:?string}> fields of a session straight from the server */
    protected function serverFields(string $id): array
    {
        $r = $this->redis->command(['SESSION.READ', $id]);
        $this->assertIsArray($r, "session $id should exist");
        $out = [];
        for ($i = 0; $i + 3 <= count($r[3]); $i += 3) {
            $out[(string) $r[3][$i]] = [(int) $r[3][$i + 1], $r[3][$i + 2]];
        }
        return $out;
    }

    protected static function q(array $params): string
    {
        return '?' . http_build_query($params);
    }

    /** @param array<string,string> $env */
    /**
     * For the tests that end a request abnormally (killed, exit, fatal
     * error, uncaught exception): each runs on a per-request socket and on
     * a persistent one (the `persistent` option), since a lock must never
     * outlive its request on a socket the next request reuses.
     *
     * @return array<string, array{0: array<string, int>}>
     */
    public static function sockets(): array
    {
        return [
            'per-request socket' => [[]],
            'persistent socket' => [['persistent' => 1]],
        ];
    }

    protected function phpCli(string $script, array $args = [], array $env = [])
    {
        $cmd = array_merge([PHP_BINARY, '-d', 'display_errors=stderr', dirname(__DIR__) . '/app/' . $script], $args);
        $env = array_merge(getenv(), ['SESSIOND_URI' => Env::$uri, 'SESSIOND_TEST_TMP' => Env::$tmp], $env);
        $p = proc_open($cmd, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        $this->procs[] = $p;
        return [$p, $pipes];
    }

    // --- coordination with the requests (see tests/app/_init.php) ---

    /** A fresh name for ?ready= / ?gate= / ?barrier=, registered so tearDown opens it. */
    protected function signal(string $what): string
    {
        $name = $what . '-' . bin2hex(random_bytes(6));
        $this->gates[] = $name;
        return $name;
    }

    protected function isReady(string $name): bool
    {
        return file_exists(Env::$tmp . "/signals/$name.ready");
    }

    /** Waits until the request started with ?ready=$name got there. */
    protected function awaitReady(string $name): void
    {
        $this->waitUntil(fn () => $this->isReady($name), "request $name to report ready");
    }

    /** The pid of the PHP process that reported ready. */
    protected function readyPid(string $name): int
    {
        $this->awaitReady($name);
        $pid = (int) file_get_contents(Env::$tmp . "/signals/$name.ready");
        $this->assertGreaterThan(1, $pid, "pid reported by $name");
        return $pid;
    }

    protected function openGate(string $name): void
    {
        touch(Env::$tmp . "/signals/$name.go");
    }

    /** Polls $cond every 10 ms; fails the test when the hang guard runs out. */
    protected function waitUntil(callable $cond, string $what, float $timeout = self::HANG_GUARD): mixed
    {
        $deadline = microtime(true) + $timeout;
        while (true) {
            $v = $cond();
            if ($v) {
                return $v;
            }
            if (microtime(true) > $deadline) {
                $this->fail("hang guard: waited {$timeout} s for $what");
            }
            usleep(10000);
        }
    }

    // --- the server's view of the locks (LOCK.INFO, docs/protocol.md) ---

    /**
     * The lock of scope $scope on session $id (key lock: $key), or null:
     * ['token' => int, 'holder' => client id, 'waiters' => list of waiter rows].
     *
     * @return array{token:int, holder:int, waiters:list<array<int,mixed>>}|null
     */
    protected function lockInfo(string $id, ?string $key = null): ?array
    {
        foreach ($this->redis->command(['LOCK.INFO', $id]) ?? [] as $l) {
            if ($l[1] === ($key === null ? 'session' : 'key') && $l[2] === $key) {
                return ['token' => (int) $l[3], 'holder' => (int) $l[4], 'waiters' => $l[9] ?? []];
            }
        }
        return null;
    }

    /** Waits until the server shows the session lock of $id held; returns its LOCK.INFO. */
    protected function awaitHolder(string $id): array
    {
        return $this->waitUntil(fn () => $this->lockInfo($id), "a holder of the lock on session $id");
    }

    /** Waits until $n requests are queued (server-side) for the session lock of $id. */
    protected function awaitWaiters(string $id, int $n): array
    {
        return $this->waitUntil(function () use ($id, $n) {
            $l = $this->lockInfo($id);
            return $l !== null && count($l['waiters']) >= $n ? $l : null;
        }, "$n waiter(s) for the lock on session $id");
    }

    /** A response of a test app: decoded, and checked for hang guards that ran out. */
    protected function json(array $response): array
    {
        $this->assertIsArray($response['json'], 'not JSON: ' . $response['body']);
        $this->assertSame([], $response['json']['hung'] ?? [], 'a request ran into its hang guard');
        return $response['json'];
    }
}
