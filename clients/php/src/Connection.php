<?php

declare(strict_types=1);

namespace Sessiond;

use Sessiond\Exception\ConnectionException;
use Sessiond\Exception\OutcomeUnknownException;
use Sessiond\Exception\ServerException;

/**
 * A minimal RESP2 client on a PHP stream socket (no extension needed).
 *
 * Requests are sent as arrays of bulk strings; replies are decoded to PHP
 * values: simple string → string, bulk → string|null, integer → int,
 * array → list (null for a nil array), error → ServerException (thrown by
 * command(), returned in place by pipeline()). RESP3 types are decoded as
 * well in case a server answers with them.
 *
 * Any I/O error, timeout or unparsable reply closes the socket and throws
 * ConnectionException: after a half-read reply the stream cannot be framed
 * any more, and closing it also makes the server release every lock this
 * connection held (locks are connection-scoped).
 *
 * Node lists: the address may name several nodes of a cluster,
 * `tcp://n1:6380,tcp://n2:6380,tcp://n3:6380` (parseUri() makes that from
 * `tcp://n1:6380,n2:6380,n3:6380`). connect() tries them in the order given
 * and stays on the first that answers (every node serves every command; the
 * order is the operator's choice: put a nearby node first, or shuffle the
 * list per app server to spread connections). A request then fails over:
 *  - a node that cannot be reached, or whose idle connection was closed
 *    (it died between requests), is left for the next one before anything
 *    is sent;
 *  - when every reply of a request is `TRYAGAIN` (no leader reachable from
 *    that node, nothing applied) it is sent again, on the next node — or on
 *    the same connection when it holds locks (see setPinned()) — with a
 *    short backoff, within `failoverTimeout` seconds in all;
 *  - when the connection is lost after the request was sent, or the reply
 *    is `UNKNOWN`, requests that only read (SESSION.READ, SESSION.EXISTS,
 *    SESSION.TTL, LOCK.INFO, PING) are sent again on the next node; any
 *    other throws OutcomeUnknownException (or the UNKNOWN error): it may or
 *    may not have been applied.
 */
final class Connection
{
    /** @var resource|null */
    private $sock = null;
    private string $buf = '';
    /** Where the next reply starts in $buf (parsed bytes are dropped at the next fill, not one line at a time). */
    private int $pos = 0;
    private bool $reused = false;
    /** @var list<string> the nodes, each tcp://host:port, tls://host:port or unix:///path */
    private array $nodes;
    /** Index in $nodes of the node connected to (or to try first). */
    private int $current = 0;
    /** @var (\Closure(): bool)|null true while this connection holds locks */
    private ?\Closure $pinned = null;
    /**
     * @var list<list<string>> sent in front of the next request's first
     * commands: RESET (and AUTH, which RESET undoes) on a persistent socket
     * an earlier request used, so nothing it held (a lock, a lock wait)
     * reaches this one, at no extra round trip
     */
    private array $prefix = [];
    /** When the socket last connected or answered (microtime). */
    private float $lastIo = 0.0;

    /**
     * Whether the sessiond C extension (clients/php/ext) is loaded: then
     * replies are parsed and requests encoded in C, with the same results
     * (the PHP code below stays the fallback, and takes over whenever the C
     * parser declines a reply). Set at the first construction.
     *
     * @internal tests switch it off to compare both
     */
    public static ?bool $native = null;

    /** Commands that change nothing: sent again after a lost reply. */
    private const READS = ['SESSION.READ', 'SESSION.EXISTS', 'SESSION.TTL', 'LOCK.INFO', 'PING'];

