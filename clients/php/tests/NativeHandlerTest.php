<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/**
 * The extension's native save handler (session.save_handler=sessiond, C
 * code in clients/php/ext/sessiond) next to the PHP class: the same data
 * layout on the server (a session written by one is read by the other), the
 * configuration by ini alone, clear errors for a bad configuration, and
 * persistent sockets that never carry a lock from a request that ended
 * abnormally into the next one.
 *
 * Runs in every pass of run-tests.sh that loads the extension (the test
 * apps take ?native=1|0 to choose the handler per request); skipped without
 * the extension. The rest of its behaviour is tested by the suite's native
 * pass, which runs the handler tests (LockModesTest, PhpFeaturesTest,
 * RegenerateTest, SerializeHandlerTest, FpmTest) with the native handler.
 */
final class NativeHandlerTest extends TestCase
{
    protected function setUp(): void
    {
        if (!extension_loaded('sessiond')) {
            $this->markTestSkipped('the sessiond extension is not loaded (run-tests.sh loads it in its first two passes)');
        }
        // loaded without its save handler: a broken build, never a skip
        $this->assertTrue(function_exists('sessiond_native_info'), 'the sessiond extension has no native save handler (sessiond_native_info)');
        parent::setUp();
    }

    // ------------------------------------------------------------------
    // (a) interop: the same layout, read and written by either
    // ------------------------------------------------------------------

    /** @return array<string, array{0:string,1:int,2:int,3:string}> ser, writer, reader (1: native), mode of the update */
    public static function interopCases(): array
    {
        $out = [];
        foreach (['php', 'php_serialize', 'php_binary'] as $ser) {
            foreach ([[0, 1], [1, 0]] as [$w, $r]) {
                foreach (['session', 'none'] as $mode) {
                    $name = sprintf('%s, %s -> %s, update in %s mode', $ser, $w ? 'native' : 'class', $r ? 'native' : 'class', $mode);
                    $out[$name] = [$ser, $w, $r, $mode];
                }
            }
        }
        return $out;
    }

    /**
     * One handler writes rich values, split keys (`_sf2_attributes`
     * elements) and an lww key; the other reads exactly that, changes split
     * elements and top-level keys; the first reads the change.
     *
     * @dataProvider interopCases
     */
    public function testASessionWrittenByOneIsReadAndChangedByTheOther(string $ser, int $writer, int $reader, string $mode): void
    {
        $id = $this->newSession();
        $w = $this->interop($id, ['op' => 'write', 'native' => $writer, 'ser' => $ser, 'tag' => 'w']);
        $this->assertSame($writer === 1, $w['native'], 'the handler asked for wrote');
        $this->assertTrue($w['wrote']);
        $r = $this->interop($id, ['op' => 'read', 'native' => $reader, 'ser' => $ser, 'mode' => 'readonly']);
        $this->assertSame($reader === 1, $r['native']);
        $this->assertSame($w['dump'], $r['seen'], 'the other handler reads what was written');
        $this->assertCount(13, $r['seen']);

        $f = $this->serverFields($id);
        $this->assertSame(serialize('alice-w'), $f['_sf2_attributes.user'][1] ?? null, 'a split key is stored one field per element');
        $this->assertSame('5', $f['_sf2_attributes.n'][1] ?? null, 'ints are plain decimal, in split keys too');
        $this->assertArrayNotHasKey('_sf2_attributes', $f, 'no whole-array field for a split key');
        $this->assertSame('42', $f['int'][1]);

        $u = $this->interop($id, ['op' => 'update', 'native' => $reader, 'ser' => $ser, 'mode' => $mode, 'tag' => 'r']);
        $this->assertSame($w['dump'], $u['seen']);
        $this->assertTrue($u['wrote']);
        $back = $this->interop($id, ['op' => 'read', 'native' => $writer, 'ser' => $ser, 'mode' => 'readonly']);
        $this->assertSame($u['dump'], $back['seen'], 'the first handler reads the other\'s changes');
        $this->assertSame('bob-r', unserialize(base64_decode($back['seen']['_sf2_attributes']))['user']);

        $f2 = $this->serverFields($id);
        $this->assertSame(serialize('bob-r'), $f2['_sf2_attributes.user'][1] ?? null);
        $this->assertSame(serialize(['new' => true]), $f2['_sf2_attributes.added'][1] ?? null);
        $this->assertArrayNotHasKey('_sf2_attributes.gone', $f2, 'a removed element is removed from the server');
        $this->assertArrayNotHasKey('neg', $f2);
        $this->assertSame('43', $f2['int'][1]);
        foreach (['str', 'obj', 'bin', '_sf2_attributes.cart', '_sf2_attributes.n'] as $k) {
            $this->assertSame($f[$k][0], $f2[$k][0], "untouched field $k keeps its version (only changes are sent)");
        }
        $this->assertNull($this->lockInfo($id), 'no lock left behind');
    }

