<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Codec;
use Sessiond\Connection;
use Sessiond\Exception\ServerException;
use Sessiond\SessionHandler;
use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/**
 * The optional C extension (clients/php/ext/sessiond) against the PHP code
 * it stands in for: for generated and edge-case inputs, each C function
 * gives exactly what the PHP implementation gives (values, types, key order,
 * exceptions, how far a reply was read), never crashes on malformed or
 * random input, and does not leak. Skipped when the extension is not loaded
 * (run-tests.sh runs the suite once with it loaded in every PHP process,
 * once without).
 */
final class ExtensionTest extends TestCase
{
    protected function setUp(): void
    {
        if (!extension_loaded('sessiond')) {
            $this->markTestSkipped('the sessiond extension is not loaded (run-tests.sh loads it in its first pass)');
        }
        parent::setUp();
    }

    protected function tearDown(): void
    {
        // back to "detect at first use"
        Connection::$native = null;
        Codec::$native = null;
        SessionHandler::$native = null;
        parent::tearDown();
    }

    // ------------------------------------------------------------------
    // Every PHP process of the suite has it: CI really tests the C paths.
    // ------------------------------------------------------------------

    public function testEveryPhpProcessOfTheSuiteLoadsIt(): void
    {
        if ((string) getenv('SESSIOND_TEST_EXT') === '') {
            $this->markTestSkipped('not run by run-tests.sh with the extension');
        }
        $this->assertSame(['ext' => true, 'native' => true], $this->http->get('/ext.php')['json'], 'php -S');
        [$p, $pipes] = $this->phpCli('ext.php');
        $out = stream_get_contents($pipes[1]);
        proc_close($p);
        $this->assertSame(['ext' => true, 'native' => true], json_decode($out, true), 'php CLI');
        $fpm = Env::fpm();
        if ($fpm !== null) {
            $this->assertSame(['ext' => true, 'native' => true], $fpm->get('/ext.php')['json'], 'php-fpm');
        }
    }

    // ------------------------------------------------------------------
    // RESP replies: sessiond_resp_parse() vs Connection::readReply()
    // ------------------------------------------------------------------

    public function testReplyParsingMatchesThePhpParser(): void
    {
        mt_srand(15);
        $parsedInC = 0;
        $cases = self::replyEdgeCases();
        for ($i = 0; $i < 1500; $i++) {
            $cases[] = self::genReply(0);
        }
        foreach ($cases as $n => $reply) {
            // the reply alone, followed by another, and every truncation of it
            foreach ([$reply, $reply . ":1\r\n"] as $buf) {
                if ($this->compareReply($buf, true)) {
                    $parsedInC++;
                }
            }
            $cuts = strlen($reply) < 40 ? range(1, strlen($reply) - 1) : [1, 2, 3, (int) (strlen($reply) / 2), strlen($reply) - 2, strlen($reply) - 1];
            foreach ($cuts as $cut) {
                if ($cut > 0) {
                    $this->assertFalse($this->compareReply(substr($reply, 0, $cut), false), "case $n cut at $cut");
                }
            }
        }
        // the C parser really parsed them (it may decline, never differ)
        $this->assertGreaterThan(2 * count($cases) * 0.95, $parsedInC);
    }

    public function testReplyReadInPiecesMatchesThePhpParser(): void
    {
        mt_srand(20);
        $replies = self::replyEdgeCases();
        for ($i = 0; $i < 300; $i++) {
            $replies[] = self::genReply(0);
        }
        // a big one: more than the 1 MiB the C parser waits for
        $big = str_repeat('x', 1500000);
        $replies[] = "*2\r\n$" . strlen($big) . "\r\n$big\r\n:1\r\n";
        $replies[] = '+' . $big . "\r\n";
        foreach ($replies as $n => $reply) {
            // (what is still to come must fit in the socket's buffer)
            $cuts = strlen($reply) > 100000 ? [strlen($reply) - 100000, strlen($reply) - 1] : [0, 1, (int) (strlen($reply) / 3), strlen($reply) - 1];
            foreach (array_unique($cuts) as $cut) {
                $php = self::readReply(substr($reply, 0, $cut), false, substr($reply, $cut));
                $c = self::readReply(substr($reply, 0, $cut), true, substr($reply, $cut));
                $this->assertSame(self::show($php), self::show($c), "case $n cut at $cut");
            }
        }
    }

