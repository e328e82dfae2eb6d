<?php

declare(strict_types=1);

namespace Sessiond;

use Sessiond\Exception\ConnectionException;
use Sessiond\Exception\OutcomeUnknownException;
use Sessiond\Exception\ServerException;
use Sessiond\Exception\SessiondException;

/**
 * PHP session save handler for sessiond.
 *
 *     Sessiond\SessionHandler::register('tcp://127.0.0.1:6380', ['lock_mode' => 'session']);
 *
 * Each top-level $_SESSION key is one server field with its own version, and
 * only changed or removed keys are sent back. Lock modes (option 'lock_mode',
 * per request SessionHandler::setMode()):
 *
 *  - session  (default) the session lock is taken at read (LOCK.ACQUIRE …
 *             returns the data in the same round trip) and released at
 *             close; the delta goes as one SESSION.COMMIT … FENCE t UNLOCK.
 *  - readonly never waits, never writes (SESSION.READ; write() is a no-op).
 *  - none     no lock; the delta is conditional (IFVER <version read>) so
 *             requests changing different keys all survive; a same-key
 *             conflict is reported and resolved by 'conflict_policy'.
 *
 * See clients/php/README.md for every option and for how PHP's call
 * sequences (regenerate, destroy, strict mode, lazy_write) map to commands.
 */
class SessionHandler implements \SessionHandlerInterface, \SessionIdInterface, \SessionUpdateTimestampHandlerInterface
{
    public const MODES = ['session', 'readonly', 'none'];

    /** Server session ids: [A-Za-z0-9,._:-]{1,128} (docs/protocol.md). */
    private const ID_PATTERN = '/^[A-Za-z0-9,._:-]{1,128}$/';

    private const DEFAULTS = [
        'lock_mode' => 'session',
        'lock_wait_ms' => 30000,
        'lease_ms' => null,           // LEASE for session/key locks; null: server's --lock-max-hold bounds it
        'connect_timeout' => 2.0,     // seconds
        'timeout' => 5.0,             // seconds to wait for a reply (lock waits add their WAIT)
        'failover_timeout' => 10.0,   // seconds one request may spend failing over between a cluster's nodes
        'persistent' => false,        // one socket per worker kept across requests; RESET at its first use in a request
        'password' => null,
        'user' => null,               // the user the password is for (AUTH user pass); null: `default`
        'tls' => [],                  // for tls:// URIs: PHP `ssl` context options (cafile, peer_name, local_cert, local_pk, verify_peer…)
        'name' => null,               // CLIENT SETNAME, shown in LOCK.INFO / `sessiond locks`
        'ttl' => null,                // idle TTL in seconds; null: session.gc_maxlifetime
        'lifetime' => null,           // absolute lifetime of new sessions in seconds; null: none
        'regenerate_grace' => null,   // seconds the old id stays an alias; null: 0 for session_regenerate_id(true), else the server default (30 s)
        'conflict_policy' => 'theirs',// none mode: 'theirs' or 'mine'
        'on_conflict' => null,        // callable(array $keys, array $details, string $sessionId): ?string
        'strict' => true,             // set session.use_strict_mode=1 on register()
        'follow_regenerate' => true,  // re-send the cookie when a request arrives with an alias id
        // Top-level keys whose array value is stored one server field per
        // element ("<key>.<element>"), so concurrent requests that change
        // different elements do not conflict: Symfony's attribute and flash bags.
        'split_keys' => ['_sf2_attributes', '_symfony_flashes'],
        // Keys written without a version condition (last writer wins, never
        // a conflict): framework bookkeeping that changes on every request,
        // such as Symfony's metadata bag.
        'lww_keys' => ['_sf2_meta'],
    ];

    private static ?self $instance = null;
    /**
     * Whether the sessiond C extension (clients/php/ext) does absorbRead()'s
     * loop (the same, in C). Set at the first construction.
     *
     * @internal tests switch it off to compare both
     */
    public static ?bool $native = null;
    private static ?string $modeOverride = null;

    /** @var array<string, mixed> */
    protected array $opt;
    private string $display;
    protected Connection $conn;
    protected Connection $lockConn;

    protected string $mode = 'session';
    /** The id PHP uses for the current session (set by read()). */
    protected ?string $id = null;
    /** The session's id on the server (differs from $id while $id is a regenerate alias). */
    protected ?string $serverId = null;
    /** Session lock: fencing token and the id it was acquired on. */
    protected ?int $token = null;
    protected ?string $lockedId = null;
    /** True while session_regenerate_id() hands the old session over to create_sid(). */
    private bool $regenerating = false;
    /** session_regenerate_id(true) asked for the old session to go. */
    private bool $deleteOld = false;
    private bool $sessionMissing = false;
    /** read() may create this id (a new session of this request): a missing session is not news. */
    private bool $fresh = false;
    /** @var array<string, array{0:int,1:string}> key => [version, canonical encoding] as last seen */
    private array $readSet = [];
    /** @var array<string, true> ids this request created (strict mode must not reject them) */
    private array $createdIds = [];
    /**
     * The id validateId() was last asked about since open(): under strict
     * mode PHP validates every id it did not make itself (a cookie, a URL, a
     * session_id() call) before read(). An id read() gets that was not
     * validated was therefore generated by PHP in this request (when the
     * handler is hidden behind a proxy that has no create_sid(), such as
     * Symfony's SessionHandlerProxy), and may be created.
     */
    private ?string $validatedId = null;
    /** @var array<string, int|string> key => token of a key lock held through the API ('session' = covered by the session lock) */
    private array $keyLocks = [];
    private bool $active = false;
    private bool $broken = false;
    private ?Session $facade = null;
    /**
     * What validateId() already asked for read(), in the same round trip as
     * its SESSION.EXISTS: [id, command, reply]. Under strict mode PHP
     * validates the id the client sent, then reads it; sending both at once
     * saves a round trip per request. A granted lock is recorded in $token
     * at once, so it is released like any other if read() never comes.
     *
     * @var array{0:string,1:list<string|int>,2:mixed}|null (the reply may be a ServerException, or an OutcomeUnknownException when the connection was lost after sending)
     */
    private ?array $prefetched = null;

