<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\TestCase;

/**
 * session_regenerate_id() maps to SESSION.REGENERATE: the old id stays an
 * alias for the grace period, so requests still in flight with it lose nothing.
 */
final class RegenerateTest extends TestCase
{
    /** @return list<array{0:string,1:int}> */
    public static function modes(): array
    {
        return [['none', 0], ['none', 1], ['session', 0], ['session', 1]];
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
        // the old id is an alias of the new session during the grace period
        $old = $this->redis->command(['SESSION.READ', $id]);
        $this->assertSame($j['new'], $old[0]);
    }

    /** @dataProvider modes */
    public function testRegenerateUnderConcurrentRequestsLosesNothing(string $mode, int $delete): void
    {
        $id = $this->newSession(['user' => 'alice']);
        $regen = $this->http->start('/regen.php' . self::q(['mode' => $mode, 'delete' => $delete, 'set' => ['r1' => 'x'], 'before' => 300, 'after' => ['r2' => 'y'], 'sleep' => 300]), $id);
        usleep(100000);
        // in flight across the regeneration, with the old id
        $socks = [];
        for ($i = 0; $i < 4; $i++) {
            $socks[] = $this->http->start('/hold.php' . self::q(['mode' => $mode, 'set' => ["k$i" => "v$i"], 'sleep' => 400]), $id);
            usleep(50000);
        }
        $rr = $this->http->finish($regen)['json'];
        // arriving after the regeneration, still with the old id (cookie not yet updated)
        $late = $this->http->get('/hold.php' . self::q(['mode' => $mode, 'set' => ['late' => 'z']]), $id);
        $responses = array_map(fn ($s) => $this->http->finish($s)['json'], $socks);
        $this->assertTrue($rr['ok']);
        foreach ($responses as $x) {
            $this->assertTrue($x['ok'], json_encode($x));
            $this->assertSame([], $x['errors'], json_encode($x));
        }
        $this->assertTrue($late['json']['ok']);
        $this->assertSame('alice', $late['json']['seen']['user'] ?? null, 'the old id still reads the data');
        $this->assertSame($rr['new'], $late['cookie'], 'a request with an alias id is sent the new id');
        $f = $this->serverFields($rr['new']);
        foreach (['user', 'r1', 'r2', 'k0', 'k1', 'k2', 'k3', 'late'] as $k) {
            $this->assertArrayHasKey($k, $f, "key $k lost (mode $mode, delete $delete)");
        }
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