    public function testReplyParsingEdgeCasesByValue(): void
    {
        $this->assertSame([false, 0], $this->cParse("*3\r\n:1\r\n"), 'incomplete: false, offset unchanged');
        $this->assertSame([false, 0], $this->cParse(''), 'nothing yet');
        $this->assertSame([false, 0], $this->cParse("$5\r\nab"));
        $this->assertSame([null, 0], $this->cParse("$2\r\nabc\r\n"), 'a protocol error: left to the PHP parser');
        $this->assertSame([null, 0], $this->cParse("?x\r\n"), 'unknown type: left to the PHP parser');
        $this->assertSame([null, 0], $this->cParse(":99999999999999999999\r\n"), 'more than 18 digits: left to PHP');
        $buf = "*4\r\n:1\r\n$2\r\nab\r\n$-1\r\n_\r\n";
        $this->assertSame([[1, 'ab', null, null], strlen($buf)], $this->cParse($buf));
        $buf = "%2\r\n+a\r\n:1\r\n:5\r\n+x\r\n";
        $this->assertSame([['a' => 1, 5 => 'x'], strlen($buf)], $this->cParse($buf));
        $o = 3;
        $e = sessiond_resp_parse("xyz-CONFLICT on k\r\n", $o);
        $this->assertInstanceOf(ServerException::class, $e);
        $this->assertSame('CONFLICT on k', $e->getMessage());
        $this->assertTrue($e->is('conflict'));
        $this->assertSame(19, $o);
        // PHP's own results for the same
        foreach (["-CONFLICT on k\r\n", "*-1\r\n", ",1.5\r\n", ",inf\r\n", "#t\r\n", "=8\r\ntxt:abcd\r\n", "|1\r\n+a\r\n+b\r\n:7\r\n"] as $buf) {
            $this->assertTrue($this->compareReply($buf, true), bin2hex($buf));
        }
    }

    /** @return list<string> */
    private static function replyEdgeCases(): array
    {
        return [
            "+OK\r\n", "+\r\n", "+a\rb\r\n", "-ERR\r\n", "-ERR some thing\r\n", "-\r\n", ":0\r\n", ":-0\r\n", ":007\r\n",
            ":-12\r\n", ":+5\r\n", ": 5\r\n", ":5 \r\n", ":\r\n", ":-\r\n", ":123456789012345678\r\n", "$0\r\n\r\n", "$-1\r\n",
            "$-5\r\n", "$3\r\na\r\n\r\n", "$3\r\nabcd\r\n", "$3\r\nab\r\n", "*0\r\n", "*-1\r\n", "*1\r\n*1\r\n*0\r\n",
            "*2\r\n$1\r\n\n\r\n-E x\r\n", "%0\r\n", "%-1\r\n", "%1\r\n*0\r\n:1\r\n", "%2\r\n:1\r\n:2\r\n:1\r\n:3\r\n",
            "%1\r\n,1.5\r\n:2\r\n", "%1\r\n#t\r\n:2\r\n", "%1\r\n_\r\n:2\r\n", "%1\r\n-E\r\n:2\r\n", "|1\r\n+k\r\n+v\r\n+real\r\n",
            "_\r\n", "#t\r\n", "#f\r\n", "#x\r\n", "#\r\n", ",1.5\r\n", ",-0\r\n", ",abc\r\n", ",1e400\r\n", ",\r\n",
            "(12345678901234567890123\r\n", "=3\r\nabc\r\n", "=4\r\ntxt:\r\n", "=9\r\ntxt:hello\r\n", "~2\r\n:1\r\n:1\r\n",
            ">1\r\n+push\r\n", "!5\r\nERR x\r\n", "!0\r\n\r\n", "!-1\r\n", "!3\r\nabcd\r\n", "\r\n", "x\r\n",
            "*1\r\n" . str_repeat("*1\r\n", 70) . ":1\r\n", // deeper than the C parser goes: PHP's
        ];
    }

