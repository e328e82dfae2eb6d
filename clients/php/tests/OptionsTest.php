<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\SessionHandler;
use Sessiond\Tests\Support\Env;
use Sessiond\Tests\Support\TestCase;

/** Options are checked when the handler is made: a typo is an error, not a silent default. */
final class OptionsTest extends TestCase
{
    public function testRegisterRejectsAnUnknownOptionName(): void
    {
        try {
            SessionHandler::register(Env::$uri, ['lock_mod' => 'none']);
            $this->fail('register() accepted an unknown option');
        } catch (\InvalidArgumentException $e) {
            $this->assertStringContainsString("unknown option 'lock_mod' passed to Sessiond\\SessionHandler", $e->getMessage());
            $this->assertStringContainsString('valid options: lock_mode, lock_wait_ms', $e->getMessage());
        }
        $this->assertNull(SessionHandler::instance(), 'nothing was registered');
    }

    public function testUnknownNamesInTheUriQueryAreRejectedToo(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        $this->expectExceptionMessage("unknown options 'lockmode', 'wait' in the URI query string");
        new SessionHandler(Env::$uri . '?lockmode=none&wait=5');
    }

    public function testKnownOptionsAreAccepted(): void
    {
        $h = new SessionHandler(Env::$uri . '?lock_mode=none', ['lock_wait_ms' => 5, 'name' => 'x']);
        $this->assertSame('none', $h->options()['lock_mode']);
        $this->assertSame(5, $h->options()['lock_wait_ms']);
    }
}
