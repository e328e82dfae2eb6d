<?php

declare(strict_types=1);

namespace Sessiond\Tests\Support;

use Sessiond\Connection;

abstract class TestCase extends \PHPUnit\Framework\TestCase
{
    protected Http $http;
    protected Connection $redis;

    protected function setUp(): void
    {
        $this->http = Env::http();
        $this->redis = Env::connection();
    }

    protected function tearDown(): void
    {
        $this->redis->close();
    }

    /** Creates a session through the app and returns its id. */
    protected function newSession(array $init = []): string
    {
        $r = $this->http->get('/new.php?init=' . rawurlencode(json_encode($init, JSON_FORCE_OBJECT)));
        $this->assertSame(200, $r['status'], $r['body']);
        $this->assertIsArray($r['json'], $r['body']);
        $this->assertNotNull($r['cookie'], 'new.php must send a session cookie');
        $this->assertSame($r['cookie'], $r['json']['id']);
        return $r['json']['id'];
    }

    /** @return array<string, array{0:int,1:?string}> fields of a session straight from the server */
    protected function serverFields(string $id): array
    {
        $r = $this->redis->command(['SESSION.READ', $id]);
        $this->assertIsArray($r, "session $id should exist");
        $out = [];
        for ($i = 0; $i + 3 <= count($r[3]); $i += 3) {
            $out[(string) $r[3][$i]] = [(int) $r[3][$i + 1], $r[3][$i + 2]];
        }
        return $out;
    }

    protected static function q(array $params): string
    {
        return '?' . http_build_query($params);
    }

    /** @param array<string,string> $env */
    protected function phpCli(string $script, array $args = [], array $env = [])
    {
        $cmd = array_merge([PHP_BINARY, '-d', 'display_errors=stderr', dirname(__DIR__) . '/app/' . $script], $args);
        $env = array_merge(getenv(), ['SESSIOND_URI' => Env::$uri], $env);
        $p = proc_open($cmd, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        return [$p, $pipes];
    }
}
