<?php
// CLI: take the session lock of session argv[1], report it, then hang
// (the test SIGKILLs this process).
ob_start();
$_GET = ['mode' => 'session', 'set' => [], 'persistent' => (int) ($argv[2] ?? 0)];
require __DIR__ . '/_init.php';
ini_set('session.use_cookies', '0');
session_id($argv[1]);
$ok = session_start();
$_SESSION['cli'] = 'was here';
fwrite(STDOUT, ($ok ? 'locked' : 'failed ' . implode(' | ', $GLOBALS['__errors'])) . "\n");
fflush(STDOUT);
sleep(60);
