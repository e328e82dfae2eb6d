<?php
// NativeHandlerTest: the same data written and read through the PHP class
// or the extension's native save handler (?native=0|1; see _init.php), with
// ?ser= and ?mode= as everywhere.
//   ?op=write   a fixed rich data set tagged ?tag=, with split keys
//               (_sf2_attributes elements) and an lww key (_sf2_meta)
//   ?op=update  changes and adds a split element, removes another, changes
//               and removes top-level keys
//   ?op=read    nothing
// Replies with the session as read ('seen') and as written ('dump'), each
// value serialize()d and base64'd.
require __DIR__ . '/_init.php';
$ok = session_start();
function dump_session(): array
{
    $d = [];
    foreach ($_SESSION ?? [] as $k => $v) {
        if ($k === '_sf2_attributes' && is_array($v)) {
            ksort($v); // a split key's elements come back in the server's field order
        }
        $d[$k] = base64_encode(serialize($v));
    }
    ksort($d);
    return $d;
}
$seen = dump_session();
$tag = (string) ($_GET['tag'] ?? 't');
switch ($_GET['op'] ?? 'read') {
    case 'write':
        $_SESSION['int'] = 42;
        $_SESSION['neg'] = -7;
        $_SESSION['str'] = "$tag line\nwith | pipe; and \"quotes\" }";
        $_SESSION['digits'] = '0042';
        $_SESSION['float'] = 1.25;
        $_SESSION['bool'] = false;
        $_SESSION['null'] = null;
        $_SESSION['list'] = [1, 'two', [3]];
        $_SESSION['obj'] = new ArrayObject(['x' => 1]);
        $_SESSION['utf8'] = "h\u{e9}llo \u{1F600}";
        $_SESSION['bin'] = "\x00\xff\x01";
        $_SESSION['_sf2_attributes'] = ['user' => "alice-$tag", 'cart' => [1, 2, 3], 'n' => 5, 'gone' => 'soon'];
        $_SESSION['_sf2_meta'] = ['u' => 1700000000, 'c' => 1700000000, 'l' => 0];
        break;
    case 'update':
        $_SESSION['_sf2_attributes']['user'] = "bob-$tag";
        $_SESSION['_sf2_attributes']['added'] = ['new' => true];
        unset($_SESSION['_sf2_attributes']['gone']);
        $_SESSION['int']++;
        unset($_SESSION['neg']);
        $_SESSION['_sf2_meta']['u']++;
        break;
}
$after = dump_session();
$wrote = session_write_close();
out(['ok' => $ok, 'id' => session_id(), 'seen' => $seen, 'dump' => $after, 'wrote' => $wrote,
    'native' => ini_get('session.save_handler') === 'sessiond']);
