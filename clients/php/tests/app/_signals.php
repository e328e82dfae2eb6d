<?php

declare(strict_types=1);

// Helpers of the test apps (plain PHP, Symfony and Laravel): the JSON reply
// and the coordination with the test through files.

function out(array $data): void
{
    header('Content-Type: application/json');
    $data['errors'] = $GLOBALS['__errors'];
    $data['conflicts'] = $GLOBALS['__conflicts'] ?? [];
    $data['conflict_args'] = $GLOBALS['__conflict_args'] ?? [];
    $data['hung'] = $GLOBALS['__hung'] ?? [];
    echo json_encode($data, JSON_PARTIAL_OUTPUT_ON_ERROR);
}

function now_ms(): float
{
    return round(microtime(true) * 1000, 1);
}

/*
 * Coordination with the test, through files in the suite's temp dir, so
 * tests order requests by what they did (not by sleeping and hoping the
 * machine is fast enough). Every wait has a hang guard; running into it is
 * recorded in the response ('hung') and fails the test.
 */
function signal_file(string $name, string $suffix): string
{
    $dir = (getenv('SESSIOND_TEST_TMP') ?: sys_get_temp_dir()) . '/signals';
    if (!preg_match('/^[A-Za-z0-9_-]+$/', $name)) {
        throw new InvalidArgumentException("bad signal name $name");
    }
    return "$dir/$name.$suffix";
}

/** Tells the test this request got this far (?ready=NAME). */
function signal_ready(?string $name): void
{
    if ($name !== null && $name !== '') {
        // write, then rename: the test must never see the file without the
        // pid in it (posix_kill(0, …) would hit its own process group)
        $file = signal_file($name, 'ready');
        file_put_contents("$file.tmp", (string) getmypid());
        rename("$file.tmp", $file);
    }
}

/** Waits until the test opens the gate (?gate=NAME). */
function await_gate(?string $name): void
{
    if ($name === null || $name === '') {
        return;
    }
    $file = signal_file($name, 'go');
    $deadline = microtime(true) + 30;
    while (!file_exists($file)) {
        if (microtime(true) > $deadline) {
            $GLOBALS['__hung'][] = "gate $name";
            return;
        }
        usleep(5000);
    }
}

/** Waits until $n requests arrived at barrier NAME (?barrier=NAME&n=N). */
function await_barrier(?string $name, int $n): void
{
    if ($name === null || $name === '') {
        return;
    }
    file_put_contents(signal_file($name . '-' . getmypid() . '-' . bin2hex(random_bytes(4)), 'arrived'), '');
    $pattern = dirname(signal_file($name, 'x')) . "/$name-*.arrived";
    $deadline = microtime(true) + 30;
    while (count(glob($pattern)) < $n) {
        if (microtime(true) > $deadline) {
            $GLOBALS['__hung'][] = "barrier $name";
            return;
        }
        usleep(5000);
    }
}