    /** @return array<string, array{0:string, 1:array<string,string>}> serialize handler, split_keys/lww_keys options */
    public static function layouts(): array
    {
        $out = [];
        foreach (['php', 'php_serialize', 'php_binary'] as $ser) {
            $out["$ser, default split_keys"] = [$ser, []];
        }
        $out['php, split_keys=list'] = ['php', ['split' => 'list']];
        $out['php, no split_keys, no lww_keys'] = ['php', ['split' => '', 'lww' => '']];
        return $out;
    }

    /**
     * The same data written by each gives the same fields on the server
     * (names and values; versions are the server's), also with split_keys
     * given in the options.
     *
     * @dataProvider layouts
     */
    public function testBothWriteTheSameFields(string $ser, array $opts): void
    {
        $fields = [];
        foreach ([0, 1] as $native) {
            $id = $this->newSession();
            $this->interop($id, ['op' => 'write', 'native' => $native, 'ser' => $ser, 'tag' => 'same'] + $opts);
            $fields[$native] = array_map(static fn (array $f) => $f[1], $this->serverFields($id));
            ksort($fields[$native]);
            $what = $native ? 'native' : 'class';
            $split = ($opts['split'] ?? null) === null ? ['_sf2_attributes'] : array_filter(explode(',', $opts['split']));
            foreach (['_sf2_attributes' => '_sf2_attributes.user', 'list' => 'list.0'] as $key => $element) {
                if (in_array($key, $split, true)) {
                    $this->assertArrayHasKey($element, $fields[$native], "$what: $key is split");
                    $this->assertArrayNotHasKey($key, $fields[$native], $what);
                } else {
                    $this->assertArrayHasKey($key, $fields[$native], "$what: $key is one field");
                    $this->assertArrayNotHasKey($element, $fields[$native], $what);
                }
            }
        }
        $this->assertSame($fields[0], $fields[1]);
    }

