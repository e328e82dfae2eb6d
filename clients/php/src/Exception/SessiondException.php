<?php

declare(strict_types=1);

namespace Sessiond\Exception;

/** Base class of everything this package throws. */
class SessiondException extends \RuntimeException
{
}
