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
if (isset($strictOverride)) {
    $options['strict'] = $strictOverride;
    ini_set('session.use_strict_mode', $strictOverride ? '1' : '0');
}
$options['on_conflict'] = static function (array $keys, array $details, string $id): ?string {
    $GLOBALS['__conflicts'][] = $keys;
    return null;
};
$handler = Sessiond\SessionHandler::register(getenv('SESSIOND_URI') ?: 'tcp://127.0.0.1:6380', $options);
if (isset($_GET['setmode'])) {
    Sessiond\SessionHandler::setMode((string) $_GET['setmode']);
}

require __DIR__ . '/_signals.php';