    /**
     * ttl, name, lww_keys and follow_regenerate reach the handler (the
     * others are used by the suite's native pass), for the class and the
     * native handler alike.
     */
    public function testOptionsReachTheHandler(): void
    {
        foreach ([0, 1] as $native) {
            $what = $native ? 'native' : 'class';
            // ttl: the idle TTL instead of gc_maxlifetime (1440 s)
            $id = $this->newSession();
            $j = $this->json($this->http->get('/hold.php' . self::q(['native' => $native, 'ttl' => 77, 'set' => ['x' => 1]]), $id));
            $this->assertSame([], $j['errors'], $what);
            $ttl = $this->redis->command(['SESSION.TTL', $id]);
            $this->assertGreaterThan(0, $ttl, $what);
            $this->assertLessThanOrEqual(77000, $ttl, "$what: ttl=77");

            // name: CLIENT SETNAME, shown by LOCK.INFO as the holder's name
            $ga = $this->signal('A');
            $a = $this->http->start('/hold.php' . self::q(['native' => $native, 'name' => "web-$what", 'ready' => $ga, 'gate' => $ga]), $id);
            $this->awaitReady($ga);
            $this->awaitHolder($id);
            $names = array_map(static fn ($l) => $l[5], $this->redis->command(['LOCK.INFO', $id]) ?? []);
            $this->openGate($ga);
            $this->json($this->http->finish($a));
            $this->assertSame(["web-$what"], $names, "$what: name");

            // lww_keys: a concurrent change of such a key is no conflict; the last writer wins
            $id = $this->newSession(['x' => 'orig']);
            $ga = $this->signal('A');
            $a = $this->http->start('/hold.php' . self::q(['native' => $native, 'mode' => 'none', 'lww' => 'x', 'set' => ['x' => 'A'], 'ready' => $ga, 'gate' => $ga]), $id);
            $this->awaitReady($ga);
            $this->json($this->http->get('/hold.php' . self::q(['native' => $native, 'mode' => 'none', 'set' => ['x' => 'B']]), $id));
            $this->openGate($ga);
            $ra = $this->json($this->http->finish($a));
            $this->assertSame([], $ra['conflicts'], "$what: lww_keys=x");
            $this->assertSame([], $ra['errors'], $what);
            $this->assertSame(serialize('A'), $this->serverFields($id)['x'][1], "$what: the last writer wins");

            // follow_regenerate=0: a request with the old (alias) id is not sent the new one
            $id = $this->newSession(['user' => 'alice']);
            $rg = $this->json($this->http->get('/regen.php' . self::q(['native' => $native, 'mode' => 'session']), $id));
            $this->assertTrue($rg['ok'], $what);
            foreach ([0 => null, 1 => $rg['new']] as $follow => $cookie) {
                $r = $this->http->get('/hold.php' . self::q(['native' => $native, 'follow' => $follow]), $id);
                $this->assertSame('alice', $this->json($r)['seen']['user'] ?? null, "$what: the old id reads the session");
                $this->assertSame($cookie, $r['cookie'], "$what: follow_regenerate=$follow");
            }
        }
    }

    // ------------------------------------------------------------------
    // (b) the one-line configuration
    // ------------------------------------------------------------------

    /**
     * php -S with the handler given by ini alone (no code but
     * session_start()): two concurrent requests of one session both
     * increment its counter, the second queued by the server behind the
     * first.
     */
    public function testIniAloneTwoConcurrentRequestsLoseNothing(): void
    {
        $ini = [
            'session.save_handler=sessiond',
            // quoted: the ini parser cuts an unquoted value at its '='
            'session.save_path="' . Env::$uri . '?lock_mode=session"',
            'session.use_strict_mode=1',
        ];
        $ports = [Env::startWebServer($ini), Env::startWebServer($ini)];
        try {
            $http = new \Sessiond\Tests\Support\Http('127.0.0.1', $ports);
            $first = $http->get('/oneline.php', null, $ports[0]);
            $j = $this->json($first);
            $this->assertTrue($j['ok'], $first['body']);
            $this->assertSame('sessiond', $j['handler']);
            $this->assertNull($j['error'], 'no warning');
            $id = $first['cookie'];
            $this->assertMatchesRegularExpression('/^[0-9a-f]{40}$/', (string) $id, 'the id comes from the server (strict mode)');
            $this->assertSame(1, $j['n']);

            $ga = $this->signal('A');
            $gb = $this->signal('B');
            $a = $http->start('/oneline.php' . self::q(['ready' => $ga, 'gate' => $ga]), $id, 'PHPSESSID', $ports[0]);
            $this->awaitReady($ga);
            $this->awaitHolder($id);
            $b = $http->start('/oneline.php' . self::q(['ready' => $gb]), $id, 'PHPSESSID', $ports[1]);
            $this->awaitWaiters($id, 1);
            $this->assertFalse($this->isReady($gb), 'B got past session_start() while A held the lock');
            $this->openGate($ga);
            $ra = $this->json($http->finish($a));
            $rb = $this->json($http->finish($b));
            foreach ([$ra, $rb] as $r) {
                $this->assertTrue($r['ok'], json_encode($r));
                $this->assertTrue($r['wrote'], json_encode($r));
                $this->assertNull($r['error'], json_encode($r));
                $this->assertSame($id, $r['id']);
            }
            $this->assertSame(2, $ra['n']);
            $this->assertSame(3, $rb['n'], 'B read A\'s write');
            $this->assertSame('3', $this->serverFields($id)['n'][1], 'no increment lost');
            $this->assertNull($this->lockInfo($id), 'no lock left behind');

            // strict mode from the ini: an id the server does not know is replaced
            $r = $http->get('/oneline.php', 'attackerchosenid' . bin2hex(random_bytes(8)), $ports[1]);
            $this->assertTrue($this->json($r)['ok']);
            $this->assertMatchesRegularExpression('/^[0-9a-f]{40}$/', (string) $r['cookie']);
        } finally {
            \Sessiond\Tests\Support\Http::drain();
            foreach ($ports as $p) {
                Env::stopWebServer($p);
            }
        }
    }

