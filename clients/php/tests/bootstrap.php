<?php

declare(strict_types=1);

require dirname(__DIR__) . '/src/autoload.php';
require __DIR__ . '/Support/Http.php';
require __DIR__ . '/Support/Env.php';
require __DIR__ . '/Support/TestCase.php';

Sessiond\Tests\Support\Env::boot();
