<?php
// CLI: session_start() with whatever session.save_handler and save_path the
// command line gave (-d), no handler code. argv[1]: a session id to use.
// Prints whether it started, the warnings (level, message) and $_SESSION.
ob_start();
$errors = [];
set_error_handler(static function (int $no, string $str) use (&$errors): bool {
    $errors[] = [$no, $str];
    return true;
});
ini_set('session.use_cookies', '0');
if (isset($argv[1])) {
    session_id($argv[1]);
}
$ok = session_start();
fwrite(STDOUT, json_encode(['ok' => $ok, 'errors' => $errors, 'session' => $_SESSION ?? null, 'handler' => ini_get('session.save_handler')]));