    /**
     * @param string $uri tcp://[[user]:password@]host:port[?option=value&…], tls://… or unix:///path
     * @param array<string, mixed> $options see DEFAULTS; options given here win over URI query options
     */
    public function __construct(string $uri, array $options = [])
    {
        self::$native ??= \function_exists('sessiond_absorb_fields');
        $u = Connection::parseUri($uri);
        self::checkOptionNames(array_keys($u['query']), 'in the URI query string');
        self::checkOptionNames(array_keys($options), 'passed to ' . static::class);
        $opt = array_merge(static::defaults(), self::castQuery($u['query']), $options);
        if ($u['password'] !== null && $opt['password'] === null) {
            $opt['password'] = $u['password'];
        }
        if ($u['user'] !== null && $opt['user'] === null) {
            $opt['user'] = $u['user'];
        }
        if (!is_array($opt['tls'])) {
            throw new \InvalidArgumentException('sessiond: tls must be an array of PHP ssl context options');
        }
        if (!in_array($opt['lock_mode'], self::MODES, true)) {
            throw new \InvalidArgumentException("sessiond: unknown lock_mode '{$opt['lock_mode']}' (session, readonly or none)");
        }
        if (!in_array($opt['conflict_policy'], ['theirs', 'mine'], true)) {
            throw new \InvalidArgumentException("sessiond: unknown conflict_policy '{$opt['conflict_policy']}' (theirs or mine)");
        }
        foreach (['split_keys', 'lww_keys'] as $k) {
            if (!is_array($opt[$k])) {
                throw new \InvalidArgumentException("sessiond: $k must be a list of key names");
            }
            foreach ($opt[$k] as $x) {
                if (!is_string($x) || $x === '') {
                    throw new \InvalidArgumentException("sessiond: $k must be a list of key names");
                }
            }
        }
        if ($opt['on_conflict'] !== null && !is_callable($opt['on_conflict'])) {
            throw new \InvalidArgumentException('sessiond: on_conflict must be callable');
        }
        $this->opt = $opt;
        $this->display = $u['display'];
        // One connection for everything. With 'persistent' it outlives the
        // request: its first use in the next request sends RESET ahead of
        // that request's first command, which releases whatever it still
        // holds (see Connection). Locks stay tied to the socket, so a worker
        // that dies frees them as before.
        $this->lockConn = new Connection(
            $u['address'],
            $opt['password'],
            (float) $opt['connect_timeout'],
            (float) $opt['timeout'],
            (bool) $opt['persistent'],
            $opt['name'],
            (float) $opt['failover_timeout'],
            $opt['user'],
            $opt['tls'],
        );
        // While it holds a lock, a TRYAGAIN is retried on the same connection.
        $this->lockConn->setPinned(fn (): bool => $this->token !== null || $this->keyLocks !== []);
        $this->conn = $this->lockConn;
        $this->mode = $opt['lock_mode'];
        register_shutdown_function([$this, 'onShutdown']);
    }

    /**
     * The options and their defaults (see DEFAULTS); a subclass for a
     * framework may change defaults, never add names.
     *
     * @return array<string, mixed>
     */
    protected static function defaults(): array
    {
        return self::DEFAULTS;
    }

    /**
     * A misspelt option would otherwise be ignored silently (and the app run
     * with a default it did not ask for): refuse it, naming the valid ones.
     *
     * @param list<int|string> $names
     */
    private static function checkOptionNames(array $names, string $where): void
    {
        // the common case (every name known) without building arrays
        $known = true;
        foreach ($names as $n) {
            if (!array_key_exists((string) $n, self::DEFAULTS)) {
                $known = false;
                break;
            }
        }
        if ($known) {
            return;
        }
        $unknown = array_values(array_diff(array_map('strval', $names), array_keys(self::DEFAULTS)));
        if ($unknown !== []) {
            throw new \InvalidArgumentException(sprintf(
                'sessiond: unknown option%s %s %s; valid options: %s',
                count($unknown) > 1 ? 's' : '',
                implode(', ', array_map(static fn ($n) => "'$n'", $unknown)),
                $where,
                implode(', ', array_keys(self::DEFAULTS)),
            ));
        }
    }

    /**
     * Installs the handler: `Sessiond\SessionHandler::register('tcp://127.0.0.1:6380');`
     *
     * @param array<string, mixed> $options
     */
    public static function register(string $uri, array $options = []): static
    {
        $h = new static($uri, $options);
        if ($h->opt['strict'] && session_status() !== PHP_SESSION_ACTIVE) {
            ini_set('session.use_strict_mode', '1');
        }
        if (!session_set_save_handler($h, true)) {
            throw new SessiondException('sessiond: session_set_save_handler() failed (is a session already active?)');
        }
        self::$instance = $h;
        return $h;
    }

    /**
     * Installs the handler from the environment or php.ini, for an
     * auto_prepend_file bootstrap (src/bootstrap.php). Returns null when no
     * server URI is configured. See README "Configuration without code".
     */
    public static function registerFromEnvironment(): ?static
    {
        $get = static function (string $name): ?string {
            $env = getenv('SESSIOND_' . strtoupper($name));
            if ($env !== false && $env !== '') {
                return $env;
            }
            $cfg = get_cfg_var('sessiond.' . $name);
            if ($cfg !== false && $cfg !== '') {
                return (string) $cfg;
            }
            return null;
        };
        $uri = $get('uri');
        if ($uri === null) {
            $path = (string) ini_get('session.save_path');
            if (preg_match('#^(tcp|tls|unix|sessiond)://#', $path)) {
                $uri = $path;
            }
        }
        if ($uri === null) {
            return null;
        }
        $options = [];
        foreach (array_keys(self::DEFAULTS) as $k) {
            if ($k === 'on_conflict' || $k === 'tls') {
                continue; // code only (tls: also the URI's tls[cafile]=… query)
            }
            $v = $get($k);
            if ($v !== null) {
                $options[$k] = $v;
            }
        }
        return static::register($uri, self::castQuery($options));
    }

    /** The handler installed by register(), if any. */
    public static function instance(): ?self
    {
        return self::$instance;
    }

    /**
     * Chooses the lock mode for the sessions this request starts from now
     * on (call before session_start()); null goes back to the 'lock_mode' option.
     */
    public static function setMode(?string $mode): void
    {
        if ($mode !== null && !in_array($mode, self::MODES, true)) {
            throw new \InvalidArgumentException("sessiond: unknown lock mode '$mode' (session, readonly or none)");
        }
        if (session_status() === PHP_SESSION_ACTIVE) {
            throw new \LogicException('sessiond: setMode() must be called before session_start()');
        }
        self::$modeOverride = $mode;
    }

    /** The mode of the current (or next) session of this request. */
    public function mode(): string
    {
        return $this->active ? $this->mode : (self::$modeOverride ?? $this->opt['lock_mode']);
    }

    /** The per-key API for the current session. */
    public function session(): Session
    {
        return $this->facade ??= new Session($this);
    }

    /** @return array<string, mixed> */
    public function options(): array
    {
        return $this->opt;
    }

    // ---------------------------------------------------------------------
    // SessionHandlerInterface
    // ---------------------------------------------------------------------

    public function open(string $path, string $name): bool
    {
        $this->mode = self::$modeOverride ?? $this->opt['lock_mode'];
        $this->broken = false;
        $this->validatedId = null;
        $this->prefetched = null;
        try {
            $this->conn->connect();
            if ($this->mode === 'session') {
                $this->lockConn->connect();
            }
        } catch (SessiondException $e) {
            $this->warn($this->cause($e));
            $this->broken = true;
            return false;
        }
        return true;
    }

    public function close(): bool
    {
        $this->active = false;
        $this->prefetched = null;
        if ($this->regenerating) {
            return true; // create_sid() moves the session and releases the old lock
        }
        if ($this->token !== null) {
            $this->releaseSessionLock();
        }
        return true;
    }

