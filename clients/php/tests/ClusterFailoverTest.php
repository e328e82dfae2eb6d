<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use PHPUnit\Framework\AssertionFailedError;
use Sessiond\Connection;
use Sessiond\Exception\OutcomeUnknownException;
use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/**
 * The handler with a node list (tcp://n1,n2,n3) against a three-node
 * cluster of real sessiond processes that this test starts itself; the
 * leader is killed with SIGKILL while requests run. Every request either
 * completes under its lock or fails cleanly; the counter they increment
 * accounts exactly for the requests that committed (plus, at most, those
 * whose commit's outcome was reported unknown); no request ever ran
 * without its lock, and no two committed requests read the same value
 * (which a request without its lock would cause).
 */
final class ClusterFailoverTest extends TestCase
{
    /** @var array<int, resource> node index => process */
    private array $nodes = [];
    /** @var array<int, int> node index => RESP port */
    private array $ports = [];
    private string $dir = '';

    protected function setUp(): void
    {
        if ($this->getName(false) !== 'testRequestsRideThroughALeaderKill') {
            // before the cluster is started for nothing
            $this->skipUnderNative('tests the PHP class\'s Connection');
        }
        parent::setUp();
        $this->dir = Env::$tmp . '/cluster-' . bin2hex(random_bytes(4));
        @mkdir($this->dir, 0700, true);
        $raft = [];
        for ($i = 0; $i < 3; $i++) {
            $raft[] = '127.0.0.1:' . Env::freePort();
        }
        $initial = implode(',', array_map(static fn ($i) => ($i + 1) . '=' . $raft[$i], array_keys($raft)));
        for ($i = 0; $i < 3; $i++) {
            $log = "{$this->dir}/n$i.log";
            $this->nodes[$i] = Env::spawn([
                Env::sessiondBinary(), 'serve', '--port', '0', '--bind', '127.0.0.1',
                '--data-dir', "{$this->dir}/n$i", '--metrics-addr', 'off',
                '--node-id', (string) ($i + 1), '--raft-addr', $raft[$i], '--initial-cluster', $initial,
                '--node-down-after', '2',
            ], $log, ['NO_COLOR' => '1']);
        }
        for ($i = 0; $i < 3; $i++) {
            $log = "{$this->dir}/n$i.log";
            $this->ports[$i] = $this->waitUntil(
                static fn () => preg_match('/resp=[^\s:]+:(\d+)/', (string) @file_get_contents($log), $m) ? (int) $m[1] : null,
                "node $i ready (see $log)",
            );
        }
    }

    protected function tearDown(): void
    {
        foreach ($this->nodes as $p) {
            if (is_resource($p)) {
                Env::stop($p);
            }
        }
        $this->nodes = [];
        parent::tearDown();
    }

    private function uri(array $order): string
    {
        return 'tcp://' . implode(',', array_map(fn ($i) => '127.0.0.1:' . $this->ports[$i], $order));
    }

    private function leader(): int
    {
        $seen = [];
        try {
            return $this->waitUntil(function () use (&$seen) {
                foreach ($this->ports as $i => $port) {
                    if (!is_resource($this->nodes[$i] ?? null)) {
                        continue;
                    }
                    try {
                        $c = new Connection("tcp://127.0.0.1:$port", null, 0.5, 1.0);
                        $info = (string) $c->command(['CLUSTER.INFO']);
                        $c->close();
                        if (str_contains($info, 'role:leader')) {
                            return $i;
                        }
                        $seen[$i] = preg_replace('/\r?\n/', ' ', $info);
                    } catch (\Throwable $e) {
                        $seen[$i] = get_class($e) . ': ' . $e->getMessage();
                    }
                }
                return null;
            }, 'a leader');
        } catch (AssertionFailedError $e) {
            // What each node last said and logged: no leader is a failure
            // worth a diagnosis, not just a timeout.
            $report = $e->getMessage();
            foreach ($this->ports as $i => $port) {
                $alive = is_resource($this->nodes[$i] ?? null) && proc_get_status($this->nodes[$i])['running'];
                $report .= "\nnode $i (resp port $port, " . ($alive ? 'running' : 'not running') . '): ' . ($seen[$i] ?? 'never asked');
                $log = @file("{$this->dir}/n$i.log", FILE_IGNORE_NEW_LINES) ?: [];
                $lines = array_values(array_filter($log, static fn ($l) => preg_match('/become leader|quit leader|new candidate|WARN|ERROR|sessiond ready|node started/', $l) === 1));
                foreach (array_merge(array_slice($lines, 0, 8), ['...'], array_slice($lines, -8)) as $l) {
                    $report .= "\n    " . substr($l, 0, 300);
                }
            }
            $this->fail($report);
        }
    }

