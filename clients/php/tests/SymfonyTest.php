<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\TestCase;

/**
 * sessiond under Symfony 5.4 (Debian's packages), driven through a real
 * HttpKernel with the framework's SessionListener and NativeSessionStorage
 * (tests/app/symfony.php): Symfony hides the handler behind its
 * SessionHandlerProxy, which has no create_sid(), and turns strict mode on.
 */
final class SymfonyTest extends TestCase
{
    protected function setUp(): void
    {
        if (!is_file('/usr/share/php/Symfony/Component/HttpKernel/autoload.php')) {
            $this->markTestSkipped('Symfony not installed (apt-get install php-symfony-http-kernel; scripts/test.sh does)');
        }
        parent::setUp();
    }

    /** @param array<string, mixed> $params */
    private function sf(array $params, ?string $id = null): array
    {
        $r = $this->http->get('/symfony.php' . self::q($params), $id);
        $this->assertSame(200, $r['status'], $r['body']);
        $j = $this->json($r);
        $j['cookie'] = $r['cookie'];
        return $j;
    }

    /** The server returns fields in key order: compare attributes as a map. */
    private function assertAttributes(array $expected, array $actual): void
    {
        ksort($expected);
        ksort($actual);
        $this->assertSame($expected, $actual);
    }

    /** @return array<string, array{0:string}> */
    public static function writeModes(): array
    {
        return ['session' => ['session'], 'none' => ['none']];
    }

    /** @dataProvider writeModes */
    public function testNewSessionUnderStrictModePersists(string $mode): void
    {
        $a = $this->sf(['mode' => $mode, 'set' => ['user' => 'alice', 'cart' => '3']]);
        $this->assertSame([], $a['errors'], 'no "no longer exists" / "not saved" notices');
        $id = $a['cookie'];
        $this->assertNotNull($id, 'the new session id is sent as a cookie');
        $this->assertSame($a['id'], $id);
        $f = $this->serverFields($id);
        // one field per attribute: per-key deltas work at the attribute level
        $this->assertSame(serialize('alice'), $f['_sf2_attributes.user'][1]);
        $this->assertSame(serialize('3'), $f['_sf2_attributes.cart'][1]);
        $this->assertArrayHasKey('_sf2_meta', $f);
        $b = $this->sf(['mode' => $mode], $id);
        $this->assertSame([], $b['errors']);
        $this->assertSame($id, $b['id']);
        $this->assertAttributes(['user' => 'alice', 'cart' => '3'], $b['seen']);
    }

    public function testUnknownClientIdIsReplacedAndNeverCreated(): void
    {
        $planted = 'planted' . bin2hex(random_bytes(12));
        $r = $this->sf(['set' => ['user' => 'alice']], $planted);
        $this->assertSame([], $r['errors']);
        $this->assertNotSame($planted, $r['id'], 'strict mode: PHP replaced the unknown id');
        $this->assertSame($r['id'], $r['cookie']);
        $this->assertSame(0, $this->redis->command(['SESSION.EXISTS', $planted]), 'the planted id was not created');
        $this->assertSame(serialize('alice'), $this->serverFields($r['id'])['_sf2_attributes.user'][1]);
    }

    public function testFlashBagShowsAMessageOnce(): void
    {
        $id = $this->sf(['flash' => ['notice' => 'saved']])['cookie'];
        $this->assertNotNull($id);
        $read = $this->sf(['getflash' => 1], $id);
        $this->assertSame(['notice' => ['saved']], $read['flashes']);
        $again = $this->sf(['getflash' => 1], $id);
        $this->assertSame([], $again['flashes'], 'a flash is shown once');
        $this->assertSame([], $read['errors']);
        $this->assertSame([], $again['errors']);
    }

