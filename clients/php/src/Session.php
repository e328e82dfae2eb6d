<?php

declare(strict_types=1);

namespace Sessiond;

use Sessiond\Exception\LockLostException;
use Sessiond\Exception\LockTimeoutException;
use Sessiond\Exception\ServerException;
use Sessiond\Exception\SessiondException;

/**
 * Per-key operations on the current session, safe under concurrency:
 *
 *     $s = Sessiond\SessionHandler::instance()->session();
 *     $s->increment('visits');                                  // SESSION.INCR
 *     $s->synchronized('cart', fn ($cart) => [...$cart ?? [], $item]);
 *     $token = $s->once('access_token', fn () => $oauth->refresh(...));
 *
 * Every value changed here is committed at once, shows up in $_SESSION in
 * this request (and the next), and is not written back again at the end of
 * the request (the handler's read-set records value and version).
 *
 * When this request holds the whole-session lock (lock mode `session`), the
 * operations run under that lock (fenced with its token) instead of taking
 * key locks, which the session lock would exclude.
 */
final class Session
{
    public function __construct(private SessionHandler $handler)
    {
    }

    /** Marker to return from a synchronized() callback to delete the key. */
    public static function delete(): DeleteMarker
    {
        return DeleteMarker::instance();
    }

    public function id(): string
    {
        return $this->handler->currentId();
    }

    /** Version of $key as this request last saw it (0: absent). */
    public function version(string $key): int
    {
        return $this->handler->versionOf($key);
    }

    /**
     * Reads keys fresh from the server (not from the request's snapshot),
     * updating $_SESSION. Returns key => value (null when absent).
     *
     * @return array<string, mixed>
     */
    public function refresh(string ...$keys): array
    {
        if ($keys === []) {
            return [];
        }
        $id = $this->id();
        $reply = $this->conn($id)->command(array_merge(['SESSION.READ', $id, 'KEYS'], $keys));
        if ($reply === null) {
            throw new ServerException("NOSESSION session does not exist");
        }
        $out = [];
        $f = $reply[3];
        for ($i = 0; $i + 3 <= count($f); $i += 3) {
            $out[(string) $f[$i]] = $this->handler->remember((string) $f[$i], (int) $f[$i + 1], $f[$i + 2]);
        }
        return $out;
    }

    /** Fresh value of one key from the server. */
    public function get(string $key): mixed
    {
        return $this->refresh($key)[$key] ?? null;
    }

    /**
     * Read-modify-write of one key under its key lock:
     * LOCK.ACQUIRE id KEY k → $fn(current value) → SESSION.COMMIT id FENCE t UNLOCK SET k v.
     * Return Session::delete() from $fn to delete the key. If $fn throws,
     * the lock is released and nothing is written.
     *
     * @template T
     * @param callable(mixed): T $fn
     * @return T
     */
    public function synchronized(string $key, callable $fn, ?int $waitMs = null): mixed
    {
        $id = $this->id();
        $fence = $this->fenceFor($id, $key);
        if ($fence !== null) {
            // already exclusive (session lock, or this key lock): re-entrant
            $current = $this->get($key);
            $new = $fn($current);
            $this->commitKey($id, $key, $new, $fence, false);
            return $new instanceof DeleteMarker ? null : $new;
        }
        [$token, $current] = $this->acquireKey($id, $key, $waitMs);
        try {
            $new = $fn($current);
        } catch (\Throwable $t) {
            $this->releaseKey($id, $key, $token);
            throw $t;
        }
        try {
            $this->commitKey($id, $key, $new, $token, true);
        } catch (\Throwable $t) {
            $this->releaseKey($id, $key, $token);
            throw $t;
        }
        return $new instanceof DeleteMarker ? null : $new;
    }

    /**
     * Takes the lock on one key (seed 003's acquire()): $_SESSION[$key] is
     * refreshed from the server; change it, then unlock() commits it.
     * Throws LockTimeoutException when the lock cannot be had in time.
     */
    public function lock(string $key, ?int $waitMs = null): void
    {
        $id = $this->id();
        $locks = &$this->handler->keyLocks();
        if (isset($locks[$key])) {
            throw new \LogicException("sessiond: key \"$key\" is already locked by this request");
        }
        if ($this->handler->sessionToken($id) !== null) {
            $this->get($key);
            $locks[$key] = 'session';
            return;
        }
        [$token] = $this->acquireKey($id, $key, $waitMs);
        $locks[$key] = $token;
    }