    // ------------------------------------------------------------------
    // (c) a bad configuration: a clear warning, session_start() false
    // ------------------------------------------------------------------

    /**
     * save_path (with {URI} for the test server's URI, {DEAD} for a free
     * port nobody listens on) and what the warning must name.
     *
     * @return array<string, array{0:string, 1:list<string>}>
     */
    public static function badConfigurations(): array
    {
        return [
            'unknown option' => ['{URI}?lock_mod=none', ['lock_mod']],
            'unknown option among known ones' => ['{URI}?lock_mode=none&wait=5', ['wait']],
            'tls:// URI' => ['tls://127.0.0.1:6390', ['tls']],
            'tls option' => ['{URI}?tls[cafile]=/etc/ssl/ca.crt', ['tls']],
            'unreachable server' => ['tcp://127.0.0.1:{DEAD}?connect_timeout=1', ['127.0.0.1:{DEAD}']],
            'unknown lock_mode' => ['{URI}?lock_mode=bogus', ['lock_mode', 'bogus']],
        ];
    }

    /**
     * @dataProvider badConfigurations
     * @param list<string> $named
     */
    public function testABadConfigurationFailsSessionStartWithAClearWarning(string $savePath, array $named): void
    {
        $dead = (string) Env::freePort();
        $savePath = str_replace(['{URI}', '{DEAD}'], [Env::$uri, $dead], $savePath);
        foreach ([null, 'abcdef0123456789abcdef0123456789abcdef01'] as $id) {
            $j = $this->nativeCli($savePath, $id);
            $this->assertSame('sessiond', $j['handler']);
            $this->assertFalse($j['ok'], "session_start() returns false with save_path $savePath");
            $this->assertSame([], $j['session'] ?? [], '$_SESSION stays empty');
            $this->assertContains(E_WARNING, array_column($j['errors'], 0), 'a warning');
            // the handler's own warning: PHP's "Failed to initialize storage
            // module: sessiond (path: …)" quotes the save path, so it names
            // everything and explains nothing
            $own = array_filter(array_column($j['errors'], 1),
                static fn (string $m) => !preg_match('/Failed to (initialize storage module|read session data)|session startup failed/', $m));
            $this->assertNotSame([], $own, 'a warning of the handler itself, besides PHP\'s: ' . json_encode($j['errors']));
            $msgs = implode("\n", $own);
            foreach ($named as $n) {
                $this->assertStringContainsStringIgnoringCase(str_replace('{DEAD}', $dead, $n), $msgs, "the warning names what is wrong ($savePath)");
            }
        }
        if ($named !== ['127.0.0.1:{DEAD}']) {
            // nothing was created on the server either
            $this->assertSame(0, $this->redis->command(['SESSION.EXISTS', 'abcdef0123456789abcdef0123456789abcdef01']));
        }
    }

    /** A good save path through the same CLI works (the cases above fail for their reason only). */
    public function testTheSameCliWithAGoodSavePathStarts(): void
    {
        $j = $this->nativeCli(Env::$uri . '?lock_mode=none&lock_wait_ms=5&connect_timeout=1');
        $this->assertTrue($j['ok'], json_encode($j));
        $this->assertSame([], $j['errors']);
    }

