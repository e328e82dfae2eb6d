<?php

declare(strict_types=1);

namespace Racelab;

// The seeds' scenarios. Each endpoint has the plain code of the articles
// (read the session, work, write it back at the end) and, for the
// sessiond-api handler, the per-key API version where the plain code can only
// be correct under a whole-session lock. The driver sends the timings
// (?ms=…) and counts the results; nothing here decides what is "correct".

/** Creates the session of one scenario run and its initial state. */
function setup(Ctx $c, string $scenario): array
{
    $c->start('write');
    $sid = session_id();
    $_SESSION['user'] = 'alice';
    switch ($scenario) {
        case 'counter':
            $_SESSION['count'] = 0;
            $_SESSION['produced'] = 0;
            $_SESSION['consumed'] = 0;
            break;
        case 'search':
            $_SESSION['popup-position'] = [];
            break;
        case 'payment':
            $_SESSION['paid'] = false;
            break;
        case 'oauth':
            $_SESSION['oauth'] = Fakes::login($sid);
            break;
        case 'readonly':
            $_SESSION['profile'] = 'initial';
            break;
    }
    return ['sid' => $sid];
}

/** The session as it ended, plus what the fake bank and provider saw. */
function inspect(Ctx $c): array
{
    $c->start('read', ['read_and_close' => true]);
    $sid = session_id();
    $idp = Fakes::idpState($sid);
    $oauth = $_SESSION['oauth'] ?? null;
    return [
        'session' => $_SESSION,
        'ledger' => Fakes::ledger($sid),
        'idp' => ['calls' => $idp['calls'], 'rejected' => $idp['rejected']],
        // The stored refresh token is the one the provider will accept next:
        // if not, the user's next refresh fails (a re-login still to come).
        'refresh_valid' => is_array($oauth) && ($oauth['refresh'] ?? null) === $idp['refresh'],
    ];
}

/** Seed 003's producer/consumer: read count, work, write count ± 1. */
function counter(Ctx $c): array
{
    $incr = param('op') !== 'decr';
    $tally = $incr ? 'produced' : 'consumed';
    $ms = intParam('ms');
    $c->start('write');
    if (Handlers::isApi($c->h)) {
        work($ms);
        $s = api();
        $n = $c->timed(static fn () => $incr ? $s->increment('count') : $s->decrement('count'));
        $c->timed(static fn () => $s->increment($tally));
        return ['count' => $n];
    }
    $n = (int) ($_SESSION['count'] ?? 0);
    $t = (int) ($_SESSION[$tally] ?? 0);
    work($ms);
    $_SESSION['count'] = $incr ? $n + 1 : $n - 1;
    $_SESSION[$tally] = $t + 1;
    return ['read' => $n, 'count' => $_SESSION['count']];
}

/** Seeds 001/002: one of ten concurrent requests; each writes its own key. */
function parallel(Ctx $c): array
{
    $i = intParam('i');
    $c->start('write');
    work(intParam('ms'));
    // The same code for every handler: in none mode only this key is sent.
    $_SESSION["k$i"] = "written by request $i";
    return ['key' => "k$i"];
}

/** Seed 003's search.php: a slow search stores its result in the session. */
function search(Ctx $c): array
{
    $results = ['result for ' . param('q', 'php sessions'), 'and another'];
    if (Handlers::isApi($c->h)) {
        $c->start('write');
        session_write_close(); // hold nothing during the slow part
        work(intParam('ms'));
        $c->timed(static fn () => api()->synchronized('searchresult', static fn () => $results));
        return ['results' => count($results)];
    }
    $c->start('write');
    work(intParam('ms'));
    $_SESSION['searchresult'] = $results;
    return ['results' => count($results)];
}

/** Seed 003's recordposition.php: a popup was dragged, remember where. */
function position(Ctx $c): array
{
    $popup = param('popup', 'p0');
    $xy = param('xy', '0,0');
    $c->start('write');
    if (Handlers::isApi($c->h)) {
        work(intParam('ms'));
        $c->timed(static fn () => api()->synchronized('popup-position', static function ($pos) use ($popup, $xy) {
            $pos = is_array($pos) ? $pos : [];
            $pos[$popup] = $xy;
            return $pos;
        }));
        return ['popup' => $popup];
    }
    work(intParam('ms'));
    $_SESSION['popup-position'][$popup] = $xy;
    return ['popup' => $popup];
}

/** Seed 001: if (!paid) { mark paid; send money; } from concurrent requests. */
function pay(Ctx $c): array
{
    $ms = intParam('ms');
    $c->start('write');
    $sid = session_id();
    $sent = false;
    if (Handlers::isApi($c->h)) {
        // (closures, not arrow functions: $sent must be shared by reference)
        $c->timed(static function () use ($sid, $ms, &$sent) {
            return api()->synchronized('paid', static function ($paid) use ($sid, $ms, &$sent) {
                if (!$paid) {
                    Fakes::sendMoney($sid, $ms);
                    $sent = true;
                }
                return true;
            });
        });
        return ['sent' => $sent];
    }
    if (empty($_SESSION['paid'])) {
        $_SESSION['paid'] = true;
        Fakes::sendMoney($sid, $ms);
        $sent = true;
    }
    return ['sent' => $sent];
}

final class RefreshRefused extends \RuntimeException
{
}

/**
 * Seed 000: concurrent requests find the access token expired and refresh
 * it; the provider accepts each refresh token once. A refused refresh logs
 * the user out (a forced re-login).
 */
function oauth(Ctx $c): array
{
    $ms = intParam('ms');
    $c->start('write');
    $sid = session_id();
    $tok = $_SESSION['oauth'] ?? null;
    $refreshed = false;
    $relogin = false;
    if (!is_array($tok)) {
        $relogin = true; // another request logged the user out
    } elseif ($tok['expires_at'] <= time()) {
        if (Handlers::isApi($c->h)) {
            try {
                // One request refreshes; the others wait and get its tokens.
                $tok = $c->timed(static function () use ($sid, $ms, &$refreshed) {
                    return api()->once('oauth', static function ($old) use ($sid, $ms, &$refreshed) {
                        $refreshed = true;
                        return Fakes::refresh($sid, (string) ($old['refresh'] ?? ''), $ms) ?? throw new RefreshRefused();
                    });
                });
            } catch (RefreshRefused) {
                $relogin = true;
            }
        } else {
            $refreshed = true;
            $new = Fakes::refresh($sid, (string) $tok['refresh'], $ms);
            if ($new === null) {
                $relogin = true;
            } else {
                $_SESSION['oauth'] = $new;
            }
        }
    }
    if ($relogin) {
        Fakes::record($sid, 'relogin');
        unset($_SESSION['oauth']);
    }
    work(intParam('use_ms', 5)); // call the API with the access token
    return ['refreshed' => $refreshed, 'relogin' => $relogin];
}

/** A slow request that updates the profile while readers come and go. */
function slowWrite(Ctx $c): array
{
    $c->start('write');
    work(intParam('ms'));
    $_SESSION['profile'] = param('value', 'updated');
    return [];
}

/** A request that only reads who the user is (read_and_close, seed 002). */
function read(Ctx $c): array
{
    $c->start('read', ['read_and_close' => true]);
    return ['user' => $_SESSION['user'] ?? null];
}
