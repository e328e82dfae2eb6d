<?php
// One request that starts its session twice (write early, reopen later),
// as pages that release the lock before slow work do: the id and the data
// must stay, for a session this request created as for an existing one.
require __DIR__ . '/_init.php';
$ok1 = session_start();
$first = session_id();
$_SESSION['before'] = 1;
session_write_close();
$ok2 = session_start();
$second = session_id();
$seen = $_SESSION;
$_SESSION['after'] = 2;
session_write_close();
out(['ok' => $ok1 && $ok2, 'first' => $first, 'second' => $second, 'seen' => $seen]);
