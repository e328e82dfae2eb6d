<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/** The per-key API (Sessiond\Session) under real concurrency. */
final class ApiTest extends TestCase
{
    /** @return list<array{0:array<string,mixed>}> */
    public static function contexts(): array
    {
        return [
            'none mode' => [['mode' => 'none']],
            'session mode (under the session lock)' => [['mode' => 'session']],
            'none mode, persistent connection' => [['mode' => 'none', 'persistent' => 1]],
            'session closed first (key locks)' => [['mode' => 'session', 'close_first' => 1]],
            'readonly mode' => [['mode' => 'readonly']],
        ];
    }

    /** @dataProvider contexts */
    public function testParallelIncrementLosesNothing(array $ctx): void
    {
        $id = $this->newSession();
        $paths = array_fill(0, 20, '/api.php' . self::q($ctx + ['op' => 'incr', 'key' => 'n']));
        $rs = $this->http->parallel($paths, $id);
        $results = [];
        foreach ($rs as $r) {
            $this->assertSame([], $r['json']['errors'] ?? ['bad json: ' . $r['body']], $r['body']);
            $results[] = $r['json']['result'];
            $this->assertSame($r['json']['result'], $r['json']['visible'], 'visible in $_SESSION in the same request');
        }
        sort($results);
        $this->assertSame(range(1, 20), $results);
        $this->assertSame('20', $this->serverFields($id)['n'][1]);
    }

    public function testIncrementInSessionModeUnderTheSessionLock(): void
    {
        $id = $this->newSession();
        $rs = $this->http->parallel(array_fill(0, 5, '/api.php' . self::q(['mode' => 'session', 'op' => 'incr', 'key' => 'n'])), $id);
        foreach ($rs as $r) {
            $this->assertSame([], $r['json']['errors'], $r['body']);
        }
        $this->assertSame('5', $this->serverFields($id)['n'][1]);
    }

    /** @dataProvider contexts */
    public function testSynchronizedLosesNothing(array $ctx): void
    {
        $id = $this->newSession();
        $rs = $this->http->parallel(array_fill(0, 8, '/api.php' . self::q($ctx + ['op' => 'sync', 'key' => 'n', 'sleep' => 30])), $id);
        foreach ($rs as $r) {
            $this->assertSame([], $r['json']['errors'], $r['body']);
        }
        $this->assertSame('8', $this->serverFields($id)['n'][1]);
    }

    /** @dataProvider contexts */
    public function testLockUnlockLosesNothing(array $ctx): void
    {
        $id = $this->newSession();
        $rs = $this->http->parallel(array_fill(0, 8, '/api.php' . self::q($ctx + ['op' => 'lock', 'key' => 'n', 'sleep' => 30])), $id);
        foreach ($rs as $r) {
            $this->assertSame([], $r['json']['errors'], $r['body']);
        }
        $this->assertSame('8', $this->serverFields($id)['n'][1]);
    }

    /** @dataProvider contexts */
    public function testOnceComputesExactlyOnce(array $ctx): void
    {
        $id = $this->newSession();
        $log = Env::$tmp . '/once-' . bin2hex(random_bytes(4)) . '.log';
        $rs = $this->http->parallel(array_fill(0, 8, '/api.php' . self::q($ctx + ['op' => 'once', 'key' => 'token', 'log' => $log, 'sleep' => 300])), $id);
        $values = [];
        foreach ($rs as $r) {
            $this->assertSame([], $r['json']['errors'], $r['body']);
            $values[] = $r['json']['result'];
            $this->assertSame($r['json']['result'], $r['json']['visible']);
        }
        $this->assertCount(1, file($log), 'exactly one request computed');
        $this->assertCount(1, array_unique($values), 'everyone got the computed value');
        $this->assertStringStartsWith('token-', $values[0]);
        // a later caller that saw the current version does not recompute either… unless it asks to replace that version
        $r = $this->http->get('/api.php' . self::q($ctx + ['op' => 'once', 'key' => 'token', 'log' => $log, 'ifver' => 0]), $id)['json'];
        $this->assertSame($values[0], $r['result']);
        $this->assertCount(1, file($log));
    }

    public function testOnceRecomputesWhenTheSeenVersionIsStale(): void
    {
        $id = $this->newSession(['token' => 'expired']);
        $log = Env::$tmp . '/once-' . bin2hex(random_bytes(4)) . '.log';
        // default IFVER = the version this request read: "replace the expired value I saw"
        $rs = $this->http->parallel(array_fill(0, 6, '/api.php' . self::q(['mode' => 'none', 'op' => 'once', 'key' => 'token', 'log' => $log])), $id);
        $values = array_map(fn ($r) => $r['json']['result'], $rs);
        $this->assertCount(1, file($log), 'the OAuth refresh ran once');
        $this->assertCount(1, array_unique($values));
        $this->assertNotSame('expired', $values[0]);
    }

