<?php

declare(strict_types=1);

// Front controller of the race lab's PHP app: GET /?ep=ENDPOINT&h=HANDLER&…
// The time is taken first so the reported timeline starts where PHP starts.
$racelabT0 = microtime(true);
require dirname(__DIR__) . '/lib/app.php';
Racelab\main($racelabT0);
