<?php

declare(strict_types=1);

/*
 * opcache preload file: compiles and links the handler's classes once, when
 * PHP starts, instead of at every request.
 *
 *     opcache.preload = /path/to/clients/php/preload.php
 *     opcache.preload_user = www-data    ; needed when PHP starts as root (php-fpm does)
 *
 * Framework glue (src/Laravel, src/Symfony) is not preloaded: it needs the
 * framework's own classes. The autoloader (src/autoload.php) still finds
 * everything, preloaded or not. See README.md "Performance".
 */

$dir = __DIR__ . '/src';
foreach ([
    'Exception/SessiondException.php',
    'Exception/ConnectionException.php',
    'Exception/OutcomeUnknownException.php',
    'Exception/ServerException.php',
    'Exception/LockLostException.php',
    'Exception/LockTimeoutException.php',
    'DeleteMarker.php',
    'Codec.php',
    'Connection.php',
    'Session.php',
    'SessionHandler.php',
] as $file) {
    require_once "$dir/$file";
}
