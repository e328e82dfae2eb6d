<?php
// Round trip of rich values through ?ser=php|php_serialize|php_binary.
require __DIR__ . '/_init.php';
session_start();
if (($_GET['op'] ?? '') === 'set') {
    $o = new ArrayObject(['x' => 1]);
    $_SESSION['int'] = 42;
    $_SESSION['neg'] = -7;
    $_SESSION['str'] = "line\nwith | pipe; and \"quotes\" }";
    $_SESSION['digits'] = '0042';
    $_SESSION['float'] = 1.25;
    $_SESSION['bool'] = false;
    $_SESSION['null'] = null;
    $_SESSION['list'] = [1, 'two', [3]];
    $_SESSION['obj'] = $o;
    $_SESSION['utf8'] = "h\u{e9}llo \u{1F600}";
    $_SESSION['bin'] = "\x00\xff\x01";
}
$dump = [];
foreach ($_SESSION as $k => $v) {
    $dump[$k] = base64_encode(serialize($v));
}
session_write_close();
out(['dump' => $dump]);
