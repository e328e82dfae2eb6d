<?php

declare(strict_types=1);

/*
 * Every function of the sessiond extension on normal, unusual and damaged
 * input, in a loop: run under valgrind by leak-check.sh (a leak or an
 * invalid read shows there), or alone as a smoke test.
 *
 *   php -d extension=…/sessiond.so leak-loop.php [iterations]
 */

require dirname(__DIR__, 2) . '/src/autoload.php';
$reply = "*4\r\n$5\r\nsid01\r\n:3\r\n:1700000000\r\n*33\r\n";
$fields = [];
for ($i = 0; $i < 11; $i++) {
    $v = $i === 10 ? '42' : serialize(str_repeat(chr(97 + $i), 100));
    $reply .= "$2\r\nk$i\r\n:7\r\n$" . strlen($v) . "\r\n$v\r\n";
    array_push($fields, "k$i", 7, $v);
}
array_push($fields, '_sf2_attributes.a', 3, 'O:8:"stdClass":1:{s:1:"p";i:1;}', 'x', 1, 'a:1:{i:0;', 'y', 2, '99999999999999999999');
$reply .= "-CONFLICT x\r\n%2\r\n,1.5\r\n|1\r\n+a\r\n+b\r\n+c\r\n~1\r\n=8\r\ntxt:abcd\r\n";
$session = Sessiond\Codec::encodeSession(['a' => 1, 'o' => new ArrayObject([1]), 's' => str_repeat('x', 200), 'n' => [1, [2]]], 'php');
mt_srand(3);
for ($i = 0; $i < (int) ($argv[1] ?? 200); $i++) {
    $o = 0;
    while (($o2 = $o) < strlen($reply)) { sessiond_resp_parse($reply, $o); if ($o === $o2) break; }
    $o = 0; sessiond_resp_parse(substr($reply, 0, 50 + $i % 300), $o);
    sessiond_split_session($session, 'php');
    sessiond_split_session(serialize(['a' => 1, 'b' => 'x']), 'php_serialize');
    sessiond_split_session("\x01ai:1;", 'php_binary');
    sessiond_split_session('a|i:1;b|R:1;', 'php');
    sessiond_split_session(substr($session, 0, $i % strlen($session)), 'php');
    $rs = []; sessiond_absorb_fields($fields, ['_sf2_attributes'], $rs);
    $rs = []; sessiond_absorb_fields(['k', 1, 'O:1:"X":0:{', 'k.x', 1, 'i:1;'], ['k'], $rs);
    sessiond_resp_encode([['SESSION.COMMIT', 'sid', 'TTL', 1440, 1.5, true, null], ['PING']]);
    $m = $reply; $m[mt_rand(0, strlen($m)-1)] = chr(mt_rand(0,255)); $o = 0; sessiond_resp_parse($m, $o);
}
echo "done\n";
