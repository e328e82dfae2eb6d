<?php

declare(strict_types=1);

namespace Sessiond\Laravel;

use Illuminate\Cache\Lock;
use Illuminate\Contracts\Cache\LockTimeoutException;
use Sessiond\Exception\ServerException;

/**
 * A Laravel lock on sessiond (see LockStore). block() is a single
 * server-side wait (`LOCK.ACQUIRE id WAIT ms`) with FIFO hand-off, not a
 * loop of acquire() and sleeps; `$seconds` becomes the lock's LEASE (0: no
 * lease, the server's --lock-max-hold bounds it).
 */
class SessiondLock extends Lock
{
    private string $lockId;

    public function __construct(private LockStore $store, string $name, int $seconds, ?string $owner = null)
    {
        parent::__construct($name, $seconds, $owner);
        $this->lockId = LockStore::lockId($name);
    }

    public function acquire()
    {
        return $this->take(0);
    }

    public function block($seconds, $callback = null)
    {
        if (!$this->take(max(0, (int) round($seconds * 1000)))) {
            throw new LockTimeoutException();
        }
        if (is_callable($callback)) {
            try {
                return $callback();
            } finally {
                $this->release();
            }
        }
        return true;
    }

    public function release()
    {
        $held = $this->store->held($this->lockId);
        if ($held === null || $held[1] !== $this->owner) {
            return false;
        }
        $this->store->setHeld($this->lockId, null);
        return $this->store->connection()->command(['LOCK.RELEASE', $this->lockId, $held[0]]) === 1;
    }

    public function forceRelease()
    {
        $this->store->setHeld($this->lockId, null);
        $this->store->connection()->command(['LOCK.BREAK', $this->lockId]);
    }

    protected function getCurrentOwner()
    {
        return $this->store->held($this->lockId)[1] ?? '';
    }

    private function take(int $waitMs): bool
    {
        if ($this->store->held($this->lockId) !== null) {
            return false; // held by this process already (locks are not re-entrant)
        }
        $cmd = ['LOCK.ACQUIRE', $this->lockId, 'WAIT', $waitMs];
        if ($this->seconds > 0) {
            array_push($cmd, 'LEASE', $this->seconds * 1000);
        }
        try {
            $r = $this->store->connection()->command($cmd, $waitMs / 1000);
        } catch (ServerException $e) {
            if ($e->is('TIMEOUT') || $e->is('DEADLOCK')) {
                return false;
            }
            throw $e;
        }
        $this->store->setHeld($this->lockId, (int) $r[0], $this->owner);
        return true;
    }
}
