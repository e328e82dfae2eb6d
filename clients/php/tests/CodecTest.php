<?php

declare(strict_types=1);

namespace Sessiond\Tests;

use PHPUnit\Framework\TestCase;
use Sessiond\Codec;

final class CodecTest extends TestCase
{
    public function testIntsAreStoredAsPlainDecimal(): void
    {
        $this->assertSame('42', Codec::encodeValue(42));
        $this->assertSame('-7', Codec::encodeValue(-7));
        $this->assertSame(42, Codec::decodeValue('42'));
        $this->assertSame(-7, Codec::decodeValue('-7'));
        $this->assertSame(7, Codec::decodeValue('007'));
        $this->assertSame('99999999999999999999', Codec::decodeValue('99999999999999999999'));
    }

    public function testOtherValuesAreSerialized(): void
    {
        foreach (['42', '', 'x', 1.5, true, false, null, [1, [2]], ['a' => new \ArrayObject([1])]] as $v) {
            $enc = Codec::encodeValue($v);
            $this->assertMatchesRegularExpression('/[;}]$/', $enc);
            $this->assertEquals($v, Codec::decodeValue($enc));
        }
        $this->assertSame(false, Codec::decodeValue('b:0;'));
        $this->assertSame('plain text', Codec::decodeValue('plain text'), 'values written by other clients come back raw');
    }

    /** @dataProvider handlers */
    public function testSessionFormatRoundTrip(string $handler): void
    {
        $data = ['a' => 1, 'b' => "x|y;\"}\n", 'c' => [1, 2, ['d' => null]], 'e' => new \ArrayObject(['k' => 'v']), 'f' => 2.5, 'g' => false];
        $enc = Codec::encodeSession($data, $handler);
        $this->assertEquals($data, Codec::decodeSession($enc, $handler));
        $this->assertSame([], Codec::decodeSession('', $handler));
    }

    /** @return list<array{0:string}> */
    public static function handlers(): array
    {
        return [['php'], ['php_serialize'], ['php_binary']];
    }

    public function testPhpFormatWithReferencesAcrossKeys(): void
    {
        // exactly what PHP's own `php` serializer produces for shared objects/references
        $s = 'a|O:8:"stdClass":1:{s:1:"x";i:1;}b|r:1;c|a:2:{i:0;i:1;i:1;i:2;}d|R:4;e|a:1:{i:0;r:1;}';
        $d = Codec::decodeSession($s, 'php');
        $this->assertSame($d['a'], $d['b']);
        $this->assertSame($d['a'], $d['e'][0]);
        $this->assertSame([1, 2], $d['d']);
    }

    public function testGarbageIsRejectedNotEmptied(): void
    {
        $this->assertNull(Codec::decodeSession('garbage', 'php'));
        $this->assertNull(Codec::decodeSession('a|i:1;b|', 'php'));
        $this->assertNull(Codec::decodeSession('a:1:{', 'php_serialize'));
    }

    /** @dataProvider handlers */
    public function testSplitSessionGivesFieldEncodingsWithoutUnserializing(string $handler): void
    {
        $data = ['a' => 1, 'b' => "x|y;\"}\n", 'c' => [1, 2, ['d' => null]], 'e' => new \ArrayObject(['k' => 'v']), 'f' => 2.5, 'g' => false, 'h' => -3, '7' => 'numeric key'];
        if ($handler !== 'php_serialize') {
            unset($data['7']); // PHP skips numeric keys there
        }
        $enc = Codec::encodeSession($data, $handler);
        $split = Codec::splitSession($enc, $handler);
        $expected = [];
        foreach ($data as $k => $v) {
            $expected[(string) $k] = Codec::encodeValue($v);
        }
        $this->assertSame($expected, $split);
        $this->assertSame('1', $split['a']);
        $this->assertSame('-3', $split['h']);
        $this->assertNull(Codec::splitSession(substr($enc, 0, -1), $handler));
    }

    public function testSplitSessionWithReferencesFallsBackToDecoding(): void
    {
        $s = 'a|O:8:"stdClass":1:{s:1:"x";i:1;}b|r:1;n|i:5;';
        $split = Codec::splitSession($s, 'php');
        $this->assertSame(serialize((object) ['x' => 1]), $split['b']);
        $this->assertSame('5', $split['n']);
    }

    public function testSplitSessionDoesNotWakeObjects(): void
    {
        $obj = serialize(new WakeCounter());
        WakeCounter::$wakes = 0;
        $this->assertSame(['w' => $obj], Codec::splitSession('w|' . $obj, 'php'));
        $this->assertSame(0, WakeCounter::$wakes);
        Codec::decodeSession('w|' . $obj, 'php');
        $this->assertSame(1, WakeCounter::$wakes, 'control: decoding does wake it');
    }
}

final class WakeCounter
{
    public static int $wakes = 0;

    public function __wakeup(): void
    {
        self::$wakes++;
    }
}