    private static function genReply(int $depth): string
    {
        $t = mt_rand(0, $depth > 3 ? 9 : 15);
        switch ($t) {
            case 0: return '+' . self::genLine() . "\r\n";
            case 1: return '-' . ['ERR', 'CONFLICT', 'NOSESSION', 'X'][mt_rand(0, 3)] . (mt_rand(0, 1) ? ' ' . self::genLine() : '') . "\r\n";
            case 2: return ':' . [(string) mt_rand(), (string) -mt_rand(), '0', '-0', '007', '999999999999999999', '-999999999999999999'][mt_rand(0, 6)] . "\r\n";
            case 3:
            case 4:
                $s = self::genBytes();
                return '$' . strlen($s) . "\r\n" . $s . "\r\n";
            case 5: return "$-1\r\n";
            case 6: return "_\r\n";
            case 7: return '#' . ['t', 'f'][mt_rand(0, 1)] . "\r\n";
            case 8: return ',' . ['1.5', '-0', 'inf', '-inf', 'nan', '1e308', '3', 'x'][mt_rand(0, 7)] . "\r\n";
            case 9: return '(' . mt_rand() . "\r\n";
            case 10:
            case 11:
            case 12:
                $n = mt_rand(0, 5);
                $out = ['*', '~', '>'][mt_rand(0, 2)] . $n . "\r\n";
                for ($i = 0; $i < $n; $i++) {
                    $out .= self::genReply($depth + 1);
                }
                return $out;
            case 13:
                $n = mt_rand(0, 3);
                $out = "%$n\r\n";
                for ($i = 0; $i < 2 * $n; $i++) {
                    $out .= self::genReply($depth + 1);
                }
                return $out;
            case 14:
                $s = 'txt:' . self::genBytes();
                return '=' . strlen($s) . "\r\n" . $s . "\r\n";
            default:
                $s = 'ERR ' . self::genBytes();
                return '!' . strlen($s) . "\r\n" . $s . "\r\n";
        }
    }

    private static function genLine(): string
    {
        $s = self::genBytes();
        while (str_contains($s, "\r\n")) {
            $s = str_replace("\r\n", '', $s); // a line cannot hold its own end
        }
        return $s;
    }

    private static function genBytes(): string
    {
        $alphabet = ['a', 'Z', ' ', "\r", "\n", "\0", "\xff", ':', '$', '*', '-', '5'];
        $s = '';
        for ($i = 0, $n = mt_rand(0, 10); $i < $n; $i++) {
            $s .= $alphabet[mt_rand(0, count($alphabet) - 1)];
        }
        return $s;
    }

    /** @return array{0:mixed,1:int} sessiond_resp_parse()'s value and offset */
    private function cParse(string $buf): array
    {
        $o = 0;
        $v = sessiond_resp_parse($buf, $o);
        return [$v, $o];
    }

    /**
     * Parses $buf with sessiond_resp_parse() and with the PHP parser
     * (Connection::readReply() on a socket that has nothing more to give),
     * and with readReply() as the handler runs it with the extension.
     * Returns whether C parsed it; asserts they agree.
     */
    private function compareReply(string $buf, bool $complete): bool
    {
        $php = self::readReply($buf, false);
        $handler = self::readReply($buf, true);
        $this->assertSame(self::show($php), self::show($handler), 'readReply() with and without the extension: ' . bin2hex($buf));
        [$v, $o] = $this->cParse($buf);
        if ($o === 0) {
            // false: not all here (more never comes here: the PHP parser's
            // "closed by the server"); null: left to the PHP parser
            $this->assertContains($v, [false, null], bin2hex($buf));
            if ($complete && $php[0] === 'ok') {
                $this->assertNull($v, 'C waits for more of a reply PHP parses: ' . bin2hex($buf));
                // declined only where the PHP parser must decide: integers
                // of more than 18 digits, nesting deeper than 64
                $this->assertMatchesRegularExpression('/[0-9]{19}|(\*1\r\n){60}/', $buf, 'C declined a reply PHP parses: ' . bin2hex($buf));
            }
            return false;
        }
        $this->assertSame('ok', $php[0], 'C parsed what PHP rejects: ' . bin2hex($buf));
        $this->assertSame(self::show(['ok', self::norm($v), substr($buf, $o)]), self::show($php), 'C vs PHP: ' . bin2hex($buf));
        return true;
    }

    /** @return array{0:string,1:mixed,2:mixed} ['ok', value, bytes left unread] or ['ex', class, message] */
    private static function readReply(string $buf, bool $native, string $more = ''): array
    {
        Connection::$native = $native;
        $c = new Connection('tcp://127.0.0.1:1', null, 1.0, 1.0);
        [$a, $b] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
        fwrite($b, $more); // what arrives after $buf
        fclose($b); // then nothing more: an incomplete reply ends in "closed by the server"
        return \Closure::bind(function () use ($a, $buf): array {
            $this->sock = $a;
            $this->buf = $buf;
            $this->pos = 0;
            try {
                $v = $this->readReply(microtime(true) + 5);
                // what is left unread (where $pos points depends on when
                // the buffer was compacted, which is not behaviour)
                return ['ok', ExtensionTest::norm($v), substr($this->buf, $this->pos)];
            } catch (\Throwable $e) {
                return ['ex', get_class($e), $e->getMessage()];
            } finally {
                $this->close();
            }
        }, $c, Connection::class)();
    }

