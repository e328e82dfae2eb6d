<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

final class PhpFeaturesTest extends TestCase
{
    public function testCreateSidComesFromTheServer(): void
    {
        $r = $this->http->get('/new.php');
        $this->assertMatchesRegularExpression('/^[0-9a-f]{40}$/', $r['cookie'], 'PHP accepts the server\'s 40-hex ids');
        $this->assertSame(1, $this->redis->command(['SESSION.EXISTS', $r['cookie']]));
    }

    public function testStrictModeReplacesUnknownIds(): void
    {
        $r = $this->http->get('/hold.php' . self::q(['set' => ['x' => 1]]), 'attackerchosenid0123456789');
        $this->assertTrue($r['json']['ok']);
        $this->assertNotNull($r['cookie']);
        $this->assertNotSame('attackerchosenid0123456789', $r['cookie']);
        $this->assertSame(0, $this->redis->command(['SESSION.EXISTS', 'attackerchosenid0123456789']));
        $this->assertSame(1, $this->redis->command(['SESSION.EXISTS', $r['cookie']]));
    }

    public function testASessionStartedTwiceInOneRequestKeepsItsIdAndData(): void
    {
        foreach (['session', 'none'] as $mode) {
            foreach ([null, $this->newSession(['old' => 1])] as $existing) {
                $what = $mode . ($existing === null ? ', new session' : ', existing session');
                $r = $this->http->get('/reopen.php' . self::q(['mode' => $mode]), $existing)['json'];
                $this->assertTrue($r['ok'], "$what: " . json_encode($r));
                $this->assertSame($r['first'], $r['second'], "$what: the second session_start() kept the id");
                $this->assertSame(1, $r['seen']['before'] ?? null, "$what: and saw what the first wrote");
                $fields = $this->serverFields($r['first']);
                $this->assertArrayHasKey('before', $fields, $what);
                $this->assertArrayHasKey('after', $fields, $what);
            }
        }
    }

    public function testIdsOutsideTheServerAlphabetAreReplaced(): void
    {
        $r = $this->http->get('/hold.php', str_repeat('x', 200));
        $this->assertTrue($r['json']['ok']);
        $this->assertMatchesRegularExpression('/^[0-9a-f]{40}$/', $r['cookie']);
    }

    public function testWithoutStrictModeUnknownIdsAreCreated(): void
    {
        $id = 'plainid' . bin2hex(random_bytes(8));
        foreach (['session', 'none'] as $mode) {
            $r = $this->http->get('/hold.php' . self::q(['strict' => 0, 'mode' => $mode, 'set' => [$mode => 1]]), $id)['json'];
            $this->assertTrue($r['ok'], json_encode($r));
        }
        $this->assertArrayHasKey('none', $this->serverFields($id));
    }

