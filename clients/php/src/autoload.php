<?php

declare(strict_types=1);

/*
 * Composer-free autoloader: `require '/path/to/clients/php/src/autoload.php';`
 * maps Sessiond\Foo\Bar to src/Foo/Bar.php (the same PSR-4 layout composer.json
 * declares), so the package works without running composer.
 */
spl_autoload_register(static function (string $class): void {
    if (strncmp($class, 'Sessiond\\', 9) !== 0) {
        return;
    }
    $file = __DIR__ . '/' . str_replace('\\', '/', substr($class, 9)) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