    /**
     * @param string $address   tcp://host:port or unix:///path, or several
     *                          separated by commas (a cluster's nodes)
     * @param float $failoverTimeout seconds one request may spend failing
     *                          over (reconnecting, TRYAGAIN) in all
     * @param ?string $user     the user $password is for (AUTH user pass);
     *                          null: the `default` user (AUTH pass)
     * @param array<string, mixed> $tls PHP `ssl` stream context options for
     *                          tls:// addresses (cafile, peer_name,
     *                          local_cert, local_pk, verify_peer, …);
     *                          verify_peer and verify_peer_name default to true
     */
    public function __construct(
        private string $address,
        private ?string $password = null,
        private float $connectTimeout = 2.0,
        private float $timeout = 5.0,
        private bool $persistent = false,
        private ?string $clientName = null,
        private float $failoverTimeout = 10.0,
        private ?string $user = null,
        private array $tls = [],
    ) {
        if (!str_contains($address, ',')) {
            // one node (the common case), without the arrays and closure below
            $a = trim($address);
            $this->nodes = $a === '' ? [] : [$a];
        } else {
            $this->nodes = array_values(array_filter(array_map('trim', explode(',', $address)), static fn ($a) => $a !== ''));
        }
        if ($this->nodes === []) {
            throw new \InvalidArgumentException('sessiond: no server address');
        }
        $this->address = $this->nodes[0];
        self::$native ??= \function_exists('sessiond_resp_parse');
    }

    /**
     * $f() says whether this connection holds locks now: then a TRYAGAIN is
     * retried on this same connection (moving to another node would drop
     * the locks with it) instead of on the next node.
     *
     * @param (\Closure(): bool)|null $f
     */
    public function setPinned(?\Closure $f): void
    {
        $this->pinned = $f;
    }

    /** @return list<string> */
    public function nodes(): array
    {
        return $this->nodes;
    }

    /**
     * Parses `tcp://[user:password@]host:port[?k=v&…]`, `tls://…` (the same
     * over TLS; `rediss://` too), `unix:///path[?…]`, `redis://…` (treated
     * as tcp) or a bare `host:port`. A user name before the password is
     * returned as `user` (none, or empty: the `default` user).
     *
     * @return array{address: string, password: ?string, user: ?string, query: array<string,mixed>, display: string}
     */
    public static function parseUri(string $uri): array
    {
        $uri = trim($uri);
        if ($uri === '') {
            throw new \InvalidArgumentException('sessiond: empty server URI');
        }
        if (!str_contains($uri, '://')) {
            $uri = 'tcp://' . $uri;
        }
        $query = [];
        $q = strpos($uri, '?');
        if ($q !== false) {
            parse_str(substr($uri, $q + 1), $query);
            $uri = substr($uri, 0, $q);
        }
        $scheme = strtolower(substr($uri, 0, strpos($uri, '://')));
        if ($scheme === 'unix') {
            $path = substr($uri, 7);
            return ['address' => 'unix://' . $path, 'password' => null, 'user' => null, 'query' => $query, 'display' => 'unix://' . $path];
        }
        if (!in_array($scheme, ['tcp', 'redis', 'sessiond', 'tls', 'rediss'], true)) {
            throw new \InvalidArgumentException("sessiond: unsupported URI scheme '$scheme' (use tcp://, tls:// or unix://)");
        }
        $transport = in_array($scheme, ['tls', 'rediss'], true) ? 'tls' : 'tcp';
        // Several nodes: tcp://[:password@]n1:6380,n2:6380,n3:6380 (each may
        // repeat the scheme; the password applies to every node).
        $rest = substr($uri, strlen($scheme) + 3);
        $password = null;
        $user = null;
        $addrs = [];
        foreach (explode(',', $rest) as $i => $part) {
            $part = trim($part);
            if ($part === '') {
                continue;
            }
            if (str_contains($part, '://')) {
                $part = preg_replace('#^(tcp|redis|sessiond|tls|rediss)://#i', '', $part);
            }
            $p = parse_url('tcp://' . $part);
            if ($p === false || !isset($p['host'])) {
                throw new \InvalidArgumentException('sessiond: cannot parse server URI');
            }
            if (isset($p['pass'])) {
                $password ??= rawurldecode($p['pass']);
            }
            if (isset($p['user']) && $p['user'] !== '') {
                $user ??= rawurldecode($p['user']);
            }
            $host = $p['host'];
            $port = $p['port'] ?? 6380;
            $addrs[] = "$transport://$host:$port";
        }
        if ($addrs === []) {
            throw new \InvalidArgumentException('sessiond: cannot parse server URI');
        }
        $addr = implode(',', $addrs);
        return ['address' => $addr, 'password' => $password, 'user' => $user, 'query' => $query, 'display' => count($addrs) === 1 ? $addr : "$transport://" . implode(',', array_map(static fn ($a) => substr($a, 6), $addrs))];
    }

