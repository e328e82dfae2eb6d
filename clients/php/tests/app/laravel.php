<?php

declare(strict_types=1);

// A Laravel 8.83 app (Debian's php-laravel-framework) with sessiond as its
// session driver, wired the way an app does it: the framework's
// Application with SessionServiceProvider, CacheServiceProvider and
// Sessiond\Laravel\SessiondServiceProvider, config session.driver =
// sessiond, a route through the Router with the StartSession middleware
// (and Route::block() with session.block_store = sessiond).
//
// Query: mode (session.sessiond.lock_mode), route_mode (the route's
// sessiond.mode middleware), block=LOCK,WAIT (Route::block), set[k]=v,
// del[]=k, flash[k]=v, regenerate=0|1, invalidate=1, after[k]=v (after
// those), ready/gate (after the session started), ready2/gate2 (after the
// changes), api=incr:KEY (the per-key API).

require dirname(__DIR__, 2) . '/src/autoload.php';
require '/usr/share/php/Illuminate/autoload.php';
require __DIR__ . '/_signals.php';

use Illuminate\Config\Repository;
use Illuminate\Foundation\Application;
use Illuminate\Http\JsonResponse;
use Illuminate\Http\Request;
use Illuminate\Session\Middleware\StartSession;
use Illuminate\Support\Facades\Facade;

$GLOBALS['__errors'] = [];
set_error_handler(static function (int $no, string $str): bool {
    if ($no !== E_DEPRECATED && $no !== E_USER_DEPRECATED) { // the framework's own deprecations are not ours
        $GLOBALS['__errors'][] = $str;
    }
    return true;
});

/** Outermost route middleware: adds what the session save reported to the reply. */
final class ReportSessionErrors
{
    public function handle($request, \Closure $next)
    {
        try {
            $response = $next($request);
        } catch (\Throwable $e) {
            $response = new JsonResponse(['ok' => false, 'exception' => get_class($e) . ': ' . $e->getMessage()], 500);
        }
        if ($response instanceof JsonResponse) {
            $data = $response->getData(true);
            $data['errors'] = $GLOBALS['__errors'];
            $data['conflicts'] = $GLOBALS['__conflicts'] ?? [];
            $data['hung'] = $GLOBALS['__hung'] ?? [];
            $response->setData($data);
        }
        return $response;
    }
}

$uri = getenv('SESSIOND_URI') ?: 'tcp://127.0.0.1:6380';
$app = new Application(sys_get_temp_dir());
$app->instance('config', new Repository([
    'app' => ['env' => 'testing', 'debug' => true],
    'session' => [
        'driver' => 'sessiond',
        'lifetime' => 120,
        'expire_on_close' => false,
        'encrypt' => false,
        'cookie' => 'PHPSESSID',
        'path' => '/',
        'domain' => null,
        'secure' => false,
        'http_only' => true,
        'same_site' => 'lax',
        'lottery' => [0, 100],
        'block_store' => 'sessiond',
        'sessiond' => [
            'uri' => $uri,
            'lock_mode' => $_GET['mode'] ?? 'none',
            'lock_wait_ms' => (int) ($_GET['wait'] ?? 30000),
            'on_conflict' => static function (array $keys): ?string {
                $GLOBALS['__conflicts'][] = $keys;
                return null;
            },
        ],
    ],
    'cache' => [
        'default' => 'sessiond',
        'prefix' => '',
        'stores' => ['sessiond' => ['driver' => 'sessiond', 'uri' => $uri, 'name' => 'laravel-block']],
    ],
]));
$app->register(Illuminate\Session\SessionServiceProvider::class);
$app->register(Illuminate\Cache\CacheServiceProvider::class);
$app->register(Sessiond\Laravel\SessiondServiceProvider::class);
$app->boot();
Facade::setFacadeApplication($app);

$router = $app['router'];
$router->aliasMiddleware('report', ReportSessionErrors::class);
$middleware = ['report'];
if (isset($_GET['route_mode'])) {
    $middleware[] = 'sessiond.mode:' . $_GET['route_mode'];
}
$middleware[] = StartSession::class;
// php -S runs this file as the script: the route is its path info, '/'
$route = $router->get('/', static function (Request $request) use ($app): JsonResponse {
    $session = $request->session();
    $seen = $session->all();
    $before = $session->getId();
    signal_ready($request->query('ready'));
    await_gate($request->query('gate'));
    foreach ($request->query->all('set') as $k => $v) {
        $session->put((string) $k, $v);
    }
    foreach ($request->query->all('del') as $k) {
        $session->forget((string) $k);
    }
    foreach ($request->query->all('flash') as $k => $v) {
        $session->flash((string) $k, $v);
    }
    if ($request->query->has('regenerate')) {
        $session->regenerate((bool) $request->query('regenerate'));
    }
    if ($request->query('invalidate')) {
        $session->invalidate();
    }
    foreach ($request->query->all('after') as $k => $v) {
        $session->put((string) $k, $v);
    }
    signal_ready($request->query('ready2'));
    await_gate($request->query('gate2'));
    return new JsonResponse([
        'ok' => true,
        'before' => $before,
        'id' => $session->getId(),
        'seen' => $seen,
        'mode' => Sessiond\SessionHandler::instance()?->mode() ?? $app['session']->driver()->getHandler()->mode(),
    ]);
})->middleware($middleware);
if (isset($_GET['block'])) {
    [$lockFor, $waitFor] = array_map('intval', explode(',', (string) $_GET['block']));
    $route->block($lockFor, $waitFor);
}

$request = Request::capture();
$app->instance('request', $request);
$response = $router->dispatch($request);
$response->send();