    /** Comparable form: exceptions by class, message and code word. */
    public static function norm(mixed $v): mixed
    {
        if ($v instanceof ServerException) {
            return ['!' . get_class($v), $v->getMessage(), $v->errorCode(), $v->getCode()];
        }
        if (is_array($v)) {
            return array_map([self::class, 'norm'], $v);
        }
        return $v;
    }

    /** serialize(): strict about types and key order, and NAN equals NAN */
    private static function show(mixed $v): string
    {
        return serialize($v);
    }

    // ------------------------------------------------------------------
    // Requests: sessiond_resp_encode() vs Connection::encode()
    // ------------------------------------------------------------------

    public function testRequestEncodingMatchesThePhpEncoder(): void
    {
        mt_srand(16);
        $phpEncode = \Closure::bind(static fn (array $c): string => Connection::encode($c), null, Connection::class);
        $values = ['', 'SESSION.COMMIT', "bin\0\r\n\xff", 0, -1, PHP_INT_MAX, PHP_INT_MIN, 1.5, -0.0, 1e100, 0.1, NAN, INF, true, false, null];
        $cases = [[], [[]], [['PING']], [['RESET'], ['AUTH', 'u', 'p'], ['SESSION.READ', 'id']]];
        for ($i = 0; $i < 500; $i++) {
            $cmds = [];
            for ($j = 0, $n = mt_rand(1, 3); $j < $n; $j++) {
                $cmd = [];
                for ($k = 0, $m = mt_rand(0, 8); $k < $m; $k++) {
                    $cmd[] = mt_rand(0, 3) === 0 ? str_repeat('x', mt_rand(0, 300)) : $values[mt_rand(0, count($values) - 1)];
                }
                $cmds[] = $cmd;
            }
            $cases[] = $cmds;
        }
        foreach ($cases as $cmds) {
            $this->assertSame($phpEncode($cmds), sessiond_resp_encode($cmds));
        }
        $this->assertNull(sessiond_resp_encode([['PING'], 'not a command']), 'left to the PHP code');
    }

    // ------------------------------------------------------------------
    // Session strings: sessiond_split_session() vs Codec::splitSession()
    // ------------------------------------------------------------------

    public function testSplitSessionMatchesTheCodecOnPhpsOwnEncodings(): void
    {
        $cmd = escapeshellarg(PHP_BINARY) . ' ' . escapeshellarg(__DIR__ . '/Support/gen-sessions.php') . ' 250 15';
        $corpus = json_decode((string) shell_exec($cmd), true);
        $this->assertIsArray($corpus);
        $this->assertGreaterThan(500, count($corpus));
        $inC = 0;
        $refs = 0;
        mt_srand(17);
        foreach ($corpus as [$handler, $b64]) {
            $data = base64_decode($b64);
            $r = sessiond_split_session($data, $handler);
            if (is_array($r)) {
                $inC++;
            } elseif ($r === false) {
                $refs++;
            }
            $this->compareSplit($data, $handler);
            // damaged copies: truncated, a byte changed, a byte dropped
            if ($data !== '') {
                $this->compareSplit(substr($data, 0, mt_rand(0, strlen($data) - 1)), $handler);
                $m = $data;
                $m[mt_rand(0, strlen($m) - 1)] = chr(mt_rand(0, 255));
                $this->compareSplit($m, $handler);
                $p = mt_rand(0, strlen($data) - 1);
                $this->compareSplit(substr($data, 0, $p) . substr($data, $p + 1), $handler);
            }
        }
        // both kinds occur: split in C, and handed back for references
        $this->assertGreaterThan(count($corpus) / 2, $inC);
        $this->assertGreaterThan(10, $refs);
    }