    public function address(): string
    {
        return $this->address;
    }

    public function isConnected(): bool
    {
        return $this->sock !== null;
    }

    /** True when the connection is a persistent socket that an earlier request already used. */
    public function wasReused(): bool
    {
        return $this->reused;
    }

    /** True when the socket outlives the request (the `persistent` option). */
    public function isPersistent(): bool
    {
        return $this->persistent;
    }

    /**
     * Connects to a node: the current one, else the next ones in order,
     * each once. Throws the last node's error when none answers.
     */
    public function connect(): void
    {
        if ($this->sock !== null) {
            return;
        }
        $n = count($this->nodes);
        $errors = [];
        for ($i = 0; $i < $n; $i++) {
            $idx = ($this->current + $i) % $n;
            $this->address = $this->nodes[$idx];
            try {
                $this->connectOne();
                $this->current = $idx;
                return;
            } catch (ConnectionException $e) {
                $errors[] = $e;
            }
        }
        $last = end($errors);
        if ($n === 1) {
            throw $last;
        }
        throw new ConnectionException('sessiond: no node of ' . implode(',', $this->nodes) . ' answered; last: ' . $last->getMessage(), 0, $last);
    }

    /** Closes the connection; the next request connects to the next node. */
    private function moveOn(): void
    {
        $this->close();
        $this->current = ($this->current + 1) % count($this->nodes);
    }

    /** True when the peer closed (or reset) this idle connection. */
    private function peerGone(): bool
    {
        $sock = $this->sock;
        if (!$this->readable()) {
            return false; // nothing arrived, no FIN: open and idle
        }
        stream_set_blocking($sock, false);
        $data = @fread($sock, 8192);
        $eof = feof($sock);
        stream_set_blocking($sock, true);
        if (is_string($data) && $data !== '') {
            $this->buf .= $data;
            return false;
        }
        return $eof || $data === false;
    }

