<?php

declare(strict_types=1);

// A Symfony 5.4 app (Debian's php-symfony-http-kernel / -http-foundation)
// with sessiond as its session handler, the way a Symfony app wires it:
// HttpKernel, the framework's SessionListener (lazy session from a
// SessionFactory, saved on kernel.response), NativeSessionStorage with
// the plain Sessiond\SessionHandler (Symfony wraps it in its
// SessionHandlerProxy and turns strict mode on), and
// Sessiond\Symfony\SessionModeListener reading the route's _sessiond_mode.
//
// Query: mode (the handler's lock_mode), route_mode (the route default
// _sessiond_mode), storage=drupal (Drupal's regenerate pattern, see
// DrupalLikeStorage), set[k]=v, del[]=k, flash[type]=msg, getflash=1,
// migrate=0|1, invalidate=1, after[k]=v (set after those), ready/gate (after the session started),
// ready2/gate2 (after the changes).

require dirname(__DIR__, 2) . '/src/autoload.php';
require '/usr/share/php/Symfony/Component/HttpKernel/autoload.php';
require '/usr/share/php/Psr/Container/autoload.php';
require __DIR__ . '/_signals.php';

use Psr\Container\ContainerInterface;
use Sessiond\SessionHandler;
use Sessiond\Symfony\SessionModeListener;
use Symfony\Component\EventDispatcher\EventDispatcher;
use Symfony\Component\HttpFoundation\JsonResponse;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\RequestStack;
use Symfony\Component\HttpFoundation\Session\SessionFactory;
use Symfony\Component\HttpFoundation\Session\Storage\MetadataBag;
use Symfony\Component\HttpFoundation\Session\Storage\NativeSessionStorage;
use Symfony\Component\HttpFoundation\Session\Storage\NativeSessionStorageFactory;
use Symfony\Component\HttpFoundation\Session\Storage\SessionStorageFactoryInterface;
use Symfony\Component\HttpFoundation\Session\Storage\SessionStorageInterface;
use Symfony\Component\HttpKernel\Controller\ArgumentResolver;
use Symfony\Component\HttpKernel\Controller\ControllerResolver;
use Symfony\Component\HttpKernel\Event\RequestEvent;
use Symfony\Component\HttpKernel\Event\ResponseEvent;
use Symfony\Component\HttpKernel\EventListener\SessionListener;
use Symfony\Component\HttpKernel\HttpKernel;
use Symfony\Component\HttpKernel\KernelEvents;

$GLOBALS['__errors'] = [];
set_error_handler(static function (int $no, string $str): bool {
    $GLOBALS['__errors'][] = $str;
    return true;
});

/**
 * What Drupal's SessionManager (a NativeSessionStorage subclass) does on
 * regenerate(): save the old session, choose the new id itself, move the
 * stored session (Drupal: migrateStoredSession(), an UPDATE of its sessions
 * table; with sessiond: SessionHandler::moveSession()), start again.
 */
final class DrupalLikeStorage extends NativeSessionStorage
{
    public function __construct(array $options, private SessionHandler $sessiond)
    {
        parent::__construct($options, $sessiond, new MetadataBag());
    }

    public function regenerate(bool $destroy = false, ?int $lifetime = null): bool
    {
        if (!$this->isStarted()) {
            return false;
        }
        $old = $this->getId();
        parent::save();
        // Drupal: session_id(Crypt::randomBytesBase64());
        session_id(rtrim(strtr(base64_encode(random_bytes(32)), '+/', '-_'), '='));
        $this->sessiond->moveSession($old, $this->getId(), $destroy ? 0 : null);
        $this->start();
        return true;
    }
}

$options = [
    'lock_mode' => $_GET['mode'] ?? 'session',
    'lock_wait_ms' => (int) ($_GET['wait'] ?? 30000),
    'on_conflict' => static function (array $keys): ?string {
        $GLOBALS['__conflicts'][] = $keys;
        return null;
    },
];
$handler = new SessionHandler(getenv('SESSIOND_URI') ?: 'tcp://127.0.0.1:6380', $options);

$requestStack = new RequestStack();
$storageFactory = ($_GET['storage'] ?? '') === 'drupal'
    ? new class ($handler) implements SessionStorageFactoryInterface {
        public function __construct(private SessionHandler $h)
        {
        }

        public function createStorage(?Request $request): SessionStorageInterface
        {
            return new DrupalLikeStorage([], $this->h);
        }
    }
    : new NativeSessionStorageFactory([], $handler);
$services = [
    'session_factory' => new SessionFactory($requestStack, $storageFactory),
    'request_stack' => $requestStack,
];
$container = new class ($services) implements ContainerInterface {
    public function __construct(private array $s)
    {
    }

    public function get(string $id)
    {
        return $this->s[$id];
    }

    public function has(string $id): bool
    {
        return isset($this->s[$id]);
    }
};

$controller = static function (Request $request) use ($handler): JsonResponse {
    $q = $request->query;
    $session = $request->getSession();
    $seen = $session->all(); // starts the session (lazily, as any first use does)
    $flashes = $q->get('getflash') ? $session->getFlashBag()->all() : $session->getFlashBag()->peekAll();
    $before = $session->getId();
    signal_ready($q->get('ready'));
    await_gate($q->get('gate'));
    foreach ($q->all('set') as $k => $v) {
        $session->set((string) $k, $v);
    }
    foreach ($q->all('del') as $k) {
        $session->remove((string) $k);
    }
    foreach ($q->all('flash') as $type => $msg) {
        $session->getFlashBag()->add((string) $type, $msg);
    }
    if ($q->has('migrate')) {
        $session->migrate((bool) $q->get('migrate'));
    }
    if ($q->get('invalidate')) {
        $session->invalidate();
    }
    foreach ($q->all('after') as $k => $v) {
        $session->set((string) $k, $v);
    }
    signal_ready($q->get('ready2'));
    await_gate($q->get('gate2'));
    return new JsonResponse([
        'ok' => true,
        'before' => $before,
        'id' => $session->getId(),
        'seen' => $seen,
        'flashes' => $flashes,
        'mode' => $handler->mode(),
    ]);
};

$dispatcher = new EventDispatcher();
// The router's part (priority 32): the controller and the route defaults.
$dispatcher->addListener(KernelEvents::REQUEST, static function (RequestEvent $e) use ($controller): void {
    $r = $e->getRequest();
    $r->attributes->set('_controller', $controller);
    if ($r->query->has('route_mode')) {
        $r->attributes->set(SessionModeListener::ATTRIBUTE, $r->query->get('route_mode'));
    }
}, 32);
$dispatcher->addSubscriber(new SessionListener($container));
$dispatcher->addSubscriber(new SessionModeListener());
// After SessionListener saved the session (-1000): add what the save
// reported (warnings, conflicts) to the reply.
$dispatcher->addListener(KernelEvents::RESPONSE, static function (ResponseEvent $e): void {
    $r = $e->getResponse();
    if ($r instanceof JsonResponse) {
        $data = json_decode((string) $r->getContent(), true);
        $data['errors'] = $GLOBALS['__errors'];
        $data['conflicts'] = $GLOBALS['__conflicts'] ?? [];
        $data['hung'] = $GLOBALS['__hung'] ?? [];
        $r->setData($data);
    }
}, -1001);

$kernel = new HttpKernel($dispatcher, new ControllerResolver(), $requestStack, new ArgumentResolver());
$request = Request::createFromGlobals();
$response = $kernel->handle($request);
$response->send();
$kernel->terminate($request, $response);
