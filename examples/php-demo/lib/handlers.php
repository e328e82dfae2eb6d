<?php

declare(strict_types=1);

namespace Racelab;

/**
 * The session handlers the lab compares, chosen per request (?h=…) or per
 * run (environment RACELAB_HANDLER). Addresses come from the environment so
 * the same app runs under the lab's supervisor or on any server:
 *
 *   RACELAB_FILES_DIR     directory for the files handler (default: temp dir)
 *   RACELAB_REDIS         host:port of redis-server
 *   RACELAB_MEMCACHED     host:port of memcached
 *   RACELAB_SESSIOND      tcp://host:port of sessiond
 *   RACELAB_SESSIOND_PHP  path to clients/php/src (default: ../../../clients/php/src)
 *
 * Peers are used as installed: only the locking switch of each is set, every
 * other setting (lock wait, retries) is the extension's default.
 */
final class Handlers
{
    /** id => what it is (shown by ?ep=info). */
    public const ALL = [
        'files' => "PHP files handler (flock on the whole session)",
        'redis' => 'phpredis, redis.session.locking_enabled=0',
        'redis-lock' => 'phpredis, redis.session.locking_enabled=1',
        'memcached-lock' => 'php-memcached, memcached.sess_locking=1',
        'memcached' => 'php-memcached, memcached.sess_locking=0',
        'sessiond-session' => 'sessiond handler, lock_mode=session',
        'sessiond-none' => 'sessiond handler, lock_mode=none',
        'sessiond-readonly' => 'sessiond handler, readers in lock_mode=readonly, writers in session',
        'sessiond-api' => 'sessiond handler, lock_mode=none + per-key API (increment, synchronized, once)',
        // The same scenarios inside the frameworks, through their own session classes.
        'symfony-redis' => "Symfony 5.4 NativeSessionStorage + Symfony's RedisSessionHandler (phpredis)",
        'symfony-sessiond-session' => 'Symfony 5.4 NativeSessionStorage + sessiond handler, lock_mode=session',
        'symfony-sessiond-none' => 'Symfony 5.4 NativeSessionStorage + sessiond handler, lock_mode=none',
        'symfony-sessiond-api' => 'Symfony 5.4 NativeSessionStorage + sessiond handler, lock_mode=none + per-key API',
        'laravel-redis' => "Laravel 8.83 Session\\Store + Laravel's redis driver (phpredis)",
        'laravel-sessiond-session' => 'Laravel 8.83 Session\\Store + sessiond driver, lock_mode=session',
        'laravel-sessiond-none' => 'Laravel 8.83 Session\\Store + sessiond driver, lock_mode=none',
        'laravel-sessiond-api' => 'Laravel 8.83 Session\\Store + sessiond driver, lock_mode=none + per-key API',
    ];

    /** The framework of handler $id: 'symfony', 'laravel' or null (plain PHP sessions). */
    public static function framework(string $id): ?string
    {
        return match (true) {
            str_starts_with($id, 'symfony-') => 'symfony',
            str_starts_with($id, 'laravel-') => 'laravel',
            default => null,
        };
    }

    /** How a request of handler $id reaches its session. */
    public static function backend(string $id): Backend
    {
        $why = self::missing($id);
        if ($why !== null) {
            throw new \RuntimeException("handler $id unavailable: $why");
        }
        return match (self::framework($id)) {
            'symfony' => new SymfonyBackend($id),
            'laravel' => new LaravelBackend($id),
            default => new NativeBackend($id),
        };
    }

    /** The sessiond lock mode of a request in role $role ('write' or 'read') for handler $id. */
    public static function sessiondMode(string $id, string $role): string
    {
        $base = self::framework($id) === null ? $id : substr($id, strlen((string) self::framework($id)) + 1);
        return match ($base) {
            'sessiond-session' => 'session',
            'sessiond-none' => 'none',
            'sessiond-readonly' => $role === 'read' ? 'readonly' : 'session',
            'sessiond-api' => $role === 'read' ? 'readonly' : 'none',
        };
    }

    /** @return array<string, string> the handlers this PHP can run, id => description */
    public static function available(): array
    {
        $out = [];
        foreach (self::ALL as $id => $desc) {
            $why = self::missing($id);
            if ($why === null) {
                $out[$id] = $desc;
            }
        }
        return $out;
    }

