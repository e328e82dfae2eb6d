<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Laravel\LockStore;
use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/**
 * sessiond as Laravel's session driver (Debian's Laravel 8.83), driven
 * through the framework's Application, Router and StartSession middleware
 * (tests/app/laravel.php): Laravel's Store reads once and writes
 * serialize($attributes) once; the driver turns that into per-key commits.
 */
final class LaravelTest extends TestCase
{
    protected function setUp(): void
    {
        if (!is_file('/usr/share/php/Illuminate/autoload.php')) {
            $this->markTestSkipped('Laravel not installed (apt-get install php-laravel-framework; scripts/test.sh does)');
        }
        parent::setUp();
    }

    /** @param array<string, mixed> $params */
    private function lv(array $params, ?string $id = null): array
    {
        $r = $this->http->get('/laravel.php' . self::q($params), $id);
        $this->assertSame(200, $r['status'], $r['body']);
        $j = $this->json($r);
        $j['cookie'] = $r['cookie'];
        return $j;
    }

    /** Attributes the app set (without Laravel's _token, _previous, _flash). */
    private static function own(array $seen): array
    {
        unset($seen['_token'], $seen['_previous'], $seen['_flash']);
        ksort($seen);
        return $seen;
    }

    /** @return array<string, array{0:string}> */
    public static function writeModes(): array
    {
        return ['none' => ['none'], 'session' => ['session']];
    }

    /** @dataProvider writeModes */
    public function testSessionPersistsOneFieldPerAttribute(string $mode): void
    {
        $a = $this->lv(['mode' => $mode, 'set' => ['user' => 'alice', 'cart' => '3']]);
        $this->assertSame([], $a['errors']);
        $id = $a['cookie'];
        $this->assertSame($a['id'], $id);
        $f = $this->serverFields($id);
        $this->assertSame(serialize('alice'), $f['user'][1]);
        $this->assertSame(serialize('3'), $f['cart'][1]);
        $this->assertArrayHasKey('_token', $f);
        $b = $this->lv(['mode' => $mode], $id);
        $this->assertSame([], $b['errors']);
        $this->assertSame(['cart' => '3', 'user' => 'alice'], self::own($b['seen']));
        $this->assertSame($a['seen']['_token'] ?? $b['seen']['_token'], $b['seen']['_token'], 'the CSRF token is kept');
    }

