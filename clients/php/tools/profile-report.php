<?php

declare(strict_types=1);

/*
 * Sums the samples tools/excimer-prepend.php wrote (every <dir>/*.txt) into
 * the phases of a request, in µs of wall time per request:
 *
 *     php clients/php/tools/profile-report.php /tmp/profile-dir[/cli-server|/fpm-fcgi] [--top N]
 *
 * A sample goes to the first phase whose rule matches its stack (leaf
 * first for the socket work). --top N also lists the N functions with the
 * most samples of their own.
 */

$dir = $argv[1] ?? null;
$sapi = '';
if ($dir !== null && !is_dir($dir) && is_dir(dirname($dir))) {
    // DIR/SAPI: only that SAPI's files
    $sapi = basename($dir) . '-';
    $dir = dirname($dir);
}
if ($dir === null || !is_dir($dir)) {
    fwrite(STDERR, "usage: profile-report.php DIR [--top N]\n");
    exit(2);
}
$top = ($argv[2] ?? '') === '--top' ? (int) ($argv[3] ?? 20) : 0;

/** @return string the phase of one stack (frames outermost first) */
function phase(array $frames): string
{
    $leaf = end($frames);
    $in = static function (string $pattern) use ($frames): bool {
        foreach ($frames as $f) {
            if (preg_match($pattern, $f)) {
                return true;
            }
        }
        return false;
    };
    if (preg_match('/^Sessiond\\\\Connection::(fill|writeAll|connectOne|close|peerGone|checkIdle)$|^(fread|fwrite|stream_socket_client|fclose|stream_set_blocking)$/', $leaf)) {
        return 'RESP client: socket (connect, send, wait for and read replies, close)';
    }
    if ($in('/^Sessiond\\\\Connection::/')) {
        return 'RESP client: encode requests, parse replies (PHP)';
    }
    if ($in('/^Sessiond\\\\Codec::|^Sessiond\\\\SessionHandler::(splitNested|absorbRead|delta|nestedPath|rememberQuiet|absorbCommit)$/')) {
        return 'codec: session string <-> fields, change detection';
    }
    if ($in('/^Sessiond\\\\SessionHandler::calledFrom$/')) {
        return 'call-stack inspection (debug_backtrace)';
    }
    if ($in('/autoload\.php|\/src\/[A-Za-z\/]+\.php$/')) {
        return 'class loading and linking';
    }
    if ($in('/^Sessiond\\\\SessionHandler::(register|__construct|checkOptionNames|castQuery|defaults)$/')) {
        return 'register(), options, ini setup';
    }
    if ($in('/^Sessiond\\\\SessionHandler::(onShutdown|releaseAll)$/')) {
        return 'shutdown functions';
    }
    if ($in('/^Sessiond\\\\/')) {
        return 'handler logic (open/validateId/read/write/close)';
    }
    return 'the page itself and PHP outside the handler';
}

$phases = [];
$self = [];
$requests = 0;
$period = 0;
foreach (glob("$dir/$sapi*.txt") ?: [] as $file) {
    foreach (file($file, FILE_IGNORE_NEW_LINES) ?: [] as $line) {
        if ($line === '') {
            continue;
        }
        if (str_starts_with($line, '#request')) {
            $requests++;
            $period = (int) substr($line, 9) ?: 100;
            continue;
        }
        $sp = strrpos($line, ' ');
        if ($sp === false) {
            continue;
        }
        $us = (int) substr($line, $sp + 1) * $period;
        $frames = explode(';', substr($line, 0, $sp));
        $p = phase($frames);
        $phases[$p] = ($phases[$p] ?? 0) + $us;
        $leaf = (string) end($frames);
        $self[$leaf] = ($self[$leaf] ?? 0) + $us;
    }
}
if ($requests === 0) {
    fwrite(STDERR, "no samples in $dir\n");
    exit(1);
}
arsort($phases);
$total = array_sum($phases);
printf("%d requests, %.0f µs sampled per request (wall time from the prepend file to the last shutdown function)\n\n", $requests, $total / $requests);
printf("| phase | µs per request | share |\n|---|---|---|\n");
foreach ($phases as $p => $us) {
    printf("| %s | %.1f | %.0f%% |\n", $p, $us / $requests, 100 * $us / $total);
}
if ($top > 0) {
    arsort($self);
    printf("\n| function (own time) | µs per request |\n|---|---|\n");
    foreach (array_slice($self, 0, $top, true) as $f => $us) {
        printf("| %s | %.1f |\n", $f === '' ? '(top level)' : $f, $us / $requests);
    }
}
