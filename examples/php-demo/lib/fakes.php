<?php

declare(strict_types=1);

namespace Racelab;

/**
 * Side effects the lab counts, kept outside the session so no session race
 * can hide them: a bank that records every payment sent and an identity
 * provider whose refresh tokens work once (seed 000). Both are files under
 * RACELAB_STATE_DIR guarded by flock, one file per session id.
 */
final class Fakes
{
    public static function dir(): string
    {
        $dir = Handlers::env('RACELAB_STATE_DIR') ?? sys_get_temp_dir() . '/racelab-state';
        if (!is_dir($dir)) {
            @mkdir($dir, 0700, true);
        }
        return $dir;
    }

    /** Records one event ('send', 'relogin') for session $sid. */
    public static function record(string $sid, string $event): void
    {
        file_put_contents(self::path($sid, 'ledger'), $event . "\n", FILE_APPEND | LOCK_EX);
    }

    /** @return array<string, int> event => count */
    public static function ledger(string $sid): array
    {
        $out = ['send' => 0, 'relogin' => 0];
        $f = self::path($sid, 'ledger');
        if (is_file($f)) {
            foreach (file($f, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) ?: [] as $line) {
                $out[$line] = ($out[$line] ?? 0) + 1;
            }
        }
        return $out;
    }

    /** The bank: sending money is slow ($ms) and is recorded. */
    public static function sendMoney(string $sid, int $ms): void
    {
        work($ms);
        self::record($sid, 'send');
    }

    /** The provider issues a first token pair at login; the access token is already expired. */
    public static function login(string $sid): array
    {
        return self::idp($sid, static function (array $st): array {
            $st['refresh'] = bin2hex(random_bytes(8));
            $st['calls'] = 0;
            $st['rejected'] = 0;
            return [$st, ['access' => 'a-' . bin2hex(random_bytes(4)), 'refresh' => $st['refresh'], 'expires_at' => time() - 1]];
        });
    }

    /**
     * The provider's refresh endpoint (takes $ms): a refresh token is
     * accepted once; using it again, or an older one, is refused (null).
     */
    public static function refresh(string $sid, string $refresh, int $ms): ?array
    {
        work($ms);
        return self::idp($sid, static function (array $st) use ($refresh): array {
            $st['calls'] = ($st['calls'] ?? 0) + 1;
            if (($st['refresh'] ?? null) !== $refresh) {
                $st['rejected'] = ($st['rejected'] ?? 0) + 1;
                return [$st, null];
            }
            $st['refresh'] = bin2hex(random_bytes(8));
            return [$st, ['access' => 'a-' . bin2hex(random_bytes(4)), 'refresh' => $st['refresh'], 'expires_at' => time() + 3600]];
        });
    }

    /** @return array{calls:int, rejected:int, refresh:?string} */
    public static function idpState(string $sid): array
    {
        return self::idp($sid, static fn (array $st): array => [$st, [
            'calls' => $st['calls'] ?? 0,
            'rejected' => $st['rejected'] ?? 0,
            'refresh' => $st['refresh'] ?? null,
        ]]);
    }

    /** Runs $fn(state) => [new state, result] under an exclusive flock. */
    private static function idp(string $sid, callable $fn): mixed
    {
        $fh = fopen(self::path($sid, 'idp'), 'c+');
        if ($fh === false) {
            throw new \RuntimeException('cannot open the fake identity provider state');
        }
        try {
            flock($fh, LOCK_EX);
            $raw = stream_get_contents($fh);
            $st = $raw ? (json_decode($raw, true) ?: []) : [];
            [$st, $result] = $fn($st);
            ftruncate($fh, 0);
            rewind($fh);
            fwrite($fh, json_encode($st));
            fflush($fh);
            return $result;
        } finally {
            flock($fh, LOCK_UN);
            fclose($fh);
        }
    }

    private static function path(string $sid, string $what): string
    {
        return self::dir() . "/$what-" . sha1($sid);
    }
}

