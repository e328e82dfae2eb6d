<?php

declare(strict_types=1);

namespace Racelab;

require __DIR__ . '/handlers.php';
require __DIR__ . '/backends.php';
require __DIR__ . '/fakes.php';
require __DIR__ . '/scenarios.php';

/** Thrown when the session cannot be had: the request stops, as a real app would. */
final class SessionUnavailable extends \RuntimeException
{
}

/**
 * One request's measurements: when PHP started, where it waited for the
 * session (session_start(), and the per-key API's lock waits), what went
 * wrong. Times are milliseconds from PHP's start of the request, so the
 * driver can place them on its own clock without trusting ours.
 */
final class Ctx
{
    /** Milliseconds of simulated work so far (work() adds to it). */
    public static float $workMs = 0.0;

    public string $h = '';
    /** @var list<array{0:float,1:float}> */
    public array $waits = [];
    /** @var list<string> */
    public array $errors = [];
    /** @var list<string> */
    public array $notes = [];
    public int $conflicts = 0;
    /** How this request reaches its session (set by start()). */
    public ?Backend $session = null;

    public function __construct(public readonly float $t0)
    {
    }

    public function ms(float $t): float
    {
        return round(($t - $this->t0) * 1000, 2);
    }

    /**
     * session_start() through handler $this->h, timed. $role: 'write' or
     * 'read' (a request that only reads; the sessiond modes use it).
     */
    public function start(string $role, array $options = []): void
    {
        $this->session = Handlers::backend($this->h);
        $a = microtime(true);
        $ok = $this->session->start($role, !empty($options['read_and_close']));
        $b = microtime(true);
        $this->waits[] = [$this->ms($a), $this->ms($b)];
        if (!$ok) {
            throw new SessionUnavailable('session_start() failed');
        }
    }

    /** The session's attributes, changed in place; close() saves them. */
    public function &attrs(): array
    {
        return $this->session->attrs();
    }

    public function sid(): ?string
    {
        return $this->session?->id();
    }

    /** session_write_close() (or the framework's save), timed with the waits (a commit can wait too). */
    public function close(): void
    {
        if ($this->session !== null && !$this->session->close()) {
            $this->errors[] = 'session_write_close() failed';
        }
    }

    /** The server field of attribute $key (the per-key API works on fields). */
    public function field(string $key): string
    {
        return $this->session->field($key);
    }

    /**
     * Runs a per-key API call and records the time it spent waiting: its
     * duration minus the simulated work done inside its callback.
     */
    public function timed(callable $fn): mixed
    {
        $a = microtime(true);
        $w = self::$workMs;
        try {
            return $fn();
        } finally {
            $b = microtime(true);
            $waited = max(0.0, ($b - $a) * 1000 - (self::$workMs - $w));
            $this->waits[] = [$this->ms($a), $this->ms($a) + round($waited, 2)];
        }
    }

    public function note(string $message): void
    {
        if (str_contains($message, 'conflict')) {
            $this->conflicts++;
        }
        // session_write_close() returns true even when the handler's write
        // failed (PHP 8.2 only warns): the request's changes were dropped,
        // which is a failed request, not a note.
        if (str_contains($message, 'Failed to write session data')) {
            $this->errors[] = $message;
        }
        $this->notes[] = $message;
    }
}

/** Simulated work: the request is busy (a query, an API call) for $ms. */
function work(int $ms): void
{
    if ($ms > 0) {
        usleep($ms * 1000);
        Ctx::$workMs += $ms;
    }
}

/** The per-key API of the sessiond handler (the *sessiond-api handlers only). */
function api(Ctx $c): \Sessiond\Session
{
    return $c->session->sessiond()->session();
}

function param(string $name, string $default = ''): string
{
    $v = $_GET[$name] ?? $default;
    return is_string($v) ? $v : $default;
}

function intParam(string $name, int $default = 0): int
{
    return (int) param($name, (string) $default);
}

function main(float $t0): void
{
    $c = new Ctx($t0);
    set_error_handler(static function (int $no, string $str) use ($c): bool {
        $c->note($str);
        return true;
    });
    $ep = param('ep', 'info');
    $c->h = param('h', Handlers::env('RACELAB_HANDLER') ?? '');
    $result = [];
    try {
        $result = match ($ep) {
            'info' => info(),
            'setup' => setup($c, param('sc')),
            'inspect' => inspect($c),
            'counter' => counter($c),
            'parallel' => parallel($c),
            'search' => search($c),
            'position' => position($c),
            'pay' => pay($c),
            'oauth' => oauth($c),
            'write' => slowWrite($c),
            'read' => read($c),
            default => throw new \InvalidArgumentException("unknown endpoint '$ep'"),
        };
        // Write the session before answering, so the request's end on the
        // driver's clock includes the write (and the lock release).
        $c->close();
    } catch (\Throwable $e) {
        $c->errors[] = ($e instanceof SessionUnavailable ? '' : get_class($e) . ': ') . $e->getMessage();
        $c->session?->abort();
    }
    $end = microtime(true);
    if ($c->errors !== []) {
        http_response_code(500);
    }
    header('Content-Type: application/json');
    header('Cache-Control: no-store');
    echo json_encode([
        'ok' => $c->errors === [],
        'ep' => $ep,
        'h' => $c->h,
        'sid' => $c->sid(),
        't0' => $t0,
        'dur_ms' => $c->ms($end),
        'waits' => $c->waits,
        'errors' => $c->errors,
        'notes' => $c->notes,
        'conflicts' => $c->conflicts,
        'result' => $result,
    ], JSON_UNESCAPED_SLASHES | JSON_PARTIAL_OUTPUT_ON_ERROR), "\n";
}

function info(): array
{
    $missing = [];
    foreach (array_keys(Handlers::ALL) as $id) {
        if (($why = Handlers::missing($id)) !== null) {
            $missing[$id] = $why;
        }
    }
    return [
        'sapi' => PHP_SAPI,
        'php' => PHP_VERSION,
        'server' => $_SERVER['SERVER_SOFTWARE'] ?? null,
        'extensions' => [
            'redis' => phpversion('redis') ?: null,
            'memcached' => phpversion('memcached') ?: null,
        ],
        'handlers' => Handlers::available(),
        'missing' => $missing,
    ];
}
