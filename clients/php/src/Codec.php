<?php

declare(strict_types=1);

namespace Sessiond;

/**
 * Encoding of session data.
 *
 * Field values: each top-level $_SESSION key is one server field. A PHP int is
 * stored as its plain decimal string (so SESSION.INCR works on it); everything
 * else as serialize($value). On read a value matching /^-?[0-9]+$/ that fits
 * in a PHP int is an int, anything else is unserialize()d. A serialized value
 * always ends in ';' or '}', so the two never collide. A value that is neither
 * (written by a non-PHP client) is returned as the raw string.
 *
 * Session strings: PHP hands the handler the whole $_SESSION encoded with
 * session.serialize_handler (`php`, `php_serialize` or `php_binary`) and wants
 * the same format back from read(). decodeSession()/encodeSession() convert
 * between that format and an array of top-level keys.
 */
final class Codec
{
    public const HANDLERS = ['php', 'php_serialize', 'php_binary'];

    public static function encodeValue(mixed $value): string
    {
        if (is_int($value)) {
            return (string) $value;
        }
        return serialize($value);
    }

    public static function decodeValue(?string $raw): mixed
    {
        if ($raw === null) {
            return null;
        }
        if (preg_match('/^-?[0-9]+$/', $raw)) {
            $neg = $raw[0] === '-';
            $digits = ltrim($neg ? substr($raw, 1) : $raw, '0');
            $norm = $digits === '' ? '0' : ($neg ? '-' . $digits : $digits);
            $i = (int) $norm;
            if ((string) $i === $norm) {
                return $i;
            }
            return $raw; // outside the PHP int range: keep the digits as a string
        }
        if ($raw === 'b:0;') {
            return false;
        }
        $last = substr($raw, -1);
        if ($last === ';' || $last === '}') {
            $v = @unserialize($raw);
            if ($v !== false) {
                return $v;
            }
        }
        return $raw;
    }

    /**
     * Canonical encoding of a stored value: what encodeValue() gives for the
     * value decodeValue() returns. Used to decide whether a key changed.
     */
    public static function canonical(?string $raw): ?string
    {
        if ($raw === null) {
            return null;
        }
        return self::encodeValue(self::decodeValue($raw));
    }

    /**
     * Encodes top-level keys into the session string format of $handler.
     *
     * @param array<string|int, mixed> $data
     */
    public static function encodeSession(array $data, string $handler): string
    {
        switch ($handler) {
            case 'php_serialize':
                return $data === [] ? '' : serialize($data);
            case 'php':
                $out = '';
                foreach ($data as $k => $v) {
                    $k = (string) $k;
                    if (str_contains($k, '|')) {
                        continue; // PHP's own encoder cannot represent it either
                    }
                    $out .= $k . '|' . serialize($v);
                }
                return $out;
            case 'php_binary':
                $out = '';
                foreach ($data as $k => $v) {
                    $k = (string) $k;
                    if (strlen($k) > 127) {
                        continue;
                    }
                    $out .= chr(strlen($k)) . $k . serialize($v);
                }
                return $out;
        }
        throw new \UnexpectedValueException("sessiond: session.serialize_handler '$handler' is not supported (use php, php_serialize or php_binary)");
    }

    /**
     * Decodes a session string in the format of $handler into its top-level
     * keys. Returns null when the string cannot be decoded (never a partial
     * or empty array for a non-empty string).
     *
     * @return array<string|int, mixed>|null
     */
    public static function decodeSession(string $data, string $handler): ?array
    {
        if ($data === '') {
            return [];
        }
        switch ($handler) {
            case 'php_serialize':
                if ($data === 'b:0;') {
                    return null;
                }
                $v = @unserialize($data);
                return is_array($v) ? $v : null;
            case 'php':
            case 'php_binary':
                $ser = self::toPhpSerialize($data, $handler);
                if ($ser === null) {
                    return null;
                }
                $v = @unserialize($ser);
                return is_array($v) ? $v : null;
        }
        throw new \UnexpectedValueException("sessiond: session.serialize_handler '$handler' is not supported (use php, php_serialize or php_binary)");
    }

