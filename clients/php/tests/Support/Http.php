<?php

declare(strict_types=1);

namespace Sessiond\Tests\Support;

/**
 * Tiny HTTP/1.0 client on stream sockets so tests can have many requests in
 * flight at once (no ext-curl needed): start() sends a request and returns
 * at once, finish() reads its response.
 *
 * The requests go to a pool of single-process `php -S` servers (see
 * Env::startWebServer()): start() picks the server with the fewest requests
 * in flight, so up to pool-size requests in flight really run at the same
 * time, each in its own PHP process.
 */
final class Http
{
    /** @var array<int, int> port => requests in flight (shared by every instance) */
    private static array $inflight = [];
    /** @var array<int, array{0:resource,1:int}> socket id => [socket, port], for drain() */
    private static array $open = [];
    private static int $next = 0;

    /** @param list<int> $ports */
    public function __construct(private string $host, private array $ports)
    {
        foreach ($ports as $p) {
            self::$inflight[$p] ??= 0;
        }
    }

    private function pickPort(): int
    {
        // least busy server; among equals, rotate, so that consecutive
        // requests do not always land on the same process
        $n = count($this->ports);
        $best = null;
        for ($i = 0; $i < $n; $i++) {
            $p = $this->ports[(self::$next + $i) % $n];
            if ($best === null || self::$inflight[$p] < self::$inflight[$best]) {
                $best = $p;
            }
        }
        self::$next = (self::$next + 1) % $n;
        return $best;
    }

    /** @return resource */
    public function start(string $path, ?string $sessionId = null, string $cookieName = 'PHPSESSID', ?int $port = null)
    {
        $port ??= $this->pickPort();
        $sock = @stream_socket_client("tcp://{$this->host}:{$port}", $errno, $errstr, 10);
        if ($sock === false) {
            throw new \RuntimeException("cannot connect to test web server on port $port: $errstr");
        }
        $req = "GET $path HTTP/1.0\r\nHost: {$this->host}:{$port}\r\nConnection: close\r\n";
        if ($sessionId !== null) {
            $req .= "Cookie: $cookieName=$sessionId\r\n";
        }
        fwrite($sock, $req . "\r\n");
        self::$inflight[$port]++;
        self::$open[(int) $sock] = [$sock, $port];
        return $sock;
    }

    /** The port a request in flight was sent to. */
    public static function portOf($sock): int
    {
        return self::$open[(int) $sock][1];
    }

    /**
     * @param resource $sock
     * @return array{status:int, headers:array<int,string>, body:string, json:mixed, cookie:?string}
     */
    public function finish($sock, float $timeout = 60.0): array
    {
        stream_set_timeout($sock, (int) $timeout);
        $raw = stream_get_contents($sock);
        self::forget($sock);
        [$head, $body] = array_pad(explode("\r\n\r\n", (string) $raw, 2), 2, '');
        $lines = explode("\r\n", $head);
        preg_match('#^HTTP/\S+ (\d+)#', $lines[0] ?? '', $m);
        $cookie = null;
        foreach ($lines as $l) {
            if (preg_match('/^Set-Cookie:\s*PHPSESSID=([^;]*)/i', $l, $cm)) {
                $cookie = $cm[1];
            }
        }
        return [
            'status' => (int) ($m[1] ?? 0),
            'headers' => $lines,
            'body' => $body,
            'json' => json_decode($body, true),
            'cookie' => $cookie,
        ];
    }

    private static function forget($sock): void
    {
        if (isset(self::$open[(int) $sock])) {
            self::$inflight[self::$open[(int) $sock][1]]--;
            unset(self::$open[(int) $sock]);
        }
        if (is_resource($sock)) {
            fclose($sock);
        }
    }

    /**
     * Waits for every request still in flight (a test that failed half-way)
     * so the next test starts with every server idle.
     */
    public static function drain(float $timeout = 60.0): void
    {
        foreach (self::$open as [$sock]) {
            if (is_resource($sock)) {
                stream_set_timeout($sock, (int) $timeout);
                stream_get_contents($sock);
            }
            self::forget($sock);
        }
    }

    /** @return array{status:int, headers:array<int,string>, body:string, json:mixed, cookie:?string} */
    public function get(string $path, ?string $sessionId = null, ?int $port = null): array
    {
        return $this->finish($this->start($path, $sessionId, 'PHPSESSID', $port));
    }

    /**
     * Runs requests concurrently, returns responses in the same order.
     *
     * @param list<string> $paths
     * @return list<array{status:int, headers:array<int,string>, body:string, json:mixed, cookie:?string}>
     */
    public function parallel(array $paths, ?string $sessionId = null): array
    {
        $socks = [];
        foreach ($paths as $p) {
            $socks[] = $this->start($p, $sessionId);
        }
        return array_map(fn ($s) => $this->finish($s), $socks);
    }
}
