<?php

/*
 * Profiles every request of a PHP server with Excimer (Debian: php-excimer),
 * a sampling profiler: `auto_prepend_file` this file and set
 * SESSIOND_PROFILE_OUT to a directory; each request appends its samples, as
 * collapsed stacks ("a;b;c count") after a "#request <period µs>" line, to
 * <dir>/<SAPI>-<pid>.txt (cli-server for `php -S`, fpm-fcgi for php-fpm). tools/profile-report.php sums them into phases; see
 * docs/benchmarks.md ("PHP handler: where the time goes") for a run.
 *
 * The sampling period is drawn at random per request (50–150 µs of wall
 * time), so a phase that always runs at the same offset from the start of
 * the request is not always missed or always hit.
 */

$sessiondProfileDir = getenv('SESSIOND_PROFILE_OUT');
if (is_string($sessiondProfileDir) && $sessiondProfileDir !== '' && class_exists('ExcimerProfiler')) {
    $sessiondProfiler = new ExcimerProfiler();
    $sessiondProfilePeriodUs = mt_rand(50, 150);
    $sessiondProfiler->setPeriod($sessiondProfilePeriodUs / 1e6);
    // wall time by default; SESSIOND_PROFILE_CLOCK=cpu: CPU time of this process
    $sessiondProfiler->setEventType(getenv('SESSIOND_PROFILE_CLOCK') === 'cpu' ? EXCIMER_CPU : EXCIMER_REAL);
    $sessiondProfiler->start();
    // Three shutdown passes: the handler's own shutdown work (the
    // session_write_close PHP queues, its lock release queued behind that)
    // runs before the samples are written.
    $flush = static function (int $pass) use (&$flush, $sessiondProfiler, $sessiondProfileDir, $sessiondProfilePeriodUs): void {
        if ($pass < 3) {
            register_shutdown_function($flush, $pass + 1);
            return;
        }
        $sessiondProfiler->stop();
        $collapsed = $sessiondProfiler->getLog()->formatCollapsed();
        file_put_contents($sessiondProfileDir . '/' . PHP_SAPI . '-' . getmypid() . '.txt', "#request $sessiondProfilePeriodUs\n" . $collapsed, FILE_APPEND);
    };
    register_shutdown_function($flush, 1);
}