    /**
     * Splits a session string into per-key field encodings (what
     * encodeValue() would give for each value) without unserializing the
     * values: the bytes PHP serialized are reused as they are, so objects are
     * not woken up and serialized a second time at write(). Only when a value
     * refers to another key's value (r:N; / R:N;) does it fall back to
     * decodeSession() + encodeValue(). Returns null when the string cannot be
     * decoded.
     *
     * @return array<string, string>|null
     */
    public static function splitSession(string $data, string $handler): ?array
    {
        if ($data === '') {
            return [];
        }
        if (!in_array($handler, self::HANDLERS, true)) {
            throw new \UnexpectedValueException("sessiond: session.serialize_handler '$handler' is not supported (use php, php_serialize or php_binary)");
        }
        if (self::$native ??= \function_exists('sessiond_split_session')) {
            // the same scan in C; false: a value refers to another
            $r = \sessiond_split_session($data, $handler);
            return $r === false ? self::splitByDecoding($data, $handler) : $r;
        }
        $len = strlen($data);
        $p = 0;
        $slices = [];
        self::$sawRef = false;
        $sink = '';
        if ($handler === 'php_serialize') {
            if (!preg_match('/\Ga:([0-9]+):\{/', $data, $m)) {
                return null;
            }
            $p = strlen($m[0]);
            for ($i = 0, $n = (int) $m[1]; $i < $n; $i++) {
                $k0 = $p;
                if (!self::scan($data, $p, $sink, 0)) {
                    return null;
                }
                $kraw = substr($data, $k0, $p - $k0);
                if ($kraw[0] === 'i') {
                    $key = substr($kraw, 2, -1);
                } elseif ($kraw[0] === 's') {
                    $key = substr($kraw, strpos($kraw, ':', 2) + 2, -2);
                } else {
                    return null;
                }
                $v0 = $p;
                if (!self::scan($data, $p, $sink, 0)) {
                    return null;
                }
                $slices[$key] = substr($data, $v0, $p - $v0);
            }
            if ($p !== $len - 1 || $data[$p] !== '}') {
                return null;
            }
        } else {
            while ($p < $len) {
                if ($handler === 'php') {
                    $bar = strpos($data, '|', $p);
                    if ($bar === false) {
                        return null;
                    }
                    $key = substr($data, $p, $bar - $p);
                    $p = $bar + 1;
                } else {
                    $kl = ord($data[$p]);
                    if ($kl > 127 || $p + 1 + $kl > $len) {
                        return null;
                    }
                    $key = substr($data, $p + 1, $kl);
                    $p += 1 + $kl;
                }
                $v0 = $p;
                if (!self::scan($data, $p, $sink, 0)) {
                    return null;
                }
                $slices[$key] = substr($data, $v0, $p - $v0);
            }
        }
        if (self::$sawRef) {
            return self::splitByDecoding($data, $handler);
        }
        $out = [];
        foreach ($slices as $k => $slice) {
            if ($slice[0] === 'i' && preg_match('/^i:(-?[0-9]+);$/', $slice, $m)) {
                $out[(string) $k] = (string) (int) $m[1];
            } else {
                $out[(string) $k] = $slice;
            }
        }
        return $out;
    }

    /**
     * splitSession() when values refer to each other (r:N; / R:N;): the
     * slices cannot stand alone, so every value is unserialized and
     * encoded again.
     *
     * @return array<string, string>|null
     */
    private static function splitByDecoding(string $data, string $handler): ?array
    {
        $decoded = self::decodeSession($data, $handler);
        if ($decoded === null) {
            return null;
        }
        $out = [];
        foreach ($decoded as $k => $v) {
            $out[(string) $k] = self::encodeValue($v);
        }
        return $out;
    }

    private static bool $sawRef = false;

    /**
     * Whether the sessiond C extension (clients/php/ext) does
     * splitSession()'s scan (the same, in C). Set at the first call.
     *
     * @internal tests switch it off to compare both
     */
    public static ?bool $native = null;

    /**
     * Rewrites a `php`/`php_binary` session string as one serialize()d array.
     * Back-references (r:N; R:N;) are numbered from 1 across all keys in the
     * `php` format but the wrapping array takes slot 1 in php_serialize, so
     * every reference number is shifted by one.
     */
    private static function toPhpSerialize(string $s, string $handler): ?string
    {
        $len = strlen($s);
        $p = 0;
        $body = '';
        $n = 0;
        while ($p < $len) {
            if ($handler === 'php') {
                $bar = strpos($s, '|', $p);
                if ($bar === false) {
                    return null;
                }
                $key = substr($s, $p, $bar - $p);
                $p = $bar + 1;
            } else {
                $kl = ord($s[$p]);
                if ($kl > 127 || $p + 1 + $kl > $len) {
                    return null;
                }
                $key = substr($s, $p + 1, $kl);
                $p += 1 + $kl;
            }
            $val = '';
            if (!self::scan($s, $p, $val, 0)) {
                return null;
            }
            $body .= 's:' . strlen($key) . ':"' . $key . '";' . $val;
            $n++;
        }
        return 'a:' . $n . ':{' . $body . '}';
    }

