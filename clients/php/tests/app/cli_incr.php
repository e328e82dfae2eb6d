<?php
// CLI worker for RetryTest: argv = URI session-id outfile. One request in
// 'none' lock mode: session_start(), $session->increment('n'), close; writes
// one JSON line: the value increment() returned and the warnings.
require dirname(__DIR__, 2) . '/src/autoload.php';
[$_, $uri, $id, $out] = $argv;
$errors = [];
set_error_handler(static function (int $no, string $str) use (&$errors): bool {
    $errors[] = $str;
    return true;
});
ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '0');
$h = Sessiond\SessionHandler::register($uri, [
    'connect_timeout' => 1,
    'timeout' => 5,
    'lock_mode' => 'none',
    'strict' => false,
]);
session_id($id);
$rec = ['started' => session_start(), 'value' => null, 'error' => null];
try {
    $rec['value'] = $h->session()->increment('n');
} catch (\Throwable $t) {
    $rec['error'] = get_class($t) . ': ' . $t->getMessage();
}
session_write_close();
$rec['errors'] = $errors;
file_put_contents($out, json_encode($rec) . "\n", FILE_APPEND | LOCK_EX);
