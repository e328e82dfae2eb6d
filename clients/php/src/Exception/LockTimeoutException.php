<?php

declare(strict_types=1);

namespace Sessiond\Exception;

/** A lock could not be acquired within the wait time (server error TIMEOUT or DEADLOCK). */
class LockTimeoutException extends SessiondException
{
}