    public function read(string $id): string|false
    {
        $this->active = false;
        $this->sessionMissing = false;
        if ($this->broken) {
            $this->warn('sessiond: no connection to the server; session not started');
            return false;
        }
        if (!preg_match(self::ID_PATTERN, $id)) {
            $this->releaseSessionLock();
            $this->warn('sessiond: session id contains characters outside [A-Za-z0-9,._:-] or is longer than 128; enable session.use_strict_mode so PHP replaces it');
            return false;
        }
        if ($this->id !== null && $id !== $this->id && !isset($this->createdIds[$id]) && self::calledFrom('session_regenerate_id')) {
            // session_regenerate_id() without a create_sid() call (the
            // handler sits behind a proxy without SessionIdInterface, such
            // as Symfony's): PHP made the new id itself. Move the session to
            // exactly that id (SESSION.REGENERATE … TO id), with the same
            // grace and lock hand-over as when create_sid() does it.
            try {
                $this->regenerate($id);
            } catch (SessiondException $e) {
                $this->warn($this->cause($e) . '; session not regenerated');
                return false;
            }
        }
        if ($this->token !== null && $this->lockedId !== $id) {
            $this->releaseSessionLock();
        }
        $handler = $this->serializeHandler();
        if (!in_array($handler, Codec::HANDLERS, true)) {
            $this->warn("sessiond: session.serialize_handler '$handler' is not supported (use php, php_serialize or php_binary)");
            return false;
        }
        // Strict mode: only ids this request made may be created. Those are
        // the ids of create_sid() / SESSION.REGENERATE, and ids PHP
        // generated itself, which never went through validateId(): an id
        // the client sent is always validated first, and validateId()
        // refuses unknown ones, so PHP replaces them (no fixation).
        $create = !$this->strict() || isset($this->createdIds[$id])
            || ($this->validatedId !== $id && !$this->sentByClient($id));
        $this->fresh = $create && $this->strict();
        // validateId() sent the first command already (see $prefetched)
        $pre = $this->prefetched;
        $this->prefetched = null;
        if ($pre !== null && ($pre[0] !== $id || $create)) {
            $pre = null;
        }
        // No leader for the prefetched command (a cluster electing one):
        // send it again below, where TRYAGAIN is retried as usual.
        $tryAgain = $pre !== null && $pre[2] instanceof ServerException && $pre[2]->is('TRYAGAIN');
        if ($tryAgain && $this->mode !== 'session') {
            $pre = null;
        }
        try {
            if ($pre !== null && $this->mode !== 'session') {
                if ($pre[2] instanceof ServerException) {
                    throw $pre[2];
                }
                $reply = $pre[2];
            } elseif ($this->mode === 'readonly') {
                $reply = $this->conn->command(['SESSION.READ', $id]);
            } elseif ($this->mode === 'none') {
                $cmd = ['SESSION.READ', $id];
                if ($create) {
                    $cmd[] = 'CREATE';
                    array_push($cmd, ...$this->lifetimeArgs());
                }
                array_push($cmd, 'TTL', $this->ttl());
                $reply = $this->conn->command($cmd);
            } elseif ($pre !== null && $this->token !== null && $this->lockedId === $id && is_array($pre[2])) {
                // granted with validateId()'s SESSION.EXISTS
                $reply = $pre[2][1];
            } elseif ($this->token !== null) {
                // session_reset() or a second read under the lock we hold
                $reply = $this->lockConn->command(['SESSION.READ', $id]);
            } else {
                $wait = max(0, (int) $this->opt['lock_wait_ms']);
                $cmd = $this->acquireCommand($id);
                // the acquire validateId() sent did not get the lock: its
                // answer, and the same REQID if it must be sent again
                $answered = null;
                if ($pre !== null) {
                    $cmd = $pre[1];
                    $answered = $tryAgain ? null : $pre[2];
                }
                $pre = [];
                if ($create) {
                    $cmd[] = 'CREATE';
                    if ($this->opt['lifetime'] !== null) {
                        // LOCK.ACQUIRE … CREATE cannot set a lifetime: create
                        // the session with it first, in the same round trip
                        // (KEYS with a key that cannot be a PHP session key
                        // keeps the reply small).
                        $pre[] = array_merge(['SESSION.READ', $id, 'CREATE', 'TTL', $this->ttl()], $this->lifetimeArgs(), ['KEYS', "\0"]);
                    }
                }
                $retryUntil = microtime(true) + (float) $this->opt['failover_timeout'];
                try {
                    for ($attempt = 1; ; $attempt++) {
                        try {
                            if ($answered !== null) {
                                $replies = [$answered];
                                $answered = null;
                                if ($replies[0] instanceof OutcomeUnknownException) {
                                    throw $replies[0]; // retried below with the same REQID
                                }
                            } else {
                                $replies = $this->lockConn->pipeline([...$pre, $cmd], $wait / 1000);
                            }
                            foreach ($replies as $x) {
                                if ($x instanceof ServerException) {
                                    throw $x;
                                }
                            }
                            $r = end($replies);
                            break;
                        } catch (OutcomeUnknownException | ServerException $e) {
                            $unknown = $e instanceof OutcomeUnknownException || $e->is('UNKNOWN');
                            if (!$unknown || microtime(true) >= $retryUntil) {
                                throw $e;
                            }
                            // Same REQID again (after the connection was lost:
                            // from the next node): adopts what the lost one got.
                            usleep(min(500000, 25000 << min($attempt, 5)));
                        }
                    }
                } catch (OutcomeUnknownException | ServerException $e) {
                    if ($e instanceof OutcomeUnknownException || $e->is('UNKNOWN')) {
                        // The acquire may have been granted, to this
                        // connection: close it so the server releases
                        // whatever it holds, and never go on unlocked.
                        $this->lockConn->close();
                        $this->warn(sprintf(
                            'sessiond: the outcome of the lock request on session %s is unknown (%s); the lock is not held; session not started',
                            self::shortId($id),
                            $e->getMessage(),
                        ));
                        return false;
                    }
                    if ($e->is('TIMEOUT') || $e->is('DEADLOCK')) {
                        $this->warn(sprintf(
                            'sessiond: could not acquire the lock on session %s within %d ms (%s); session not started',
                            self::shortId($id),
                            $wait,
                            $e->getMessage(),
                        ));
                        return false;
                    }
                    throw $e;
                }
                if (!is_array($r) || count($r) !== 2 || !is_int($r[0])) {
                    throw new ConnectionException('sessiond: protocol error: unexpected LOCK.ACQUIRE reply');
                }
                $this->token = $r[0];
                $this->lockedId = $id;
                $reply = $r[1];
            }
        } catch (SessiondException $e) {
            $this->warn($this->cause($e) . '; session not started');
            return false;
        }

        try {
            // Inside session_regenerate_id() PHP discards what read() returns
            // and keeps its own $_SESSION: keep the read-set that matches it
            // (field versions survive SESSION.REGENERATE), or keys written by
            // concurrent requests meanwhile would look "deleted" at write().
            $regen = self::calledFrom('session_regenerate_id');
            $saved = $this->readSet;
            $data = $this->absorbRead($id, $reply);
            if ($regen) {
                $this->readSet = $saved;
            }
            $out = Codec::encodeSession($data, $handler);
        } catch (SessiondException $e) {
            $this->warn($this->cause($e) . '; session not started');
            $this->releaseSessionLock();
            return false;
        }
        $this->id = $id;
        $this->active = true;
        return $out;
    }