    private function killNode(int $i): void
    {
        $pid = proc_get_status($this->nodes[$i])['pid'];
        posix_kill(-$pid, SIGKILL);
        posix_kill($pid, SIGKILL);
        Env::stop($this->nodes[$i]);
        unset($this->nodes[$i]);
    }

    /** @return list<array<string, mixed>> */
    private static function records(string $file): array
    {
        $out = [];
        foreach (@file($file, FILE_IGNORE_NEW_LINES) ?: [] as $line) {
            $out[] = json_decode($line, true);
        }
        return $out;
    }

    public function testUriWithNodesParses(): void
    {
        $u = Connection::parseUri('tcp://:s3cret@n1:6380,n2:6381, tcp://n3?lock_mode=none');
        $this->assertSame('tcp://n1:6380,tcp://n2:6381,tcp://n3:6380', $u['address']);
        $this->assertSame('s3cret', $u['password']);
        $this->assertSame(['lock_mode' => 'none'], $u['query']);
        $this->assertSame('tcp://n1:6380,n2:6381,n3:6380', $u['display']);
        $this->assertSame(['tcp://n1:6380', 'tcp://n2:6381', 'tcp://n3:6380'], (new Connection($u['address']))->nodes());
    }

    public function testConnectionSkipsADeadNodeAndReportsAnUnknownWrite(): void
    {
        $dead = Env::freePort();
        $c = new Connection("tcp://127.0.0.1:$dead,tcp://127.0.0.1:{$this->ports[1]}", null, 1.0, 5.0);
        $this->assertSame('PONG', $c->command(['PING']));
        $this->assertSame("tcp://127.0.0.1:{$this->ports[1]}", $c->address());

        // A server that takes a write and dies before answering: the write's
        // outcome is unknown (never sent again); a read is sent again on the
        // next node.
        // (A separate process: it accepts one connection, reads the
        // request, and closes without a reply.)
        $code = '$s = stream_socket_server("tcp://127.0.0.1:0"); echo stream_socket_get_name($s, false), "\n";'
            . '$c = stream_socket_accept($s, 30); if ($c) { fread($c, 4096); fclose($c); }';
        $p = proc_open([PHP_BINARY, '-r', $code], [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        $addr = trim((string) fgets($pipes[1]));
        $this->assertMatchesRegularExpression('/^127\.0\.0\.1:\d+$/', $addr);
        $c = new Connection("tcp://$addr,tcp://127.0.0.1:{$this->ports[2]}", null, 1.0, 5.0);
        try {
            $c->command(['SESSION.DESTROY', 'x']);
            $this->fail('a write cut off after sending must not succeed');
        } catch (OutcomeUnknownException $e) {
            $this->assertStringContainsString('may or may not have been applied', $e->getMessage());
        } finally {
            proc_close($p);
        }
        $this->assertSame(0, $c->command(['SESSION.EXISTS', 'nope']), 'the next request goes to a live node');
        $this->assertSame("tcp://127.0.0.1:{$this->ports[2]}", $c->address());
    }

    public function testAReadAnsweredUnknownIsSentAgainOnTheNextNode(): void
    {
        // A node whose forward to the leader was cut mid-request answers
        // UNKNOWN (the race lab's cluster run met it when a leader was
        // killed under session_start()). A read changes nothing: it is
        // sent again on the next node; a write stays unknown.
        // (A separate process answers UNKNOWN to each of two connections.)
        $unknown = '-UNKNOWN the leader failed during the request; it may or may not have been applied: early eof\r\n';
        $code = '$s = stream_socket_server("tcp://127.0.0.1:0"); echo stream_socket_get_name($s, false), "\n";'
            . 'for ($i = 0; $i < 2; $i++) { $c = stream_socket_accept($s, 10); if ($c) { fread($c, 4096); fwrite($c, "' . $unknown . '"); fclose($c); } }';
        $p = proc_open([PHP_BINARY, '-r', $code], [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        $addr = trim((string) fgets($pipes[1]));
        $this->assertMatchesRegularExpression('/^127\.0\.0\.1:\d+$/', $addr);
        try {
            $c = new Connection("tcp://$addr,tcp://127.0.0.1:{$this->ports[1]}", null, 1.0, 5.0);
            $this->assertSame(0, $c->command(['SESSION.EXISTS', 'nope']), 'a read answered UNKNOWN goes to the next node');
            $this->assertSame("tcp://127.0.0.1:{$this->ports[1]}", $c->address());
            $w = new Connection("tcp://$addr,tcp://127.0.0.1:{$this->ports[1]}", null, 1.0, 5.0);
            try {
                $w->command(['SESSION.DESTROY', 'x']);
                $this->fail('a write answered UNKNOWN must not succeed');
            } catch (\Sessiond\Exception\ServerException $e) {
                $this->assertStringStartsWith('UNKNOWN', $e->getMessage());
            }
        } finally {
            proc_close($p);
        }
    }

    public function testRequestsRideThroughALeaderKill(): void
    {
        $leader = $this->leader();
        $id = 'failover' . bin2hex(random_bytes(8));
        $workers = 3;
        $perWorker = 30;
        $files = [];
        $procs = [];
        for ($w = 0; $w < $workers; $w++) {
            // Each worker lists the nodes from a different one: some sit on
            // the leader when it dies, some on followers.
            $order = [($w) % 3, ($w + 1) % 3, ($w + 2) % 3];
            $files[$w] = "{$this->dir}/worker$w.jsonl";
            [$procs[$w]] = $this->phpCli('cli_cluster.php', [$this->uri($order), $id, (string) $perWorker, $files[$w]]);
        }
        // Kill the leader once the workers are well under way.
        $this->waitUntil(function () use ($files) {
            $n = 0;
            foreach ($files as $f) {
                $n += count(self::records($f));
            }
            return $n >= 20 ? true : null;
        }, 'requests before the kill');
        $this->killNode($leader);
        $killedAt = microtime(true);
        foreach ($procs as $w => $p) {
            $this->waitUntil(static fn () => proc_get_status($p)['running'] ? null : true, "worker $w done");
        }

        $committed = 0;
        $unknown = 0;
        $fenced = 0;
        $failed = 0;
        $before = [];
        $after = 0;
        $causes = [];
        foreach ($files as $w => $f) {
            $recs = self::records($f);
            $this->assertCount($perWorker, $recs, "worker $w ran every request");
            foreach ($recs as $r) {
                $msgs = implode("\n", $r['errors']);
                if ($msgs !== '') {
                    // what went wrong, without the session id and the ports
                    $cause = preg_replace(['/"[^"]*"/', '/\d+/'], ['"…"', 'N'], $r['errors'][0]);
                    $causes[$cause] = ($causes[$cause] ?? 0) + 1;
                }
                if (!$r['started']) {
                    $this->assertNull($r['token']);
                    $this->assertNotSame('', $msgs, 'a failed session_start() says why');
                    $failed++;
                    continue;
                }
                // Never without its lock.
                $this->assertIsInt($r['token'], "worker $w request {$r['i']} started without the session lock: $msgs");
                if (str_contains($msgs, 'is unknown')) {
                    $unknown++;
                } elseif (str_contains($msgs, 'was lost before the write')) {
                    // Its lock ended with its node; the increment went in
                    // only if no other request changed n meanwhile (IFVER),
                    // and the request was told.
                    $fenced++;
                } elseif ($r['written'] && !str_contains($msgs, 'not saved')) {
                    $committed++;
                    $before[] = $r['before'];
                } else {
                    $failed++;
                }
            }
            $after += count(array_filter($recs, static fn ($r) => $r['i'] >= $perWorker - 5 && $r['started'] && $r['written']));
        }
        // Requests after the failover succeed through the remaining nodes.
        $this->assertGreaterThan(0, $after, 'the last requests of the workers succeed');
        // Two committed requests that read the same value would mean one ran
        // without the lock (a lost update).
        $this->assertSame(count($before), count(array_unique($before)), 'no two committed requests read the same value');

        $survivor = array_key_first($this->nodes);
        $c = new Connection($this->uri(array_keys($this->nodes)), null, 1.0, 5.0);
        $r = $c->command(['SESSION.READ', $id, 'KEYS', 'n']);
        $this->assertIsArray($r);
        $n = (int) $r[3][2];
        fwrite(STDERR, sprintf(
            "\ncluster failover: %d committed, %d unknown, %d lock lost (conditional write), %d failed cleanly; counter %d; survivor node %d; %.1f s after the kill\n",
            $committed, $unknown, $fenced, $failed, $n, $survivor + 1, microtime(true) - $killedAt,
        ));
        foreach ($causes as $cause => $count) {
            fwrite(STDERR, "  {$count}× $cause\n");
        }
        $this->assertGreaterThanOrEqual($committed, $n, 'every committed increment is there');
        $this->assertLessThanOrEqual($committed + $unknown + $fenced, $n, 'nothing but committed (or reported) increments');
        $this->assertSame($workers * $perWorker, $committed + $unknown + $fenced + $failed);
    }
}
