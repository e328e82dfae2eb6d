<?php

declare(strict_types=1);

namespace Sessiond\Exception;

/**
 * The connection was lost after a request that changes something was sent
 * (the node died, or the cluster's leader failed during the request): it may
 * or may not have been applied. Never retried by the client; the caller
 * decides (read the state back before doing it again). A server's `UNKNOWN`
 * reply is a ServerException whose is('UNKNOWN') is true, and means the same.
 */
class OutcomeUnknownException extends ConnectionException
{
}