    public function testSplitSessionEdgeCases(): void
    {
        $deep = str_repeat('a:1:{i:0;', 600) . 'N;' . str_repeat('}', 600);
        $ok = str_repeat('a:1:{i:0;', 500) . 'N;' . str_repeat('}', 500);
        $cases = [
            'php' => [
                '', 'a|i:1;', 'a|i:007;', 'a|i:-0;', 'a|i:99999999999999999999;', 'a|i:-99999999999999999999;', 'a|i:abc;', 'a|i:;',
                'a|i:1', '!a|i:1;', '!a|N;b|s:1:"x";', 'a|N;', 'a|N', 'a|b|i:1;', '|i:1;', 'a|', 'noBar', "k\0ey|s:3:\"\0|\xff\";",
                'a|s:3:"ab";', 'a|s:2:"ab"', 'a|s:99999999999999999999:"ab";', 'a|s:9223372036854775807:"x";', 'a|S:2:"\\61b";', 'a|S:1:"\\6',
                'a|S:99999999999999999999:"x";', 'a|E:7:"Foo:Bar";', 'a|O:8:"stdClass":1:{s:1:"x";i:1;}', 'a|O:8:"stdClass":1:{s:1:"x";i:1;',
                'a|O:99999999999999999999:"x":0:{}', 'a|C:11:"ArrayObject":3:{abc}', 'a|C:11:"ArrayObject":3:{ab}', 'a|C:1:"X":99999999999999999999:{}',
                'a|r:1;', 'a|i:1;b|R:1;', 'a|a:1:{i:0;r:1;}', 'a|r:x;', 'a|b:1;c|d:0.5;', 'a|d:;', 'a|b:', 'a|x:1;', "a|$ok", "a|$deep",
                'a|a:2:{i:0;i:1;}', 'a|a:99999999999999999999:{}', 'a|i:1;a|i:2;', '5|i:1;05|i:2;', 'a|i:1;b|s:1:"x";c|a:0:{}',
            ],
            'php_binary' => [
                '', "\x01ai:1;", "\x00i:1;", "\x80ai:1;", "\x05ai:1;", "\x01a", "\x01ar:1;", "\x01ai:07;\x01bs:1:\"|\";", "\x01",
                "\x7f" . str_repeat('k', 127) . 'N;', "\x02abi:1;\x02abi:2;",
            ],
            'php_serialize' => [
                '', 'a:0:{}', 'a:0:{', 'a:0:{}x', 'a:1:{s:1:"a";i:1;}', 'a:1:{i:5;i:1;}', 'a:1:{i:-5;s:1:"x";}', 'a:1:{i:x;i:1;}',
                'a:1:{d:1.5;i:1;}', 'a:1:{N;i:1;}', 'a:1:{E:3:"a:b";i:1;}', 'a:2:{s:1:"a";i:1;s:1:"a";i:2;}', 'a:1:{s:1:"a";r:1;}',
                'a:2:{s:1:"a";a:0:{}s:1:"b";R:2;}', 'b:0;', 'i:1;', 'a:1:{s:1:"a";i:1;', 'a:99999999999999999999:{}', 'a:1:{s:2:"5";i:1;}',
                'a:1:{s:1:"5";i:007;}', 'x', 'a:1:{s:0:"";s:0:"";}', "a:1:{s:1:\"\0\";N;}",
            ],
        ];
        foreach ($cases as $handler => $list) {
            foreach ($list as $data) {
                $this->compareSplit($data, $handler);
            }
        }
        $this->assertSame(['a' => '7', 'b' => 's:1:"|";'], sessiond_split_session("\x01ai:07;\x01bs:1:\"|\";", 'php_binary'));
        $this->assertNull(sessiond_split_session('a|i:1', 'php'));
        $this->assertFalse(sessiond_split_session('a|i:1;b|R:1;', 'php'), 'references: the PHP code decodes those');
    }

    private function compareSplit(string $data, string $handler): void
    {
        $php = self::split($data, $handler, false);
        $c = self::split($data, $handler, true);
        $this->assertSame(self::show($php), self::show($c), "$handler: " . json_encode(bin2hex($data)));
    }

    /** @return array{0:string,1:mixed,2?:string} */
    private static function split(string $data, string $handler, bool $native): array
    {
        Codec::$native = $native;
        try {
            return ['ok', Codec::splitSession($data, $handler)];
        } catch (\Throwable $e) {
            return ['ex', get_class($e), $e->getMessage()];
        } finally {
            Codec::$native = null;
        }
    }

    // ------------------------------------------------------------------
    // absorbRead(): sessiond_absorb_fields() vs the PHP loop
    // ------------------------------------------------------------------