    public function testDestroy(): void
    {
        foreach (['session', 'none', 'readonly'] as $mode) {
            $id = $this->newSession(['x' => 1]);
            $r = $this->http->get('/hold.php' . self::q(['mode' => $mode, 'destroy' => 1]), $id)['json'];
            $this->assertTrue($r['destroyed'], $mode);
            $this->assertSame(0, $this->redis->command(['SESSION.EXISTS', $id]), $mode);
        }
        // the lock was released with it: a waiter behind a destroying request
        // gets it, is not served the destroyed data, and its late write does
        // not bring the session back
        $id = $this->newSession(['x' => 1]);
        $ga = $this->signal('A');
        $a = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'destroy' => 1, 'ready' => $ga, 'gate' => $ga]), $id);
        $this->awaitReady($ga);
        $this->awaitHolder($id);
        $b = $this->http->start('/hold.php' . self::q(['mode' => 'session', 'wait' => 30000, 'set' => ['late' => 1]]), $id);
        $this->awaitWaiters($id, 1);
        $this->openGate($ga);
        $ra = $this->json($this->http->finish($a));
        $rb = $this->json($this->http->finish($b));
        $this->assertTrue($ra['destroyed']);
        $this->assertTrue($rb['ok'], json_encode($rb));
        $this->assertSame([], $rb['seen'], 'destroyed data is not served');
        $this->assertStringContainsString('no longer exists', implode("\n", $rb['errors']));
        $this->assertSame(0, $this->redis->command(['SESSION.EXISTS', $id]), 'a late write does not recreate a destroyed session');
        $this->assertNull($this->lockInfo($id));
    }

    public function testGcIsANoOp(): void
    {
        $id = $this->newSession();
        $r = $this->http->get('/hold.php' . self::q(['gc' => 1]), $id)['json'];
        $this->assertSame(0, $r['gc']);
    }

    public function testGcMaxlifetimeIsTheTtl(): void
    {
        $r = $this->http->get('/new.php?maxlife=100');
        // bounds that say which TTL applies (100 s, not the server's 1440 s
        // default), without assuming how long the requests took
        $ttl = $this->redis->command(['SESSION.TTL', $r['cookie']]);
        $this->assertGreaterThan(0, $ttl);
        $this->assertLessThanOrEqual(100000, $ttl);
        foreach (['session', 'none'] as $mode) {
            // a later request with another gc_maxlifetime moves the TTL (commit or touch)
            $this->http->get('/hold.php' . self::q(['mode' => $mode, 'maxlife' => 5000, 'set' => ['x' => $mode]]), $r['cookie']);
            $ttl = $this->redis->command(['SESSION.TTL', $r['cookie']]);
            $this->assertGreaterThan(1440000, $ttl, "$mode: more than any earlier TTL: the commit set 5000 s");
            $this->assertLessThanOrEqual(5000000, $ttl, $mode);
            $this->http->get('/hold.php' . self::q(['mode' => $mode, 'maxlife' => 300]), $r['cookie']);
            $this->assertLessThanOrEqual(300000, $this->redis->command(['SESSION.TTL', $r['cookie']]), "$mode: updateTimestamp → SESSION.TOUCH TTL");
        }
    }

    public function testLifetimeAppliesToNewSessionsInEveryMode(): void
    {
        // strict mode: created by SESSION.NEW
        $r = $this->http->get('/new.php' . self::q(['lifetime' => 50]));
        $ttl = $this->redis->command(['SESSION.TTL', $r['cookie']]);
        $this->assertGreaterThan(0, $ttl);
        $this->assertLessThanOrEqual(50000, $ttl, 'strict mode: LIFETIME bounds the session, not gc_maxlifetime (1440 s)');
        // without strict mode the id from the cookie is created by the read
        // (session mode: LOCK.ACQUIRE … CREATE, which has no LIFETIME option)
        foreach (['session', 'none'] as $mode) {
            $id = "lifetime$mode" . bin2hex(random_bytes(8));
            $j = $this->json($this->http->get('/hold.php' . self::q(['strict' => 0, 'mode' => $mode, 'lifetime' => 50, 'set' => ['x' => 1]]), $id));
            $this->assertTrue($j['ok'], json_encode($j));
            $this->assertSame([], $j['errors']);
            $ttl = $this->redis->command(['SESSION.TTL', $id]);
            $this->assertGreaterThan(0, $ttl, $mode);
            $this->assertLessThanOrEqual(50000, $ttl, "$mode: LIFETIME applied to a session created by the read");
            $this->assertSame('1', $this->serverFields($id)['x'][1]);
        }
    }

    public function testLazyWriteSendsNothingWhenUnchanged(): void
    {
        foreach (['session', 'none'] as $mode) {
            foreach ([1, 0] as $lazy) {
                $id = $this->newSession(['x' => 1]);
                $before = $this->redis->command(['SESSION.READ', $id]);
                $r = $this->http->get('/hold.php' . self::q(['mode' => $mode, 'lazy' => $lazy]), $id)['json'];
                $this->assertTrue($r['ok']);
                $after = $this->redis->command(['SESSION.READ', $id]);
                $this->assertSame($before[1], $after[1], "$mode lazy=$lazy: an unchanged session is not rewritten");
            }
        }
    }

    public function testOnlyChangedKeysAreSent(): void
    {
        $id = $this->newSession(['a' => 1, 'b' => 2, 'c' => 3]);
        $before = $this->serverFields($id);
        $this->http->get('/hold.php' . self::q(['mode' => 'session', 'set' => ['b' => 20], 'del' => ['c']]), $id);
        $after = $this->serverFields($id);
        $this->assertSame($before['a'], $after['a'], 'untouched key keeps its version');
        $this->assertSame('20', $after['b'][1]);
        $this->assertArrayNotHasKey('c', $after);
    }

    public function testPersistentConnections(): void
    {
        $id = $this->newSession();
        for ($i = 1; $i <= 6; $i++) {
            $mode = ['none', 'session', 'readonly'][$i % 3];
            $r = $this->http->get('/hold.php' . self::q(['persistent' => 1, 'mode' => $mode, 'incr' => 'n']), $id)['json'];
            $this->assertTrue($r['ok'], json_encode($r));
            $this->assertSame([], $r['errors']);
        }
        $this->assertSame('4', $this->serverFields($id)['n'][1], 'readonly requests did not write');
        // a persistent-connection request that dies holding the session lock does not leak it
        $a = $this->http->start('/hold.php' . self::q(['persistent' => 1, 'mode' => 'session', 'sleep' => 200, 'throw' => 1]), $id);
        $this->http->finish($a);
        $r = $this->http->get('/hold.php' . self::q(['persistent' => 1, 'mode' => 'session', 'wait' => 30000]), $id)['json'];
        $this->assertTrue($r['ok']);
    }

    public function testUnreachableServerFailsSessionStart(): void
    {
        $port = Env::freePort();
        foreach (['session', 'none', 'readonly'] as $mode) {
            foreach ([null, 'abcdef0123456789abcdef0123456789abcdef01'] as $id) {
                [$p, $pipes] = $this->phpCli('cli_unreachable.php', array_merge(["tcp://127.0.0.1:$port", $mode], $id ? [$id] : []));
                $out = stream_get_contents($pipes[1]);
                proc_close($p);
                $j = json_decode($out, true);
                $this->assertIsArray($j, $out);
                $this->assertFalse($j['ok'], "$mode: session_start() returns false");
                $this->assertSame([], $j['session'] ?? []);
                $msgs = implode("\n", array_column($j['errors'], 1));
                $this->assertStringContainsString('cannot connect to tcp://127.0.0.1:' . $port, $msgs);
                $this->assertContains(E_WARNING, array_column($j['errors'], 0), 'PHP\'s own E_WARNING from session_start()');
            }
        }
    }

    public function testServerThatDoesNotAnswerTimesOut(): void
    {
        $srv = stream_socket_server('tcp://127.0.0.1:0');
        $addr = stream_socket_get_name($srv, false);
        $t = microtime(true);
        [$p, $pipes] = $this->phpCli('cli_unreachable.php', ["tcp://$addr", 'session', 'abcdef0123456789abcdef0123456789abcdef01']);
        $out = stream_get_contents($pipes[1]);
        proc_close($p);
        fclose($srv);
        $j = json_decode($out, true);
        $this->assertFalse($j['ok']);
        $this->assertStringContainsString('no reply', implode("\n", array_column($j['errors'], 1)));
        $this->assertLessThan(30, microtime(true) - $t, 'hang guard: the 1 s reply timeout applies');
    }

    /** @return array<string, array{0:string, 1:bool, 2:string}> reply, close after it, expected cause */
    public static function misbehavingServers(): array
    {
        return [
            'not RESP at all' => ["HTTP/1.1 400 Bad Request\r\n\r\n", false, 'protocol error'],
            'a bad integer' => [":12x\r\n", false, 'protocol error: bad integer'],
            'an error reply' => ["-ERR unknown command\r\n", false, 'replied with an error: ERR unknown command'],
            'a reply cut off by a close' => ["*2\r\n:1\r\n", true, 'closed by the server'],
        ];
    }

    /**
     * A server that answers wrongly: session_start() returns false with a
     * warning naming the cause, $_SESSION stays empty, and nothing is ever
     * written (no SESSION.COMMIT reaches the server).
     *
     * @dataProvider misbehavingServers
     */
    public function testMisbehavingServerFailsSessionStart(string $reply, bool $close, string $cause): void
    {
        $srv = stream_socket_server('tcp://127.0.0.1:0');
        $addr = stream_socket_get_name($srv, false);
        foreach (['session', 'none', 'readonly'] as $mode) {
            foreach ([null, 'abcdef0123456789abcdef0123456789abcdef01'] as $id) {
                [$p, $pipes] = $this->phpCli('cli_unreachable.php', array_merge(["tcp://$addr", $mode], $id ? [$id] : []));
                [$out, $received] = $this->serveUntilExit($srv, $p, $pipes[1], $reply, $close);
                $j = json_decode($out, true);
                $this->assertIsArray($j, $out);
                $this->assertFalse($j['ok'], "$mode: session_start() returns false");
                $this->assertSame([], $j['session'] ?? [], "$mode: \$_SESSION stays empty");
                $msgs = implode("\n", array_column($j['errors'], 1));
                $this->assertStringContainsString($cause, $msgs, $mode);
                $this->assertStringContainsString('session not started', $msgs, $mode);
                $this->assertContains(E_WARNING, array_column($j['errors'], 0), 'PHP\'s own E_WARNING from session_start()');
                $this->assertStringNotContainsString('SESSION.COMMIT', $received, "$mode: nothing written");
                $this->assertStringNotContainsString('SESSION.DESTROY', $received, "$mode: nothing destroyed");
            }
        }
        fclose($srv);
    }

    /**
     * Plays a broken server for one CLI run: every chunk a client sends is
     * answered with $reply. Returns the CLI's stdout and all bytes received.
     *
     * @param resource $srv @param resource $p @param resource $stdout
     * @return array{0:string,1:string}
     */
    private function serveUntilExit($srv, $p, $stdout, string $reply, bool $close): array
    {
        $conns = [];
        $received = '';
        $out = '';
        stream_set_blocking($stdout, false);
        $deadline = microtime(true) + self::HANG_GUARD;
        while (proc_get_status($p)['running']) {
            if (microtime(true) > $deadline) {
                $this->fail('hang guard: cli_unreachable.php did not finish');
            }
            $read = array_merge([$srv, $stdout], $conns);
            $w = $e = null;
            if (@stream_select($read, $w, $e, 0, 50000) === false) {
                continue;
            }
            foreach ($read as $r) {
                if ($r === $srv) {
                    $c = @stream_socket_accept($srv, 0);
                    if ($c) {
                        $conns[(int) $c] = $c;
                    }
                } elseif ($r === $stdout) {
                    $out .= (string) fread($stdout, 65536);
                } else {
                    $data = (string) fread($r, 65536);
                    if ($data === '') {
                        fclose($r);
                        unset($conns[(int) $r]);
                        continue;
                    }
                    $received .= $data;
                    fwrite($r, $reply);
                    if ($close) {
                        fclose($r);
                        unset($conns[(int) $r]);
                    }
                }
            }
        }
        stream_set_blocking($stdout, true);
        $out .= stream_get_contents($stdout);
        foreach ($conns as $c) {
            fclose($c);
        }
        proc_close($p);
        return [$out, $received];
    }

    public function testBootstrapFromIniAndEnvironment(): void
    {
        $this->skipUnderNative('src/bootstrap.php installs the PHP class');
        $bootstrap = dirname(__DIR__) . '/src/bootstrap.php';
        $script = __DIR__ . '/app/cli_bootstrap.php';
        // php.ini-style settings (php -d, or php.ini), read with get_cfg_var()
        $cmd = [PHP_BINARY, '-d', "auto_prepend_file=$bootstrap", '-d', 'sessiond.uri=' . Env::$uri, '-d', 'sessiond.lock_mode="none"', $script];
        $env = getenv();
        unset($env['SESSIOND_URI']);
        $p = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        $j = json_decode(stream_get_contents($pipes[1]), true);
        proc_close($p);
        $this->assertTrue($j['ok']);
        $this->assertSame('Sessiond\SessionHandler', $j['handler']);
        $this->assertSame('none', $j['mode']);
        $this->assertSame(serialize('bootstrap'), $this->serverFields($j['id'])['via'][1]);
        // environment variables (php-fpm: env[SESSIOND_URI] = …)
        $p = proc_open([PHP_BINARY, '-d', "auto_prepend_file=$bootstrap", $script], [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null,
            $env + ['SESSIOND_URI' => Env::$uri, 'SESSIOND_LOCK_MODE' => 'readonly']);
        $j = json_decode(stream_get_contents($pipes[1]), true);
        proc_close($p);
        $this->assertTrue($j['ok']);
        $this->assertSame('readonly', $j['mode']);
        // session.save_path holding the URI
        $p = proc_open([PHP_BINARY, '-d', "auto_prepend_file=$bootstrap", '-d', 'session.save_path="' . Env::$uri . '?lock_mode=none"', $script], [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        $j = json_decode(stream_get_contents($pipes[1]), true);
        proc_close($p);
        $this->assertTrue($j['ok']);
        $this->assertSame('none', $j['mode']);
    }

    /** @dataProvider sockets */
    public function testReadAndCloseResetAndAbortReleaseTheLock(array $socket): void
    {
        $id = $this->newSession(['x' => 'orig']);
        foreach ([$socket + ['rac' => 1], $socket + ['reset' => 1], $socket + ['abort' => 1]] as $variant) {
            $r = $this->http->get('/hold.php' . self::q($variant + ['mode' => 'session', 'set' => ['x' => 'changed']]), $id)['json'];
            $this->assertTrue($r['ok'], json_encode($r));
            $this->assertSame([], $r['errors'], json_encode($variant));
            $this->assertSame(serialize('orig'), $this->serverFields($id)['x'][1], json_encode($variant) . ' writes nothing');
            $this->assertNull($this->lockInfo($id), json_encode($variant) . ' released the lock');
            $next = $this->http->get('/hold.php' . self::q($socket + ['mode' => 'session', 'wait' => 30000]), $id)['json'];
            $this->assertTrue($next['ok'], json_encode($variant) . ' released the lock');
        }
    }
}
