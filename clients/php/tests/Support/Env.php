<?php

declare(strict_types=1);

namespace Sessiond\Tests\Support;

/**
 * Starts the processes the suite needs, once: a real sessiond (or the one
 * named by SESSIOND_TEST_URI) and a pool of single-process `php -S` servers
 * (12, or SESSIOND_TEST_WEB_SERVERS) serving tests/app/.
 */
final class Env
{
    public static string $uri = '';
    public static int $sessiondPort = 0;
    /** @var list<int> ports of the php -S processes serving tests/app/ */
    public static array $httpPorts = [];
    /** host:port of the server's Prometheus endpoint, '' when unknown (SESSIOND_TEST_URI). */
    public static string $metricsAddr = '';
    public static string $tmp = '';
    /** @var list<array{0:resource,1:string}> */
    private static array $procs = [];
    /** @var array<int, resource> port => php -S process */
    private static array $web = [];

    public static function boot(): void
    {
        // run-tests.sh passes its own temp dir (which it removes even if this
        // process is killed); without it, one of our own
        $base = getenv('SESSIOND_TEST_TMPDIR');
        self::$tmp = $base !== false && $base !== ''
            ? $base . '/suite'
            : sys_get_temp_dir() . '/sessiond-php-tests-' . getmypid();
        @mkdir(self::$tmp . '/signals', 0700, true);
        register_shutdown_function([self::class, 'shutdown']);

        $given = getenv('SESSIOND_TEST_URI');
        if ($given !== false && $given !== '') {
            self::$uri = $given;
            self::$sessiondPort = (int) parse_url($given, PHP_URL_PORT);
        } else {
            self::startSessiond();
        }
        self::waitForPing(self::$uri, 20.0);
        self::startWebServers();
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
            // a free port too; the ready line names it (metrics=ADDR)
            array_push($args, '--metrics-addr', $autoPort ? '127.0.0.1:0' : 'off');
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
            if (preg_match('/metrics=([0-9.]+:\d+)/', (string) file_get_contents($log), $mm)) {
                self::$metricsAddr = $mm[1];
            }
        }
        self::$sessiondPort = $port;
        self::$uri = "tcp://127.0.0.1:$port";
    }

    private static function startWebServers(): void
    {
        $n = max(2, (int) (getenv('SESSIOND_TEST_WEB_SERVERS') ?: 12));
        for ($i = 0; $i < $n; $i++) {
            self::$httpPorts[] = self::startWebServer();
        }
    }

    /**
     * One `php -S` process without PHP_CLI_SERVER_WORKERS: it runs one
     * request at a time. (php -S workers would not do: a worker accepts
     * further connections while its script runs and queues them behind it,
     * so "N requests in flight" would not mean "N requests running".) The
     * Http client sends each request to an idle server, so requests the test
     * has in flight at once really run at once, each in its own process.
     */
    public static function startWebServer(array $ini = []): int
    {
        // php -S cannot pick its own port and say which: take a free one, and
        // try again with another if someone grabbed it in between.
        for ($attempt = 1; ; $attempt++) {
            try {
                return self::startWebServerOn(self::freePort(), $ini);
            } catch (\RuntimeException $e) {
                if ($attempt >= 5) {
                    throw $e;
                }
            }
        }
    }

    /** @param list<string> $ini extra `-d` settings (key=value) */
    private static function startWebServerOn(int $port, array $ini = []): int
    {
        $docroot = dirname(__DIR__) . '/app';
        $env = [
            'SESSIOND_URI' => self::$uri,
            'SESSIOND_TEST_TMP' => self::$tmp,
            'SESSIOND_TEST_SERVER_TOKEN' => $token = bin2hex(random_bytes(8)),
        ];
        $log = self::$tmp . "/php-server-$port.log";
        $d = [];
        foreach ($ini as $setting) {
            array_push($d, '-d', $setting);
        }
        $p = self::spawn(array_merge([PHP_BINARY, '-d', 'display_errors=0', '-d', 'log_errors=1', '-d', 'error_log=' . self::$tmp . '/php-errors.log'],
            $d, ['-S', "127.0.0.1:$port", '-t', $docroot]), $log, $env);
        $deadline = microtime(true) + 30;
        while (microtime(true) < $deadline && proc_get_status($p)['running']) {
            // ready when *this* process answers: a bare connect could reach
            // another process that took the port, or connect to itself
            $ctx = stream_context_create(['http' => ['timeout' => 2]]);
            if (str_starts_with((string) @file_get_contents("http://127.0.0.1:$port/pid.php", false, $ctx), "$token ")) {
                self::$web[$port] = $p;
                return $port;
            }
            usleep(20000);
        }
        self::stop($p);
        throw new \RuntimeException("php -S did not start on port $port; see $log");
    }

    /** Stops a web server started by startWebServer() outside the pool. */
    public static function stopWebServer(int $port): void
    {
        if (isset(self::$web[$port])) {
            self::stop(self::$web[$port]);
            unset(self::$web[$port]);
        }
    }

    /**
     * Replaces a web server (one a test killed, or one that died): a new
     * process on a new free port takes its place in the pool. Returns the
     * new port.
     */
    public static function replaceWebServer(int $port): int
    {
        if (isset(self::$web[$port])) {
            self::stop(self::$web[$port]);
            unset(self::$web[$port]);
        }
        $new = self::startWebServer();
        $i = array_search($port, self::$httpPorts, true);
        if ($i === false) {
            self::$httpPorts[] = $new;
        } else {
            self::$httpPorts[$i] = $new;
        }
        return $new;
    }

    /**
     * Before each test: every server of the pool is alive. One that died
     * outside a test that killed it on purpose is replaced, and said so on
     * stderr with the end of its log (an infrastructure problem, not a
     * handler one, but never silently).
     */
    public static function ensureWebServers(): void
    {
        foreach (self::$httpPorts as $port) {
            $p = self::$web[$port] ?? null;
            if ($p !== null && is_resource($p) && proc_get_status($p)['running']) {
                continue;
            }
            $log = self::$tmp . "/php-server-$port.log";
            $tail = implode('', array_slice(@file($log) ?: [], -5));
            fwrite(STDERR, "\nnote: test web server on port $port died; replacing it. End of its log:\n$tail\n");
            self::replaceWebServer($port);
        }
    }

    /**
     * Starts a process in its own process group (setsid), so that stopping
     * it also stops its children (php-fpm's). Its pid goes to
     * $SESSIOND_TEST_PIDFILE when set, so run-tests.sh can kill what is left
     * if this PHP process itself is killed before its shutdown function runs.
     *
     * @param list<string> $cmd @param array<string,string> $env
     * @return resource
     */
    public static function spawn(array $cmd, string $log, array $env)
    {
        $fullEnv = array_merge(getenv(), $env);
        unset($fullEnv['PHP_CLI_SERVER_WORKERS']); // one process per php -S, see startWebServer()
        if (is_executable('/usr/bin/setsid')) {
            array_unshift($cmd, '/usr/bin/setsid'); // own process group, so stop() reaches its children too
        }
        $p = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', $log, 'a'], 2 => ['file', $log, 'a']], $pipes, null, $fullEnv);
        if (!is_resource($p)) {
            throw new \RuntimeException('cannot start ' . implode(' ', $cmd));
        }
        self::$procs[] = [$p, $log];
        $pidfile = getenv('SESSIOND_TEST_PIDFILE');
        if ($pidfile !== false && $pidfile !== '') {
            file_put_contents($pidfile, proc_get_status($p)['pid'] . "\n", FILE_APPEND);
        }
        return $p;
    }

    /** @param resource $p */
    public static function stop($p): void
    {
        $st = proc_get_status($p);
        if ($st['running']) {
            @posix_kill(-$st['pid'], SIGTERM); // the process group: the process and its children
            @posix_kill($st['pid'], SIGTERM);
            $deadline = microtime(true) + 10;
            while (proc_get_status($p)['running'] && microtime(true) < $deadline) {
                usleep(20000);
            }
            if (proc_get_status($p)['running']) {
                @posix_kill(-$st['pid'], SIGKILL);
                @posix_kill($st['pid'], SIGKILL);
            }
        }
        // children may outlive their parent: make sure the group is gone
        @posix_kill(-$st['pid'], SIGKILL);
        proc_close($p);
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

    /** nginx port in front of php-fpm, once started by fpm() (0: not yet). */
    private static int $fpmPort = 0;
    private static ?string $fpmMissing = null;

    /**
     * php-fpm (pm = static, 4 children) behind nginx, started on first use.
     * Returns an Http client for it, or null (with the reason in
     * fpmMissing()) when php-fpm or nginx is not installed.
     */
    public static function fpm(): ?Http
    {
        if (self::$fpmPort === 0 && self::$fpmMissing === null) {
            self::startFpm();
        }
        return self::$fpmPort !== 0 ? new Http('127.0.0.1', [self::$fpmPort]) : null;
    }

    public static function fpmMissing(): ?string
    {
        return self::$fpmMissing;
    }

    private static function startFpm(): void
    {
        $fpm = array_values(array_filter(array_merge(
            glob('/usr/sbin/php-fpm' . PHP_MAJOR_VERSION . '.' . PHP_MINOR_VERSION) ?: [],
            glob('/usr/sbin/php-fpm') ?: [],
            glob('/usr/local/sbin/php-fpm') ?: [],
        ), 'is_executable'));
        $nginx = array_values(array_filter(['/usr/sbin/nginx', '/usr/local/sbin/nginx'], 'is_executable'));
        if ($fpm === [] || $nginx === []) {
            self::$fpmMissing = 'php-fpm or nginx not installed (apt-get install php-fpm nginx)';
            return;
        }
        $dir = self::$tmp . '/fpm';
        @mkdir($dir, 0700, true);
        $app = dirname(__DIR__) . '/app';
        $root = function_exists('posix_getuid') && posix_getuid() === 0;
        file_put_contents("$dir/fpm.conf", implode("\n", [
            '[global]',
            "error_log = $dir/fpm.log",
            'daemonize = no',
            '[www]',
            "listen = $dir/fpm.sock",
            'listen.mode = 0666',
            // static: every child exists from the start and takes a
            // connection only when idle, so up to 4 requests really run at once
            'pm = static',
            'pm.max_children = 4',
            'clear_env = no', // SESSIOND_URI and SESSIOND_TEST_TMP from spawn()
            'catch_workers_output = yes',
            'php_admin_value[error_log] = ' . self::$tmp . '/php-errors.log',
            'php_admin_flag[display_errors] = off',
            '',
        ]));
        $token = bin2hex(random_bytes(8));
        $env = ['SESSIOND_URI' => self::$uri, 'SESSIOND_TEST_TMP' => self::$tmp, 'SESSIOND_TEST_SERVER_TOKEN' => $token];
        self::spawn(array_merge([$fpm[0]], $root ? ['-R'] : [], ['-y', "$dir/fpm.conf"]), "$dir/fpm.out", $env);
        for ($attempt = 1; $attempt <= 5; $attempt++) {
            $port = self::freePort();
            file_put_contents("$dir/nginx.conf", <<<NGINX
                daemon off;
                master_process off;
                worker_processes 1;
                pid $dir/nginx.pid;
                error_log $dir/nginx-error.log;
                events { worker_connections 256; }
                http {
                    access_log off;
                    client_body_temp_path $dir/body;
                    fastcgi_temp_path $dir/fastcgi;
                    proxy_temp_path $dir/proxy;
                    uwsgi_temp_path $dir/uwsgi;
                    scgi_temp_path $dir/scgi;
                    server {
                        listen 127.0.0.1:$port;
                        root $app;
                        location ~ \.php$ {
                            include /etc/nginx/fastcgi_params;
                            fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
                            fastcgi_pass unix:$dir/fpm.sock;
                            fastcgi_read_timeout 120s;
                        }
                    }
                }
                NGINX);
            $p = self::spawn([$nginx[0], '-p', $dir, '-c', "$dir/nginx.conf", '-e', "$dir/nginx-error.log"], "$dir/nginx.out", []);
            $deadline = microtime(true) + 30;
            while (microtime(true) < $deadline && proc_get_status($p)['running']) {
                $ctx = stream_context_create(['http' => ['timeout' => 2, 'ignore_errors' => true]]);
                if (str_starts_with((string) @file_get_contents("http://127.0.0.1:$port/pid.php", false, $ctx), "$token ")) {
                    self::$fpmPort = $port;
                    return;
                }
                usleep(50000);
            }
            self::stop($p);
        }
        throw new \RuntimeException("php-fpm behind nginx did not start; see $dir");
    }

    public static function http(): Http
    {
        return new Http('127.0.0.1', self::$httpPorts);
    }

    public static function connection(): \Sessiond\Connection
    {
        return new \Sessiond\Connection(\Sessiond\Connection::parseUri(self::$uri)['address']);
    }

    public static function shutdown(): void
    {
        foreach (array_reverse(self::$procs) as [$p]) {
            if (is_resource($p)) {
                self::stop($p);
            }
        }
        self::$procs = [];
        if (getenv('SESSIOND_TEST_KEEP') !== '1') {
            exec('rm -rf ' . escapeshellarg(self::$tmp));
        }
    }
}
