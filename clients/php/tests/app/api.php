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

/**
 * Waits until the server no longer shows this request's lock on $key (its
 * lease ran out: ?lease=MS): the evidence that the lock is lost, instead of
 * sleeping past the lease. Bounded by the hang guard.
 */
function await_key_lock_expired(string $id, string $key): void
{
    $c = new Sessiond\Connection(Sessiond\Connection::parseUri(getenv('SESSIOND_URI'))['address'], null, 2.0, 5.0, false, 'watcher');
    $deadline = microtime(true) + 30;
    while (microtime(true) < $deadline) {
        $held = false;
        foreach ($c->command(['LOCK.INFO', $id]) ?? [] as $l) {
            $held = $held || ($l[1] === 'key' && $l[2] === $key);
        }
        if (!$held) {
            $c->close();
            return;
        }
        usleep(5000);
    }
    $GLOBALS['__hung'][] = "key lock on $key never expired";
}

if (str_ends_with((string) ($_GET['op'] ?? ''), '_expire')) {
    // The key lock is lost while the request holds it: the exception must name the key.
    try {
        switch ($_GET['op']) {
            case 'sync_expire':
                $s->synchronized($key, static function ($cur) use ($s, $key) {
                    await_key_lock_expired($s->id(), $key);
                    return 'late';
                });
                break;
            case 'lock_expire':
                $s->lock($key);
                $_SESSION[$key] = 'late';
                await_key_lock_expired($s->id(), $key);
                $s->unlock($key);
                break;
            case 'once_expire':
                $s->once($key, static function () use ($s, $key) {
                    await_key_lock_expired($s->id(), $key);
                    return 'late';
                });
                break;
        }
        $result = 'no exception';
    } catch (Sessiond\Exception\LockLostException $e) {
        $result = ['class' => get_class($e), 'message' => $e->getMessage()];
    }
    session_abort();
    out(['ok' => $ok, 'result' => $result]);
    exit;
}

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
