<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\TestCase;

/**
 * session_regenerate_id() maps to SESSION.REGENERATE: the old id stays an
 * alias for the grace period, so requests still in flight with it lose
 * nothing; session_regenerate_id(true) ends the old id at once unless a
 * grace period is configured (a login must not leave the planted id usable).
 */
final class RegenerateTest extends TestCase
{
    /** @return list<array{0:string,1:int}> */
    public static function modes(): array
    {
        return [['none', 0], ['none', 1], ['session', 0], ['session', 1]];
    }

    /**
     * Mode, delete_old_session, and the configured grace: with
     * delete_old_session the grace period must be asked for explicitly.
     *
     * @return list<array{0:string,1:int,2:?int}>
     */
    public static function graceModes(): array
    {
        return [['none', 0, null], ['none', 1, 30], ['session', 0, null], ['session', 1, 30]];
    }

    /** @dataProvider modes */
    public function testRegenerateKeepsDataAndTheOldIdAnswers(string $mode, int $delete): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $r = $this->http->get('/regen.php' . self::q(['mode' => $mode, 'delete' => $delete, 'set' => ['before' => 1], 'after' => ['after' => 2]]), $id);
        $j = $r['json'];
        $this->assertTrue($j['ok'], $r['body']);
        $this->assertSame($id, $j['old']);
        $this->assertNotSame($id, $j['new']);
        $this->assertMatchesRegularExpression('/^[0-9a-f]{40}$/', $j['new']);
        $this->assertSame($j['new'], $r['cookie'], 'the new id is sent as cookie');
        $this->assertSame([], $j['errors']);
        $f = $this->serverFields($j['new']);
        $this->assertSame(serialize('alice'), $f['user'][1]);
        $this->assertSame(serialize('1'), $f['before'][1]);
        $this->assertSame(serialize('2'), $f['after'][1]);
        $old = $this->redis->command(['SESSION.READ', $id]);
        if ($delete) {
            // session_regenerate_id(true): the old id is gone at once
            $this->assertNull($old);
        } else {
            // the old id is an alias of the new session during the grace period
            $this->assertSame($j['new'], $old[0]);
        }
    }

    /**
     * Session fixation: someone planted the id the user logs in with. After
     * session_regenerate_id(true) (what a login calls) a request with the
     * planted id neither sees the logged-in session nor is sent its new id.
     */
    public function testDeleteOldSessionLeavesThePlantedIdNothing(): void
    {
        $planted = $this->newSession(['cart' => 'x']);
        $login = $this->http->get('/regen.php' . self::q(['mode' => 'session', 'delete' => 1, 'after' => ['user' => 'alice']]), $planted);
        $j = $login['json'];
        $this->assertTrue($j['ok'], $login['body']);
        $this->assertSame(serialize('alice'), $this->serverFields($j['new'])['user'][1]);
        $attacker = $this->http->get('/hold.php' . self::q(['mode' => 'session']), $planted);
        $a = $this->json($attacker);
        $this->assertTrue($a['ok'], json_encode($a));
        $this->assertArrayNotHasKey('user', $a['seen'], 'the planted id reads the logged-in session');
        $this->assertNotSame($j['new'], $attacker['cookie'], 'the planted id is sent the new id');
    }

    /**
     * Requests that started with the old id before the regeneration and
     * write after it, plus one that arrives with the old id afterwards.
     *
     * none mode: all four read the old session, then the regeneration runs,
     * then they write through the old id (now an alias).
     * session mode: all four are queued for the lock of the old id while the
     * regenerating request holds it; the server moves lock and queue to the
     * new id, and they get the session one after the other.
     *
     * @dataProvider graceModes
     */
    public function testRegenerateUnderConcurrentRequestsLosesNothing(string $mode, int $delete, ?int $grace): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $gr = $this->signal('R');
        $gr2 = $this->signal('R2');
        $regenParams = ['mode' => $mode, 'delete' => $delete, 'set' => ['r1' => 'x'], 'after' => ['r2' => 'y'], 'ready' => $gr, 'gate' => $gr];
        if ($grace !== null) {
            $regenParams['grace'] = $grace;
        }
        if ($mode === 'none') {
            // park the regenerating request again after the regeneration,
            // before its final write (in session mode it queues behind the
            // others for the lock of the new id instead)
            $regenParams += ['ready2' => $gr2, 'gate2' => $gr2];
        }
        $regen = $this->http->start('/regen.php' . self::q($regenParams), $id);
        $this->awaitReady($gr);
        $gh = $this->signal('H');
        $socks = [];
        for ($i = 0; $i < 4; $i++) {
            $params = ['mode' => $mode, 'set' => ["k$i" => "v$i"]];
            if ($mode === 'none') {
                $params += ['ready' => "$gh-$i", 'gate' => $gh];
            }
            $socks[] = $this->http->start('/hold.php' . self::q($params), $id);
        }
        if ($mode === 'none') {
            for ($i = 0; $i < 4; $i++) {
                $this->awaitReady("$gh-$i"); // read the old session, before the regeneration
            }
        } else {
            $this->awaitWaiters($id, 4); // queued for the old id's lock
        }
        $this->openGate($gr); // regenerate now
        if ($mode === 'none') {
            $this->awaitReady($gr2); // regenerated, final write still to come
            $this->assertNotSame($id, $this->redis->command(['SESSION.READ', $id])[0], 'the old id is an alias by now');
            $this->openGate($gh); // the four write through the old id
        }
        $responses = array_map(fn ($s) => $this->json($this->http->finish($s)), $socks);
        // arriving after the regeneration, still with the old id (cookie not yet updated)
        $late = $this->http->get('/hold.php' . self::q(['mode' => $mode, 'set' => ['late' => 'z']]), $id);
        $this->openGate($gr2);
        $rr = $this->json($this->http->finish($regen));
        $this->assertTrue($rr['ok']);
        $this->assertSame([], $rr['errors']);
        foreach ($responses as $i => $x) {
            $this->assertTrue($x['ok'], json_encode($x));
            $this->assertSame([], $x['errors'], json_encode($x));
            $this->assertSame('alice', $x['seen']['user'] ?? null);
            if ($mode === 'none') {
                $this->assertArrayNotHasKey('r1', $x['seen'], "request $i read before the regeneration");
            }
        }
        $lj = $this->json($late);
        $this->assertTrue($lj['ok']);
        $this->assertSame('alice', $lj['seen']['user'] ?? null, 'the old id still reads the data');
        $this->assertSame($rr['new'], $late['cookie'], 'a request with an alias id is sent the new id');
        $f = $this->serverFields($rr['new']);
        foreach (['user', 'r1', 'r2', 'k0', 'k1', 'k2', 'k3', 'late'] as $k) {
            $this->assertArrayHasKey($k, $f, "key $k lost (mode $mode, delete $delete)");
        }
        $this->assertNull($this->lockInfo($rr['new']), 'no lock left behind');
    }

    public function testGraceZeroEndsTheOldIdAtOnce(): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $j = $this->http->get('/regen.php' . self::q(['mode' => 'none', 'grace' => 0]), $id)['json'];
        $this->assertTrue($j['ok']);
        $this->assertNull($this->redis->command(['SESSION.READ', $id]));
        $this->assertSame(serialize('alice'), $this->serverFields($j['new'])['user'][1]);
    }
}