    private function connectOne(): void
    {
        $flags = STREAM_CLIENT_CONNECT;
        $ctx = ['socket' => ['tcp_nodelay' => true]];
        if (str_starts_with($this->address, 'tls://')) {
            // Verified unless the caller says otherwise; TLS 1.2 or 1.3.
            $ctx['ssl'] = $this->tls + [
                'verify_peer' => true,
                'verify_peer_name' => true,
                'crypto_method' => STREAM_CRYPTO_METHOD_TLSv1_2_CLIENT | STREAM_CRYPTO_METHOD_TLSv1_3_CLIENT,
            ];
        }
        $ctx = stream_context_create($ctx);
        if ($this->persistent) {
            $flags |= STREAM_CLIENT_PERSISTENT;
            // A distinct persistent socket per (address, name): PHP keys
            // persistent sockets by the address string, and for tcp:// a
            // trailing "/…" after the port is ignored when connecting.
            $addr = str_starts_with($this->address, 'tcp://')
                ? $this->address . '/sessiond-php' . ($this->clientName !== null ? '-' . rawurlencode($this->clientName) : '')
                : $this->address;
        } else {
            $addr = $this->address;
        }
        $errno = 0;
        $errstr = '';
        // A failed TLS handshake leaves $errstr empty; PHP's warnings say
        // why (e.g. certificate verify failed): kept for the message.
        $warnings = [];
        set_error_handler(static function (int $no, string $msg) use (&$warnings): bool {
            $warnings[] = $msg;
            return true;
        });
        try {
            $sock = stream_socket_client($addr, $errno, $errstr, $this->connectTimeout, $flags, $ctx);
        } finally {
            restore_error_handler();
        }
        if ($sock === false) {
            $why = $errstr !== '' ? $errstr : ($warnings !== [] ? implode('; ', $warnings) : 'unknown error');
            throw new ConnectionException("sessiond: cannot connect to {$this->address}: $why (errno $errno)");
        }
        $this->sock = $sock;
        $this->buf = '';
        $this->pos = 0;
        $this->prefix = [];
        $this->lastIo = microtime(true);
        stream_set_blocking($sock, true);
        stream_set_write_buffer($sock, 0);

        if ($this->persistent && ftell($sock) > 0) {
            // ftell on a socket counts bytes read on this stream: > 0 means an
            // earlier request already used this persistent socket.
            $this->reused = true;
            if (!$this->checkIdle()) {
                // Peer closed it, or it holds unread bytes (a request died
                // mid-reply): never reuse such a socket.
                @fclose($sock);
                $this->sock = null;
                $this->reused = false;
                $this->persistent = false; // fall back to a fresh non-persistent socket
                $this->connectOne();
                return;
            }
            // Whatever the earlier request left on the server (a lock after
            // a fatal error, a wait it gave up on) goes before this
            // request's first command is run: RESET, pipelined in front of
            // it. RESET ends the authentication: AUTH again (the name stays).
            $this->prefix = [['RESET']];
            if ($this->password !== null && $this->password !== '') {
                $this->prefix[] = $this->user !== null && $this->user !== ''
                    ? ['AUTH', $this->user, $this->password]
                    : ['AUTH', $this->password];
            }
            return;
        }
        $init = [];
        if ($this->password !== null && $this->password !== '') {
            $init[] = $this->user !== null && $this->user !== ''
                ? ['AUTH', $this->user, $this->password]
                : ['AUTH', $this->password];
        }
        if ($this->clientName !== null && $this->clientName !== '') {
            $init[] = ['CLIENT', 'SETNAME', $this->clientName];
        }
        if ($init !== []) {
            foreach ($this->exchange($init, 0.0) as $r) {
                if ($r instanceof ServerException) {
                    $this->close();
                    throw new ConnectionException("sessiond: connection setup failed on {$this->address}: " . $r->getMessage());
                }
            }
        }
    }

    /**
     * Whether the socket has something to read (bytes, or the peer's FIN),
     * without waiting: one poll(2) where a non-blocking read costs five
     * system calls.
     */
    private function readable(): bool
    {
        if (strlen($this->buf) > $this->pos) {
            return true;
        }
        $r = [$this->sock];
        $w = null;
        $e = null;
        return @stream_select($r, $w, $e, 0, 0) !== 0;
    }

    /** A reused persistent socket must be open and have nothing pending. */
    private function checkIdle(): bool
    {
        $sock = $this->sock;
        if (!$this->readable()) {
            return true;
        }
        stream_set_blocking($sock, false);
        $data = @fread($sock, 1);
        $eof = feof($sock);
        stream_set_blocking($sock, true);
        return ($data === '' || $data === false) && !$eof;
    }

    public function close(): void
    {
        if ($this->sock !== null) {
            @fclose($this->sock);
        }
        $this->sock = null;
        $this->buf = '';
        $this->pos = 0;
    }

    /**
     * Sends one command and returns its reply; an error reply is thrown.
     *
     * @param float $extraWait seconds to add to the read timeout (lock waits)
     */
    public function command(array $args, float $extraWait = 0.0): mixed
    {
        $r = $this->pipeline([$args], $extraWait)[0];
        if ($r instanceof ServerException) {
            throw $r;
        }
        return $r;
    }

