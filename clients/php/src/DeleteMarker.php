<?php

declare(strict_types=1);

namespace Sessiond;

/** Returned by a Session::synchronized() callback (via Session::delete()) to delete the key. */
final class DeleteMarker
{
    private static ?self $instance = null;

    private function __construct()
    {
    }

    public static function instance(): self
    {
        return self::$instance ??= new self();
    }
}
