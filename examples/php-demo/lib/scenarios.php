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
    $sid = $c->sid();
    $S = &$c->attrs();
    $S['user'] = 'alice';
    switch ($scenario) {
        case 'counter':
            $S['count'] = 0;
            $S['produced'] = 0;
            $S['consumed'] = 0;
            break;
        case 'search':
            $S['popup-position'] = [];
            break;
        case 'payment':
            $S['paid'] = false;
            break;
        case 'oauth':
            $S['oauth'] = Fakes::login($sid);
            break;
        case 'readonly':
            $S['profile'] = 'initial';
            break;
    }
    return ['sid' => $sid];
}

/** The session as it ended, plus what the fake bank and provider saw. */
function inspect(Ctx $c): array
{
    $c->start('read', ['read_and_close' => true]);
    $sid = $c->sid();
    $S = &$c->attrs();
    $idp = Fakes::idpState($sid);
    $oauth = $S['oauth'] ?? null;
    return [
        'session' => $S,
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
        $s = api($c);
        $n = $c->timed(static fn () => $incr ? $s->increment($c->field('count')) : $s->decrement($c->field('count')));
        $c->timed(static fn () => $s->increment($c->field($tally)));
        return ['count' => $n];
    }
    $S = &$c->attrs();
    $n = (int) ($S['count'] ?? 0);
    $t = (int) ($S[$tally] ?? 0);
    work($ms);
    $S['count'] = $incr ? $n + 1 : $n - 1;
    $S[$tally] = $t + 1;
    return ['read' => $n, 'count' => $S['count']];
}

/** Seeds 001/002: one of ten concurrent requests; each writes its own key. */
function parallel(Ctx $c): array
{
    $i = intParam('i');
    $c->start('write');
    work(intParam('ms'));
    // The same code for every handler: in none mode only this key is sent.
    $S = &$c->attrs();
    $S["k$i"] = "written by request $i";
    return ['key' => "k$i"];
}

/** Seed 003's search.php: a slow search stores its result in the session. */
function search(Ctx $c): array
{
    $results = ['result for ' . param('q', 'php sessions'), 'and another'];
    if (Handlers::isApi($c->h)) {
        $c->start('write');
        $c->close(); // hold nothing during the slow part
        work(intParam('ms'));
        $c->timed(static fn () => api($c)->synchronized($c->field('searchresult'), static fn () => $results));
        return ['results' => count($results)];
    }
    $c->start('write');
    work(intParam('ms'));
    $S = &$c->attrs();
    $S['searchresult'] = $results;
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
        $c->timed(static fn () => api($c)->synchronized($c->field('popup-position'), static function ($pos) use ($popup, $xy) {
            $pos = is_array($pos) ? $pos : [];
            $pos[$popup] = $xy;
            return $pos;
        }));
        return ['popup' => $popup];
    }
    work(intParam('ms'));
    $S = &$c->attrs();
    $S['popup-position'][$popup] = $xy;
    return ['popup' => $popup];
}

/** Seed 001: if (!paid) { mark paid; send money; } from concurrent requests. */
function pay(Ctx $c): array
{
    $ms = intParam('ms');
    $c->start('write');
    $sid = $c->sid();
    $sent = false;
    if (Handlers::isApi($c->h)) {
        // (closures, not arrow functions: $sent must be shared by reference)
        $c->timed(static function () use ($c, $sid, $ms, &$sent) {
            return api($c)->synchronized($c->field('paid'), static function ($paid) use ($sid, $ms, &$sent) {
                if (!$paid) {
                    Fakes::sendMoney($sid, $ms);
                    $sent = true;
                }
                return true;
            });
        });
        return ['sent' => $sent];
    }
    $S = &$c->attrs();
    if (empty($S['paid'])) {
        $S['paid'] = true;
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
    $sid = $c->sid();
    $S = &$c->attrs();
    $tok = $S['oauth'] ?? null;
    $refreshed = false;
    $relogin = false;
    if (!is_array($tok)) {
        $relogin = true; // another request logged the user out
    } elseif ($tok['expires_at'] <= time()) {
        if (Handlers::isApi($c->h)) {
            try {
                // One request refreshes; the others wait and get its tokens.
                $tok = $c->timed(static function () use ($c, $sid, $ms, &$refreshed) {
                    return api($c)->once($c->field('oauth'), static function ($old) use ($sid, $ms, &$refreshed) {
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
                $S['oauth'] = $new;
            }
        }
    }
    if ($relogin) {
        Fakes::record($sid, 'relogin');
        unset($S['oauth']);
    }
    work(intParam('use_ms', 5)); // call the API with the access token
    return ['refreshed' => $refreshed, 'relogin' => $relogin];
}

/** A slow request that updates the profile while readers come and go. */
function slowWrite(Ctx $c): array
{
    $c->start('write');
    work(intParam('ms'));
    $S = &$c->attrs();
    $S['profile'] = param('value', 'updated');
    return [];
}

/** A request that only reads who the user is (read_and_close, seed 002). */
function read(Ctx $c): array
{
    $c->start('read', ['read_and_close' => true]);
    $S = &$c->attrs();
    return ['user' => $S['user'] ?? null];
}
