<?php

declare(strict_types=1);

namespace Sessiond\Laravel;

use Illuminate\Contracts\Cache\LockProvider;
use Illuminate\Contracts\Cache\Store;
use Sessiond\Connection;

/**
 * A Laravel cache store that only provides locks, on sessiond (cache driver
 * `sessiond`, registered by SessiondServiceProvider). It exists for
 * Laravel's session blocking (`Route::block()`, `session.block_store`):
 * StartSession calls `lock('session:'.$id)->block($wait)`, which here is
 * one `LOCK.ACQUIRE … WAIT ms`: the server queues the waiters and hands
 * the lock over in FIFO order when it is released, instead of every waiter
 * polling every 50 ms.
 *
 * Locks belong to the connection that took them (see docs/protocol.md):
 * they are released when the PHP process ends or dies, and cannot be
 * handed to another process with restoreLock(). Every other cache
 * operation throws: use another store for caching.
 */
class LockStore implements Store, LockProvider
{
    private Connection $conn;
    /** @var array<string, array{0:int,1:string}> lock id => [fencing token, owner] held by this process */
    private array $held = [];

    /** @param array<string, mixed> $config `uri`, and optionally `password`, `timeout`, `connect_timeout`, `name` */
    public function __construct(array $config)
    {
        $u = Connection::parseUri((string) ($config['uri'] ?? 'tcp://127.0.0.1:6380'));
        $this->conn = new Connection(
            $u['address'],
            $config['password'] ?? $u['password'],
            (float) ($config['connect_timeout'] ?? 2.0),
            (float) ($config['timeout'] ?? 5.0),
            false, // never persistent: a lock must end with its process
            $config['name'] ?? null,
        );
    }

    public function lock($name, $seconds = 0, $owner = null)
    {
        return new SessiondLock($this, (string) $name, (int) $seconds, $owner);
    }

    public function restoreLock($name, $owner)
    {
        return $this->lock($name, 0, $owner);
    }

    /** @internal */
    public function connection(): Connection
    {
        $this->conn->connect();
        return $this->conn;
    }

    /**
     * The sessiond id a lock name maps to: `lock:<name>` when that is a valid
     * id, else `lock:` and a hash of the name. The prefix keeps lock names
     * apart from session ids.
     *
     * @internal
     */
    public static function lockId(string $name): string
    {
        $id = 'lock:' . $name;
        return preg_match('/^[A-Za-z0-9,._:-]{1,128}$/', $id) ? $id : 'lock:sha1:' . sha1($name);
    }

    /** @internal @return array{0:int,1:string}|null */
    public function held(string $id): ?array
    {
        return $this->held[$id] ?? null;
    }

    /** @internal */
    public function setHeld(string $id, ?int $token, string $owner = ''): void
    {
        if ($token === null) {
            unset($this->held[$id]);
        } else {
            $this->held[$id] = [$token, $owner];
        }
    }

    public function get($key)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function many(array $keys)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function put($key, $value, $seconds)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function putMany(array $values, $seconds)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function increment($key, $value = 1)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function decrement($key, $value = 1)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function forever($key, $value)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function forget($key)
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function flush()
    {
        throw self::locksOnly(__FUNCTION__);
    }

    public function getPrefix()
    {
        return '';
    }

    private static function locksOnly(string $op): \BadMethodCallException
    {
        return new \BadMethodCallException("sessiond: the sessiond cache store only provides locks ($op() is not supported); use another store for caching");
    }
}
