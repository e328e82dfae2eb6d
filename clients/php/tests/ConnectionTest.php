<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Connection;
use Sessiond\Exception\ConnectionException;
use Sessiond\Exception\ServerException;
use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

final class ConnectionTest extends TestCase
{
    public function testUriParsing(): void
    {
        $u = Connection::parseUri('tcp://:s3cret@127.0.0.1:7000?lock_mode=none&lock_wait_ms=5');
        $this->assertSame('tcp://127.0.0.1:7000', $u['address']);
        $this->assertSame('s3cret', $u['password']);
        $this->assertSame(['lock_mode' => 'none', 'lock_wait_ms' => '5'], $u['query']);
        $this->assertSame('tcp://localhost:6380', Connection::parseUri('localhost')['address']);
        $this->assertSame('unix:///run/sessiond.sock', Connection::parseUri('unix:///run/sessiond.sock')['address']);
    }

    public function testCommandsAndErrors(): void
    {
        $this->assertSame('PONG', $this->redis->command(['PING']));
        $id = $this->redis->command(['SESSION.NEW', 'TTL', 600]);
        $this->assertMatchesRegularExpression('/^[0-9a-f]{40}$/', $id);
        $r = $this->redis->pipeline([
            ['SESSION.COMMIT', $id, 'SET', 'a', "bin\x00\r\nary"],
            ['SESSION.READ', $id, 'KEYS', 'a', 'missing'],
            ['SESSION.COMMIT', 'no-such-session-x', 'SET', 'a', '1'],
            ['SESSION.READ', 'no-such-session-x'],
        ]);
        $this->assertIsInt($r[0][0]);
        $this->assertSame($id, $r[1][0]);
        $this->assertSame(['a', $r[0][1][0], "bin\x00\r\nary", 'missing', 0, null], $r[1][3]);
        $this->assertInstanceOf(ServerException::class, $r[2]);
        $this->assertSame('NOSESSION', $r[2]->errorCode());
        $this->assertNull($r[3]);
        $this->assertSame('PONG', $this->redis->command(['PING']), 'connection still usable after an error reply');
    }

    public function testUnreachableServerThrows(): void
    {
        $c = new Connection('tcp://127.0.0.1:' . Env::freePort(), null, 1.0, 1.0);
        $this->expectException(ConnectionException::class);
        $this->expectExceptionMessageMatches('/cannot connect/');
        $c->command(['PING']);
    }
}
