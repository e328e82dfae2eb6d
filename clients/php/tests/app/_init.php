<?php

declare(strict_types=1);

// Shared setup of the test apps: install the handler from the query string.
require dirname(__DIR__, 2) . '/src/autoload.php';

$GLOBALS['__errors'] = [];
set_error_handler(static function (int $no, string $str): bool {
    $GLOBALS['__errors'][] = $str;
    $log = getenv('SESSIOND_TEST_TMP');
    if ($log) {
        file_put_contents("$log/app-errors.log", date('H:i:s ') . ($_SERVER['REQUEST_URI'] ?? 'cli') . " $str\n", FILE_APPEND);
    }
    return true;
});

if (isset($_GET['ser'])) {
    ini_set('session.serialize_handler', (string) $_GET['ser']);
}
if (isset($_GET['maxlife'])) {
    ini_set('session.gc_maxlifetime', (string) $_GET['maxlife']);
}
if (isset($_GET['strict'])) {
    $strictOverride = (bool) $_GET['strict'];
}
if (isset($_GET['lazy'])) {
    ini_set('session.lazy_write', (string) $_GET['lazy']);
}
$options = [
    'lock_mode' => $_GET['mode'] ?? 'session',
    'lock_wait_ms' => (int) ($_GET['wait'] ?? 30000),
    'persistent' => !empty($_GET['persistent']),
];
if (isset($_GET['policy'])) {
    $options['conflict_policy'] = (string) $_GET['policy'];
}
if (isset($_GET['lifetime'])) {
    $options['lifetime'] = (int) $_GET['lifetime'];
}
if (isset($_GET['lease'])) {
    $options['lease_ms'] = (int) $_GET['lease'];
}
if (isset($_GET['grace'])) {
    $options['regenerate_grace'] = (int) $_GET['grace'];
}
// NativeHandlerTest: the other options, to see that each reaches the handler
foreach (['split' => 'split_keys', 'lww' => 'lww_keys'] as $param => $option) {
    if (isset($_GET[$param])) {
        $options[$option] = $_GET[$param] === '' ? [] : explode(',', (string) $_GET[$param]);
    }
}
if (isset($_GET['ttl'])) {
    $options['ttl'] = (int) $_GET['ttl'];
}
if (isset($_GET['follow'])) {
    $options['follow_regenerate'] = (bool) $_GET['follow'];
}
if (isset($_GET['name'])) {
    $options['name'] = (string) $_GET['name'];
}
if (isset($strictOverride)) {
    $options['strict'] = $strictOverride;
    ini_set('session.use_strict_mode', $strictOverride ? '1' : '0');
}
// ?choose=mine|theirs: what the callback answers (default: null, the policy)
$options['on_conflict'] = static function (array $keys, array $details, string $id): ?string {
    $GLOBALS['__conflicts'][] = $keys;
    $GLOBALS['__conflict_args'][] = ['keys' => $keys, 'details' => $details, 'id' => $id];
    return isset($_GET['choose']) ? (string) $_GET['choose'] : null;
};
// ?native=1|0 chooses for one request (NativeHandlerTest's interop tests)
if (isset($_GET['native']) ? (bool) $_GET['native'] : getenv('SESSIOND_PHP_NATIVE') === '1') {
    // run-tests.sh's native pass: the same options, given to the C save
    // handler of the extension (session.save_handler=sessiond) as the save
    // path's query string instead of to the PHP class.
    $handler = sessiond_test_native_handler(getenv('SESSIOND_URI') ?: 'tcp://127.0.0.1:6380', $options);
    if (isset($_GET['setmode'])) {
        sessiond_set_mode((string) $_GET['setmode']);
    }
} else {
    $handler = Sessiond\SessionHandler::register(getenv('SESSIOND_URI') ?: 'tcp://127.0.0.1:6380', $options);
    if (isset($_GET['setmode'])) {
        Sessiond\SessionHandler::setMode((string) $_GET['setmode']);
    }
}

require __DIR__ . '/_signals.php';

/**
 * Installs the extension's native save handler with $options (the PHP
 * class's option names; on_conflict goes to sessiond_set_conflict_handler())
 * and returns a stand-in for the class's handler object with what the test
 * apps use of it: connection()->wasReused(). Anything else of the class
 * (the per-key API, ...) is an error that says so: those apps are not in
 * the native pass.
 */
function sessiond_test_native_handler(string $uri, array $options): object
{
    if (!function_exists('sessiond_native_info')) {
        throw new LogicException('SESSIOND_PHP_NATIVE=1 but the sessiond extension (with its native save handler) is not loaded');
    }
    $onConflict = $options['on_conflict'] ?? null;
    unset($options['on_conflict']);
    $query = [];
    foreach ($options as $k => $v) {
        $query[$k] = is_bool($v) ? ($v ? '1' : '0') : (is_array($v) ? implode(',', $v) : (string) $v);
    }
    // The class sets session.use_strict_mode=1 itself (its strict option);
    // the native handler cannot, so the ini does (as clients/php/README.md says).
    if (!array_key_exists('strict', $options) || $options['strict']) {
        ini_set('session.use_strict_mode', '1');
    }
    ini_set('session.save_handler', 'sessiond');
    ini_set('session.save_path', $uri . '?' . http_build_query($query));
    sessiond_set_conflict_handler($onConflict);
    return new class {
        public function connection(): object
        {
            return new class {
                public function wasReused(): bool
                {
                    return (bool) (sessiond_native_info()['reused'] ?? false);
                }
            };
        }

        public function __call(string $name, array $args): never
        {
            throw new LogicException("the native save handler has no $name(): this app needs the PHP class (not in the native pass)");
        }
    };
}
