<?php

declare(strict_types=1);

namespace Sessiond\Tests\Support;

/**
 * Starts the processes the suite needs, once: a real sessiond (or the one
 * named by SESSIOND_TEST_URI) and `php -S` with PHP_CLI_SERVER_WORKERS=12
 * serving tests/app/.
 */
final class Env
{
    public static string $uri = '';
    public static int $sessiondPort = 0;
    public static int $httpPort = 0;
    public static string $tmp = '';
    /** @var list<array{0:resource,1:string}> */
    private static array $procs = [];

    public static function boot(): void
    {
        self::$tmp = sys_get_temp_dir() . '/sessiond-php-tests-' . getmypid();
        @mkdir(self::$tmp, 0700, true);
        register_shutdown_function([self::class, 'shutdown']);

        $given = getenv('SESSIOND_TEST_URI');
        if ($given !== false && $given !== '') {
            self::$uri = $given;
            self::$sessiondPort = (int) parse_url($given, PHP_URL_PORT);
        } else {
            self::startSessiond();
        }
        self::waitForPing(self::$uri, 20.0);
        self::startWebServer();
    }

    public static function sessiondBinary(): string
    {
        $bin = getenv('SESSIOND_BIN');
        if ($bin !== false && $bin !== '') {
            return $bin;
        }
        return dirname(__DIR__, 4) . '/target/debug/sessiond';
    }

    public static function freePort(): int
    {
        $s = stream_socket_server('tcp://127.0.0.1:0', $errno, $errstr);
        $name = stream_socket_get_name($s, false);
        fclose($s);
        return (int) substr($name, strrpos($name, ':') + 1);
    }

    private static function startSessiond(): void
    {
        $bin = self::sessiondBinary();
        if (!is_executable($bin)) {
            throw new \RuntimeException("sessiond binary not found at $bin (run `cargo build -p sessiond-server` in the repo root, or set SESSIOND_BIN / SESSIOND_TEST_URI)");
        }
        $help = (string) shell_exec(escapeshellarg($bin) . ' --help 2>&1');
        $dataDir = self::$tmp . '/data';
        @mkdir($dataDir, 0700, true);
        $args = [];
        if (preg_match('/^\s+serve\b/m', $help)) {
            $args[] = 'serve';
            $help .= (string) shell_exec(escapeshellarg($bin) . ' serve --help 2>&1');
        }
        // `--port 0` when the server can pick a port and print it, else a free port we pick
        $autoPort = str_contains($help, '0 picks a free one');
        $port = $autoPort ? 0 : self::freePort();
        $args[] = '--port';
        $args[] = (string) $port;
        if (str_contains($help, '--bind')) {
            array_push($args, '--bind', '127.0.0.1');
        }
        if (str_contains($help, '--data-dir')) {
            array_push($args, '--data-dir', $dataDir);
        } elseif (str_contains($help, '--dir')) {
            array_push($args, '--dir', $dataDir);
        }
        if (str_contains($help, '--metrics-addr')) {
            array_push($args, '--metrics-addr', 'off');
        }
        $extra = getenv('SESSIOND_TEST_ARGS');
        if ($extra !== false && $extra !== '') {
            $args = array_merge($args, preg_split('/\s+/', trim($extra)));
        }
        $log = self::$tmp . '/sessiond.log';
        self::spawn(array_merge([$bin], $args), $log, ['NO_COLOR' => '1']);
        if ($autoPort) {
            $deadline = microtime(true) + 30;
            while (!preg_match('/resp=[^\s:]+:(\d+)/', (string) @file_get_contents($log), $m)) {
                if (microtime(true) > $deadline) {
                    throw new \RuntimeException("sessiond did not report its port; log: $log");
                }
                usleep(50000);
            }
            $port = (int) $m[1];
        }
        self::$sessiondPort = $port;
        self::$uri = "tcp://127.0.0.1:$port";
    }

    private static function startWebServer(): void
    {
        $port = self::freePort();
        $docroot = dirname(__DIR__) . '/app';
        $env = [
            'PHP_CLI_SERVER_WORKERS' => '12',
            'SESSIOND_URI' => self::$uri,
            'SESSIOND_TEST_TMP' => self::$tmp,
        ];
        self::spawn([PHP_BINARY, '-d', 'display_errors=0', '-d', 'log_errors=1', '-d', 'error_log=' . self::$tmp . '/php-errors.log',
            '-S', "127.0.0.1:$port", '-t', $docroot], self::$tmp . '/php-server.log', $env);
        self::$httpPort = $port;
        $deadline = microtime(true) + 10;
        while (microtime(true) < $deadline) {
            $s = @stream_socket_client("tcp://127.0.0.1:$port", $e, $es, 0.2);
            if ($s) {
                fclose($s);
                return;
            }
            usleep(50000);
        }
        throw new \RuntimeException('php -S did not start; see ' . self::$tmp . '/php-server.log');
    }

    /** @param list<string> $cmd @param array<string,string> $env */
    private static function spawn(array $cmd, string $log, array $env): void
    {
        $fullEnv = array_merge(getenv(), $env);
        if (is_executable('/usr/bin/setsid')) {
            array_unshift($cmd, '/usr/bin/setsid'); // own process group, so shutdown() can stop workers too
        }
        $p = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', $log, 'a'], 2 => ['file', $log, 'a']], $pipes, null, $fullEnv);
        if (!is_resource($p)) {
            throw new \RuntimeException('cannot start ' . implode(' ', $cmd));
        }
        self::$procs[] = [$p, $log];
    }

    public static function waitForPing(string $uri, float $seconds): void
    {
        $deadline = microtime(true) + $seconds;
        $last = '';
        while (microtime(true) < $deadline) {
            try {
                $c = new \Sessiond\Connection(\Sessiond\Connection::parseUri($uri)['address'], null, 0.5, 1.0);
                if ($c->command(['PING']) === 'PONG') {
                    $c->close();
                    return;
                }
            } catch (\Throwable $t) {
                $last = $t->getMessage();
            }
            usleep(100000);
        }
        throw new \RuntimeException("sessiond at $uri did not answer PING: $last; log: " . self::$tmp . '/sessiond.log');
    }

    public static function http(): Http
    {
        return new Http('127.0.0.1', self::$httpPort);
    }

    public static function connection(): \Sessiond\Connection
    {
        return new \Sessiond\Connection(\Sessiond\Connection::parseUri(self::$uri)['address']);
    }

    public static function shutdown(): void
    {
        foreach (array_reverse(self::$procs) as [$p]) {
            $st = proc_get_status($p);
            if ($st['running']) {
                // php -S with workers: signal the whole process group
                @posix_kill(-$st['pid'], SIGTERM);
                @posix_kill($st['pid'], SIGTERM);
            }
            proc_close($p);
        }
        self::$procs = [];
        if (getenv('SESSIOND_TEST_KEEP') === false) {
            exec('rm -rf ' . escapeshellarg(self::$tmp));
        }
    }
}