    public function testAbsorbReadMatchesThePhpLoop(): void
    {
        mt_srand(18);
        $keys = ['a', 'b', '5', '05', '-3', '_sf2_attributes', '_sf2_attributes.x', '_sf2_attributes.5', '_sf2_attributes.', '_sf2_attributesX',
            '_symfony_flashes.notice', '_symfony_flashes.notice.x', '_sf2_meta', "bin\0|", 'k.x'];
        $raws = [null, '', 'plain text', '007', '-0', '-', '0', '5', "5\n", "-\n", '99999999999999999999', '9223372036854775807',
            '9223372036854775808', '-9223372036854775808', '-9223372036854775809', '00000000000000000000000042', 'b:0;', 'b:1;',
            'garbage;', 'x}', 'N;', 'i:5;', 'd:0.50;', 'd:NAN;', 's:3:"abc";', 'S:1:"\\61";', 'a:1:{i:0;i:1;}', 'a:1:{s:1:"k";r:1;}',
            'O:8:"stdClass":1:{s:1:"p";i:1;}', 'O:11:"NoSuchClass":0:{}', 'a:1:{i:0;O:8:"stdClass":0:{}}', 'E:7:"Foo:Bar";'];
        for ($i = 0; $i < 40; $i++) {
            $raws[] = Codec::encodeValue(['x' => mt_rand(), 'y' => [1.5, 'z' => str_repeat('q', mt_rand(0, 5))]]);
        }
        $cases = [[], ['a', 1, 'i:1;'], ['a', 1], ['_sf2_attributes', 2, 's:1:"x";', '_sf2_attributes.y', 3, '5']];
        for ($i = 0; $i < 600; $i++) {
            $f = [];
            for ($j = 0, $n = mt_rand(0, 8); $j < $n; $j++) {
                array_push($f, $keys[mt_rand(0, count($keys) - 1)], [0, 1, 7, -1, PHP_INT_MAX][mt_rand(0, 4)], $raws[mt_rand(0, count($raws) - 1)]);
            }
            $cases[] = $f;
        }
        // types the server does not send: left to the PHP loop
        $cases[] = ['a', '1', 'i:1;'];
        $cases[] = [5, 1, 'i:1;'];
        $cases[] = ['a', 1, 5];
        $cases[] = ['x' => 'a', 1, 'i:1;'];
        $inC = 0;
        foreach ($cases as $n => $fields) {
            $rs = [];
            if (array_is_list($fields) && sessiond_absorb_fields($fields, ['_sf2_attributes', '_symfony_flashes'], $rs) !== null) {
                $inC++;
            }
            foreach ([[], ['_sf2_attributes', '_symfony_flashes'], ['a', '_sf2_attributes.x']] as $split) {
                $php = self::absorb($fields, $split, false);
                $c = self::absorb($fields, $split, true);
                $this->assertSame(self::show($php), self::show($c), "case $n: " . json_encode($fields, JSON_INVALID_UTF8_SUBSTITUTE));
            }
        }
        $this->assertGreaterThan(count($cases) * 0.6, $inC);
    }

    public function testAbsorbReadThrowsLikeThePhpLoop(): void
    {
        $fields = ['a', 1, 'i:1;', 'b', 2, serialize(new ThrowsOnWakeup()), 'c', 3, 'i:3;'];
        $php = self::absorb($fields, [], false);
        $c = self::absorb($fields, [], true);
        $this->assertSame('ex', $php[0]);
        $this->assertSame(self::show($php), self::show($c), 'same exception, same read set left behind');
    }

    /** @return array{0:string,1:mixed,2:mixed} ['ok', data, read set] or ['ex', class: message, read set] */
    private static function absorb(array $fields, array $split, bool $native): array
    {
        SessionHandler::$native = $native;
        $h = new SessionHandler('tcp://127.0.0.1:1', ['split_keys' => $split, 'follow_regenerate' => false]);
        return \Closure::bind(function () use ($fields): array {
            try {
                $data = $this->absorbRead('sid', ['sid', 1, 1, $fields]);
                return ['ok', $data, $this->readSet];
            } catch (\Throwable $e) {
                return ['ex', get_class($e) . ': ' . $e->getMessage(), $this->readSet];
            }
        }, $h, SessionHandler::class)();
    }

    // ------------------------------------------------------------------
    // Robustness
    // ------------------------------------------------------------------

