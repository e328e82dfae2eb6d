<?php
// CLI: installation through auto_prepend_file=src/bootstrap.php and env/ini settings only.
ob_start();
ini_set('session.use_cookies', '0');
$ok = session_start();
$_SESSION['via'] = 'bootstrap';
$h = Sessiond\SessionHandler::instance();
$id = session_id();
session_write_close();
fwrite(STDOUT, json_encode(['ok' => $ok, 'id' => $id, 'handler' => $h ? get_class($h) : null, 'mode' => $h?->options()['lock_mode']]));
