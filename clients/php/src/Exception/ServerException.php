<?php

declare(strict_types=1);

namespace Sessiond\Exception;

/**
 * An error reply from the server (`-CODE message`). The code word
 * (ERR, NOSESSION, CONFLICT, TIMEOUT, FENCED, OOM when the server is at
 * --max-memory, …; see docs/protocol.md) is available through errorCode().
 */
class ServerException extends SessiondException
{
    private string $errorCode;

    public function __construct(string $line)
    {
        $sp = strpos($line, ' ');
        $this->errorCode = $sp === false ? $line : substr($line, 0, $sp);
        parent::__construct($line);
    }

    public function errorCode(): string
    {
        return $this->errorCode;
    }

    public function is(string $code): bool
    {
        return strcasecmp($this->errorCode, $code) === 0;
    }
}