    /**
     * Sends several commands in one write and reads all replies (one round
     * trip). Error replies are returned as ServerException objects in place.
     * Each reply must come within the timeout, the last one within
     * $extraWait more (a lock wait goes last). $firstErrorEnds: the others
     * depend on the first; when it is an error, the connection is closed
     * without waiting for theirs and every reply is that error.
     *
     * @param list<list<string|int|float>> $commands
     * @return list<mixed>
     */
    public function pipeline(array $commands, float $extraWait = 0.0, bool $firstErrorEnds = false): array
    {
        $deadline = microtime(true) + $this->failoverTimeout;
        $backoff = 0.025;
        $reads = true;
        foreach ($commands as $args) {
            $reads = $reads && in_array(strtoupper((string) $args[0]), self::READS, true);
        }
        $cluster = count($this->nodes) > 1;
        for ($attempt = 1; ; $attempt++) {
            $more = microtime(true) < $deadline;
            // A single address is not failed over: unreachable is final.
            $moreNodes = $cluster && $more;
            // A socket that connected or answered within the last 10 ms is
            // taken as alive without asking the kernel (5 system calls): a
            // page's commands follow each other that closely, and a node
            // dying in between shows at the exchange.
            if ($this->sock !== null && microtime(true) - $this->lastIo > 0.01 && $this->peerGone()) {
                // The node closed this idle connection (it died, or was
                // restarted): nothing of this request was sent yet.
                $this->moveOn();
            }
            try {
                $this->connect();
            } catch (ConnectionException $e) {
                if (!$moreNodes) {
                    throw $e;
                }
                $backoff = self::pause($backoff, $deadline);
                continue;
            }
            try {
                $replies = $this->exchange($commands, $extraWait, $firstErrorEnds);
            } catch (ConnectionException $e) {
                if (!$this->sent) {
                    // The write failed before any byte left: safe to go on.
                    $this->moveOn();
                    if ($moreNodes) {
                        $backoff = self::pause($backoff, $deadline);
                        continue;
                    }
                    throw $e;
                }
                $this->moveOn();
                if ($reads && $moreNodes) {
                    $backoff = self::pause($backoff, $deadline);
                    continue;
                }
                if ($reads) {
                    throw $e;
                }
                throw new OutcomeUnknownException(
                    $e->getMessage() . ' after the request was sent: it may or may not have been applied',
                    0,
                    $e,
                );
            }
            // TRYAGAIN: nothing applied. UNKNOWN (the node lost its leader
            // mid-request) to requests that only read: nothing to apply
            // twice, so as for a lost reply, they are sent again.
            $tryAgain = true;
            foreach ($replies as $r) {
                $tryAgain = $tryAgain && $r instanceof ServerException
                    && ($r->is('TRYAGAIN') || ($reads && $r->is('UNKNOWN')));
            }
            if (!$tryAgain || !$more) {
                return $replies;
            }
            // Nothing was applied. A connection that holds locks stays (they
            // live with it); any other tries the next node.
            if (!($this->pinned !== null && ($this->pinned)())) {
                $this->moveOn();
            }
            $backoff = self::pause($backoff, $deadline);
        }
    }

    /** Sleeps $backoff seconds (never past $deadline); returns the next backoff. */
    private static function pause(float $backoff, float $deadline): float
    {
        $left = $deadline - microtime(true);
        if ($left > 0) {
            usleep((int) (min($backoff, $left) * 1e6));
        }
        return min($backoff * 2, 0.5);
    }

    /** True once a byte of the current request was written. */
    private bool $sent = false;

    /**
     * One round trip on the current connection.
     *
     * @param list<list<string|int|float>> $commands
     * @return list<mixed>
     */
    private function exchange(array $commands, float $extraWait, bool $firstErrorEnds = false): array
    {
        $prefix = $this->prefix;
        $all = $prefix === [] ? $commands : [...$prefix, ...$commands];
        $out = (self::$native ? \sessiond_resp_encode($all) : null) ?? self::encode($all);
        $this->sent = false;
        $this->writeAll($out);
        // Every reply within the timeout, the last one (a lock wait) within
        // $extraWait more.
        $deadline = microtime(true) + $this->timeout;
        if ($prefix !== []) {
            $this->readResetReplies($prefix, $deadline);
        }
        $replies = [];
        $last = count($commands) - 1;
        foreach ($commands as $i => $_) {
            $replies[] = $r = $this->readReply($i === $last ? $deadline + $extraWait : $deadline);
            if ($i === 0 && $firstErrorEnds && $last > 0 && $r instanceof ServerException) {
                // The rest depended on the first: stop, and close (the
                // stream holds their replies yet to come; closing also
                // releases any lock they may take).
                $this->close();
                return array_fill(0, $last + 1, $r);
            }
        }
        $this->lastIo = microtime(true);
        if ($this->pos === strlen($this->buf)) {
            $this->buf = '';
            $this->pos = 0;
        }
        return $replies;
    }