    /**
     * Releases a key lock taken with lock(); if $_SESSION[$key] changed
     * meanwhile, the change is committed in the same round trip.
     */
    public function unlock(string $key): void
    {
        $id = $this->id();
        $locks = &$this->handler->keyLocks();
        if (!isset($locks[$key])) {
            throw new \LogicException("sessiond: key \"$key\" is not locked by this request");
        }
        $token = $locks[$key];
        unset($locks[$key]);
        $exists = isset($_SESSION) && is_array($_SESSION) && array_key_exists($key, $_SESSION);
        $enc = $exists ? Codec::encodeValue($_SESSION[$key]) : null;
        $changed = $enc !== $this->handler->seenEncoding($key);
        if ($token === 'session') {
            if ($changed) {
                $this->commitKey($id, $key, $exists ? $_SESSION[$key] : DeleteMarker::instance(), (int) $this->handler->sessionToken($id), false);
            }
            return;
        }
        if ($changed) {
            try {
                $this->commitKey($id, $key, $exists ? $_SESSION[$key] : DeleteMarker::instance(), (int) $token, true);
            } catch (\Throwable $t) {
                $this->releaseKey($id, $key, (int) $token);
                throw $t;
            }
        } else {
            $this->releaseKey($id, $key, (int) $token);
        }
    }

    /**
     * Atomic add (SESSION.INCR): an absent key counts as 0. Returns the new
     * value, which is also put into $_SESSION.
     */
    public function increment(string $key, int $by = 1): int
    {
        $id = $this->id();
        $cmd = ['SESSION.INCR', $id, $key, $by];
        $fence = $this->fenceFor($id, $key);
        if ($fence !== null) {
            array_push($cmd, 'FENCE', $fence);
        }
        $r = $this->run($id, $key, $cmd, $fence !== null, true);
        $this->handler->remember($key, (int) $r[1], (string) $r[0]);
        return (int) $r[0];
    }

    /** Atomic subtract; see increment(). */
    public function decrement(string $key, int $by = 1): int
    {
        return $this->increment($key, -$by);
    }

    /**
     * Sets $key to $new if its current value is $expected (SESSION.CAS;
     * an absent key never matches). On failure $_SESSION[$key] is updated to
     * the current value so the caller can retry.
     */
    public function compareAndSet(string $key, mixed $expected, mixed $new): bool
    {
        $id = $this->id();
        $encNew = Codec::encodeValue($new);
        $cmd = ['SESSION.CAS', $id, $key, Codec::encodeValue($expected), $encNew];
        $fence = $this->fenceFor($id, $key);
        if ($fence !== null) {
            array_push($cmd, 'FENCE', $fence);
        }
        $r = $this->run($id, $key, $cmd, $fence !== null, true);
        if ((int) $r[0] === 1) {
            $this->handler->remember($key, (int) $r[1], $encNew);
            return true;
        }
        $this->handler->remember($key, (int) $r[1], $r[2] ?? null);
        return false;
    }

    /**
     * Single flight (LOCK.ONCE): if $key still has version $ifVersion
     * (default: the version this request saw; 0 = absent), one caller runs
     * $compute($currentValue) and stores the result; every concurrent caller
     * waits and gets that value instead of computing it again. If $compute
     * throws, the lock is released without writing and the next waiter
     * computes.
     *
     * The OAuth refresh of seed 000:
     *     $tokens = $s->once('oauth', fn ($old) => $provider->refresh($old['refresh_token']));
     */
    public function once(string $key, callable $compute, ?int $ifVersion = null, ?int $waitMs = null): mixed
    {
        $id = $this->id();
        $ifVersion ??= $this->handler->versionOf($key);
        $fence = $this->fenceFor($id, $key);
        if ($fence !== null) {
            $fresh = $this->conn($id)->command(['SESSION.READ', $id, 'KEYS', $key]);
            [$ver, $raw] = [(int) ($fresh[3][1] ?? 0), $fresh[3][2] ?? null];
            if ($ver !== $ifVersion) {
                return $this->handler->remember($key, $ver, $raw);
            }
            $new = $compute(Codec::decodeValue($raw));
            $this->commitKey($id, $key, $new, $fence, false);
            return $new;
        }
        $wait = $waitMs ?? $this->handler->lockWaitMs();
        $cmd = ['LOCK.ONCE', $id, $key, 'IFVER', $ifVersion, 'WAIT', $wait];
        if (($lease = $this->handler->leaseMs()) !== null) {
            array_push($cmd, 'LEASE', $lease);
        }
        try {
            $r = $this->handler->lockConnection()->command($cmd, $wait / 1000);
        } catch (ServerException $e) {
            throw $this->translate($e, $key);
        }
        [$token, $ver, $raw] = [(int) $r[0], (int) $r[1], $r[2] ?? null];
        if ($token === 0) {
            return $this->handler->remember($key, $ver, $raw);
        }
        try {
            $new = $compute(Codec::decodeValue($raw));
            $this->commitKey($id, $key, $new, $token, true);
        } catch (\Throwable $t) {
            $this->releaseKey($id, $key, $token);
            throw $t;
        }
        return $new;
    }

