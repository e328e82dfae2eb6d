<?php

declare(strict_types=1);

namespace Sessiond\Symfony;

use Sessiond\SessionHandler;
use Symfony\Component\EventDispatcher\EventSubscriberInterface;
use Symfony\Component\HttpKernel\Event\RequestEvent;
use Symfony\Component\HttpKernel\KernelEvents;

/**
 * Chooses the sessiond lock mode of a Symfony request from a request
 * attribute, before anything starts the session:
 *
 *     # config/routes.yaml
 *     search:
 *         path: /search
 *         controller: App\Controller\SearchController
 *         defaults: { _sessiond_mode: none }      # session | readonly | none
 *
 *     # config/services.yaml
 *     Sessiond\Symfony\SessionModeListener:
 *         tags: [kernel.event_subscriber]
 *
 * It runs on kernel.request at priority 24: after the router (32), which
 * sets the route's defaults as request attributes, and before the firewall
 * (8), the first listener that reads the session. Symfony starts the session
 * lazily, on first use, so the mode applies to this request's session. A
 * request without the attribute gets the handler's `lock_mode` option.
 *
 * Symfony only (HttpKernel 5.4 to 7.x); the class is never loaded otherwise.
 */
final class SessionModeListener implements EventSubscriberInterface
{
    public const ATTRIBUTE = '_sessiond_mode';

    public function __construct(private string $attribute = self::ATTRIBUTE)
    {
    }

    public static function getSubscribedEvents(): array
    {
        return [KernelEvents::REQUEST => ['onKernelRequest', 24]];
    }

    public function onKernelRequest(RequestEvent $event): void
    {
        if (!$event->isMainRequest()) {
            return;
        }
        $mode = $event->getRequest()->attributes->get($this->attribute);
        if ($mode !== null && !is_string($mode)) {
            throw new \InvalidArgumentException("sessiond: request attribute {$this->attribute} must be a string (session, readonly or none)");
        }
        if (session_status() === PHP_SESSION_ACTIVE) {
            // something started the session before the router ran: the mode
            // of this request can no longer change; say so instead of
            // silently running in another mode
            if ($mode !== null) {
                trigger_error("sessiond: the session was started before the request attribute {$this->attribute}='$mode' was read; this request keeps the mode it started with", E_USER_WARNING);
            }
            return;
        }
        SessionHandler::setMode($mode);
    }
}