    // ------------------------------------------------------------------
    // (d) persistent sockets never carry a lock into the next request
    // ------------------------------------------------------------------

    /** @return array<string, array{0:array<string,int>}> */
    public static function abnormalEnds(): array
    {
        return [
            'exit()' => [['exit' => 1]],
            'uncaught exception' => [['throw' => 1]],
            'fatal error (memory exhausted)' => [['fatal' => 1]],
        ];
    }

    /**
     * The native pass runs LockModesTest's exit/exception/fatal and SIGKILL
     * tests with persistent sockets too, but there the next request runs in
     * another process. Here it runs in the same php -S process, on the
     * socket the failed request left: the lock is gone before it comes (no
     * idle worker holds it), the session was written, and the socket is
     * reused.
     *
     * @dataProvider abnormalEnds
     */
    public function testAbnormalEndOnAPersistentSocketLeavesNoLockForTheNextRequest(array $how): void
    {
        $id = $this->newSession(['n' => 1]);
        $port = Env::$httpPorts[0];
        $base = ['native' => 1, 'persistent' => 1, 'mode' => 'session', 'wait' => 30000];
        // the worker's persistent socket exists, and has served a request
        $warm = $this->json($this->http->get('/hold.php' . self::q($base + ['incr' => 'n']), $id, $port));
        $this->assertTrue($warm['ok'], json_encode($warm));
        $a = $this->http->get('/hold.php' . self::q($base + $how + ['set' => ['x' => 'fromA']]), $id, $port);
        if (!isset($how['exit'])) {
            $this->assertSame(500, $a['status'], $a['body']);
        }
        $this->waitUntil(fn () => $this->lockInfo($id) === null, 'the lock of the request that ended abnormally to be released');
        $this->assertSame([], $this->redis->command(['LOCK.INFO', $id]), 'no lock of any kind left');
        $b = $this->json($this->http->get('/hold.php' . self::q($base + ['incr' => 'n']), $id, $port));
        $this->assertTrue($b['ok'], json_encode($b));
        $this->assertSame([], $b['errors']);
        $this->assertTrue($b['reused'], 'the next request in the same process reused the persistent socket');
        $this->assertSame('fromA', $b['seen']['x'] ?? null, 'the session was written at the abnormal end');
        $this->assertSame(2, $b['seen']['n']);
        $this->assertSame('3', $this->serverFields($id)['n'][1]);
        $this->assertNull($this->lockInfo($id));
    }

    /**
     * lease_ms reaches the server: a session lock held past its lease is
     * gone (LOCK.INFO), and the late write falls back to a conditional
     * commit and says so, as with the class.
     */
    public function testLeaseMsBoundsTheSessionLock(): void
    {
        foreach ([0, 1] as $native) {
            $what = $native ? 'native' : 'class';
            $id = $this->newSession(['x' => 'orig']);
            $ga = $this->signal('A');
            $a = $this->http->start('/hold.php' . self::q(['native' => $native, 'mode' => 'session', 'lease' => 300, 'set' => ['x' => 'A'], 'ready' => $ga, 'gate' => $ga]), $id);
            $this->awaitReady($ga);
            $this->awaitHolder($id);
            $this->waitUntil(fn () => $this->lockInfo($id) === null, "$what: the lock to end with its 300 ms lease");
            $this->openGate($ga);
            $ra = $this->json($this->http->finish($a));
            $this->assertTrue($ra['ok'], $what);
            $this->assertStringContainsString('lock on session', implode("\n", $ra['errors']), "$what: says the lock was lost");
            $this->assertSame(serialize('A'), $this->serverFields($id)['x'][1], "$what: nobody else changed x: saved");
        }
    }

    // ------------------------------------------------------------------
    // passwords and users in the save path
    // ------------------------------------------------------------------

