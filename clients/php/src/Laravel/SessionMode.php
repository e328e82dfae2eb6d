<?php

declare(strict_types=1);

namespace Sessiond\Laravel;

use Sessiond\SessionHandler;

/**
 * Route middleware choosing the sessiond lock mode of a request:
 *
 *     Route::get('/search', SearchController::class)->middleware('sessiond.mode:none');
 *     Route::post('/checkout', CheckoutController::class)->middleware('sessiond.mode:session');
 *     Route::get('/poll', PollController::class)->middleware('sessiond.mode:readonly');
 *
 * It must run before StartSession: SessiondServiceProvider puts it in front
 * of StartSession in the router's middleware priority.
 */
class SessionMode
{
    public function handle($request, \Closure $next, string $mode)
    {
        SessionHandler::setMode($mode);
        try {
            return $next($request);
        } finally {
            if (session_status() !== PHP_SESSION_ACTIVE) {
                SessionHandler::setMode(null);
            }
        }
    }
}