    public function write(string $id, string $data): bool
    {
        if ($this->mode === 'readonly') {
            return true;
        }
        $regen = self::calledFrom('session_regenerate_id');
        if ($regen) {
            $this->regenerating = true;
        }
        $handler = $this->serializeHandler();
        $new = in_array($handler, Codec::HANDLERS, true) ? Codec::splitSession($data, $handler) : null;
        if ($new === null) {
            $this->warn('sessiond: cannot decode the session data PHP handed to write(); nothing was written');
            if (!$regen) {
                $this->releaseSessionLock();
            }
            return false;
        }
        if ($data === '' && isset($_SESSION) && is_array($_SESSION) && $_SESSION !== []) {
            // PHP encodes to '' when encoding fails (e.g. a key containing '|'
            // with serialize_handler=php): never turn that into "delete all".
            $this->warn('sessiond: PHP could not encode $_SESSION (a key containing "|" with serialize_handler=php?); nothing was written');
            if (!$regen) {
                $this->releaseSessionLock();
            }
            return false;
        }
        $new = $this->splitNested($new);
        if ($id !== $this->id) {
            $this->readSet = [];
        }
        $ops = $this->delta($new);

        try {
            if ($this->mode === 'session' && $this->token !== null) {
                return $this->writeLocked($id, $ops, $regen);
            }
            if ($this->mode === 'session' && $this->token === null) {
                // Must not happen (read() fails without the lock); never write unlocked.
                $this->warn('sessiond: write() without the session lock; nothing was written');
                return false;
            }
            if ($ops === []) {
                $this->conn->command(['SESSION.TOUCH', $id, 'TTL', $this->ttl()]);
                return true;
            }
            return $this->commitConditional($id, $ops);
        } catch (SessiondException $e) {
            if ($e instanceof OutcomeUnknownException || ($e instanceof ServerException && $e->is('UNKNOWN'))) {
                $this->warn(sprintf(
                    'sessiond: the outcome of saving session %s is unknown (%s): the changes may or may not have been saved',
                    self::shortId($id),
                    $e->getMessage(),
                ));
            } else {
                $this->warn($this->cause($e) . '; session data not saved');
            }
            if (!$regen) {
                $this->releaseSessionLock();
            }
            return false;
        }
    }

    public function destroy(string $id): bool
    {
        if (self::calledFrom('session_regenerate_id')) {
            // session_regenerate_id(true): create_sid() moves the session
            // to a new id and, unless regenerate_grace says otherwise, the
            // old id ends at once (GRACE 0), as asked: this is the call a
            // login makes, and an old id that kept answering would hand
            // the logged-in session to whoever planted it (fixation). See
            // README.
            $this->regenerating = true;
            $this->deleteOld = true;
            return true;
        }
        try {
            $conn = $this->token !== null ? $this->lockConn : $this->conn;
            $cmds = [['SESSION.DESTROY', $id]];
            if ($this->token !== null) {
                $cmds[] = ['LOCK.RELEASE', $this->lockedId, $this->token];
            }
            $r = $conn->pipeline($cmds);
            $this->token = null;
            $this->lockedId = null;
            $this->readSet = [];
            if ($r[0] instanceof ServerException) {
                throw $r[0];
            }
            return true;
        } catch (SessiondException $e) {
            $this->warn($this->cause($e) . '; session not destroyed');
            return false;
        }
    }

    public function gc(int $max_lifetime): int|false
    {
        return 0; // the server expires sessions itself
    }

    // ---------------------------------------------------------------------
    // SessionIdInterface / SessionUpdateTimestampHandlerInterface
    // ---------------------------------------------------------------------

    public function create_sid(): string
    {
        try {
            if ($this->regenerating || (self::calledFrom('session_regenerate_id') && $this->id !== null)) {
                return $this->regenerate();
            }
            $cmd = ['SESSION.NEW', 'TTL', $this->ttl()];
            array_push($cmd, ...$this->lifetimeArgs());
            $id = $this->conn->command($cmd);
            if (!is_string($id) || !preg_match(self::ID_PATTERN, $id)) {
                throw new ConnectionException('sessiond: protocol error: unexpected SESSION.NEW reply');
            }
            $this->createdIds[$id] = true;
            return $id;
        } catch (SessiondException $e) {
            // PHP requires a string here; read() will fail on the broken
            // connection, so session_start() returns false.
            $this->warn($this->cause($e));
            $this->broken = true;
            return bin2hex(random_bytes(20));
        }
    }

    public function validateId(string $id): bool
    {
        $this->validatedId = $id;
        if (isset($this->createdIds[$id]) && self::calledFrom('session_regenerate_id')) {
            // session_regenerate_id() asks whether the id it just got from
            // create_sid() collides: created by this request, it does not.
            // (Anywhere else, such as a second session_start() of this
            // request, the id is validated like any other: it exists.)
            return false;
        }
        if (!preg_match(self::ID_PATTERN, $id)) {
            return false;
        }
        $this->prefetched = null;
        $next = $this->readCommand($id);
        try {
            if ($next === null) {
                return $this->conn->command(['SESSION.EXISTS', $id]) === 1;
            }
            $wait = $this->mode === 'session' ? max(0, (int) $this->opt['lock_wait_ms']) / 1000 : 0.0;
            [$exists, $reply] = $this->conn->pipeline([['SESSION.EXISTS', $id], $next], $wait, true);
            if ($exists instanceof ServerException) {
                throw $exists;
            }
        } catch (OutcomeUnknownException $e) {
            // The connection was lost after the acquire went out (a cluster
            // failing over): whether it was granted is unknown. Ask as
            // before, EXISTS alone (a read: it fails over to the next
            // node); read() then sends the same acquire, whose REQID adopts
            // whatever the lost one got.
            try {
                $exists = $this->conn->command(['SESSION.EXISTS', $id]) === 1;
            } catch (SessiondException $e2) {
                $this->warn($this->cause($e2));
                $this->broken = true;
                return false;
            }
            if ($exists && $this->mode === 'session') {
                $this->prefetched = [$id, $next, $e];
            }
            return $exists;
        } catch (SessiondException $e) {
            $this->warn($this->cause($e));
            $this->broken = true;
            return false;
        }
        $granted = $this->mode === 'session' && is_array($reply) && count($reply) === 2 && is_int($reply[0]);
        if ($granted) {
            // ours now, whatever comes next (released by read() on another
            // id, by close(), or at the end of the request)
            $this->token = $reply[0];
            $this->lockedId = $id;
        }
        if ($exists === 1) {
            $this->prefetched = [$id, $next, $reply];
            return true;
        }
        if ($granted) {
            $this->releaseSessionLock(); // created between the two commands: not ours to use
        }
        return false;
    }

