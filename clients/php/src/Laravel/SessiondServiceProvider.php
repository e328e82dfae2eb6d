<?php

declare(strict_types=1);

namespace Sessiond\Laravel;

use Illuminate\Session\Middleware\StartSession;
use Illuminate\Support\ServiceProvider;

/**
 * Registers sessiond with Laravel (8.x to 11.x):
 *
 * - session driver `sessiond` (SESSION_DRIVER=sessiond), configured by
 *   config('session.sessiond'): `uri` and any Sessiond\SessionHandler option
 *   (`lock_mode` default `none`, `lock_wait_ms`, `regenerate_grace`, …);
 *   the idle TTL is config('session.lifetime') minutes;
 * - cache driver `sessiond`, a lock-only store for session blocking
 *   (`'block_store' => 'sessiond'`, Route::block());
 * - route middleware `sessiond.mode:<mode>`, run before StartSession.
 */
class SessiondServiceProvider extends ServiceProvider
{
    public function boot(): void
    {
        $app = $this->app;
        $app['session']->extend('sessiond', static function ($app) {
            $config = $app['config'];
            if ($config->get('session.encrypt')) {
                // EncryptedStore hands write() one encrypted blob: there are
                // no attributes left to commit key by key
                throw new \InvalidArgumentException('sessiond: the sessiond session driver needs session.encrypt = false (each attribute is stored as its own field); protect the connection with TLS or a private network instead');
            }
            $options = (array) $config->get('session.sessiond', []);
            $uri = (string) ($options['uri'] ?? 'tcp://127.0.0.1:6380');
            unset($options['uri']);
            $options['ttl'] ??= max(1, (int) $config->get('session.lifetime', 120)) * 60;
            $handler = new SessiondSessionHandler($uri, $options);
            $handler->attachStore(static fn () => $app['session']->driver('sessiond'));
            return $handler;
        });
        $app['cache']->extend('sessiond', function ($app, array $config) {
            return $this->repository(new LockStore($config));
        });
        $router = $app['router'];
        $router->aliasMiddleware('sessiond.mode', SessionMode::class);
        if (method_exists($router, 'prependToMiddlewarePriority')) {
            $router->prependToMiddlewarePriority(SessionMode::class);
        } else {
            $router->middlewarePriority = array_merge([SessionMode::class], $router->middlewarePriority);
        }
    }
}
