<?php

declare(strict_types=1);

/*
 * Zero-code installation, for php.ini / pool configuration:
 *
 *     auto_prepend_file = /path/to/clients/php/src/bootstrap.php
 *     sessiond.uri = "tcp://127.0.0.1:6380"        ; php.ini or php -d (read with get_cfg_var)
 *     sessiond.lock_mode = session                 ; optional, any option name works
 *
 * or environment variables (php-fpm: env[SESSIOND_URI] = tcp://127.0.0.1:6380):
 *
 *     SESSIOND_URI=tcp://127.0.0.1:6380 SESSIOND_LOCK_MODE=none
 *
 * or session.save_path = "tcp://127.0.0.1:6380?lock_mode=none" when neither is
 * set. Nothing happens when no URI is configured. See README.md.
 */
require_once __DIR__ . '/autoload.php';

if (session_status() !== PHP_SESSION_ACTIVE && Sessiond\SessionHandler::instance() === null) {
    Sessiond\SessionHandler::registerFromEnvironment();
}