    /**
     * A server of its own with a `default` password and a user: the
     * password (and user) from the URI's userinfo or from the options log
     * in; a wrong or missing one is a warning naming the server's refusal.
     */
    public function testPasswordAndUserInTheSavePath(): void
    {
        $d = Env::$tmp . '/auth-' . bin2hex(random_bytes(4));
        @mkdir($d, 0700, true);
        file_put_contents("$d/users.toml", "[[user]]\nname = \"php\"\npassword = \"#" . hash('sha256', 'app-secret') . "\"\nclass = \"readwrite\"\n");
        $log = "$d/sessiond.log";
        $proc = Env::spawn([Env::sessiondBinary(), 'serve', '--port', '0', '--bind', '127.0.0.1', '--data-dir', "$d/data",
            '--metrics-addr', 'off', '--requirepass', 's3cret', '--users-file', "$d/users.toml"], $log, ['NO_COLOR' => '1']);
        try {
            $port = $this->waitUntil(static fn () => preg_match('/resp=[^\s:]+:(\d+)/', (string) @file_get_contents($log), $m) ? (int) $m[1] : null,
                "the server with passwords ready (see $log)");
            foreach ([
                "tcp://:s3cret@127.0.0.1:$port",
                "tcp://127.0.0.1:$port?password=s3cret",
                "tcp://php:app-secret@127.0.0.1:$port",
                "tcp://127.0.0.1:$port?user=php&password=app-secret",
                "tcp://:app-secret@127.0.0.1:$port?user=php",
            ] as $uri) {
                foreach (['session', 'none'] as $mode) {
                    $j = $this->nativeCli($uri . (str_contains($uri, '?') ? '&' : '?') . "lock_mode=$mode&connect_timeout=1");
                    $this->assertTrue($j['ok'], "$uri, $mode: " . json_encode($j));
                    $this->assertSame([], $j['errors'], "$uri, $mode");
                }
            }
            foreach (["tcp://php:wrong@127.0.0.1:$port" => 'WRONGPASS', "tcp://127.0.0.1:$port" => 'NOAUTH'] as $uri => $refusal) {
                $j = $this->nativeCli("$uri?connect_timeout=1");
                $this->assertFalse($j['ok'], $uri);
                $this->assertStringContainsString($refusal, implode("\n", array_column($j['errors'], 1)), $uri);
                // (PHP's own "Failed to read session data: sessiond (path: …)"
                // quotes the save path, password included: not the handler's doing)
                $own = array_filter(array_column($j['errors'], 1), static fn (string $m) => !str_contains($m, '(path: '));
                $this->assertStringNotContainsString('wrong', implode("\n", $own), 'no password in the handler\'s warnings');
            }
        } finally {
            Env::stop($proc);
        }
    }

    // ------------------------------------------------------------------
    // the extension's functions
    // ------------------------------------------------------------------

    public function testNativeInfoAndSetMode(): void
    {
        $j = $this->nativeCli(Env::$uri . '?lock_mode=session', null, 'cli_native_api.php');
        $this->assertSame([], $j['errors']);
        $before = $j['info_before'];
        ksort($before);
        $this->assertSame(['locked_id' => null, 'mode' => 'session', 'reused' => false, 'token' => null], $before, 'before session_start()');
        $this->assertStringStartsWith('ValueError', (string) $j['bad_mode'], 'an unknown mode');
        $this->assertSame('readonly', $j['mode_set'], 'sessiond_set_mode() before session_start()');
        $this->assertSame('session', $j['mode_reset'], 'null: back to the lock_mode option');
        $this->assertTrue($j['started']);
        $this->assertIsInt($j['info_active']['token'], 'the session lock is held: its fencing token');
        $this->assertGreaterThan(0, $j['info_active']['token']);
        $this->assertSame($j['id'], $j['info_active']['locked_id']);
        $this->assertSame('session', $j['info_active']['mode']);
        $this->assertNotNull($j['set_mode_active'], 'sessiond_set_mode() while a session is active throws');
        $this->assertStringNotContainsString('ValueError', (string) $j['set_mode_active'], 'not for its argument');
        $this->assertTrue($j['wrote']);
        $this->assertNull($j['info_after']['token'], 'released at session_write_close()');
        $this->assertNull($j['info_after']['locked_id']);
        $this->assertSame('1', $this->serverFields($j['id'])['v'][1]);
    }