    /**
     * Two requests (different URLs, so _previous.url differs too) read the
     * session before either writes and put different keys: both survive,
     * and nothing is reported.
     */
    public function testConcurrentRequestsPuttingDifferentKeysBothSurvive(): void
    {
        $id = $this->lv(['set' => ['user' => 'alice']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/laravel.php' . self::q(['set' => ['a' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $b = $this->lv(['set' => ['b' => '2']], $id);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        foreach ([$ra, $b] as $r) {
            $this->assertSame([], $r['errors'], json_encode($r));
            $this->assertSame([], $r['conflicts']);
        }
        $this->assertSame(['a' => '1', 'b' => '2', 'user' => 'alice'], self::own($this->lv([], $id)['seen']));
    }

    public function testSameKeyConflictIsReported(): void
    {
        $id = $this->lv(['set' => ['x' => 'orig']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/laravel.php' . self::q(['set' => ['x' => 'A'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->lv(['set' => ['x' => 'B']], $id);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $this->assertSame([['x']], $ra['conflicts']);
        $this->assertStringContainsString('conflict', implode("\n", $ra['errors']));
        $this->assertSame(serialize('B'), $this->serverFields($id)['x'][1]);
    }

    /**
     * A flash shown by two concurrent requests: both age it out (each
     * deletes the flashed key and rewrites _flash). Same outcome, different
     * bookkeeping: no conflict, no warning, and the flash is gone.
     */
    public function testFlashDataIsNotConflictNoise(): void
    {
        // Laravel ages the flash when it saves: the next request shows it
        // and drops it at its end
        $id = $this->lv(['flash' => ['status' => 'saved']])['cookie'];
        $this->assertEquals(['old' => ['status'], 'new' => []], unserialize($this->serverFields($id)['_flash'][1]));
        $ga = $this->signal('A');
        $a = $this->http->start('/laravel.php' . self::q(['ready' => $ga, 'gate' => $ga, 'x' => 'a']), $id);
        $this->awaitReady($ga);
        $b = $this->lv(['x' => 'b'], $id);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        foreach ([$ra, $b] as $r) {
            $this->assertSame('saved', $r['seen']['status'], 'both saw the flash');
            $this->assertSame([], $r['errors'], json_encode($r));
            $this->assertSame([], $r['conflicts']);
        }
        $f = $this->serverFields($id);
        $this->assertArrayNotHasKey('status', $f, 'the flash is gone');
        $this->assertEquals(['old' => [], 'new' => []], unserialize($f['_flash'][1]));
    }

    /** @return array<string, array{0:string,1:int}> */
    public static function regenerations(): array
    {
        return [
            'regenerate(), none' => ['none', 0],
            'regenerate(true), none' => ['none', 1],
            'regenerate(), session' => ['session', 0],
            'regenerate(true), session' => ['session', 1],
        ];
    }

    /**
     * Store::regenerate()/migrate() keep the data under the id Laravel
     * chose; the old id is an alias for the grace period, or ends at once
     * with regenerate(true).
     *
     * @dataProvider regenerations
     */
    public function testRegenerateMovesTheSession(string $mode, int $destroy): void
    {
        $id = $this->lv(['mode' => $mode, 'set' => ['user' => 'alice']])['cookie'];
        $r = $this->lv(['mode' => $mode, 'regenerate' => $destroy, 'after' => ['after' => 'x']], $id);
        $this->assertSame([], $r['errors']);
        $this->assertNotSame($id, $r['id']);
        $this->assertSame($r['id'], $r['cookie'], 'the new id is sent as a cookie');
        $f = $this->serverFields($r['id']);
        $this->assertSame(serialize('alice'), $f['user'][1]);
        $this->assertSame(serialize('x'), $f['after'][1]);
        $old = $this->redis->command(['SESSION.READ', $id]);
        if ($destroy) {
            $this->assertNull($old, 'regenerate(true): the old id ends at once');
        } else {
            $this->assertSame($r['id'], $old[0], 'regenerate(): the old id is an alias during the grace period');
        }
    }

    public function testInvalidateDropsTheDataAndTheOldId(): void
    {
        $id = $this->lv(['set' => ['user' => 'alice']])['cookie'];
        $r = $this->lv(['invalidate' => 1, 'after' => ['fresh' => 'y']], $id);
        $this->assertSame([], $r['errors']);
        $this->assertNotSame($id, $r['id']);
        $this->assertNull($this->redis->command(['SESSION.READ', $id]));
        $f = $this->serverFields($r['id']);
        $this->assertArrayNotHasKey('user', $f);
        $this->assertSame(serialize('y'), $f['fresh'][1]);
    }

    /**
     * A request that read the session with the old id before another
     * request regenerated it writes after the regeneration: its key lands
     * in the new session (through the alias), nothing is lost, and its
     * response moves the client to the new id.
     */
    public function testRequestInFlightWithTheOldIdLosesNothing(): void
    {
        $id = $this->lv(['set' => ['user' => 'alice']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/laravel.php' . self::q(['set' => ['a' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $r = $this->lv(['regenerate' => 0, 'after' => ['b' => '2']], $id);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $this->assertSame([], $ra['errors']);
        $this->assertSame(['a' => '1', 'b' => '2', 'user' => 'alice'], self::own($this->lv([], $r['id'])['seen']));
        $late = $this->lv([], $id);
        $this->assertSame($r['id'], $late['cookie'], 'a request with the old id is moved to the new id');
        $this->assertSame($r['id'], $late['id']);
    }

    /** A readonly route answers while a session-mode writer holds the lock. */
    public function testReadonlyRouteDoesNotWaitBehindAWriter(): void
    {
        $id = $this->lv(['mode' => 'session', 'set' => ['user' => 'alice']])['cookie'];
        $gw = $this->signal('W');
        $w = $this->http->start('/laravel.php' . self::q(['mode' => 'session', 'set' => ['user' => 'bob'], 'ready' => $gw, 'gate' => $gw]), $id);
        $this->awaitReady($gw);
        $this->assertNotNull($this->lockInfo($id), 'the writer holds the session lock');
        $r = $this->lv(['mode' => 'session', 'route_mode' => 'readonly', 'set' => ['ignored' => '1']], $id);
        $this->assertSame('readonly', $r['mode']);
        $this->assertSame('alice', $r['seen']['user']);
        $this->assertNotNull($this->lockInfo($id), 'the writer still holds the lock: the reader did not wait');
        $this->openGate($gw);
        $this->json($this->http->finish($w));
        $f = $this->serverFields($id);
        $this->assertSame(serialize('bob'), $f['user'][1]);
        $this->assertArrayNotHasKey('ignored', $f);
    }

    /**
     * A route that asks for the session lock (sessiond.mode:session, the
     * app's default being none): a second request is queued by the server
     * and sees the first one's write.
     */
    public function testSessionLockRouteSerializesRequests(): void
    {
        $id = $this->lv(['set' => ['n' => '0']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/laravel.php' . self::q(['route_mode' => 'session', 'set' => ['n' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->assertNotNull($this->lockInfo($id), 'the route took the session lock');
        $b = $this->http->start('/laravel.php' . self::q(['route_mode' => 'session', 'set' => ['m' => '1']]), $id);
        $this->awaitWaiters($id, 1);
        $this->openGate($ga);
        $this->assertSame([], $this->json($this->http->finish($a))['errors']);
        $rb = $this->json($this->http->finish($b));
        $this->assertSame('1', $rb['seen']['n'], 'the queued request ran after the first one wrote');
    }

    /**
     * Route::block() with session.block_store = sessiond: waiting requests
     * are queued by the server on the lock `lock:session:<id>` (LOCK.INFO
     * shows them, in arrival order), not polling, and get it in FIFO order.
     */
    public function testRouteBlockIsAServerSideFifoWait(): void
    {
        $id = $this->lv(['set' => ['order' => '']])['cookie'];
        $lockId = 'lock:session:' . $id;
        $ga = $this->signal('A');
        $a = $this->http->start('/laravel.php' . self::q(['block' => '10,20', 'set' => ['a' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->assertNotNull($this->lockInfo($lockId), 'the blocking request holds the lock');
        $b = $this->http->start('/laravel.php' . self::q(['block' => '10,20', 'set' => ['b' => '1']]), $id);
        $this->awaitWaiters($lockId, 1);
        $c = $this->http->start('/laravel.php' . self::q(['block' => '10,20', 'set' => ['c' => '1']]), $id);
        $l = $this->awaitWaiters($lockId, 2);
        $this->assertCount(2, $l['waiters'], 'both wait in the server queue');
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $rb = $this->json($this->http->finish($b));
        $rc = $this->json($this->http->finish($c));
        foreach ([$ra, $rb, $rc] as $r) {
            $this->assertSame([], $r['errors'], json_encode($r));
        }
        $this->assertArrayHasKey('a', $rb['seen'], 'B ran after A');
        $this->assertArrayNotHasKey('c', $rb['seen'], 'B ran before C (FIFO)');
        $this->assertArrayHasKey('b', $rc['seen'], 'C ran after B');
        $this->assertNull($this->lockInfo($lockId), 'released');
    }

    public function testLockStoreAcquireReleaseAndTimeout(): void
    {
        require_once '/usr/share/php/Illuminate/autoload.php';
        $s1 = new LockStore(['uri' => Env::$uri]);
        $s2 = new LockStore(['uri' => Env::$uri]);
        $name = 'job-' . bin2hex(random_bytes(4));
        $l1 = $s1->lock($name, 10);
        $this->assertTrue($l1->acquire());
        $l2 = $s2->lock($name, 10);
        $this->assertFalse($l2->acquire(), 'held by the other connection');
        try {
            $l2->block(0);
            $this->fail('block() must time out');
        } catch (\Illuminate\Contracts\Cache\LockTimeoutException) {
        }
        $this->assertTrue($l1->release());
        $this->assertSame('done', $l2->block(5, static fn () => 'done'), 'free again; released after the callback');
        $this->assertNull($this->lockInfo(LockStore::lockId($name)));
        $this->expectException(\BadMethodCallException::class);
        $s1->get('x');
    }
}
