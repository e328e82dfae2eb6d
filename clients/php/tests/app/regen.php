<?php
// session_regenerate_id() in the middle of a request.
require __DIR__ . '/_init.php';
session_start();
$old = session_id();
foreach ($_GET['set'] ?? [] as $k => $v) {
    $_SESSION[$k] = $v;
}
usleep((int) ($_GET['before'] ?? 0) * 1000);
$r = session_regenerate_id(!empty($_GET['delete']));
$new = session_id();
foreach ($_GET['after'] ?? [] as $k => $v) {
    $_SESSION[$k] = $v;
}
usleep((int) ($_GET['sleep'] ?? 0) * 1000);
session_write_close();
out(['ok' => $r, 'old' => $old, 'new' => $new]);