    /**
     * none mode: two concurrent requests both show (and so consume) the same
     * flash; both delete the same field, which is not a conflict.
     */
    public function testTwoRequestsShowingTheSameFlashDoNotConflict(): void
    {
        $id = $this->sf(['mode' => 'none', 'flash' => ['notice' => 'saved']])['cookie'];
        $this->assertArrayHasKey('_symfony_flashes.notice', $this->serverFields($id), 'one field per flash type');
        $ga = $this->signal('A');
        $a = $this->http->start('/symfony.php' . self::q(['mode' => 'none', 'getflash' => 1, 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $b = $this->sf(['mode' => 'none', 'getflash' => 1], $id);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        foreach ([$ra, $b] as $r) {
            $this->assertSame(['notice' => ['saved']], $r['flashes']);
            $this->assertSame([], $r['errors'], json_encode($r));
            $this->assertSame([], $r['conflicts']);
        }
        $this->assertArrayNotHasKey('_symfony_flashes.notice', $this->serverFields($id));
    }

    /** @return array<string, array{0:string,1:int}> */
    public static function migrations(): array
    {
        return [
            'migrate(), session mode' => ['session', 0],
            'migrate(true), session mode' => ['session', 1],
            'migrate(), none mode' => ['none', 0],
            'migrate(true), none mode' => ['none', 1],
        ];
    }

    /**
     * migrate() keeps the data under a new id; the old id stays an alias
     * for the grace period (requests in flight keep working), and ends at
     * once with migrate(true) (a login).
     *
     * @dataProvider migrations
     */
    public function testMigrateKeepsTheDataUnderANewId(string $mode, int $destroy): void
    {
        $id = $this->sf(['mode' => $mode, 'set' => ['user' => 'alice']])['cookie'];
        $m = $this->sf(['mode' => $mode, 'migrate' => $destroy, 'set' => ['after' => 'x']], $id);
        $this->assertSame([], $m['errors']);
        $this->assertSame($id, $m['before']);
        $this->assertNotSame($id, $m['id']);
        $this->assertSame($m['id'], $m['cookie'], 'the new id is sent as a cookie');
        $f = $this->serverFields($m['id']);
        $this->assertSame(serialize('alice'), $f['_sf2_attributes.user'][1]);
        $this->assertSame(serialize('x'), $f['_sf2_attributes.after'][1]);
        $old = $this->redis->command(['SESSION.READ', $id]);
        if ($destroy) {
            $this->assertNull($old, 'migrate(true): the old id ends at once');
        } else {
            $this->assertSame($m['id'], $old[0], 'migrate(): the old id is an alias during the grace period');
        }
        $next = $this->sf(['mode' => $mode], $m['id']);
        $this->assertAttributes(['user' => 'alice', 'after' => 'x'], $next['seen']);
    }

    public function testInvalidateDropsTheDataAndTheOldId(): void
    {
        $id = $this->sf(['set' => ['user' => 'alice']])['cookie'];
        $r = $this->sf(['invalidate' => 1, 'set' => ['cleared' => 'z'], 'after' => ['fresh' => 'y']], $id);
        $this->assertSame([], $r['errors']);
        $this->assertNotSame($id, $r['id']);
        $this->assertNull($this->redis->command(['SESSION.READ', $id]), 'the old id is gone');
        $f = $this->serverFields($r['id']);
        $this->assertArrayNotHasKey('_sf2_attributes.user', $f, 'invalidate() drops the data');
        $this->assertArrayNotHasKey('_sf2_attributes.cleared', $f, 'and what was set before it');
        $this->assertSame(serialize('y'), $f['_sf2_attributes.fresh'][1]);
    }

    /**
     * none mode: two requests that read the session before either writes
     * and set different attributes both survive, and Symfony's metadata bag
     * (_sf2_meta, rewritten by every request) is not reported as a conflict.
     */
    public function testConcurrentRequestsSettingDifferentAttributesBothSurvive(): void
    {
        $id = $this->sf(['mode' => 'none', 'set' => ['user' => 'alice']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/symfony.php' . self::q(['mode' => 'none', 'set' => ['a' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $b = $this->sf(['mode' => 'none', 'set' => ['b' => '2']], $id);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        foreach ([$ra, $b] as $r) {
            $this->assertSame([], $r['errors'], json_encode($r));
            $this->assertSame([], $r['conflicts']);
        }
        $this->assertAttributes(['user' => 'alice', 'a' => '1', 'b' => '2'], $this->sf(['mode' => 'none'], $id)['seen']);
    }

    public function testSameAttributeConflictIsReported(): void
    {
        $id = $this->sf(['mode' => 'none', 'set' => ['x' => 'orig']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/symfony.php' . self::q(['mode' => 'none', 'set' => ['x' => 'A'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->sf(['mode' => 'none', 'set' => ['x' => 'B']], $id);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $this->assertSame([['_sf2_attributes.x']], $ra['conflicts'], 'the attribute, not the whole bag');
        $this->assertStringContainsString('conflict', implode("\n", $ra['errors']));
        $this->assertSame(serialize('B'), $this->serverFields($id)['_sf2_attributes.x'][1]);
    }

    /**
     * Session mode: a request migrates while another request of the same
     * user is queued for the lock with the old id (LOCK.INFO shows it). The
     * lock moves with the session; the queued request gets it after the
     * migration, works on the new session through the alias, and both
     * requests' attributes are kept.
     */
    public function testMigrateWhileAnotherRequestWaitsWithTheOldId(): void
    {
        $id = $this->sf(['set' => ['user' => 'alice']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/symfony.php' . self::q(['migrate' => 0, 'set' => ['a' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $b = $this->http->start('/symfony.php' . self::q(['set' => ['b' => '2']]), $id);
        $this->awaitWaiters($id, 1);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $rb = $this->json($this->http->finish($b));
        $this->assertSame([], $ra['errors']);
        $this->assertSame([], $rb['errors']);
        $new = $ra['id'];
        $this->assertNotSame($id, $new);
        $this->assertArrayHasKey('a', $rb['seen'], 'the queued request ran after the migration and saw its write');
        $f = $this->serverFields($new);
        $this->assertSame(serialize('1'), $f['_sf2_attributes.a'][1]);
        $this->assertSame(serialize('2'), $f['_sf2_attributes.b'][1]);
        $this->assertSame(serialize('alice'), $f['_sf2_attributes.user'][1]);
    }

    /**
     * none mode: a request read the session with the old id before another
     * one migrated it, and writes afterwards: its attribute lands in the
     * new session through the alias (the grace period), and a request that
     * arrives later with the old id reads the new session and is sent the
     * new id.
     */
    public function testRequestInFlightWithTheOldIdLosesNothing(): void
    {
        $id = $this->sf(['mode' => 'none', 'set' => ['user' => 'alice']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/symfony.php' . self::q(['mode' => 'none', 'set' => ['a' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $m = $this->sf(['mode' => 'none', 'migrate' => 0, 'set' => ['b' => '2']], $id);
        $this->assertNotSame($id, $m['id']);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $this->assertSame([], $ra['errors']);
        $this->assertSame([], $ra['conflicts']);
        $this->assertAttributes(['user' => 'alice', 'a' => '1', 'b' => '2'], $this->sf(['mode' => 'none'], $m['id'])['seen']);
        $late = $this->sf(['mode' => 'none'], $id);
        $this->assertSame($m['id'], $late['cookie'], 'a request with the old id is sent the new one');
        $this->assertAttributes(['user' => 'alice', 'a' => '1', 'b' => '2'], $late['seen']);
    }

    /** A route marked readonly (_sessiond_mode) answers while a writer holds the session lock. */
    public function testReadonlyRouteDoesNotWaitBehindAWriter(): void
    {
        $id = $this->sf(['set' => ['user' => 'alice']])['cookie'];
        $gw = $this->signal('W');
        $w = $this->http->start('/symfony.php' . self::q(['set' => ['user' => 'bob'], 'ready' => $gw, 'gate' => $gw]), $id);
        $this->awaitReady($gw);
        $this->assertNotNull($this->lockInfo($id), 'the writer holds the session lock');
        // the gate stays closed: this request can only finish if it does not wait
        $r = $this->sf(['route_mode' => 'readonly', 'set' => ['ignored' => '1']], $id);
        $this->assertSame('readonly', $r['mode']);
        $this->assertSame('alice', $r['seen']['user']);
        $this->assertNotNull($this->lockInfo($id), 'the writer still holds the lock: the reader did not wait for it');
        $this->openGate($gw);
        $this->json($this->http->finish($w));
        $f = $this->serverFields($id);
        $this->assertSame(serialize('bob'), $f['_sf2_attributes.user'][1]);
        $this->assertArrayNotHasKey('_sf2_attributes.ignored', $f, 'readonly writes nothing');
    }

    public function testRouteModeNoneLetsTwoWritersRunTogether(): void
    {
        $id = $this->sf(['set' => ['user' => 'alice']])['cookie'];
        $ga = $this->signal('A');
        $a = $this->http->start('/symfony.php' . self::q(['route_mode' => 'none', 'set' => ['a' => '1'], 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->assertNull($this->lockInfo($id), 'none mode takes no session lock');
        $b = $this->sf(['route_mode' => 'none', 'set' => ['b' => '2']], $id);
        $this->assertSame('none', $b['mode']);
        $this->openGate($ga);
        $this->assertSame([], $this->json($this->http->finish($a))['errors']);
        $this->assertAttributes(['user' => 'alice', 'a' => '1', 'b' => '2'], $this->sf([], $id)['seen']);
    }

    /**
     * Drupal's SessionManager is a NativeSessionStorage subclass whose
     * regenerate() picks the new id itself and moves the stored session
     * (DrupalLikeStorage in the app does the same, with moveSession()).
     *
     * @dataProvider writeModes
     */
    public function testDrupalStyleStorageSubclassRegenerates(string $mode): void
    {
        $first = $this->sf(['storage' => 'drupal', 'mode' => $mode, 'set' => ['uid' => '7']]);
        $this->assertSame([], $first['errors']);
        $id = $first['cookie'];
        $m = $this->sf(['storage' => 'drupal', 'mode' => $mode, 'migrate' => 1, 'set' => ['after' => 'x']], $id);
        $this->assertSame([], $m['errors']);
        $this->assertNotSame($id, $m['id']);
        $this->assertSame($m['id'], $m['cookie']);
        $this->assertNull($this->redis->command(['SESSION.READ', $id]), 'the old id ends with the move (destroy=true)');
        $next = $this->sf(['storage' => 'drupal', 'mode' => $mode], $m['id']);
        $this->assertAttributes(['uid' => '7', 'after' => 'x'], $next['seen']);
    }
}
