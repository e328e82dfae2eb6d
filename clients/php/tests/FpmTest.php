<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\Http;
use Sessiond\Tests\Support\TestCase;

/**
 * The production setup: php-fpm (pm = static, 4 children that each take a
 * request only when idle) behind nginx. Skipped when either is missing
 * (scripts/test.sh installs both on CI).
 */
final class FpmTest extends TestCase
{
    private Http $fpm;

    protected function setUp(): void
    {
        parent::setUp();
        $fpm = Env::fpm();
        if ($fpm === null) {
            $this->markTestSkipped((string) Env::fpmMissing());
        }
        $this->fpm = $fpm;
    }

    public function testSessionModeSerializesTwoRequests(): void
    {
        $id = $this->newSession(['n' => 0]);
        $ga = $this->signal('A');
        $gb = $this->signal('B');
        $a = $this->fpm->start('/hold.php' . self::q(['mode' => 'session', 'incr' => 'n', 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->awaitHolder($id);
        $b = $this->fpm->start('/hold.php' . self::q(['mode' => 'session', 'incr' => 'n', 'ready' => $gb]), $id);
        $this->awaitWaiters($id, 1);
        $this->assertFalse($this->isReady($gb), 'B got past session_start() while A held the lock');
        $this->openGate($ga);
        $ra = $this->json($this->fpm->finish($a));
        $rb = $this->json($this->fpm->finish($b));
        $this->assertTrue($ra['ok']);
        $this->assertTrue($rb['ok']);
        $this->assertNotSame($ra['pid'], $rb['pid'], 'two FPM children');
        $this->assertSame(1, $rb['seen']['n']);
        $this->assertSame('2', $this->serverFields($id)['n'][1]);
    }

    /** @dataProvider sockets */
    public function testKilledFpmChildReleasesItsLock(array $socket): void
    {
        $id = $this->newSession(['n' => 1]);
        $ga = $this->signal('A');
        $a = $this->fpm->start('/hold.php' . self::q($socket + ['mode' => 'session', 'set' => ['x' => 'never'], 'ready' => $ga, 'gate' => $ga]), $id);
        $pid = $this->readyPid($ga);
        $this->awaitHolder($id);
        $b = $this->fpm->start('/hold.php' . self::q($socket + ['mode' => 'session', 'wait' => 30000, 'incr' => 'n']), $id);
        $this->awaitWaiters($id, 1);
        $this->assertTrue(posix_kill($pid, SIGKILL));
        $rb = $this->json($this->fpm->finish($b));
        $ra = $this->fpm->finish($a);
        $this->assertSame(502, $ra['status'], 'nginx: the FPM child died mid-request');
        $this->assertTrue($rb['ok'], json_encode($rb));
        $this->assertSame([], $rb['errors']);
        $this->assertArrayNotHasKey('x', $rb['seen'], 'the killed request never wrote');
        $this->assertSame('2', $this->serverFields($id)['n'][1]);
    }

    /**
     * FPM children keep persistent sockets across requests; a request that
     * dies holding the session lock does not pass it on.
     */
    public function testPersistentConnectionsNeverCarryALock(): void
    {
        $id = $this->newSession();
        $reused = false;
        for ($i = 1; $i <= 12; $i++) {
            $mode = ['none', 'session', 'readonly'][$i % 3];
            $r = $this->json($this->fpm->get('/hold.php' . self::q(['persistent' => 1, 'mode' => $mode, 'incr' => 'n']), $id));
            $this->assertTrue($r['ok'], json_encode($r));
            $this->assertSame([], $r['errors']);
            $reused = $reused || $r['reused'];
        }
        $this->assertTrue($reused, 'some request reused a persistent socket of an earlier one');
        $this->assertSame('8', $this->serverFields($id)['n'][1], 'readonly requests did not write');
        // die with the session lock (session mode)
        $r = $this->fpm->get('/hold.php' . self::q(['persistent' => 1, 'mode' => 'session', 'throw' => 1]), $id);
        $this->assertSame(500, $r['status']);
        $this->assertSame([], $this->redis->command(['LOCK.INFO', $id]), 'no lock left behind');
        $this->assertEveryChildTakesTheLock($id);
    }

    /** The same with a key lock (none mode) the request never released. */
    public function testPersistentConnectionsNeverCarryAKeyLock(): void
    {
        $this->skipUnderNative('key locks are the per-key API of the PHP class');
        $id = $this->newSession();
        $r = $this->fpm->get('/api.php' . self::q(['persistent' => 1, 'mode' => 'none', 'op' => 'lock_forget', 'key' => 'k', 'throw' => 1]), $id);
        $this->assertSame(500, $r['status']);
        $this->assertSame([], $this->redis->command(['LOCK.INFO', $id]), 'no lock left behind');
        $this->assertEveryChildTakesTheLock($id);
    }

    /** Every child (4) takes the session lock of $id once more. */
    private function assertEveryChildTakesTheLock(string $id): void
    {
        $rs = [];
        for ($i = 0; $i < 8; $i++) {
            $rs[] = $this->json($this->fpm->get('/hold.php' . self::q(['persistent' => 1, 'mode' => 'session', 'wait' => 30000]), $id));
        }
        foreach ($rs as $r) {
            $this->assertTrue($r['ok'], json_encode($r));
        }
    }
}