    // ------------------------------------------------------------------

    /** Fencing token covering $key if this request already holds it exclusively. */
    private function fenceFor(string $id, string $key): ?int
    {
        $t = $this->handler->sessionToken($id);
        if ($t !== null) {
            return $t;
        }
        $locks = $this->handler->keyLocks();
        if (isset($locks[$key]) && is_int($locks[$key])) {
            return $locks[$key];
        }
        return null;
    }

    private function conn(string $id): Connection
    {
        return $this->handler->sessionToken($id) !== null || $this->handler->keyLocks() !== []
            ? $this->handler->lockConnection()
            : $this->handler->connection();
    }

    /** @return array{0:int,1:mixed} token and current value */
    private function acquireKey(string $id, string $key, ?int $waitMs): array
    {
        $wait = $waitMs ?? $this->handler->lockWaitMs();
        $cmd = ['LOCK.ACQUIRE', $id, 'KEY', $key, 'WAIT', $wait];
        if (($lease = $this->handler->leaseMs()) !== null) {
            array_push($cmd, 'LEASE', $lease);
        }
        try {
            $r = $this->handler->lockConnection()->command($cmd, $wait / 1000);
        } catch (ServerException $e) {
            throw $this->translate($e, $key);
        }
        $token = (int) $r[0];
        $read = $r[1];
        if ($read === null) {
            $this->releaseKey($id, $key, $token);
            throw new ServerException('NOSESSION session does not exist');
        }
        $f = $read[3] ?? [];
        $value = null;
        for ($i = 0; $i + 3 <= count($f); $i += 3) {
            if ((string) $f[$i] === $key) {
                $value = $this->handler->remember($key, (int) $f[$i + 1], $f[$i + 2]);
            }
        }
        if ($f === []) {
            $this->handler->remember($key, 0, null);
        }
        return [$token, $value];
    }

    private function releaseKey(string $id, string $key, int $token): void
    {
        try {
            $this->handler->lockConnection()->command(['LOCK.RELEASE', $id, 'KEY', $key, $token]);
        } catch (SessiondException) {
            $this->handler->lockConnection()->close(); // releases it server-side
        }
    }

    private function commitKey(string $id, string $key, mixed $new, int $token, bool $unlock): void
    {
        $cmd = ['SESSION.COMMIT', $id, 'FENCE', $token];
        if ($unlock) {
            $cmd[] = 'UNLOCK';
        }
        if ($new instanceof DeleteMarker) {
            array_push($cmd, 'DEL', $key);
            $enc = null;
        } else {
            $enc = Codec::encodeValue($new);
            array_push($cmd, 'SET', $key, $enc);
        }
        $r = $this->run($id, $key, $cmd, true);
        $this->handler->remember($key, $enc === null ? 0 : (int) ($r[1][0] ?? 0), $enc);
    }

    /**
     * Sends one command about $key. $key is passed explicitly: the command's
     * own arguments do not say where the key is (SESSION.COMMIT id FENCE t
     * … SET k v has the word FENCE in the slot where INCR has the key).
     *
     * @param list<string|int> $cmd
     */
    private function run(string $id, string $key, array $cmd, bool $onLockConn, bool $once = false): mixed
    {
        $conn = $onLockConn ? $this->handler->lockConnection() : $this->conn($id);
        try {
            // INCR and CAS carry a request id: retried after a lost
            // connection or a failover, they are applied once.
            return $once ? $this->handler->commandOnce($conn, $cmd) : $conn->command($cmd);
        } catch (ServerException $e) {
            throw $this->translate($e, $key);
        }
    }

    private function translate(ServerException $e, string $key): SessiondException
    {
        if ($e->is('TIMEOUT') || $e->is('DEADLOCK')) {
            return new LockTimeoutException("sessiond: could not lock key \"$key\": " . $e->getMessage(), 0, $e);
        }
        if ($e->is('FENCED')) {
            return new LockLostException("sessiond: lock on key \"$key\" was lost: " . $e->getMessage(), 0, $e);
        }
        return $e;
    }
}
