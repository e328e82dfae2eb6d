<?php

declare(strict_types=1);

namespace Sessiond\Exception;

/**
 * The server could not be reached, the connection broke, a reply did not
 * arrive within the timeout, or the reply could not be parsed. The connection
 * is closed when this is thrown (the byte stream can no longer be trusted),
 * which also makes the server release every lock it held.
 */
class ConnectionException extends SessiondException
{
}
