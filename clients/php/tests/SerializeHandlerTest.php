<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use Sessiond\Tests\Support\TestCase;

final class SerializeHandlerTest extends TestCase
{
    /** @return list<array{0:string,1:string}> */
    public static function pairs(): array
    {
        return [
            ['php', 'php'],
            ['php_serialize', 'php_serialize'],
            ['php_binary', 'php_binary'],
            ['php', 'php_serialize'],
            ['php_serialize', 'php'],
        ];
    }

    /** @dataProvider pairs */
    public function testRoundTrip(string $writeWith, string $readWith): void
    {
        $id = $this->newSession();
        $w = $this->http->get('/ser.php' . self::q(['ser' => $writeWith, 'op' => 'set']), $id)['json'];
        $r = $this->http->get('/ser.php' . self::q(['ser' => $readWith, 'mode' => 'readonly']), $id)['json'];
        $this->assertSame([], $w['errors']);
        $this->assertSame([], $r['errors']);
        ksort($w['dump']);
        ksort($r['dump']);
        $this->assertSame($w['dump'], $r['dump']);
        $this->assertArrayHasKey('obj', $r['dump']);
        $this->assertCount(11, $r['dump']);
    }

    public function testEachKeyIsItsOwnFieldAndIntsArePlainDecimal(): void
    {
        $id = $this->newSession();
        $this->http->get('/ser.php' . self::q(['ser' => 'php', 'op' => 'set']), $id);
        $f = $this->serverFields($id);
        $this->assertSame('42', $f['int'][1]);
        $this->assertSame('-7', $f['neg'][1]);
        $this->assertSame(serialize('0042'), $f['digits'][1], 'numeric strings stay strings');
        $this->assertSame(serialize(false), $f['bool'][1]);
        $this->assertSame(serialize([1, 'two', [3]]), $f['list'][1]);
    }
}
