<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/**
 * A commit or an increment whose connection is lost after the server
 * applied it (a node or a network failing between the write and its
 * answer) is sent again with its request id on the next node: it is
 * answered as the first time, and applied once.
 */
final class RetryTest extends TestCase
{
    /**
     * A proxy in front of the server: it passes everything on, but after
     * passing on the first request containing $cut and reading the
     * server's answer, it closes both connections without answering.
     *
     * @return array{0: resource, 1: string} the process and its address
     */
    private function cuttingProxy(string $cut): array
    {
        $real = substr(Env::$uri, strlen('tcp://'));
        $code = '[$_, $up, $cut] = $argv; $s = stream_socket_server("tcp://127.0.0.1:0"); echo stream_socket_get_name($s, false), "\n";'
            . '$c = stream_socket_accept($s, 30); if (!$c) exit(1); $u = stream_socket_client("tcp://$up", $e, $m, 5);'
            . 'while (($req = fread($c, 1 << 20)) !== false && $req !== "") {'
            . '  fwrite($u, $req); $rep = fread($u, 1 << 20);'
            . '  if (str_contains($req, $cut)) { fclose($c); fclose($u); exit(0); }'
            . '  fwrite($c, $rep); }';
        $p = proc_open([PHP_BINARY, '-r', $code, '--', $real, $cut], [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        $proxy = trim((string) fgets($pipes[1]));
        $this->assertMatchesRegularExpression('/^127\.0\.0\.1:\d+$/', $proxy);
        return [$p, $proxy];
    }

    /** Waits (bounded) for a CLI worker to finish. */
    private function awaitCli($cli): void
    {
        $status = null;
        for ($i = 0; $i < 300 && ($status = proc_get_status($cli))['running']; $i++) {
            usleep(100000);
        }
        $this->assertFalse($status['running'], 'the request finished');
    }

    public function testAnIncrementCutOffAfterItWasAppliedIsSentAgainAndAppliedOnce(): void
    {
        $this->skipUnderNative('increment() is the per-key API of the PHP class');
        $real = substr(Env::$uri, strlen('tcp://'));
        [$p, $proxy] = $this->cuttingProxy('SESSION.INCR');
        try {
            $id = 'retryincr' . bin2hex(random_bytes(8));
            $out = Env::$tmp . "/retry-$id.jsonl";
            [$cli, $cliPipes] = $this->phpCli('cli_incr.php', ["tcp://$proxy,tcp://$real", $id, $out]);
            $this->awaitCli($cli);
            $rec = json_decode((string) file_get_contents($out), true);
            $this->assertIsArray($rec, stream_get_contents($cliPipes[2]));
            $this->assertNull($rec['error'], 'the retry got the first answer');
            $this->assertSame(1, $rec['value']);
            // Applied once: n went from 0 to 1, not to 2.
            $r = $this->redis->command(['SESSION.READ', $id, 'KEYS', 'n']);
            $this->assertIsArray($r);
            $this->assertSame(1, (int) $r[3][2], var_export($r, true));
        } finally {
            proc_terminate($p);
            proc_close($p);
        }
    }

    public function testACommitCutOffAfterItWasAppliedIsSentAgainAndAppliedOnce(): void
    {
        $real = substr(Env::$uri, strlen('tcp://'));
        [$p, $proxy] = $this->cuttingProxy('SESSION.COMMIT');
        try {
            $this->assertMatchesRegularExpression('/^127\.0\.0\.1:\d+$/', $proxy);
            $id = 'retry' . bin2hex(random_bytes(8));
            $out = Env::$tmp . "/retry-$id.jsonl";
            [$cli, $cliPipes] = $this->phpCli('cli_cluster.php', ["tcp://$proxy,tcp://$real", $id, '1', $out]);
            $this->awaitCli($cli);
            $rec = json_decode((string) file_get_contents($out), true);
            $this->assertIsArray($rec, stream_get_contents($cliPipes[2]));
            $this->assertTrue($rec['started'], implode("\n", $rec['errors']));
            $this->assertTrue($rec['written'], implode("\n", $rec['errors']));
            $this->assertSame([], $rec['errors'], 'no warning: the retry got the first answer');
            // Applied once: n went from 0 to 1, not to 2.
            $r = $this->redis->command(['SESSION.READ', $id, 'KEYS', 'n']);
            $this->assertIsArray($r);
            $this->assertSame(1, (int) $r[3][2], var_export($r, true));
        } finally {
            proc_terminate($p);
            proc_close($p);
        }
    }
}
