<?php
// session_regenerate_id() in the middle of a request. ?ready=/?gate= before
// the regeneration, ?ready2=/?gate2= after it (see _init.php).
require __DIR__ . '/_init.php';
session_start();
$old = session_id();
foreach ($_GET['set'] ?? [] as $k => $v) {
    $_SESSION[$k] = $v;
}
signal_ready($_GET['ready'] ?? null);
await_gate($_GET['gate'] ?? null);
usleep((int) ($_GET['before'] ?? 0) * 1000);
$r = session_regenerate_id(!empty($_GET['delete']));
$new = session_id();
foreach ($_GET['after'] ?? [] as $k => $v) {
    $_SESSION[$k] = $v;
}
signal_ready($_GET['ready2'] ?? null);
await_gate($_GET['gate2'] ?? null);
usleep((int) ($_GET['sleep'] ?? 0) * 1000);
session_write_close();
out(['ok' => $r, 'old' => $old, 'new' => $new]);