    /**
     * Reads the replies to the RESET prefix: first whatever an earlier
     * request left unread (the reply to a lock wait that RESET cancelled),
     * up to `+RESET`, then AUTH's.
     *
     * @param list<list<string>> $prefix
     */
    private function readResetReplies(array $prefix, float $deadline): void
    {
        for ($stale = 0; ; $stale++) {
            while (strlen($this->buf) - $this->pos < 8) {
                $this->fill($deadline);
            }
            if (substr_compare($this->buf, "+RESET\r\n", $this->pos, 8) === 0) {
                $this->pos += 8;
                break;
            }
            if ($stale >= 16) {
                $this->close();
                throw new ConnectionException("sessiond: protocol error: no RESET reply from {$this->address}");
            }
            $this->readReply($deadline);
        }
        $this->prefix = [];
        for ($i = 1, $n = count($prefix); $i < $n; $i++) {
            $r = $this->readReply($deadline);
            if ($r instanceof ServerException) {
                $this->close();
                throw new ConnectionException("sessiond: connection setup failed on {$this->address}: " . $r->getMessage());
            }
        }
    }

    /**
     * Commands as RESP arrays of bulk strings (what sessiond_resp_encode()
     * does in C).
     *
     * @param list<list<string|int|float>> $commands
     */
    private static function encode(array $commands): string
    {
        $out = '';
        foreach ($commands as $args) {
            $out .= '*' . count($args) . "\r\n";
            foreach ($args as $a) {
                $a = (string) $a;
                $out .= '$' . strlen($a) . "\r\n" . $a . "\r\n";
            }
        }
        return $out;
    }

    private function writeAll(string $data): void
    {
        $len = strlen($data);
        $done = 0;
        stream_set_timeout($this->sock, (int) $this->timeout, (int) (fmod($this->timeout, 1.0) * 1e6));
        while ($done < $len) {
            $n = @fwrite($this->sock, $done === 0 ? $data : substr($data, $done));
            if ($n === false || $n === 0) {
                $meta = stream_get_meta_data($this->sock);
                $this->close();
                $this->sent = $this->sent || $done > 0;
                $why = !empty($meta['timed_out']) ? 'write timed out' : 'connection closed while writing';
                throw new ConnectionException("sessiond: $why ({$this->address})");
            }
            $done += $n;
            $this->sent = true;
        }
    }

    private function fill(float $deadline): void
    {
        $left = $deadline - microtime(true);
        if ($left <= 0) {
            $this->close();
            throw new ConnectionException("sessiond: no reply from {$this->address} within the timeout");
        }
        stream_set_timeout($this->sock, (int) $left, (int) (fmod($left, 1.0) * 1e6));
        $chunk = @fread($this->sock, 65536);
        if ($chunk === false || $chunk === '') {
            $meta = stream_get_meta_data($this->sock);
            $timedOut = !empty($meta['timed_out']);
            $this->close();
            if ($timedOut) {
                throw new ConnectionException("sessiond: no reply from {$this->address} within the timeout");
            }
            throw new ConnectionException("sessiond: connection to {$this->address} closed by the server");
        }
        if ($this->pos > 0) {
            $this->buf = substr($this->buf, $this->pos);
            $this->pos = 0;
        }
        $this->buf .= $chunk;
    }

    private function readLine(float $deadline): string
    {
        while (($p = strpos($this->buf, "\r\n", $this->pos)) === false) {
            if (strlen($this->buf) - $this->pos > 1 << 20) {
                $this->close();
                throw new ConnectionException('sessiond: protocol error: reply line too long');
            }
            $this->fill($deadline);
        }
        $line = substr($this->buf, $this->pos, $p - $this->pos);
        $this->pos = $p + 2;
        return $line;
    }

