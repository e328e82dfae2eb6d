<?php

declare(strict_types=1);

namespace Sessiond\Exception;

/**
 * A fenced operation was refused (server error FENCED): the lock this request
 * held ran out (lease, --lock-max-hold) or was broken by an admin, and nothing
 * was applied.
 */
class LockLostException extends SessiondException
{
}
