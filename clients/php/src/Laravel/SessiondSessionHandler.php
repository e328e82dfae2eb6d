<?php

declare(strict_types=1);

namespace Sessiond\Laravel;

use Sessiond\Exception\ServerException;
use Sessiond\Exception\SessiondException;
use Sessiond\SessionHandler;

/**
 * Laravel's session driver `sessiond` (registered by SessiondServiceProvider).
 *
 * Laravel does not use PHP's session module: Illuminate\Session\Store calls
 * read($id) once when the session starts and write($id, serialize($attributes))
 * once at the end of the request. This handler turns that into per-key
 * commits: every top-level attribute is one server field, and only the
 * attributes this request changed are sent (with IFVER in `none` mode, the
 * default for Laravel, so concurrent requests that change different keys
 * all survive; a same-key conflict is reported as for plain PHP).
 *
 * - `_previous` and `_flash` (Laravel's bookkeeping) are last-writer-wins.
 * - Store::migrate()/regenerate(): Laravel picks the new id and writes the
 *   session under it at the end; a write to another id than the one read
 *   moves the session there first (SESSION.REGENERATE old TO new), keeping
 *   the old id as an alias for the grace period, with the lock and its
 *   waiters. migrate(true)/invalidate() destroy the old id at once.
 * - A request that arrives with an id in its grace period is switched to
 *   the new id (the Store's id is changed, so the cookie follows).
 * - `session` mode: the session lock is held from read to write (the whole
 *   request); `readonly` never waits and writes nothing.
 * - When the session cannot be read (no lock within lock_wait_ms, server
 *   down), read() throws: the request never continues with an empty
 *   session that it would then save.
 */
class SessiondSessionHandler extends SessionHandler
{
    /** @var null|\Closure(): ?object the Store this handler serves (for ids that moved) */
    private ?\Closure $store = null;
    /** destroy() ended the session read by this request (migrate(true), invalidate()). */
    private bool $destroyedRead = false;

    protected static function defaults(): array
    {
        return array_merge(parent::defaults(), [
            'lock_mode' => 'none',
            'strict' => false,
            'split_keys' => [],
            'lww_keys' => ['_previous', '_flash'],
        ]);
    }

    /**
     * The Laravel session (Illuminate\Session\Store) this handler serves,
     * resolved lazily: lets a request that arrived with an old id follow the
     * session to its new id.
     *
     * @param \Closure(): ?object $store
     */
    public function attachStore(\Closure $store): void
    {
        $this->store = $store;
    }

    protected function strict(): bool
    {
        return false; // Laravel validates ids itself (40 alphanumerics) and regenerates at login
    }

    protected function serializeHandler(): string
    {
        return 'php_serialize'; // serialize($attributes) is exactly this format
    }

    public function read(string $id): string|false
    {
        if (!$this->open('', '')) {
            throw new SessiondException('sessiond: cannot reach the server; session ' . self::shortId($id) . ' not started');
        }
        $this->destroyedRead = false;
        $data = parent::read($id);
        if ($data === false) {
            throw new SessiondException('sessiond: session ' . self::shortId($id) . ' could not be read (see the warning before this); the request stops rather than run with an empty session');
        }
        return $data;
    }

    public function write(string $id, string $data): bool
    {
        if ($this->id !== null && $id !== $this->id) {
            if ($id === $this->serverId) {
                // the request came with an alias; the Store follows the new id
                $this->id = $id;
            } elseif ($this->destroyedRead) {
                // migrate(true) / invalidate(): the old session is gone;
                // the new id starts fresh (created, locked in session mode)
                $this->destroyedRead = false;
                $this->read($id);
            } else {
                $this->moveTo($id);
            }
        }
        return parent::write($id, $data);
    }

    public function destroy(string $id): bool
    {
        $ok = parent::destroy($id);
        if ($id === $this->id || $id === $this->serverId) {
            $this->destroyedRead = true;
        }
        return $ok;
    }

    /**
     * A value the per-key API committed: Laravel keeps the attributes in the
     * Store, not in $_SESSION, so the Store gets it too (else its save()
     * would write the older value back).
     *
     * @internal
     */
    public function remember(string $key, int $version, ?string $raw): mixed
    {
        $value = parent::remember($key, $version, $raw);
        $store = $this->store !== null ? ($this->store)() : null;
        if ($store !== null && method_exists($store, 'put')) {
            if ($raw === null || $version === 0) {
                $store->forget($key);
            } else {
                $store->put($key, $value);
            }
        }
        return $value;
    }

    protected function followRegenerate(string $newId): void
    {
        $store = $this->store !== null ? ($this->store)() : null;
        if ($store !== null && method_exists($store, 'setId') && $this->opt['follow_regenerate']) {
            $store->setId($newId);
        }
    }

    /**
     * Store::migrate(false): Laravel chose $newId; move the session there,
     * with the lock (same token) and the grace period for requests in
     * flight with the old id.
     */
    private function moveTo(string $newId): void
    {
        $cmd = ['SESSION.REGENERATE', $this->serverId ?? $this->id, 'TO', $newId];
        if ($this->opt['regenerate_grace'] !== null) {
            array_push($cmd, 'GRACE', (int) $this->opt['regenerate_grace']);
        }
        $conn = $this->token !== null ? $this->lockConn : $this->conn;
        try {
            $conn->command($cmd);
        } catch (ServerException $e) {
            if (!$e->is('NOSESSION')) {
                throw $e;
            }
            // destroyed meanwhile: start the new id fresh
            $this->read($newId);
            return;
        }
        if ($this->token !== null) {
            $this->lockedId = $newId; // the lock moved with the session
        }
        $this->id = $newId;
        $this->serverId = $newId;
    }
}