    /**
     * Scans one serialized value starting at $p, appending it (with reference
     * numbers shifted by one) to $out and advancing $p past it.
     */
    private static function scan(string $s, int &$p, string &$out, int $depth): bool
    {
        if ($depth > 512 || $p >= strlen($s)) {
            return false;
        }
        $t = $s[$p];
        switch ($t) {
            case 'N':
                if (substr($s, $p, 2) !== 'N;') {
                    return false;
                }
                $out .= 'N;';
                $p += 2;
                return true;
            case 'b':
            case 'i':
            case 'd':
                $e = strpos($s, ';', $p);
                if ($e === false || ($s[$p + 1] ?? '') !== ':') {
                    return false;
                }
                $out .= substr($s, $p, $e + 1 - $p);
                $p = $e + 1;
                return true;
            case 'r':
            case 'R':
                if (!preg_match('/\G[rR]:([0-9]+);/', $s, $m, 0, $p)) {
                    return false;
                }
                $out .= $t . ':' . ((int) $m[1] + 1) . ';';
                self::$sawRef = true;
                $p += strlen($m[0]);
                return true;
            case 's':
            case 'E':
                if (!preg_match('/\G[sE]:([0-9]+):"/', $s, $m, 0, $p)) {
                    return false;
                }
                $l = (int) $m[1];
                $start = $p + strlen($m[0]);
                if ($l > strlen($s) - $start || substr($s, $start + $l, 2) !== '";') {
                    return false;
                }
                $out .= substr($s, $p, $start + $l + 2 - $p);
                $p = $start + $l + 2;
                return true;
            case 'S':
                // legacy escaped string: S:len:"…"; where len counts decoded bytes
                if (!preg_match('/\GS:([0-9]+):"/', $s, $m, 0, $p)) {
                    return false;
                }
                $q = $p + strlen($m[0]);
                $count = (int) $m[1];
                for ($i = 0; $i < $count; $i++) {
                    if ($q >= strlen($s)) {
                        return false; // past the end: cannot end in '";'
                    }
                    if ($s[$q] === '\\') {
                        $q += 3;
                    } else {
                        $q++;
                    }
                }
                if (substr($s, $q, 2) !== '";') {
                    return false;
                }
                $out .= substr($s, $p, $q + 2 - $p);
                $p = $q + 2;
                return true;
            case 'a':
                if (!preg_match('/\Ga:([0-9]+):\{/', $s, $m, 0, $p)) {
                    return false;
                }
                $out .= $m[0];
                $p += strlen($m[0]);
                return self::scanPairs($s, $p, $out, (int) $m[1], $depth);
            case 'O':
                if (!preg_match('/\GO:([0-9]+):"/', $s, $m, 0, $p)) {
                    return false;
                }
                $cl = (int) $m[1];
                $start = $p + strlen($m[0]);
                if ($cl > strlen($s) - $start || !preg_match('/\G":([0-9]+):\{/', $s, $m2, 0, $start + $cl)) {
                    return false;
                }
                $head = substr($s, $p, $start + $cl - $p) . $m2[0];
                $out .= $head;
                $p += strlen($head);
                return self::scanPairs($s, $p, $out, (int) $m2[1], $depth);
            case 'C':
                if (!preg_match('/\GC:([0-9]+):"/', $s, $m, 0, $p)) {
                    return false;
                }
                $cl = (int) $m[1];
                $start = $p + strlen($m[0]);
                if ($cl > strlen($s) - $start || !preg_match('/\G":([0-9]+):\{/', $s, $m2, 0, $start + $cl)) {
                    return false;
                }
                $dl = (int) $m2[1];
                $dstart = $start + $cl + strlen($m2[0]);
                if ($dl >= strlen($s) - $dstart || $s[$dstart + $dl] !== '}') {
                    return false;
                }
                $out .= substr($s, $p, $dstart + $dl + 1 - $p);
                $p = $dstart + $dl + 1;
                return true;
        }
        return false;
    }

    private static function scanPairs(string $s, int &$p, string &$out, int $count, int $depth): bool
    {
        for ($i = 0; $i < $count; $i++) {
            if (!self::scan($s, $p, $out, $depth + 1) || !self::scan($s, $p, $out, $depth + 1)) {
                return false;
            }
        }
        if (($s[$p] ?? '') !== '}') {
            return false;
        }
        $out .= '}';
        $p++;
        return true;
    }
}