    /**
     * sessiond_set_conflict_handler() is called like the class's
     * on_conflict option (same keys, details and id), and its answer
     * chooses the policy for that conflict.
     */
    public function testConflictHandlerIsCalledLikeOnConflict(): void
    {
        $seen = [];
        foreach ([0, 1] as $native) {
            foreach (['' => 'B', 'mine' => 'A', 'theirs' => 'B'] as $choose => $kept) {
                $id = $this->newSession(['x' => 'orig', 'y' => 'orig']);
                $ga = $this->signal('A');
                $aParams = ['native' => $native, 'mode' => 'none', 'set' => ['x' => 'A', 'y' => 'A'], 'ready' => $ga, 'gate' => $ga];
                if ($choose !== '') {
                    $aParams['choose'] = $choose;
                }
                $a = $this->http->start('/hold.php' . self::q($aParams), $id);
                $this->awaitReady($ga);
                $rb = $this->json($this->http->get('/hold.php' . self::q(['native' => $native, 'mode' => 'none', 'set' => ['x' => 'B']]), $id));
                $this->assertSame([], $rb['errors']);
                $this->openGate($ga);
                $ra = $this->json($this->http->finish($a));
                $what = ($native ? 'native' : 'class') . ', callback answers ' . ($choose ?: 'null');
                $this->assertSame([['x']], $ra['conflicts'], $what);
                $args = $ra['conflict_args'][0];
                $this->assertSame($id, $args['id'], $what);
                $this->assertSame(['x'], $args['keys'], $what);
                $d = $args['details']['x'] ?? [];
                $this->assertSame('A', $d['mine'] ?? null, $what);
                $this->assertSame('B', $d['theirs'] ?? null, $what);
                $this->assertFalse($d['mine_deleted'] ?? null, $what);
                $this->assertFalse($d['theirs_deleted'] ?? null, $what);
                $this->assertIsInt($d['base_version'] ?? null, $what);
                $this->assertGreaterThan($d['base_version'], $d['their_version'] ?? null, $what);
                $this->assertStringContainsString($kept === 'A' ? 'conflict_policy=mine' : 'conflict_policy=theirs', implode("\n", $ra['errors']), $what);
                $f = $this->serverFields($id);
                $this->assertSame(serialize($kept), $f['x'][1], $what);
                $this->assertSame(serialize('A'), $f['y'][1], "$what: the other key is saved");
                // versions are the server's (global): compare what they say
                $d['their_version'] -= $d['base_version'];
                unset($d['base_version']);
                $seen[$native][$choose] = $d;
            }
        }
        $this->assertSame($seen[0], $seen[1], 'the same details from the class and from the native handler');
    }

    // ------------------------------------------------------------------

    /** @return array<string, mixed> the reply of tests/app/interop.php */
    private function interop(string $id, array $params): array
    {
        $r = $this->http->get('/interop.php' . self::q($params), $id);
        $j = $this->json($r);
        $this->assertTrue($j['ok'], $r['body']);
        $this->assertSame([], $j['errors'], json_encode($params));
        $this->assertSame($id, $j['id'], 'the same session');
        return $j;
    }

    /** @return array<string, mixed> what the CLI script (default cli_native_start.php) printed */
    private function nativeCli(string $savePath, ?string $id = null, string $script = 'cli_native_start.php'): array
    {
        $cmd = [PHP_BINARY, '-d', 'display_errors=stderr', '-d', 'session.save_handler=sessiond',
            '-d', 'session.save_path="' . $savePath . '"', '-d', 'session.use_strict_mode=1',
            __DIR__ . '/app/' . $script];
        if ($id !== null) {
            $cmd[] = $id;
        }
        $p = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        proc_close($p);
        $j = json_decode((string) $out, true);
        $this->assertIsArray($j, "cli_native_start.php: $out $err");
        return $j;
    }
}
