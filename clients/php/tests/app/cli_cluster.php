<?php
// CLI worker for ClusterFailoverTest: argv = URI session-id count outfile.
// Runs `count` requests one after another, each session_start() (session
// mode: under the session lock), $_SESSION['n']++, session_write_close(),
// and appends one JSON line per request to outfile: whether it started,
// the fencing token it held, the value it read, whether the write
// succeeded, and the warnings it got.
require dirname(__DIR__, 2) . '/src/autoload.php';
[$_, $uri, $id, $count, $out] = $argv;
$errors = [];
set_error_handler(static function (int $no, string $str) use (&$errors): bool {
    $errors[] = $str;
    return true;
});
ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '0');
$opts = [
    'connect_timeout' => 1,
    'timeout' => 5,
    'lock_wait_ms' => 15000,
    'strict' => false,
];
if (getenv('SESSIOND_PHP_NATIVE') === '1') {
    // run-tests.sh's native pass: the extension's save handler, same options
    if (ini_set('session.save_handler', 'sessiond') === false) {
        fwrite(STDERR, "SESSIOND_PHP_NATIVE=1 but the sessiond extension's save handler is not there\n");
        exit(1);
    }
    ini_set('session.save_path', $uri . '?' . http_build_query($opts));
    $token = static function (string $id): ?int {
        $info = sessiond_native_info();
        return $info['locked_id'] === $id ? $info['token'] : null;
    };
} else {
    $h = Sessiond\SessionHandler::register($uri, $opts);
    $token = static fn (string $id): ?int => $h->sessionToken($id);
}
for ($i = 0; $i < (int) $count; $i++) {
    $errors = [];
    session_id($id);
    $started = session_start();
    $rec = ['i' => $i, 'started' => $started, 'token' => null, 'before' => null, 'written' => null];
    if ($started) {
        $rec['token'] = $token($id);
        $rec['before'] = (int) ($_SESSION['n'] ?? 0);
        $_SESSION['n'] = $rec['before'] + 1;
        $rec['written'] = session_write_close();
    }
    $rec['errors'] = $errors;
    file_put_contents($out, json_encode($rec) . "\n", FILE_APPEND | LOCK_EX);
    usleep(20000);
}