    public function testRandomAndMutatedInputNeverCrashes(): void
    {
        mt_srand(19);
        $seeds = array_merge(self::replyEdgeCases(), ['a|i:1;b|s:3:"abc";c|a:1:{i:0;O:8:"stdClass":0:{}}', 'a:1:{s:1:"a";d:0.5;}']);
        $bytes = ['*', '$', ':', '-', '%', '|', '~', '>', '!', '=', '_', '#', ',', '(', '+', "\r", "\n", '1', '9', '0', 'a', 's', 'i', 'O', 'C', 'S', 'E', 'r', 'R', 'N', ';', '{', '}', '"', "\0", "\xff"];
        for ($i = 0; $i < 20000; $i++) {
            if (mt_rand(0, 1) === 0) {
                $s = '';
                for ($j = 0, $n = mt_rand(0, 40); $j < $n; $j++) {
                    $s .= $bytes[mt_rand(0, count($bytes) - 1)];
                }
            } else {
                $s = $seeds[mt_rand(0, count($seeds) - 1)];
                for ($j = 0, $n = mt_rand(1, 4); $j < $n && $s !== ''; $j++) {
                    $p = mt_rand(0, strlen($s) - 1);
                    $s = match (mt_rand(0, 2)) {
                        0 => substr($s, 0, $p) . $bytes[mt_rand(0, count($bytes) - 1)] . substr($s, $p + 1),
                        1 => substr($s, 0, $p) . substr($s, $p + 1),
                        default => substr($s, 0, $p) . $bytes[mt_rand(0, count($bytes) - 1)] . substr($s, $p),
                    };
                }
            }
            $o = mt_rand(0, 3) === 0 ? mt_rand(-2, strlen($s) + 2) : 0;
            $before = $o;
            $v = sessiond_resp_parse($s, $o);
            $this->assertTrue($o === $before || ($o > $before && $o <= strlen($s)), 'offset within the buffer');
            foreach (['php', 'php_binary', 'php_serialize'] as $h) {
                $r = sessiond_split_session($s, $h);
                $this->assertTrue($r === null || $r === false || is_array($r));
            }
            $rs = [];
            $f = @sessiond_absorb_fields(['k', 1, $s, 'k.x', 2, $s], ['k'], $rs);
            $this->assertTrue($f === null || is_array($f));
        }
    }

    public function testNoLeaksOnTheNormalPath(): void
    {
        $reply = "*4\r\n$5\r\nsid01\r\n:3\r\n:1700000000\r\n*33\r\n";
        $fields = [];
        for ($i = 0; $i < 11; $i++) {
            $v = $i === 10 ? '42' : serialize(str_repeat(chr(97 + $i), 100));
            $reply .= "$2\r\nk$i\r\n:7\r\n$" . strlen($v) . "\r\n$v\r\n";
            array_push($fields, "k$i", 7, $v);
        }
        $reply .= "-CONFLICT x\r\n";
        $session = Codec::encodeSession(['a' => 1, 'o' => new \ArrayObject([1]), 's' => str_repeat('x', 200), 'n' => [1, [2]]], 'php');
        $cmds = [['SESSION.COMMIT', 'sid01', 'TTL', 1440, 'FENCE', 7, 'UNLOCK', 'SET', 'counter', '5']];
        $round = function () use ($reply, $fields, $session, $cmds): void {
            $o = 0;
            sessiond_resp_parse($reply, $o);
            sessiond_resp_parse($reply, $o); // the error reply after it
            $o = 0;
            sessiond_resp_parse(substr($reply, 0, 50), $o); // incomplete: declined
            sessiond_split_session($session, 'php');
            sessiond_split_session('a|i:1;b|R:1;', 'php');
            sessiond_split_session('a|garbage', 'php');
            $rs = [];
            sessiond_absorb_fields($fields, ['_sf2_attributes'], $rs);
            sessiond_resp_encode($cmds);
        };
        for ($i = 0; $i < 1000; $i++) {
            $round();
        }
        gc_collect_cycles();
        $before = memory_get_usage();
        for ($i = 0; $i < 100000; $i++) {
            $round();
        }
        gc_collect_cycles();
        $this->assertLessThan(4096, memory_get_usage() - $before, 'memory grew over 100,000 rounds');
    }
}

/** A value whose unserialize() throws, as a broken __wakeup() may. */
final class ThrowsOnWakeup
{
    public int $x = 1;

    public function __wakeup(): void
    {
        throw new \RuntimeException('no wakeup today');
    }
}