    /** Why a handler cannot run here, or null. */
    public static function missing(string $id): ?string
    {
        $fw = self::framework($id);
        if ($fw !== null) {
            $lib = $fw === 'symfony' ? '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php' : '/usr/share/php/Illuminate/autoload.php';
            if (!is_file($lib)) {
                return $fw === 'symfony' ? 'php-symfony-http-foundation not installed' : 'php-laravel-framework not installed';
            }
            $id = substr($id, strlen($fw) + 1);
        }
        return match (true) {
            $id === 'files' => null,
            str_starts_with($id, 'redis') => !extension_loaded('redis') ? 'extension redis not loaded'
                : (self::env('RACELAB_REDIS') === null ? 'RACELAB_REDIS not set' : null),
            str_starts_with($id, 'memcached') => !extension_loaded('memcached') ? 'extension memcached not loaded'
                : (self::env('RACELAB_MEMCACHED') === null ? 'RACELAB_MEMCACHED not set' : null),
            str_starts_with($id, 'sessiond') => self::env('RACELAB_SESSIOND') === null ? 'RACELAB_SESSIOND not set'
                : (!is_file(self::sessiondSrc() . '/autoload.php') ? 'clients/php/src not found' : null),
            default => 'unknown handler',
        };
    }

    public static function isApi(string $id): bool
    {
        return str_ends_with($id, 'sessiond-api');
    }

    public static function isSessiond(string $id): bool
    {
        return str_contains($id, 'sessiond');
    }

    /**
     * Configures PHP's session module for handler $id, before session_start().
     * $role is 'write' for requests that change the session and 'read' for
     * requests that only read it (only the sessiond modes tell them apart).
     */
    public static function install(string $id, string $role): void
    {
        $why = self::missing($id);
        if ($why !== null) {
            throw new \RuntimeException("handler $id unavailable: $why");
        }
        session_name('RACELAB');
        // Same id generator and strictness for every handler: a fair comparison.
        ini_set('session.use_strict_mode', '0');
        ini_set('session.gc_probability', '0');
        switch ($id) {
            case 'files':
                $dir = self::env('RACELAB_FILES_DIR') ?? sys_get_temp_dir() . '/racelab-files';
                if (!is_dir($dir)) {
                    @mkdir($dir, 0700, true);
                }
                ini_set('session.save_handler', 'files');
                ini_set('session.save_path', $dir);
                break;
            case 'redis':
            case 'redis-lock':
                ini_set('session.save_handler', 'redis');
                ini_set('session.save_path', 'tcp://' . self::env('RACELAB_REDIS'));
                self::iniOrFail('redis.session.locking_enabled', $id === 'redis-lock' ? '1' : '0');
                break;
            case 'memcached':
            case 'memcached-lock':
                ini_set('session.save_handler', 'memcached');
                ini_set('session.save_path', (string) self::env('RACELAB_MEMCACHED'));
                self::iniOrFail('memcached.sess_locking', $id === 'memcached-lock' ? '1' : '0');
                break;
            default:
                require_once self::sessiondSrc() . '/autoload.php';
                $mode = self::sessiondMode($id, $role);
                \Sessiond\SessionHandler::register((string) self::env('RACELAB_SESSIOND'), [
                    'lock_mode' => $mode,
                    // The same bound phpredis/memcached users would pick: a
                    // request waits at most this long, then fails loudly.
                    'lock_wait_ms' => 30000,
                    // Strict mode off like the peers: the lab's setup request
                    // creates every session, so ids are always known.
                    'strict' => false,
                ]);
        }
    }

    public static function sessiondSrc(): string
    {
        return self::env('RACELAB_SESSIOND_PHP') ?? dirname(__DIR__, 3) . '/clients/php/src';
    }

    public static function env(string $name): ?string
    {
        $v = getenv($name);
        return ($v === false || $v === '') ? null : $v;
    }

    private static function iniOrFail(string $name, string $value): void
    {
        ini_set($name, $value);
        if ((string) ini_get($name) !== $value) {
            throw new \RuntimeException("could not set $name=$value at run time");
        }
    }
}
