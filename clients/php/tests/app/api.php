<?php
// The per-key API: ?op=incr|sync|once|cas|lock and parameters.
require __DIR__ . '/_init.php';
$ok = session_start();
$s = $handler->session();
if (!empty($_GET['close_first'])) {
    session_write_close(); // API after the session is closed (no session lock held)
}
$key = (string) ($_GET['key'] ?? 'n');
$result = null;
switch ($_GET['op'] ?? '') {
    case 'incr':
        $result = $s->increment($key, (int) ($_GET['by'] ?? 1));
        break;
    case 'sync':
        $result = $s->synchronized($key, static function ($cur) {
            usleep((int) ($_GET['sleep'] ?? 0) * 1000);
            return ($cur ?? 0) + 1;
        });
        break;
    case 'lock':
        $s->lock($key);
        $_SESSION[$key] = ($_SESSION[$key] ?? 0) + 1;
        usleep((int) ($_GET['sleep'] ?? 0) * 1000);
        $s->unlock($key);
        $result = $_SESSION[$key];
        break;
    case 'lock_forget':
        // takes a key lock and never unlocks it (a bug in the app), maybe
        // dying with an exception: the handler's shutdown function releases it
        $s->lock($key);
        $_SESSION[$key] = 1;
        if (!empty($_GET['throw'])) {
            throw new RuntimeException('boom with a key lock held');
        }
        $result = getmypid();
        break;
    case 'once':
        // like real code: only a request that finds no usable value asks for a new one
        $cur = $_SESSION[$key] ?? null;
        if ($cur !== null && $cur !== 'expired' && !isset($_GET['ifver'])) {
            $result = $cur;
            break;
        }
        $result = $s->once($key, static function ($old) {
            usleep((int) ($_GET['sleep'] ?? 200) * 1000);
            file_put_contents((string) $_GET['log'], getmypid() . "\n", FILE_APPEND | LOCK_EX);
            return 'token-' . bin2hex(random_bytes(4));
        }, isset($_GET['ifver']) ? (int) $_GET['ifver'] : null);
        break;
    case 'cas':
        $result = $s->compareAndSet($key, json_decode((string) $_GET['expected'], true), json_decode((string) $_GET['new'], true));
        break;
}
$visible = $_SESSION[$key] ?? null;
$version = $s->version($key);
if (session_status() === PHP_SESSION_ACTIVE) {
    foreach ($_GET['set'] ?? [] as $k => $v) {
        $_SESSION[$k] = $v;
    }
    session_write_close();
}
out(['ok' => $ok, 'result' => $result, 'visible' => $visible, 'version' => $version]);
