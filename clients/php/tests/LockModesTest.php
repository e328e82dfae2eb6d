<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\TestCase;

/** Lock modes with real concurrent PHP workers (php -S, PHP_CLI_SERVER_WORKERS=12). */
final class LockModesTest extends TestCase
{
    public function testSessionModeSerializesTwoRequests(): void
    {
        $id = $this->newSession(['n' => 0]);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'incr' => 'n', 'sleep' => 700]), $id);
        usleep(150000);
        $b = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'incr' => 'n']), $id);
        $ra = $this->http->finish($a)['json'];
        $rb = $this->http->finish($b)['json'];
        $this->assertTrue($ra['ok'], json_encode($ra));
        $this->assertTrue($rb['ok'], json_encode($rb));
        $this->assertGreaterThanOrEqual($ra['t2'], $rb['t1'], 'B must get the session only after A is done');
        $this->assertSame(1, $rb['seen']['n'], 'B must see A\'s write');
        $this->assertSame('2', $this->serverFields($id)['n'][1]);
        $this->assertSame([], $ra['errors']);
        $this->assertSame([], $rb['errors']);
    }

    public function testReadonlyNeverWaitsBehindAWriter(): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['x' => 'w'], 'sleep' => 1500]), $id);
        usleep(200000);
        $rb = $this->http->get('/hold.php' . self::q(['mode' => 'readonly', 'set' => ['y' => 'ignored']]), $id)['json'];
        $ra = $this->http->finish($a)['json'];
        $this->assertTrue($rb['ok']);
        $this->assertLessThan(500, $rb['t1'] - $rb['t0'], 'readonly must not wait for the lock');
        $this->assertLessThan($ra['t2'], $rb['t3'], 'readonly request finished while the writer still held the lock');
        $this->assertSame('alice', $rb['seen']['user']);
        $fields = $this->serverFields($id);
        $this->assertArrayNotHasKey('y', $fields, 'readonly never writes');
        $this->assertArrayHasKey('x', $fields);
    }

    public function testSetModeOverridesPerRequest(): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'sleep' => 1000]), $id);
        usleep(200000);
        $rb = $this->http->get('/hold.php' . self::q(['mode' => 'session', 'setmode' => 'readonly']), $id)['json'];
        $this->http->finish($a);
        $this->assertTrue($rb['ok']);
        $this->assertLessThan(500, $rb['t1'] - $rb['t0']);
    }

    public function testLockTimeoutMakesSessionStartFail(): void
    {
        $id = $this->newSession(['n' => 1]);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['n' => 2], 'sleep' => 2000]), $id);
        usleep(200000);
        $rb = $this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 300, 'set' => ['n' => 99]]), $id)['json'];
        $ra = $this->http->finish($a)['json'];
        $this->assertFalse($rb['ok'], 'session_start() must return false');
        $this->assertSame([], $rb['seen'], '$_SESSION stays empty');
        $this->assertGreaterThanOrEqual(250, $rb['t1'] - $rb['t0']);
        $this->assertLessThan(1500, $rb['t1'] - $rb['t0']);
        $all = implode("\n", $rb['errors']);
        $this->assertStringContainsString('could not acquire the lock', $all);
        $this->assertStringContainsString('within 300 ms', $all);
        $this->assertStringContainsString('Failed to read session data', $all, 'PHP\'s own E_WARNING');
        $this->assertTrue($ra['ok']);
        $this->assertSame('2', $this->serverFields($id)['n'][1], 'the timed-out request wrote nothing');
    }

    public function testKilledWorkerReleasesItsLock(): void
    {
        $id = $this->newSession(['n' => 1]);
        [$p, $pipes] = $this->phpCli('cli_hold.php', [$id]);
        $line = trim((string) fgets($pipes[1]));
        if ($line !== 'locked') {
            proc_terminate($p, SIGKILL);
            $this->fail("cli_hold.php: $line " . stream_get_contents($pipes[2]));
        }
        $pid = proc_get_status($p)['pid'];
        // the lock is really held: a short wait times out
        $r = $this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 200]), $id)['json'];
        $this->assertFalse($r['ok'], json_encode($r));
        posix_kill($pid, SIGKILL);
        proc_close($p);
        $r = $this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 5000, 'incr' => 'n']), $id)['json'];
        $this->assertTrue($r['ok'], json_encode($r));
        $this->assertLessThan(2000, $r['t1'] - $r['t0'], 'the server released the dead worker\'s lock');
        $this->assertArrayNotHasKey('cli', $r['seen'], 'the killed worker never wrote');
        $this->assertSame('2', $this->serverFields($id)['n'][1]);
    }

    public function testExitInTheMiddleReleasesTheLockAndWrites(): void
    {
        $id = $this->newSession();
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['x' => 'fromA'], 'sleep' => 300, 'exit' => 1]), $id);
        usleep(100000);
        $rb = $this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 5000]), $id)['json'];
        $this->http->finish($a);
        $this->assertTrue($rb['ok']);
        $this->assertSame('fromA', $rb['seen']['x'] ?? null, 'like the files handler, exit() still writes the session');
    }

    public function testUncaughtExceptionReleasesTheLock(): void
    {
        $id = $this->newSession();
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['x' => 'fromA'], 'sleep' => 300, 'throw' => 1]), $id);
        usleep(100000);
        $rb = $this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 5000]), $id)['json'];
        $ra = $this->http->finish($a);
        $this->assertSame(500, $ra['status']);
        $this->assertTrue($rb['ok']);
        $this->assertSame('fromA', $rb['seen']['x'] ?? null);
    }

    public function testNoneModeKeepsTenParallelWritersOfDifferentKeys(): void
    {
        $id = $this->newSession(['base' => 1]);
        $paths = [];
        for ($i = 0; $i < 10; $i++) {
            $paths[] = '/hold.php' . self::q(['mode' => 'none', 'set' => ["k$i" => "v$i"], 'sleep' => 300]);
        }
        $t = microtime(true);
        $rs = $this->http->parallel($paths, $id);
        $elapsed = microtime(true) - $t;
        foreach ($rs as $r) {
            $this->assertTrue($r['json']['ok'], $r['body']);
            $this->assertSame([], $r['json']['errors']);
        }
        $fields = $this->serverFields($id);
        for ($i = 0; $i < 10; $i++) {
            $this->assertSame(serialize("v$i"), $fields["k$i"][1] ?? null, "k$i lost");
        }
        $this->assertSame('1', $fields['base'][1]);
        $this->assertLessThan(2.5, $elapsed, 'none mode does not serialize the requests');
    }

    public function testNoneModeSameKeyConflictIsReportedTheirsPolicy(): void
    {
        $id = $this->newSession(['x' => 'orig', 'y' => 'orig']);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'none', 'set' => ['x' => 'A', 'y' => 'A'], 'sleep' => 600]), $id);
        usleep(150000);
        $rb = $this->http->get('/hold.php' . self::q(['mode' => 'none', 'set' => ['x' => 'B']]), $id)['json'];
        $ra = $this->http->finish($a)['json'];
        $this->assertSame([], $rb['errors']);
        $this->assertSame([['x']], $ra['conflicts'], 'on_conflict called with the conflicting keys');
        $msg = implode("\n", $ra['errors']);
        $this->assertStringContainsString('conflict', $msg);
        $this->assertStringContainsString('"x"', $msg);
        $this->assertStringContainsString('theirs', $msg);
        $fields = $this->serverFields($id);
        $this->assertSame(serialize('B'), $fields['x'][1], 'theirs: the other request\'s value is kept');
        $this->assertSame(serialize('A'), $fields['y'][1], 'the non-conflicting key is still committed');
    }

    public function testNoneModeSameKeyConflictMinePolicy(): void
    {
        $id = $this->newSession(['x' => 'orig']);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'none', 'policy' => 'mine', 'set' => ['x' => 'A'], 'sleep' => 600]), $id);
        usleep(150000);
        $this->http->get('/hold.php' . self::q(['mode' => 'none', 'set' => ['x' => 'B']]), $id);
        $ra = $this->http->finish($a)['json'];
        $this->assertSame([['x']], $ra['conflicts']);
        $this->assertStringContainsString('mine', implode("\n", $ra['errors']));
        $this->assertSame(serialize('A'), $this->serverFields($id)['x'][1]);
    }

    public function testNoneModeDeleteIsConditionalToo(): void
    {
        $id = $this->newSession(['x' => 'orig']);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'none', 'del' => ['x'], 'sleep' => 600]), $id);
        usleep(150000);
        $this->http->get('/hold.php' . self::q(['mode' => 'none', 'set' => ['x' => 'B']]), $id);
        $ra = $this->http->finish($a)['json'];
        $this->assertSame([['x']], $ra['conflicts']);
        $this->assertSame(serialize('B'), $this->serverFields($id)['x'][1]);
    }

    public function testLostLockFallsBackToAConditionalCommitAndSaysSo(): void
    {
        $id = $this->newSession(['x' => 'orig', 'y' => 'orig']);
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['x' => 'A', 'y' => 'A'], 'sleep' => 700]), $id);
        usleep(250000);
        $this->assertSame(1, $this->redis->command(['LOCK.BREAK', $id]), 'admin breaks the lock');
        // another request changes y meanwhile
        $rb = $this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 1000, 'set' => ['y' => 'B']]), $id)['json'];
        $this->assertTrue($rb['ok']);
        $ra = $this->http->finish($a)['json'];
        $msg = implode("\n", $ra['errors']);
        $this->assertStringContainsString('lock on session', $msg);
        $this->assertStringContainsString('FENCED', $msg);
        $this->assertSame([['y']], $ra['conflicts']);
        $f = $this->serverFields($id);
        $this->assertSame(serialize('A'), $f['x'][1], 'x was unchanged by others: saved');
        $this->assertSame(serialize('B'), $f['y'][1], 'y was changed by another request: kept theirs, reported');
    }
}
