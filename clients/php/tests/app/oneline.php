<?php
// NativeHandlerTest's one-line configuration: no handler code, only
// session_start(). The handler comes from the php -S command line
// (-d session.save_handler=sessiond -d session.save_path=tcp://…).
// _signals.php is the test's coordination only (?ready=, ?gate=).
require __DIR__ . '/_signals.php';
$ok = session_start();
signal_ready($_GET['ready'] ?? null);
await_gate($_GET['gate'] ?? null);
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
$n = $_SESSION['n'];
$id = session_id();
$wrote = session_write_close();
header('Content-Type: application/json');
echo json_encode(['ok' => $ok, 'n' => $n, 'id' => $id, 'wrote' => $wrote, 'handler' => ini_get('session.save_handler'),
    'hung' => $GLOBALS['__hung'] ?? [], 'error' => error_get_last()]);
