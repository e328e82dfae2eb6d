<?php

declare(strict_types=1);

namespace Racelab;

/**
 * How a request reaches its session: PHP's session module (the plain
 * handlers), Symfony's Session on NativeSessionStorage, or Laravel's
 * Illuminate\Session\Store. The scenarios only see the attributes, as an
 * array they change in place (attrs()), and start()/close(); each backend
 * drives its framework's own classes the way a request of that framework
 * does.
 */
interface Backend
{
    /** Starts the session (reads it; takes the lock where the handler locks). False: not available. */
    public function start(string $role, bool $readAndClose): bool;

    /** The session's attributes, by reference: changes are saved by close(). */
    public function &attrs(): array;

    public function id(): ?string;

    /** Saves and ends the session (writes, releases the lock). */
    public function close(): bool;

    /** Ends the session without saving (after an exception). */
    public function abort(): void;

    /** The sessiond handler, for the per-key API (sessiond handlers only). */
    public function sessiond(): ?\Sessiond\SessionHandler;

    /** The server field of attribute $key, for the per-key API. */
    public function field(string $key): string;
}

/** PHP's session module with the handler chosen by Handlers::install(). */
final class NativeBackend implements Backend
{
    public function __construct(private string $h)
    {
    }

    public function start(string $role, bool $readAndClose): bool
    {
        Handlers::install($this->h, $role);
        return @session_start($readAndClose ? ['read_and_close' => true] : []);
    }

    public function &attrs(): array
    {
        if (!isset($_SESSION) || !is_array($_SESSION)) {
            $_SESSION = [];
        }
        return $_SESSION;
    }

    public function id(): ?string
    {
        return session_id() ?: null;
    }

    public function close(): bool
    {
        return session_status() !== PHP_SESSION_ACTIVE || session_write_close();
    }

    public function abort(): void
    {
        if (session_status() === PHP_SESSION_ACTIVE) {
            session_abort();
        }
    }

    public function sessiond(): ?\Sessiond\SessionHandler
    {
        return Handlers::isSessiond($this->h) ? \Sessiond\SessionHandler::instance() : null;
    }

    public function field(string $key): string
    {
        return $key;
    }
}

/**
 * Symfony (HttpFoundation 5.4): Session on NativeSessionStorage with either
 * Symfony's own RedisSessionHandler (phpredis) or Sessiond\SessionHandler,
 * as `framework.session.handler_id` would wire them. Attributes live in
 * Symfony's attribute bag ($_SESSION['_sf2_attributes']).
 */
final class SymfonyBackend implements Backend
{
    private ?\Symfony\Component\HttpFoundation\Session\Session $session = null;
    private ?\Sessiond\SessionHandler $handler = null;
    /** @var array<string, mixed> */
    private array $none = [];

    public function __construct(private string $h)
    {
    }

    public function start(string $role, bool $readAndClose): bool
    {
        require_once '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
        if ($this->h === 'symfony-redis') {
            $redis = new \Redis();
            [$host, $port] = explode(':', (string) Handlers::env('RACELAB_REDIS'));
            $redis->connect($host, (int) $port);
            $handler = new \Symfony\Component\HttpFoundation\Session\Storage\Handler\RedisSessionHandler($redis, ['prefix' => 'sf_']);
        } else {
            require_once Handlers::sessiondSrc() . '/autoload.php';
            $handler = $this->handler = new \Sessiond\SessionHandler((string) Handlers::env('RACELAB_SESSIOND'), [
                'lock_mode' => Handlers::sessiondMode($this->h, $role),
                'lock_wait_ms' => 30000,
            ]);
        }
        $storage = new \Symfony\Component\HttpFoundation\Session\Storage\NativeSessionStorage(['name' => 'RACELAB', 'gc_probability' => 0], $handler);
        $this->session = new \Symfony\Component\HttpFoundation\Session\Session($storage);
        try {
            $this->session->start();
        } catch (\RuntimeException) {
            return false;
        }
        if ($readAndClose) {
            $copy = $this->session->all();
            $this->session->save();
            $this->none = $copy; // what was read, for the caller
        }
        return true;
    }