    /**
     * The command read($id) sends first when it starts an existing session
     * that validateId() let through, or null when read() does more than
     * that (a regenerate in progress, a lock already held): then
     * validateId() asks only SESSION.EXISTS.
     *
     * @return list<string|int>|null
     */
    private function readCommand(string $id): ?array
    {
        if ($this->active || $this->regenerating || $this->token !== null || $this->broken) {
            return null;
        }
        if ($this->mode === 'readonly') {
            return ['SESSION.READ', $id];
        }
        if ($this->mode === 'none') {
            return ['SESSION.READ', $id, 'TTL', $this->ttl()];
        }
        return $this->acquireCommand($id);
    }

    /**
     * Sends a commit with a request id (REQID); when its outcome is unknown
     * (the connection was lost after sending, or UNKNOWN from a cluster
     * whose leader failed mid-request) sends it again with the same id, on
     * the next node, until failover_timeout: the server answers a repeat
     * with the first answer and never applies it twice (a fenced commit
     * that went in and released the lock is told it succeeded, not that
     * its token is stale). Also used by Session for INCR and CAS.
     *
     * @internal
     * @param list<string|int> $cmd
     */
    public function commandOnce(Connection $conn, array $cmd): mixed
    {
        $cmd[] = 'REQID';
        $cmd[] = 'php-' . bin2hex(random_bytes(12));
        $retryUntil = microtime(true) + (float) $this->opt['failover_timeout'];
        for ($attempt = 1; ; $attempt++) {
            try {
                return $conn->command($cmd);
            } catch (OutcomeUnknownException | ServerException $e) {
                $unknown = $e instanceof OutcomeUnknownException || $e->is('UNKNOWN');
                if (!$unknown || microtime(true) >= $retryUntil) {
                    throw $e;
                }
                usleep(min(500000, 25000 << min($attempt, 5)));
            }
        }
    }

    /** @return list<string|int> LOCK.ACQUIRE of the session lock (without CREATE) */
    private function acquireCommand(string $id): array
    {
        $cmd = ['LOCK.ACQUIRE', $id, 'WAIT', max(0, (int) $this->opt['lock_wait_ms'])];
        if ($this->opt['lease_ms'] !== null) {
            array_push($cmd, 'LEASE', (int) $this->opt['lease_ms']);
        }
        // A request id: when the acquire's outcome is unknown (a cluster
        // failing over), sending it again with the same id adopts the grant
        // or the wait it made, never a second one.
        array_push($cmd, 'REQID', 'php-' . bin2hex(random_bytes(12)));
        return $cmd;
    }

    public function updateTimestamp(string $id, string $data): bool
    {
        if ($this->mode === 'readonly') {
            return true;
        }
        try {
            if ($this->mode === 'session' && $this->token !== null) {
                $r = $this->lockConn->pipeline([
                    ['SESSION.TOUCH', $id, 'TTL', $this->ttl()],
                    ['LOCK.RELEASE', $this->lockedId, $this->token],
                ]);
                $this->token = null;
                $this->lockedId = null;
                foreach ($r as $x) {
                    if ($x instanceof ServerException) {
                        throw $x;
                    }
                }
                return true;
            }
            $this->conn->command(['SESSION.TOUCH', $id, 'TTL', $this->ttl()]);
            return true;
        } catch (SessiondException $e) {
            $this->warn($this->cause($e));
            $this->releaseSessionLock();
            return false;
        }
    }

    /**
     * Moves a session to an id the caller chose (SESSION.REGENERATE old TO
     * new), for session storages that pick the new id themselves and move
     * the stored data with their own call, such as Drupal's SessionManager
     * (its migrateStoredSession()). Call it between saving the old session
     * and starting the new one. $grace: seconds the old id keeps answering
     * (null: the regenerate_grace option, else the server default; 0 ends it
     * at once, as a login should). Returns false when the old session no
     * longer exists (then the new id starts empty).
     */
    public function moveSession(string $oldId, string $newId, ?int $grace = null): bool
    {
        if (!preg_match(self::ID_PATTERN, $oldId) || !preg_match(self::ID_PATTERN, $newId)) {
            throw new \InvalidArgumentException('sessiond: session ids must match [A-Za-z0-9,._:-]{1,128}');
        }
        $cmd = ['SESSION.REGENERATE', $oldId, 'TO', $newId];
        $grace ??= $this->opt['regenerate_grace'];
        if ($grace !== null) {
            array_push($cmd, 'GRACE', (int) $grace);
        }
        try {
            $this->conn->connect();
            $this->conn->command($cmd);
        } catch (ServerException $e) {
            if ($e->is('NOSESSION')) {
                $this->createdIds[$newId] = true;
                return false;
            }
            throw $e;
        }
        // the new id exists now: validateId() accepts it under strict mode
        return true;
    }

    // ---------------------------------------------------------------------
    // Shutdown
    // ---------------------------------------------------------------------

    /**
     * First shutdown pass: queue the real cleanup behind every other
     * shutdown function, including the session_write_close() that
     * session_set_save_handler() queues.
     *
     * @internal
     */
    public function onShutdown(): void
    {
        register_shutdown_function([$this, 'releaseAll']);
    }

    /**
     * Releases every lock this request still holds (uncaught exception,
     * fatal error, exit, forgotten unlock()). A per-request socket is closed
     * here (PHP would close it at the end of the request anyway, and the
     * server release the locks); a persistent one gets RESET when it holds
     * anything (and RESET again at its first use in the next request).
     *
     * @internal
     */
    public function releaseAll(): void
    {
        if (session_status() === PHP_SESSION_ACTIVE && $this->active) {
            // Still open: the session_write_close() that
            // session_set_save_handler() queues may run after us (it is
            // queued when its own registration runs). Write it now, like PHP
            // would, before the locks and the lock connection go away.
            @session_write_close();
        }
        $cmds = [];
        foreach ($this->keyLocks as $key => $tok) {
            if (is_int($tok) && $this->id !== null) {
                $cmds[] = ['LOCK.RELEASE', $this->id, 'KEY', (string) $key, $tok];
            }
        }
        $this->keyLocks = [];
        if ($this->token !== null) {
            $cmds[] = ['LOCK.RELEASE', $this->lockedId, $this->token];
            $this->token = null;
            $this->lockedId = null;
        }
        $persistent = $this->lockConn->isPersistent();
        if ($cmds !== [] && $this->lockConn->isConnected()) {
            try {
                $this->lockConn->pipeline($persistent ? [['RESET']] : $cmds);
            } catch (SessiondException) {
                // the connection is closed by now, which releases them too
            }
        }
        if (!$persistent) {
            $this->lockConn->close();
        }
    }

    // ---------------------------------------------------------------------
    // Internals shared with Session (the per-key API)
    // ---------------------------------------------------------------------

    /** @internal */
    public function currentId(): string
    {
        $id = $this->id ?? (session_id() !== '' ? session_id() : null);
        if ($id === null || $id === false) {
            throw new \LogicException('sessiond: no session; call session_start() first');
        }
        return $id;
    }

    /** @internal the session lock token when this request holds the lock on $id */
    public function sessionToken(string $id): ?int
    {
        return $this->token !== null && $this->lockedId === $id ? $this->token : null;
    }

