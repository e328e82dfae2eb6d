<?php

/*
 * Profiles every request of a PHP server with Excimer (Debian: php-excimer),
 * a sampling profiler: `auto_prepend_file` this file and set
 * SESSIOND_PROFILE_OUT to a directory; each request appends its samples, as
 * collapsed stacks ("a;b;c count"), to <dir>/<pid>.txt. tools/profile.sh
 * drives a server with it and tools/profile-report.php sums the stacks.
 *
 * The sampling period is drawn at random per request (50–150 µs of wall
 * time), so a phase that always runs at the same offset from the start of
 * the request is not always missed or always hit.
 */

$sessiondProfileDir = getenv('SESSIOND_PROFILE_OUT');
if (is_string($sessiondProfileDir) && $sessiondProfileDir !== '' && class_exists('ExcimerProfiler')) {
    $sessiondProfiler = new ExcimerProfiler();
    $sessiondProfiler->setPeriod(mt_rand(50, 150) / 1e6);
    $sessiondProfiler->setEventType(EXCIMER_REAL);
    $sessiondProfiler->start();
    // Three shutdown passes: the handler's own shutdown work (the
    // session_write_close PHP queues, its lock release queued behind that)
    // runs before the samples are written.
    $flush = static function (int $pass) use (&$flush, $sessiondProfiler, $sessiondProfileDir): void {
        if ($pass < 3) {
            register_shutdown_function($flush, $pass + 1);
            return;
        }
        $sessiondProfiler->stop();
        $collapsed = $sessiondProfiler->getLog()->formatCollapsed();
        file_put_contents($sessiondProfileDir . '/' . getmypid() . '.txt', "#request\n" . $collapsed, FILE_APPEND);
    };
    register_shutdown_function($flush, 1);
}