    public function &attrs(): array
    {
        if ($this->session === null || !$this->session->isStarted()) {
            return $this->none;
        }
        $this->session->all(); // the bag is bound to $_SESSION['_sf2_attributes'] from here on
        return $_SESSION['_sf2_attributes'];
    }

    public function id(): ?string
    {
        return $this->session?->getId() ?: null;
    }

    public function close(): bool
    {
        if ($this->session !== null && $this->session->isStarted()) {
            $this->session->save();
        }
        return true;
    }

    public function abort(): void
    {
        if (session_status() === PHP_SESSION_ACTIVE) {
            session_abort();
        }
    }

    public function sessiond(): ?\Sessiond\SessionHandler
    {
        return $this->handler;
    }

    public function field(string $key): string
    {
        return '_sf2_attributes.' . $key; // the handler's split_keys: one field per attribute
    }
}

/**
 * Laravel (Illuminate 8.83): Illuminate\Session\Store with either Laravel's
 * redis driver (CacheBasedSessionHandler on a RedisStore, phpredis) or
 * Sessiond\Laravel\SessiondSessionHandler, as SessionManager builds them.
 */
final class LaravelBackend implements Backend
{
    private ?\Illuminate\Session\Store $store = null;
    private ?\Sessiond\SessionHandler $handler = null;
    /** @var array<string, mixed> */
    private array $data = [];
    /** @var array<string, mixed> */
    private array $orig = [];
    private bool $open = false;

    public function __construct(private string $h)
    {
    }

    public function start(string $role, bool $readAndClose): bool
    {
        require_once '/usr/share/php/Illuminate/autoload.php';
        if ($this->h === 'laravel-redis') {
            [$host, $port] = explode(':', (string) Handlers::env('RACELAB_REDIS'));
            $redis = new \Illuminate\Redis\RedisManager(null, 'phpredis', ['default' => ['host' => $host, 'port' => (int) $port, 'database' => 0]]);
            $cache = new \Illuminate\Cache\Repository(new \Illuminate\Cache\RedisStore($redis, 'laravel_cache:'));
            $handler = new \Illuminate\Session\CacheBasedSessionHandler($cache, 120);
        } else {
            require_once Handlers::sessiondSrc() . '/autoload.php';
            $handler = $this->handler = new \Sessiond\Laravel\SessiondSessionHandler((string) Handlers::env('RACELAB_SESSIOND'), [
                'lock_mode' => Handlers::sessiondMode($this->h, $role),
                'lock_wait_ms' => 30000,
                'ttl' => 7200,
            ]);
        }
        $this->store = new \Illuminate\Session\Store('RACELAB', $handler);
        $this->handler?->attachStore(fn () => $this->store);
        $this->store->setId($_COOKIE['RACELAB'] ?? null);
        try {
            $this->store->start();
        } catch (\Sessiond\Exception\SessiondException) {
            return false;
        }
        $this->open = true;
        $this->data = $this->orig = $this->store->all();
        if ($readAndClose) {
            $this->close();
        }
        return true;
    }

    public function &attrs(): array
    {
        return $this->data;
    }

    public function id(): ?string
    {
        return $this->store?->getId();
    }

    public function close(): bool
    {
        if (!$this->open) {
            return true;
        }
        $this->open = false;
        // what the request changed, the way a controller calls put()/forget()
        foreach ($this->orig as $k => $v) {
            if (!array_key_exists($k, $this->data)) {
                $this->store->forget($k);
            }
        }
        foreach ($this->data as $k => $v) {
            if (!array_key_exists($k, $this->orig) || serialize($v) !== serialize($this->orig[$k])) {
                $this->store->put($k, $v);
            }
        }
        $this->store->save();
        return true;
    }

    public function abort(): void
    {
        $this->open = false;
        $this->handler?->close(); // releases a session lock without writing
    }

    public function sessiond(): ?\Sessiond\SessionHandler
    {
        return $this->handler;
    }

    public function field(string $key): string
    {
        return $key;
    }
}