    /** @internal */
    public function lockConnection(): Connection
    {
        return $this->lockConn;
    }

    /** @internal connection for lock-free commands (may be persistent) */
    public function connection(): Connection
    {
        return $this->conn;
    }

    /** @internal */
    public function lockWaitMs(): int
    {
        return max(0, (int) $this->opt['lock_wait_ms']);
    }

    /** @internal */
    public function leaseMs(): ?int
    {
        return $this->opt['lease_ms'] === null ? null : (int) $this->opt['lease_ms'];
    }

    /** @internal @return array<string, int|string> */
    public function &keyLocks(): array
    {
        return $this->keyLocks;
    }

    /** @internal version of $key this request last saw (0: absent) */
    public function versionOf(string $key): int
    {
        return $this->readSet[$key][0] ?? 0;
    }

    /** @internal canonical encoding of $key this request last saw */
    public function seenEncoding(string $key): ?string
    {
        return $this->readSet[$key][1] ?? null;
    }

    /**
     * @internal Records a value the server confirmed (a read or a commit
     * through the API): updates the read-set so the end-of-request write does
     * not send it again, and $_SESSION so this request sees it.
     */
    public function remember(string $key, int $version, ?string $raw): mixed
    {
        $nested = $this->nestedPath($key);
        if ($raw === null || $version === 0) {
            unset($this->readSet[$key]);
            if (isset($_SESSION) && is_array($_SESSION)) {
                if ($nested !== null) {
                    unset($_SESSION[$nested[0]][$nested[1]]);
                } else {
                    unset($_SESSION[$key]);
                }
            }
            return null;
        }
        $value = Codec::decodeValue($raw);
        $this->readSet[$key] = [$version, Codec::encodeValue($value)];
        if (isset($_SESSION) && is_array($_SESSION)) {
            if ($nested !== null) {
                $_SESSION[$nested[0]][$nested[1]] = $value;
            } else {
                $_SESSION[$key] = $value;
            }
        }
        return $value;
    }

    /** @internal */
    public function warn(string $message, int $level = E_USER_WARNING): void
    {
        trigger_error($message, $level);
    }

    // ---------------------------------------------------------------------
    // Private helpers
    // ---------------------------------------------------------------------

    /** @return array<string|int, mixed> */
    private function absorbRead(string $id, mixed $reply): array
    {
        $this->readSet = [];
        $this->serverId = $id;
        if ($reply === null) {
            if ($this->fresh) {
                // a new id in readonly mode: nothing to read, nothing to say
                return [];
            }
            // strict mode and the session is gone (destroyed or expired
            // between validation and read): start empty, never recreate it
            $this->sessionMissing = true;
            $this->warn(sprintf('sessiond: session %s no longer exists (destroyed or expired); starting empty, changes in this request will not be saved', self::shortId($id)), E_USER_NOTICE);
            return [];
        }
        if (!is_array($reply) || count($reply) < 4 || !is_array($reply[3])) {
            throw new ConnectionException('sessiond: protocol error: unexpected session read reply');
        }
        [$sid, , , $fields] = $reply;
        $this->serverId = (string) $sid;
        if ($this->serverId !== $id) {
            $this->followRegenerate($this->serverId);
        }
        // the same loop in C when the extension is loaded (null: it leaves
        // this reply to the loop below)
        $data = self::$native ? \sessiond_absorb_fields($fields, $this->opt['split_keys'], $this->readSet) : null;
        if ($data !== null) {
            return $data;
        }
        $data = [];
        for ($i = 0, $n = count($fields); $i + 3 <= $n; $i += 3) {
            $key = (string) $fields[$i];
            $ver = (int) $fields[$i + 1];
            $raw = $fields[$i + 2];
            if ($raw === null || $ver === 0) {
                continue;
            }
            $value = Codec::decodeValue($raw);
            $this->readSet[$key] = [$ver, Codec::encodeValue($value)];
            $nested = str_contains($key, '.') ? $this->nestedPath($key) : null;
            if ($nested !== null) {
                $data[$nested[0]][$nested[1]] = $value;
            } else {
                $data[$key] = $value;
            }
        }
        return $data;
    }

    /**
     * A request arrived with an old id that is now a regenerate alias: the
     * data is served through it, and the client gets the new id (unless
     * headers are out already) so it stops using the old one before the
     * grace period ends.
     */
    protected function followRegenerate(string $newId): void
    {
        if (!$this->opt['follow_regenerate'] || headers_sent() || !ini_get('session.use_cookies')) {
            return;
        }
        $p = session_get_cookie_params();
        $opts = [
            'expires' => $p['lifetime'] > 0 ? time() + $p['lifetime'] : 0,
            'path' => $p['path'],
            'domain' => $p['domain'],
            'secure' => $p['secure'],
            'httponly' => $p['httponly'],
        ];
        if (!empty($p['samesite'])) {
            $opts['samesite'] = $p['samesite'];
        }
        @setcookie(session_name(), $newId, $opts);
    }

    /**
     * [top-level key, element] when $field is an element of a split key
     * ("_sf2_attributes.cart" → ["_sf2_attributes", "cart"]), else null.
     *
     * @return array{0:string,1:string}|null
     */
    public function nestedPath(string $field): ?array
    {
        foreach ($this->opt['split_keys'] as $k) {
            $k = (string) $k;
            if (strncmp($field, $k . '.', strlen($k) + 1) === 0) {
                return [$k, substr($field, strlen($k) + 1)];
            }
        }
        return null;
    }

    /**
     * Replaces each split key holding an array by one field per element
     * ("<key>.<element>"), so the delta and its version checks work per
     * element. A split key whose value is not an array is stored whole. A
     * top-level key that looks like an element of a split key would be read
     * back as one: it is not written, with a warning.
     *
     * @param array<string, string> $fields key => field encoding
     * @return array<string, string>
     */
    private function splitNested(array $fields): array
    {
        if ($this->opt['split_keys'] === []) {
            return $fields;
        }
        foreach ($fields as $k => $enc) {
            // an element name has a '.': most keys are ruled out without a call
            if (str_contains((string) $k, '.') && $this->nestedPath((string) $k) !== null) {
                unset($fields[$k]);
                $this->warn(sprintf('sessiond: top-level key %s is reserved (it names an element of a split key, see the split_keys option); not written', json_encode((string) $k, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE)));
            }
        }
        foreach ($this->opt['split_keys'] as $k) {
            $k = (string) $k;
            if (!array_key_exists($k, $fields)) {
                continue;
            }
            $v = Codec::decodeValue($fields[$k]);
            if (!is_array($v)) {
                continue;
            }
            unset($fields[$k]);
            foreach ($v as $sub => $val) {
                $fields[$k . '.' . $sub] = Codec::encodeValue($val);
            }
        }
        return $fields;
    }

