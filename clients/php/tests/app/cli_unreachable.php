<?php
// CLI: a server that does not answer: session_start() must return false with a warning.
ob_start();
require dirname(__DIR__, 2) . '/src/autoload.php';
$errors = [];
set_error_handler(static function (int $no, string $str) use (&$errors): bool {
    $errors[] = [$no, $str];
    return true;
});
ini_set('session.use_cookies', '0');
$opts = ['connect_timeout' => 1, 'timeout' => 1, 'lock_mode' => $argv[2] ?? 'session'];
if (getenv('SESSIOND_PHP_NATIVE') === '1') {
    // run-tests.sh's native pass: the extension's save handler, same options
    ini_set('session.use_strict_mode', '1');
    if (ini_set('session.save_handler', 'sessiond') === false) {
        fwrite(STDERR, "SESSIOND_PHP_NATIVE=1 but the sessiond extension's save handler is not there\n");
        exit(1);
    }
    ini_set('session.save_path', $argv[1] . '?' . http_build_query($opts));
} else {
    Sessiond\SessionHandler::register($argv[1], $opts);
}
if (isset($argv[3])) {
    session_id($argv[3]);
}
$ok = session_start();
fwrite(STDOUT, json_encode(['ok' => $ok, 'errors' => $errors, 'session' => $_SESSION ?? null]));
