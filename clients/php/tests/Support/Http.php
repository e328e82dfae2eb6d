<?php

declare(strict_types=1);

namespace Sessiond\Tests\Support;

/**
 * Tiny HTTP/1.0 client on stream sockets so tests can have many requests in
 * flight at once (no ext-curl needed): start() sends a request and returns
 * at once, finish() reads its response.
 */
final class Http
{
    public function __construct(private string $host, private int $port)
    {
    }

    /** @return resource */
    public function start(string $path, ?string $sessionId = null, string $cookieName = 'PHPSESSID')
    {
        $sock = @stream_socket_client("tcp://{$this->host}:{$this->port}", $errno, $errstr, 5);
        if ($sock === false) {
            throw new \RuntimeException("cannot connect to test web server: $errstr");
        }
        $req = "GET $path HTTP/1.0\r\nHost: {$this->host}:{$this->port}\r\nConnection: close\r\n";
        if ($sessionId !== null) {
            $req .= "Cookie: $cookieName=$sessionId\r\n";
        }
        fwrite($sock, $req . "\r\n");
        return $sock;
    }

    /**
     * @param resource $sock
     * @return array{status:int, headers:array<int,string>, body:string, json:mixed, cookie:?string, elapsed:float}
     */
    public function finish($sock, float $timeout = 60.0): array
    {
        stream_set_timeout($sock, (int) $timeout);
        $raw = stream_get_contents($sock);
        fclose($sock);
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

    /** @return array{status:int, headers:array<int,string>, body:string, json:mixed, cookie:?string} */
    public function get(string $path, ?string $sessionId = null): array
    {
        return $this->finish($this->start($path, $sessionId));
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
