<?php
// session_start(), optionally set keys (?set[k]=v) / delete keys (?del[]=k),
// then wait for the test (?ready=, ?barrier=, ?gate=, see _init.php) or sleep
// ?sleep= ms, optionally exit, throw or die of a fatal error in the middle,
// then close.
require __DIR__ . '/_init.php';
$t0 = now_ms();
$ok = session_start(isset($_GET['rac']) ? ['read_and_close' => true] : []);
$t1 = now_ms();
$seen = $_SESSION ?? [];
signal_ready($_GET['ready'] ?? null);
await_barrier($_GET['barrier'] ?? null, (int) ($_GET['n'] ?? 0));
if ($ok) {
    foreach ($_GET['set'] ?? [] as $k => $v) {
        $_SESSION[$k] = is_numeric($v) && (string) (int) $v === $v ? (int) $v : $v;
    }
    foreach ($_GET['del'] ?? [] as $k) {
        unset($_SESSION[$k]);
    }
    if (isset($_GET['incr'])) {
        $_SESSION[$_GET['incr']] = ($_SESSION[$_GET['incr']] ?? 0) + 1;
    }
}
if ($ok && isset($_GET['reset'])) {
    session_reset(); // back to the stored data, under the lock we hold
}
await_gate($_GET['gate'] ?? null);
usleep((int) ($_GET['sleep'] ?? 0) * 1000);
if ($ok && isset($_GET['abort'])) {
    session_abort();
    out(['ok' => $ok, 'aborted' => true, 'after' => $_SESSION]);
    exit;
}
if (isset($_GET['exit'])) {
    echo json_encode(['exited' => true]);
    exit(0); // the shutdown sequence writes the session and releases the lock
}
if (isset($_GET['throw'])) {
    throw new RuntimeException('boom');
}
if (isset($_GET['fatal'])) {
    // A real fatal error (E_ERROR, not an exception): memory exhaustion.
    ini_set('memory_limit', '32M');
    $hog = str_repeat('x', 64 << 20);
}
$gc = null;
if ($ok && isset($_GET['gc'])) {
    $gc = session_gc();
}
if ($ok && isset($_GET['destroy'])) {
    $destroyed = session_destroy();
    out(['ok' => $ok, 'destroyed' => $destroyed]);
    exit;
}
$t2 = now_ms();
$wrote = $ok && session_status() === PHP_SESSION_ACTIVE ? session_write_close() : false;
$t3 = now_ms();
out(['ok' => $ok, 'id' => session_id(), 't0' => $t0, 't1' => $t1, 't2' => $t2, 't3' => $t3, 'seen' => $seen, 'wrote' => $wrote, 'gc' => $gc,
    'pid' => getmypid(), 'reused' => $handler->connection()->wasReused()]);