    /**
     * @param array<string, string> $new key => field encoding
     * @return list<array{0:string,1:string,2:?string,3:int,4:null}> [op, key, encoded value, version read]
     */
    private function delta(array $new): array
    {
        $ops = [];
        foreach ($new as $k => $enc) {
            $k = (string) $k;
            $seen = $this->readSet[$k] ?? null;
            if ($seen === null || $seen[1] !== $enc) {
                $ops[] = ['SET', $k, $enc, $seen[0] ?? 0, null];
            }
        }
        foreach ($this->readSet as $k => $seen) {
            if (!array_key_exists($k, $new)) {
                $ops[] = ['DEL', (string) $k, null, $seen[0], null];
            }
        }
        return $ops;
    }

    /** @param list<array{0:string,1:string,2:?string,3:int,4:mixed}> $ops */
    private function writeLocked(string $id, array $ops, bool $regen): bool
    {
        if ($ops === []) {
            if ($regen) {
                return true;
            }
            $r = $this->lockConn->pipeline([
                ['SESSION.TOUCH', $id, 'TTL', $this->ttl()],
                ['LOCK.RELEASE', $this->lockedId, $this->token],
            ]);
            $this->token = null;
            $this->lockedId = null;
            foreach ($r as $x) {
                if ($x instanceof ServerException) {
                    throw $x;
                }
            }
            return true;
        }
        $cmd = ['SESSION.COMMIT', $id, 'TTL', $this->ttl(), 'FENCE', $this->token];
        if (!$regen) {
            $cmd[] = 'UNLOCK';
        }
        foreach ($ops as [$op, $key, $enc]) {
            $cmd[] = $op;
            $cmd[] = $key;
            if ($op === 'SET') {
                $cmd[] = $enc;
            }
        }
        try {
            $r = $this->commandOnce($this->lockConn, $cmd);
        } catch (ServerException $e) {
            if ($e->is('FENCED')) {
                // Our lock ran out (lease / --lock-max-hold) or was broken.
                // Fall back to a commit that only applies where nobody else
                // changed the keys since we read them; report it.
                $this->token = null;
                $this->lockedId = null;
                $this->warn(sprintf(
                    'sessiond: the lock on session %s was lost before the write (%s); saving the changed keys only where no other request changed them',
                    self::shortId($id),
                    $e->getMessage(),
                ));
                return $this->commitConditional($id, $ops);
            }
            if ($e->is('NOSESSION')) {
                $this->releaseSessionLock();
                $this->warn(sprintf('sessiond: session %s was destroyed or expired while this request held it; %d changed key(s) not saved', self::shortId($id), count($ops)), E_USER_NOTICE);
                return true;
            }
            throw $e;
        }
        if (!$regen) {
            $this->token = null;
            $this->lockedId = null;
        }
        $this->absorbCommit($ops, $r);
        return true;
    }

    /**
     * Commit of the delta with `IFVER <version read>` on every op; on CONFLICT
     * the conflicting keys are reported and resolved by the conflict policy.
     *
     * @param list<array{0:string,1:string,2:?string,3:int,4:mixed}> $ops
     */
    private function commitConditional(string $id, array $ops): bool
    {
        // Last-writer-wins keys (framework bookkeeping) never carry IFVER.
        $unconditional = array_fill_keys(array_map('strval', $this->opt['lww_keys']), true);
        for ($attempt = 0; $attempt < 8 && $ops !== []; $attempt++) {
            $cmd = ['SESSION.COMMIT', $id, 'TTL', $this->ttl()];
            foreach ($ops as [$op, $key, $enc, $ver]) {
                $cmd[] = $op;
                $cmd[] = $key;
                if ($op === 'SET') {
                    $cmd[] = $enc;
                }
                if (!isset($unconditional[$key])) {
                    $cmd[] = 'IFVER';
                    $cmd[] = $ver;
                }
            }
            try {
                $r = $this->commandOnce($this->conn, $cmd);
                $this->absorbCommit($ops, $r);
                return true;
            } catch (ServerException $e) {
                if ($e->is('NOSESSION')) {
                    $this->warn(sprintf('sessiond: session %s was destroyed or expired meanwhile; %d changed key(s) not saved', self::shortId($id), count($ops)), E_USER_NOTICE);
                    return true;
                }
                if (!$e->is('CONFLICT')) {
                    throw $e;
                }
            }
            // Find out which keys conflict by reading their current versions
            // (robust whatever the quoting of keys in the error message).
            $keys = array_values(array_unique(array_map(static fn ($o) => $o[1], $ops)));
            $cur = $this->conn->command(array_merge(['SESSION.READ', $id, 'KEYS'], $keys));
            if ($cur === null) {
                $this->warn(sprintf('sessiond: session %s was destroyed or expired meanwhile; %d changed key(s) not saved', self::shortId($id), count($ops)), E_USER_NOTICE);
                return true;
            }
            $now = [];
            $fields = $cur[3] ?? [];
            for ($i = 0; $i + 3 <= count($fields); $i += 3) {
                $now[(string) $fields[$i]] = [(int) $fields[$i + 1], $fields[$i + 2]];
            }
            $conflicts = [];
            $details = [];
            $same = [];
            foreach ($ops as $o) {
                [, $key, $enc, $ver] = $o;
                if (isset($unconditional[$key])) {
                    continue;
                }
                $nowVer = $now[$key][0] ?? 0;
                if ($nowVer !== $ver && ($o[0] === 'DEL' ? $nowVer === 0 : Codec::canonical($now[$key][1] ?? null) === $enc)) {
                    // the other request already did exactly what this one
                    // wanted (both deleted a flash, both wrote the same
                    // value): nothing to decide, nothing to report
                    $same[$key] = true;
                    $this->rememberQuiet($key, $nowVer, $now[$key][1] ?? null);
                    continue;
                }
                if ($nowVer !== $ver) {
                    $conflicts[] = $key;
                    $details[$key] = [
                        'mine' => $o[0] === 'DEL' ? null : Codec::decodeValue($enc),
                        'mine_deleted' => $o[0] === 'DEL',
                        'theirs' => Codec::decodeValue($now[$key][1] ?? null),
                        'theirs_deleted' => $nowVer === 0,
                        'base_version' => $ver,
                        'their_version' => $nowVer,
                    ];
                }
            }
            if ($same !== []) {
                $ops = array_values(array_filter($ops, static fn ($o) => !isset($same[$o[1]])));
            }
            if ($conflicts === []) {
                continue; // nothing left to decide (or raced with a change that is gone again): retry
            }
            $policy = $this->opt['conflict_policy'];
            if ($this->opt['on_conflict'] !== null) {
                try {
                    $choice = ($this->opt['on_conflict'])($conflicts, $details, $id);
                    if ($choice === 'mine' || $choice === 'theirs') {
                        $policy = $choice;
                    }
                } catch (\Throwable $t) {
                    $this->warn('sessiond: on_conflict callback threw ' . get_class($t) . ': ' . $t->getMessage());
                }
            }
            $this->warn(sprintf(
                'sessiond: concurrent update conflict in session %s on key(s) %s: %s',
                self::shortId($id),
                implode(', ', array_map(static fn ($k) => json_encode((string) $k, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), $conflicts)),
                $policy === 'theirs'
                    ? "kept the other request's value (conflict_policy=theirs)"
                    : "overwrote the other request's value (conflict_policy=mine)",
            ));
            if ($policy === 'theirs') {
                $drop = array_flip($conflicts);
                $ops = array_values(array_filter($ops, static fn ($o) => !isset($drop[$o[1]])));
                foreach ($conflicts as $k) {
                    $this->rememberQuiet($k, $now[$k][0] ?? 0, $now[$k][1] ?? null);
                }
            } else {
                foreach ($conflicts as $k) {
                    $unconditional[$k] = true;
                }
            }
            if ($ops === []) {
                return true;
            }
        }
        if ($ops !== []) {
            $this->warn(sprintf('sessiond: giving up after repeated conflicts in session %s; %d key(s) not saved', self::shortId($id), count($ops)));
            return false;
        }
        return true;
    }

