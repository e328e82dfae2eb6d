<?php
// Starts a new session, stores the JSON object in ?init=, returns the id.
require __DIR__ . '/_init.php';
session_start();
foreach (json_decode($_GET['init'] ?? '{}', true) ?: [] as $k => $v) {
    $_SESSION[$k] = $v;
}
$id = session_id();
session_write_close();
out(['id' => $id]);