    public function testCompareAndSet(): void
    {
        $id = $this->newSession(['n' => 5]);
        $r = $this->http->get('/api.php' . self::q(['mode' => 'none', 'op' => 'cas', 'key' => 'n', 'expected' => '5', 'new' => '6']), $id)['json'];
        $this->assertTrue($r['result']);
        $this->assertSame(6, $r['visible']);
        $r = $this->http->get('/api.php' . self::q(['mode' => 'none', 'op' => 'cas', 'key' => 'n', 'expected' => '5', 'new' => '7']), $id)['json'];
        $this->assertFalse($r['result']);
        $this->assertSame(6, $r['visible'], 'on failure $_SESSION has the current value');
        $r = $this->http->get('/api.php' . self::q(['mode' => 'none', 'op' => 'cas', 'key' => 'arr', 'expected' => 'null', 'new' => '[1,2]']), $id)['json'];
        $this->assertFalse($r['result'], 'an absent key never matches');
    }

    /** @dataProvider contexts */
    public function testApiWritesAreNotWrittenBackAtTheEnd(array $ctx): void
    {
        $id = $this->newSession(['other' => 'x']);
        $r = $this->http->get('/api.php' . self::q($ctx + ['op' => 'incr', 'key' => 'n', 'by' => 5]), $id)['json'];
        $this->assertSame(5, $r['result']);
        $f = $this->serverFields($id);
        $this->assertSame('5', $f['n'][1]);
        $this->assertSame($r['version'], $f['n'][0], 'the end-of-request write did not rewrite the key');
        // next request sees it in $_SESSION
        $next = $this->http->get('/hold.php' . self::q(['mode' => 'readonly']), $id)['json'];
        $this->assertSame(5, $next['seen']['n']);
    }

    /** @return array<string, array{0:array<string,mixed>}> */
    public static function forgottenLocks(): array
    {
        return [
            'none mode' => [['mode' => 'none']],
            'none mode, uncaught exception' => [['mode' => 'none', 'throw' => 1]],
            'none mode, persistent connection' => [['mode' => 'none', 'persistent' => 1]],
            'none mode, persistent connection, uncaught exception' => [['mode' => 'none', 'persistent' => 1, 'throw' => 1]],
            'session closed first' => [['mode' => 'session', 'close_first' => 1]],
        ];
    }

    /**
     * A key lock the app forgot to unlock is released at the end of the
     * request, and the next request served by the same PHP process (the one
     * that would reuse a persistent connection) gets it.
     *
     * @dataProvider forgottenLocks
     */
    public function testForgottenKeyLockIsReleasedAtTheEndOfTheRequest(array $ctx): void
    {
        $id = $this->newSession();
        $sock = $this->http->start('/api.php' . self::q($ctx + ['op' => 'lock_forget', 'key' => 'k']), $id);
        $port = \Sessiond\Tests\Support\Http::portOf($sock);
        $r = $this->http->finish($sock);
        $this->assertSame(empty($ctx['throw']) ? 200 : 500, $r['status'], $r['body']);
        // the release is a LOCK.RELEASE the request waits for, so it is
        // done by the time the response is complete
        $this->assertNull($this->lockInfo($id, 'k'), 'the key lock was released');
        $next = $this->json($this->http->get('/api.php' . self::q(['mode' => $ctx['mode'], 'persistent' => $ctx['persistent'] ?? 0, 'op' => 'lock', 'key' => 'k', 'wait' => 30000]), $id, $port));
        $this->assertSame([], $next['errors']);
        $this->assertTrue($next['ok']);
        $this->assertIsInt($next['result'], 'the next request took and released the key lock');
        $tok = $this->redis->command(['LOCK.ACQUIRE', $id, 'KEY', 'k', 'WAIT', 30000])[0];
        $this->assertSame(1, $this->redis->command(['LOCK.RELEASE', $id, 'KEY', 'k', $tok]));
    }

    public function testApiChangeSurvivesLaterWriteOfOtherKeysInNoneMode(): void
    {
        $id = $this->newSession();
        $r = $this->http->get('/api.php' . self::q(['mode' => 'none', 'op' => 'incr', 'key' => 'n', 'set' => ['k' => 'v']]), $id)['json'];
        $this->assertSame([], $r['errors']);
        $f = $this->serverFields($id);
        $this->assertSame('1', $f['n'][1]);
        $this->assertSame(serialize('v'), $f['k'][1]);
    }

    /** @return array<string, array{0:string}> */
    public static function lockLosers(): array
    {
        return ['synchronized()' => ['sync_expire'], 'lock()/unlock()' => ['lock_expire'], 'once()' => ['once_expire']];
    }

    /**
     * A key lock whose lease runs out under a real server while the request
     * holds it: the fenced commit is refused and LockLostException names the
     * key (it used to say "FENCE", the word in the slot where INCR has the
     * key). The app waits for LOCK.INFO to stop showing the lock, not for a
     * sleep to pass.
     *
     * @dataProvider lockLosers
     */
    public function testLostKeyLockNamesTheKey(string $op): void
    {
        $id = $this->newSession(['cart' => 'before']);
        $r = $this->json($this->http->get('/api.php' . self::q(['mode' => 'none', 'op' => $op, 'key' => 'cart', 'lease' => 200]), $id));
        $this->assertTrue($r['ok']);
        $this->assertIsArray($r['result'], 'LockLostException expected: ' . json_encode($r));
        $this->assertSame('Sessiond\\Exception\\LockLostException', $r['result']['class']);
        $this->assertStringContainsString('lock on key "cart" was lost', $r['result']['message']);
        $this->assertStringNotContainsString('"FENCE"', $r['result']['message']);
        $this->assertSame(serialize('before'), $this->serverFields($id)['cart'][1], 'the late write was refused');
    }
}