    /** Read-set update without touching $_SESSION (after write()). */
    private function rememberQuiet(string $key, int $version, ?string $raw): void
    {
        if ($raw === null || $version === 0) {
            unset($this->readSet[$key]);
            return;
        }
        $this->readSet[$key] = [$version, Codec::canonical($raw)];
    }

    /** @param list<array{0:string,1:string,2:?string,3:int,4:mixed}> $ops */
    private function absorbCommit(array $ops, mixed $reply): void
    {
        $versions = is_array($reply) && isset($reply[1]) && is_array($reply[1]) ? $reply[1] : [];
        foreach ($ops as $i => [$op, $key, $enc]) {
            if ($op === 'DEL') {
                unset($this->readSet[$key]);
            } else {
                $this->readSet[$key] = [(int) ($versions[$i] ?? 0), (string) $enc];
            }
        }
    }

    /** @param ?string $to the new id PHP chose (no create_sid() call), or null for a server-made one */
    private function regenerate(?string $to = null): string
    {
        $old = $this->id;
        $this->regenerating = false;
        $cmd = ['SESSION.REGENERATE', $old];
        if ($to !== null) {
            array_push($cmd, 'TO', $to);
        }
        $grace = $this->opt['regenerate_grace'] ?? ($this->deleteOld ? 0 : null);
        $this->deleteOld = false;
        if ($grace !== null) {
            array_push($cmd, 'GRACE', (int) $grace);
        }
        $holding = $this->token !== null;
        $token = $this->token;
        $lockedId = $this->lockedId;
        $conn = $holding ? $this->lockConn : $this->conn;
        $cmds = [$cmd];
        // Move the session while we still hold its lock (the lock moves with
        // it), then release it: in the same round trip through the old id,
        // which is an alias by then, unless the old id ended at once.
        $releaseAfter = $holding && $grace === 0;
        if ($holding && !$releaseAfter) {
            $cmds[] = ['LOCK.RELEASE', $lockedId, $token];
        }
        $r = $conn->pipeline($cmds);
        $this->token = null;
        $this->lockedId = null;
        $moved = !($r[0] instanceof ServerException);
        if ($releaseAfter) {
            $conn->command(['LOCK.RELEASE', $moved ? $r[0] : $lockedId, $token]);
        }
        if (!$moved) {
            if (!$r[0]->is('NOSESSION')) {
                throw $r[0];
            }
            // the old session is gone (destroyed concurrently): start a new one
            $new = $to ?? $this->conn->command(array_merge(['SESSION.NEW', 'TTL', $this->ttl()], $this->lifetimeArgs()));
        } else {
            $new = $r[0];
        }
        if (!is_string($new) || !preg_match(self::ID_PATTERN, $new)) {
            throw new ConnectionException('sessiond: protocol error: unexpected SESSION.REGENERATE reply');
        }
        $this->createdIds[$new] = true;
        return $new;
    }

    private function releaseSessionLock(): void
    {
        if ($this->token === null) {
            return;
        }
        $tok = $this->token;
        $id = $this->lockedId;
        $this->token = null;
        $this->lockedId = null;
        try {
            $this->lockConn->command(['LOCK.RELEASE', $id, $tok]);
        } catch (SessiondException) {
            // closing the connection releases it server-side
            $this->lockConn->close();
        }
    }

    protected function ttl(): int
    {
        $ttl = $this->opt['ttl'] ?? ini_get('session.gc_maxlifetime');
        return max(1, (int) $ttl);
    }

    /** @return list<string|int> */
    private function lifetimeArgs(): array
    {
        // 0 (or unset): no absolute lifetime; the server refuses LIFETIME 0.
        return (int) ($this->opt['lifetime'] ?? 0) > 0 ? ['LIFETIME', (int) $this->opt['lifetime']] : [];
    }

    /**
     * The id came with the request (cookie, or URL/form when
     * session.use_only_cookies is off). Defence in depth for strict mode:
     * such an id is never created, even if a wrapper hid validateId().
     */
    private function sentByClient(string $id): bool
    {
        $name = session_name();
        if (($_COOKIE[$name] ?? null) === $id) {
            return true;
        }
        return !ini_get('session.use_only_cookies') && (($_GET[$name] ?? null) === $id || ($_POST[$name] ?? null) === $id);
    }

    protected function strict(): bool
    {
        return (bool) ini_get('session.use_strict_mode');
    }

    /** The format of the strings read() returns and write() gets. */
    protected function serializeHandler(): string
    {
        return (string) ini_get('session.serialize_handler');
    }

    private static function calledFrom(string $function): bool
    {
        foreach (debug_backtrace(DEBUG_BACKTRACE_IGNORE_ARGS, 8) as $f) {
            if (!isset($f['class']) && ($f['function'] ?? '') === $function) {
                return true;
            }
        }
        return false;
    }

    /**
     * The warning text for a failure: connection and protocol errors already
     * say "sessiond: …"; an error reply is the server's own words, so say
     * where it came from.
     */
    protected function cause(SessiondException $e): string
    {
        if ($e instanceof ServerException) {
            return "sessiond: {$this->display} replied with an error: " . $e->getMessage();
        }
        return $e->getMessage();
    }

    /** Session ids are secrets: log only a prefix. */
    public static function shortId(string $id): string
    {
        return '"' . substr($id, 0, 8) . (strlen($id) > 8 ? '…' : '') . '"';
    }

    /**
     * @param array<string, mixed> $q
     * @return array<string, mixed>
     */
    private static function castQuery(array $q): array
    {
        $out = [];
        foreach ($q as $k => $v) {
            if (!array_key_exists($k, self::DEFAULTS) || !is_string($v)) {
                if (array_key_exists($k, self::DEFAULTS)) {
                    $out[$k] = $v;
                }
                continue;
            }
            $out[$k] = match ($k) {
                'lock_wait_ms', 'lease_ms', 'ttl', 'lifetime', 'regenerate_grace' => $v === '' ? null : (int) $v,
                'connect_timeout', 'timeout', 'failover_timeout' => (float) $v,
                'persistent', 'strict', 'follow_regenerate' => filter_var($v, FILTER_VALIDATE_BOOLEAN),
                'split_keys', 'lww_keys' => $v === '' ? [] : explode(',', $v),
                default => $v,
            };
        }
        return $out;
    }
}