    private function readBytes(int $n, float $deadline): string
    {
        while (strlen($this->buf) - $this->pos < $n + 2) {
            $this->fill($deadline);
        }
        $data = substr($this->buf, $this->pos, $n);
        if (substr($this->buf, $this->pos + $n, 2) !== "\r\n") {
            $this->close();
            throw new ConnectionException('sessiond: protocol error: bulk string not terminated by CRLF');
        }
        $this->pos += $n + 2;
        return $data;
    }

    private function readReply(float $deadline): mixed
    {
        if (self::$native) {
            // Parsed in C once it is all read. $pos does not move when C
            // leaves it: false, not all here yet (read more, up to 1 MiB:
            // past that the PHP parser below reads a big reply on, or
            // refuses a too long line); null, for the PHP parser to judge
            // (its protocol errors).
            while (true) {
                $pos = $this->pos;
                $r = \sessiond_resp_parse($this->buf, $this->pos);
                if ($this->pos !== $pos) {
                    return $r;
                }
                if ($r !== false || strlen($this->buf) - $pos > 1 << 20) {
                    break;
                }
                $this->fill($deadline);
            }
        }
        // The common case inline (the whole reply is in the buffer): a
        // reply of 40 elements is 40 calls of this, not 200 of helpers.
        $p = strpos($this->buf, "\r\n", $this->pos);
        if ($p !== false) {
            $line = substr($this->buf, $this->pos, $p - $this->pos);
            $this->pos = $p + 2;
        } else {
            $line = $this->readLine($deadline);
        }
        if ($line === '') {
            $this->close();
            throw new ConnectionException('sessiond: protocol error: empty reply line');
        }
        $type = $line[0];
        $rest = substr($line, 1);
        switch ($type) {
            case '+':
                return $rest;
            case '-':
            case '!':
                if ($type === '!') {
                    $rest = $this->readBytes($this->intOf($rest), $deadline);
                }
                return new ServerException($rest);
            case ':':
                return $this->intOf($rest);
            case '$':
            case '=':
                $n = $this->intOf($rest);
                if ($n < 0) {
                    return null;
                }
                $end = $this->pos + $n;
                if (strlen($this->buf) >= $end + 2 && $this->buf[$end] === "\r" && $this->buf[$end + 1] === "\n") {
                    $s = substr($this->buf, $this->pos, $n);
                    $this->pos = $end + 2;
                } else {
                    $s = $this->readBytes($n, $deadline);
                }
                return $type === '=' ? substr($s, 4) : $s;
            case '*':
            case '~':
            case '>':
                $n = $this->intOf($rest);
                if ($n < 0) {
                    return null;
                }
                $a = [];
                for ($i = 0; $i < $n; $i++) {
                    $a[] = $this->readReply($deadline);
                }
                return $a;
            case '%':
            case '|':
                $n = $this->intOf($rest);
                $a = [];
                for ($i = 0; $i < $n; $i++) {
                    $k = $this->readReply($deadline);
                    $a[is_scalar($k) ? (string) $k : (string) $i] = $this->readReply($deadline);
                }
                if ($type === '|') {
                    return $this->readReply($deadline); // attribute: skip, return the value that follows
                }
                return $a;
            case '_':
                return null;
            case '#':
                return $rest === 't';
            case ',':
                return (float) $rest;
            case '(':
                return $rest;
            default:
                $this->close();
                throw new ConnectionException('sessiond: protocol error: unexpected reply type ' . json_encode($type));
        }
    }

    private function intOf(string $s): int
    {
        $i = (int) $s;
        if ((string) $i === $s) {
            return $i;
        }
        if (!ctype_digit($s) && !($s !== '' && $s[0] === '-' && ctype_digit(substr($s, 1)))) {
            $this->close();
            throw new ConnectionException('sessiond: protocol error: bad integer ' . json_encode($s));
        }
        return (int) $s;
    }
}
