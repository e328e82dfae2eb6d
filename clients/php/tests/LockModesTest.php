<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/**
 * Lock modes with real concurrent PHP workers (a pool of single-process php -S servers, see Support/Env.php).
 *
 * Requests are ordered by evidence: ?ready= says a request got past
 * session_start(), ?gate= parks it until the test opens the gate, and
 * LOCK.INFO shows the server's view (who holds, who is queued). Nothing here
 * depends on how fast the machine is.
 */
final class LockModesTest extends TestCase
{
    public function testSessionModeSerializesTwoRequests(): void
    {
        $id = $this->newSession(['n' => 0]);
        $ga = $this->signal('A');
        $gb = $this->signal('B');
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'incr' => 'n', 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $held = $this->awaitHolder($id);
        $b = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'incr' => 'n', 'ready' => $gb]), $id);
        // B is queued by the server behind A (no polling on the client side)…
        $this->awaitWaiters($id, 1);
        // …and stays there while A holds the lock.
        $this->assertFalse($this->isReady($gb), 'B got past session_start() while A held the lock');
        $this->assertSame($held['token'], $this->lockInfo($id)['token'], 'A still holds the same grant');
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $rb = $this->json($this->http->finish($b));
        $this->assertTrue($ra['ok'], json_encode($ra));
        $this->assertTrue($rb['ok'], json_encode($rb));
        $this->assertSame(1, $rb['seen']['n'], 'B must see A\'s write: it read after A committed');
        $this->assertGreaterThanOrEqual($ra['t2'], $rb['t1'], 'B got the session only after A started to close it');
        $this->assertSame('2', $this->serverFields($id)['n'][1], 'no increment lost');
        $this->assertSame([], $ra['errors']);
        $this->assertSame([], $rb['errors']);
        $this->assertNull($this->lockInfo($id), 'no lock left behind');
    }

    public function testReadonlyNeverWaitsBehindAWriter(): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['x' => 'w'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $held = $this->awaitHolder($id);
        // A cannot release before the gate opens, so B completing at all
        // proves it did not wait for the lock.
        $rb = $this->json($this->http->get('/hold.php' . self::q(['mode' => 'readonly', 'set' => ['y' => 'ignored']]), $id));
        $this->assertSame($held['token'], $this->lockInfo($id)['token'] ?? null, 'the writer still held the lock when the readonly request finished');
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $this->assertTrue($rb['ok'], json_encode($rb));
        $this->assertSame([], $rb['errors']);
        $this->assertLessThan($ra['t2'], $rb['t3'], 'readonly request finished before the writer started writing');
        $this->assertSame('alice', $rb['seen']['user']);
        $this->assertArrayNotHasKey('x', $rb['seen'], 'readonly saw the committed state, not the writer\'s pending change');
        $fields = $this->serverFields($id);
        $this->assertArrayNotHasKey('y', $fields, 'readonly never writes');
        $this->assertSame(serialize('w'), $fields['x'][1]);
    }

    public function testSetModeOverridesPerRequest(): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $held = $this->awaitHolder($id);
        // the app's mode is 'session'; this request switches to readonly before session_start()
        $rb = $this->json($this->http->get('/hold.php' . self::q(['mode' => 'session', 'setmode' => 'readonly', 'set' => ['y' => 1]]), $id));
        $this->assertSame($held['token'], $this->lockInfo($id)['token'] ?? null, 'finished while the writer held the lock');
        $this->openGate($ga);
        $this->json($this->http->finish($a));
        $this->assertTrue($rb['ok']);
        $this->assertSame('alice', $rb['seen']['user']);
        $this->assertArrayNotHasKey('y', $this->serverFields($id), 'readonly (set per request) did not write');
    }

    public function testLockTimeoutMakesSessionStartFail(): void
    {
        $id = $this->newSession(['n' => 1]);
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['n' => 2], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $held = $this->awaitHolder($id);
        $rb = $this->json($this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 300, 'set' => ['n' => 99]]), $id));
        $this->assertSame($held['token'], $this->lockInfo($id)['token'] ?? null, 'A held the lock all along');
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $this->assertFalse($rb['ok'], 'session_start() must return false');
        $this->assertSame([], $rb['seen'], '$_SESSION stays empty');
        // a lower bound only: it did wait for the lock before giving up
        $this->assertGreaterThanOrEqual(250, $rb['t1'] - $rb['t0']);
        $all = implode("\n", $rb['errors']);
        $this->assertStringContainsString('could not acquire the lock', $all);
        $this->assertStringContainsString('within 300 ms', $all);
        $this->assertStringContainsString('TIMEOUT', $all);
        $this->assertStringContainsString('Failed to read session data', $all, 'PHP\'s own E_WARNING');
        $this->assertTrue($ra['ok']);
        $this->assertSame('2', $this->serverFields($id)['n'][1], 'the timed-out request wrote nothing');
    }

    /** @dataProvider sockets */
    public function testKilledWorkerReleasesItsLock(array $socket): void
    {
        $id = $this->newSession(['n' => 1]);
        [$p, $pipes] = $this->phpCli('cli_hold.php', [$id, (string) ($socket['persistent'] ?? 0)]);
        $line = trim((string) fgets($pipes[1]));
        if ($line !== 'locked') {
            proc_terminate($p, SIGKILL);
            $this->fail("cli_hold.php: $line " . stream_get_contents($pipes[2]));
        }
        $held = $this->awaitHolder($id);
        // a request queues behind the worker (30 s wait: only a hang guard,
        // the server's --lock-max-hold of 300 s would not free a leaked lock
        // in time)
        $gb = $this->signal('B');
        $b = $this->http->start('/hold.php' . self::q($socket + ['mode' => 'session', 'wait' => 30000, 'incr' => 'n', 'ready' => $gb]), $id);
        $this->awaitWaiters($id, 1);
        $this->assertFalse($this->isReady($gb));
        posix_kill(proc_get_status($p)['pid'], SIGKILL);
        proc_close($p);
        $rb = $this->json($this->http->finish($b));
        $this->assertTrue($rb['ok'], 'the waiter got the dead worker\'s lock: ' . json_encode($rb));
        $this->assertSame([], $rb['errors']);
        $this->assertArrayNotHasKey('cli', $rb['seen'], 'the killed worker never wrote');
        $this->assertSame(1, $rb['seen']['n']);
        $this->assertSame('2', $this->serverFields($id)['n'][1]);
        $this->assertNull($this->lockInfo($id));
        $next = $this->redis->command(['LOCK.ACQUIRE', $id, 'WAIT', 0])[0];
        $this->assertGreaterThan($held['token'], $next, 'a later grant has a larger fencing token');
        $this->assertSame(1, $this->redis->command(['LOCK.RELEASE', $id, $next]));
    }

    /** @dataProvider sockets */
    public function testKilledWebWorkerReleasesItsLock(array $socket): void
    {
        $id = $this->newSession(['n' => 1]);
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q($socket + ['mode' => 'session', 'set' => ['x' => 'never'], 'ready' => $ga, 'gate' => $ga]), $id);
        $pid = $this->readyPid($ga);
        $port = \Sessiond\Tests\Support\Http::portOf($a);
        $this->awaitHolder($id);
        $b = $this->http->start('/hold.php' . self::q($socket + ['mode' => 'session', 'wait' => 30000, 'incr' => 'n']), $id);
        $this->awaitWaiters($id, 1);
        // SIGKILL the php -S process in the middle of the request: no
        // shutdown function runs, only the kernel closing its sockets.
        $this->assertTrue(posix_kill($pid, SIGKILL));
        $rb = $this->json($this->http->finish($b));
        $ra = $this->http->finish($a);
        Env::replaceWebServer($port);
        $this->assertSame(0, $ra['status'], 'the killed request sent no response');
        $this->assertTrue($rb['ok'], 'the waiter got the dead worker\'s lock: ' . json_encode($rb));
        $this->assertSame([], $rb['errors']);
        $this->assertArrayNotHasKey('x', $rb['seen'], 'the killed request never wrote');
        $this->assertSame('2', $this->serverFields($id)['n'][1]);
    }

    /** @return array<string, array{0:array<string,int>}> */
    public static function abnormalEnds(): array
    {
        $out = [];
        foreach (['exit()' => ['exit' => 1], 'uncaught exception' => ['throw' => 1], 'fatal error (memory exhausted)' => ['fatal' => 1]] as $name => $how) {
            foreach (self::sockets() as $socketName => [$socket]) {
                $out["$name, $socketName"] = [$how + $socket];
            }
        }
        return $out;
    }

    /**
     * Like the files handler, PHP's shutdown sequence still writes the
     * session; then the handler's own shutdown function releases the lock.
     *
     * @dataProvider abnormalEnds
     */
    public function testAbnormalEndWritesAndReleasesTheLock(array $how): void
    {
        $id = $this->newSession();
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q($how + ['mode' => 'session', 'set' => ['x' => 'fromA'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->awaitHolder($id);
        $b = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'wait' => 30000, 'persistent' => $how['persistent'] ?? 0]), $id);
        $this->awaitWaiters($id, 1);
        $this->openGate($ga);
        $ra = $this->http->finish($a);
        $rb = $this->json($this->http->finish($b));
        if (!isset($how['exit'])) {
            $this->assertSame(500, $ra['status'], $ra['body']);
        }
        $this->assertTrue($rb['ok'], json_encode($rb));
        $this->assertSame('fromA', $rb['seen']['x'] ?? null, 'the session was written before the lock was released');
        $this->assertNull($this->lockInfo($id));
    }

    public function testNoneModeKeepsTenParallelWritersOfDifferentKeys(): void
    {
        $id = $this->newSession(['base' => 1]);
        // A barrier after session_start(): no request writes before all ten
        // have read. A handler that serialized them would never get past it.
        $barrier = $this->signal('ten');
        $paths = [];
        for ($i = 0; $i < 10; $i++) {
            $paths[] = '/hold.php' . self::q(['mode' => 'none', 'set' => ["k$i" => "v$i"], 'barrier' => $barrier, 'n' => 10]);
        }
        $rs = $this->http->parallel($paths, $id);
        foreach ($rs as $r) {
            $j = $this->json($r);
            $this->assertTrue($j['ok'], $r['body']);
            $this->assertSame([], $j['errors']);
            $this->assertSame([], $j['conflicts']);
            $this->assertSame(['base' => 1], $j['seen'], 'every request read before any of them wrote');
        }
        $fields = $this->serverFields($id);
        for ($i = 0; $i < 10; $i++) {
            $this->assertSame(serialize("v$i"), $fields["k$i"][1] ?? null, "k$i lost");
        }
        $this->assertSame('1', $fields['base'][1]);
    }

    /**
     * A (none mode) reads, B changes x and finishes, then A writes x and y.
     *
     * @return array{0:array<string,mixed>, 1:string}
     */
    private function conflictingPair(array $init, array $aParams, array $bSet, array $bParams = []): array
    {
        $id = $this->newSession($init);
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q($aParams + ['mode' => 'none', 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $rb = $this->json($this->http->get('/hold.php' . self::q(array_merge(['mode' => 'none', 'set' => $bSet], $bParams)), $id));
        $this->assertSame([], $rb['errors']);
        $this->assertSame([], $rb['conflicts']);
        $this->openGate($ga);
        return [$this->json($this->http->finish($a)), $id];
    }

    public function testNoneModeSameKeyConflictIsReportedTheirsPolicy(): void
    {
        $before = $this->conflictCount();
        [$ra, $id] = $this->conflictingPair(['x' => 'orig', 'y' => 'orig'], ['set' => ['x' => 'A', 'y' => 'A']], ['x' => 'B']);
        $this->assertSame([['x']], $ra['conflicts'], 'on_conflict called with the conflicting keys');
        $msg = implode("\n", $ra['errors']);
        $this->assertStringContainsString('conflict', $msg);
        $this->assertStringContainsString('"x"', $msg);
        $this->assertStringContainsString('theirs', $msg);
        $this->assertStringNotContainsString('"y"', $msg);
        $fields = $this->serverFields($id);
        $this->assertSame(serialize('B'), $fields['x'][1], 'theirs: the other request\'s value is kept');
        $this->assertSame(serialize('A'), $fields['y'][1], 'the non-conflicting key is still committed');
        if ($before !== null) {
            $this->assertSame($before + 1, $this->conflictCount(), 'the server counts the refused commit in its metrics');
        }
    }

    public function testConflictsAreCountedInTheServerMetrics(): void
    {
        if (Env::$metricsAddr === '') {
            $this->markTestSkipped('metrics endpoint unknown (SESSIOND_TEST_URI)');
        }
        $before = $this->conflictCount();
        $this->conflictingPair(['x' => 'orig'], ['set' => ['x' => 'A']], ['x' => 'B']);
        $this->conflictingPair(['x' => 'orig'], ['set' => ['x' => 'A'], 'policy' => 'mine'], ['x' => 'B']);
        $this->assertSame($before + 2, $this->conflictCount());
    }

    public function testNoneModeSameKeyConflictMinePolicy(): void
    {
        [$ra, $id] = $this->conflictingPair(['x' => 'orig'], ['set' => ['x' => 'A'], 'policy' => 'mine'], ['x' => 'B']);
        $this->assertSame([['x']], $ra['conflicts']);
        $this->assertStringContainsString('mine', implode("\n", $ra['errors']));
        $this->assertSame(serialize('A'), $this->serverFields($id)['x'][1]);
    }

    public function testNoneModeDeleteIsConditionalToo(): void
    {
        [$ra, $id] = $this->conflictingPair(['x' => 'orig'], ['del' => ['x']], ['x' => 'B']);
        $this->assertSame([['x']], $ra['conflicts']);
        $this->assertSame(serialize('B'), $this->serverFields($id)['x'][1]);
    }

    /**
     * Both requests did the same thing (wrote the same value, or deleted the
     * same key): nothing to decide, so nothing is reported.
     *
     * @return array<string, array{0:array<string,mixed>,1:array<string,mixed>}>
     */
    public static function sameOutcomes(): array
    {
        return [
            'same value' => [['set' => ['x' => 'B', 'y' => 'A']], ['set' => ['x' => 'B']]],
            'both deleted' => [['del' => ['x'], 'set' => ['y' => 'A']], ['del' => ['x']]],
        ];
    }

    /** @dataProvider sameOutcomes */
    public function testNoneModeSameOutcomeIsNoConflict(array $aParams, array $bParams): void
    {
        [$ra, $id] = $this->conflictingPair(['x' => 'orig', 'y' => 'orig'], $aParams, [], $bParams);
        $this->assertSame([], $ra['conflicts']);
        $this->assertSame([], $ra['errors']);
        $f = $this->serverFields($id);
        $this->assertSame(isset($aParams['del']) ? null : serialize('B'), $f['x'][1] ?? null);
        $this->assertSame(serialize('A'), $f['y'][1], 'the rest of the commit went through');
    }

    public function testNoneModeWithoutConflictReportsNothing(): void
    {
        [$ra, $id] = $this->conflictingPair(['x' => 'orig', 'y' => 'orig'], ['set' => ['y' => 'A']], ['x' => 'B']);
        $this->assertSame([], $ra['conflicts']);
        $this->assertSame([], $ra['errors']);
        $f = $this->serverFields($id);
        $this->assertSame(serialize('B'), $f['x'][1]);
        $this->assertSame(serialize('A'), $f['y'][1]);
    }

    public function testLostLockFallsBackToAConditionalCommitAndSaysSo(): void
    {
        $id = $this->newSession(['x' => 'orig', 'y' => 'orig']);
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'set' => ['x' => 'A', 'y' => 'A'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->awaitHolder($id);
        $this->assertSame(1, $this->redis->command(['LOCK.BREAK', $id]), 'admin breaks the lock');
        // another request changes y meanwhile
        $rb = $this->json($this->http->get('/hold.php' . self::q(['mode' => 'session', 'wait' => 30000, 'set' => ['y' => 'B']]), $id));
        $this->assertTrue($rb['ok']);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $msg = implode("\n", $ra['errors']);
        $this->assertStringContainsString('lock on session', $msg);
        $this->assertStringContainsString('FENCED', $msg);
        $this->assertSame([['y']], $ra['conflicts']);
        $f = $this->serverFields($id);
        $this->assertSame(serialize('A'), $f['x'][1], 'x was unchanged by others: saved');
        $this->assertSame(serialize('B'), $f['y'][1], 'y was changed by another request: kept theirs, reported');
    }

    /** sessiond_commands_total{command="SESSION.COMMIT",outcome="CONFLICT"}, or null without a metrics endpoint. */
    private function conflictCount(): ?int
    {
        if (Env::$metricsAddr === '') {
            return null;
        }
        $text = @file_get_contents('http://' . Env::$metricsAddr . '/metrics');
        $this->assertIsString($text, 'metrics endpoint answers');
        if (preg_match('/^sessiond_commands_total\{command="SESSION\.COMMIT",outcome="CONFLICT"\} (\d+)/m', $text, $m)) {
            return (int) $m[1];
        }
        return 0;
    }
}
