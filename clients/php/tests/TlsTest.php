<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Connection;
use Sessiond\Exception\ConnectionException;
use Sessiond\SessionHandler;
use Sessiond\Tests\Support\Env;

/**
 * The handler over verified TLS with least-privilege users, against a
 * sessiond of its own that serves TLS only (`--plaintext no`) and requires
 * client certificates. The certificates are made here with the `openssl`
 * command (a CA, the server's for 127.0.0.1 and localhost, a client's, and a
 * second CA nobody trusts).
 */
final class TlsTest extends \PHPUnit\Framework\TestCase
{
    private static string $dir = '';
    private static int $port = 0;
    /** @var resource|null */
    private static $proc = null;

    public static function setUpBeforeClass(): void
    {
        self::$dir = Env::$tmp . '/tls';
        @mkdir(self::$dir, 0700, true);
        $d = self::$dir;
        self::openssl("req -x509 -new -nodes -newkey rsa:2048 -keyout $d/ca.key -out $d/ca.crt -days 2 -subj /CN=test-ca");
        self::openssl("req -x509 -new -nodes -newkey rsa:2048 -keyout $d/other.key -out $d/other.crt -days 2 -subj /CN=other-ca");
        file_put_contents("$d/server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        file_put_contents("$d/client.ext", "extendedKeyUsage=clientAuth\n");
        foreach (['server', 'client'] as $who) {
            self::openssl("req -new -nodes -newkey rsa:2048 -keyout $d/$who.key -out $d/$who.csr -subj /CN=$who");
            self::openssl("x509 -req -in $d/$who.csr -CA $d/ca.crt -CAkey $d/ca.key -CAcreateserial -days 2 -out $d/$who.crt -extfile $d/$who.ext");
        }
        $hash = static fn (string $p): string => '#' . hash('sha256', $p);
        file_put_contents("$d/sessiond.toml", implode("\n", [
            'storage = "memory"',
            'plaintext = false',
            'tls_port = 0',
            "tls_cert_file = \"$d/server.crt\"",
            "tls_key_file = \"$d/server.key\"",
            "tls_ca_cert_file = \"$d/ca.crt\"",
            'tls_auth_clients = "yes"',
            '[[user]]',
            'name = "php"',
            'password = "' . $hash('app-secret') . '"',
            'class = "readwrite"',
            '[[user]]',
            'name = "dash"',
            'password = "' . $hash('dash-secret') . '"',
            'class = "read"',
            '[[user]]',
            'name = "ops"',
            'password = "' . $hash('ops-secret') . '"',
            'class = "admin"',
            '',
        ]));
        $log = "$d/sessiond.log";
        @unlink($log);
        self::$proc = Env::spawn(
            [Env::sessiondBinary(), 'serve', '--config', "$d/sessiond.toml", '--metrics-addr', 'off', '--data-dir', "$d/data"],
            $log,
            ['NO_COLOR' => '1', 'SESSIOND_LOG' => 'warn'],
        );
        $deadline = microtime(true) + 30;
        while (!preg_match('/tls=[0-9.]+:(\d+)/', (string) @file_get_contents($log), $m)) {
            if (microtime(true) > $deadline || !proc_get_status(self::$proc)['running']) {
                throw new \RuntimeException('sessiond with TLS did not start: ' . @file_get_contents($log));
            }
            usleep(50000);
        }
        self::$port = (int) $m[1];
    }

    public static function tearDownAfterClass(): void
    {
        if (self::$proc !== null) {
            Env::stop(self::$proc);
            self::$proc = null;
        }
    }

    private static function openssl(string $args): void
    {
        exec('openssl ' . $args . ' 2>&1', $out, $rc);
        if ($rc !== 0) {
            throw new \RuntimeException("openssl $args: " . implode("\n", $out) . ' (Debian package openssl)');
        }
    }

    /** @return array<string, mixed> ssl context options with the client certificate */
    private static function tls(string $ca = 'ca'): array
    {
        $d = self::$dir;
        return ['cafile' => "$d/$ca.crt", 'local_cert' => "$d/client.crt", 'local_pk' => "$d/client.key"];
    }

    private static function uri(string $user, string $pass): string
    {
        return "tls://$user:$pass@127.0.0.1:" . self::$port;
    }

    public function testUriWithUserAndTls(): void
    {
        $u = Connection::parseUri('tls://php:s%40cret@db.internal:6390?lock_mode=none');
        $this->assertSame('tls://db.internal:6390', $u['address']);
        $this->assertSame('php', $u['user']);
        $this->assertSame('s@cret', $u['password']);
        $u = Connection::parseUri('tcp://:only-pass@h:1');
        $this->assertNull($u['user']);
        $this->assertSame('only-pass', $u['password']);
        $u = Connection::parseUri('tls://a:6390,b:6390');
        $this->assertSame('tls://a:6390,tls://b:6390', $u['address']);
    }

    public function testSessionRoundTripAndLockOverVerifiedTls(): void
    {
        $h = new SessionHandler(self::uri('php', 'app-secret'), ['tls' => self::tls(), 'name' => 'tls-test']);
        $this->assertTrue($h->open('', 'PHPSESSID'));
        $id = $h->create_sid();
        $this->assertSame('', $h->read($id));

        // The session lock is held until close(): an admin sees it.
        $ops = new Connection('tls://127.0.0.1:' . self::$port, 'ops-secret', 2.0, 5.0, false, null, 10.0, 'ops', self::tls());
        $info = $ops->command(['LOCK.INFO', $id]);
        $this->assertNotEmpty($info, 'the session lock is held over TLS');

        $this->assertTrue($h->write($id, 'user|s:5:"alice";n|i:1;'));
        $this->assertTrue($h->close());
        $this->assertSame([], $ops->command(['LOCK.INFO', $id]), 'released by close()');

        // A second request reads what the first wrote.
        $h2 = new SessionHandler(self::uri('php', 'app-secret'), ['tls' => self::tls()]);
        $h2->open('', 'PHPSESSID');
        $data = $h2->read($id);
        $this->assertStringContainsString('alice', $data);
        $this->assertStringContainsString('n|i:1;', $data);
        $h2->close();
        $ops->close();
    }

    public function testTlsOptionsInTheUriQuery(): void
    {
        $d = self::$dir;
        $h = new SessionHandler(self::uri('php', 'app-secret') . "?lock_mode=none&tls[cafile]=$d/ca.crt&tls[local_cert]=$d/client.crt&tls[local_pk]=$d/client.key");
        $this->assertTrue($h->open('', 'PHPSESSID'));
        $id = $h->create_sid();
        $this->assertSame('', $h->read($id));
        $this->assertTrue($h->write($id, 'k|s:1:"v";'));
        $this->assertTrue($h->close());
    }

    public function testPersistentTlsSocketIsReused(): void
    {
        $uri = self::uri('php', 'app-secret');
        $first = new Connection(Connection::parseUri($uri)['address'], 'app-secret', 2.0, 5.0, true, 'tls-persistent', 10.0, 'php', self::tls());
        $this->assertSame('PONG', $first->command(['PING']));
        // A later request of this process gets the same socket, still
        // logged in, and the TLS session on it still works.
        $second = new Connection(Connection::parseUri($uri)['address'], 'app-secret', 2.0, 5.0, true, 'tls-persistent', 10.0, 'php', self::tls());
        $this->assertSame('PONG', $second->command(['PING']));
        $this->assertTrue($second->wasReused());
        $this->assertSame('php', $second->command(['ACL', 'WHOAMI']));
    }

    public function testLeastPrivilege(): void
    {
        $php = new Connection('tls://127.0.0.1:' . self::$port, 'app-secret', 2.0, 5.0, false, null, 10.0, 'php', self::tls());
        $this->assertSame('php', $php->command(['ACL', 'WHOAMI']));
        try {
            $php->command(['LOCK.BREAK', 'x']);
            $this->fail('an app server may not break locks');
        } catch (\Sessiond\Exception\ServerException $e) {
            $this->assertStringContainsString('NOPERM', $e->getMessage());
        }
        $php->close();
        $dash = new Connection('tls://127.0.0.1:' . self::$port, 'dash-secret', 2.0, 5.0, false, null, 10.0, 'dash', self::tls());
        $this->assertSame(0, $dash->command(['SESSION.EXISTS', 'nope']));
        try {
            $dash->command(['SESSION.COMMIT', 'x', 'CREATE', 'SET', 'a', 'b']);
            $this->fail('a dashboard may not write');
        } catch (\Sessiond\Exception\ServerException $e) {
            $this->assertStringContainsString('NOPERM', $e->getMessage());
        }
        $dash->close();
    }

    public function testForeignCertificatesAndPlaintextAreRefused(): void
    {
        // The server's certificate is not signed by the CA we trust.
        $c = new Connection('tls://127.0.0.1:' . self::$port, 'app-secret', 2.0, 5.0, false, null, 1.0, 'php', self::tls('other'));
        try {
            $c->command(['PING']);
            $this->fail('a server certificate of another CA must be refused');
        } catch (ConnectionException $e) {
            $this->assertStringContainsString('certificate verify failed', $e->getMessage());
        }
        // verify_peer cannot be forgotten: without a CA file PHP's default
        // CAs do not know ours.
        $c = new Connection('tls://127.0.0.1:' . self::$port, 'app-secret', 2.0, 5.0, false, null, 1.0, 'php', ['local_cert' => self::$dir . '/client.crt', 'local_pk' => self::$dir . '/client.key']);
        try {
            $c->command(['PING']);
            $this->fail('verify_peer is on by default');
        } catch (ConnectionException $e) {
            $this->assertStringContainsString('certificate verify failed', $e->getMessage());
        }
        // The server refuses a client without a certificate (mTLS).
        $c = new Connection('tls://127.0.0.1:' . self::$port, 'app-secret', 2.0, 5.0, false, null, 1.0, 'php', ['cafile' => self::$dir . '/ca.crt']);
        try {
            $c->command(['PING']);
            $this->fail('a client without a certificate must be refused');
        } catch (ConnectionException $e) {
            $this->addToAssertionCount(1);
        }
        // Plaintext to the TLS port: no answer.
        $plain = new Connection('tcp://127.0.0.1:' . self::$port, 'app-secret', 2.0, 2.0, false, null, 1.0, 'php');
        $this->expectException(ConnectionException::class);
        $plain->command(['PING']);
    }

    public function testAWrongPasswordIsRefused(): void
    {
        $c = new Connection('tls://127.0.0.1:' . self::$port, 'wrong', 2.0, 5.0, false, null, 10.0, 'php', self::tls());
        $this->expectException(ConnectionException::class);
        $this->expectExceptionMessage('WRONGPASS');
        $c->command(['PING']);
    }
}
