#!/usr/bin/env python3
"""Writes the seed corpus (corpus/requests, corpus/commands). Run once;
the files are committed. The fuzzer grows its own queue from them."""
import os

SID = "0123456789abcdef0123456789abcdef"
COMMANDS = [
    ["PING"], ["PING", "hello"], ["ECHO", "x"], ["QUIT"], ["SELECT", "0"],
    ["HELLO", "3", "AUTH", "default", "pw", "SETNAME", "app"], ["HELLO", "2"],
    ["AUTH", "pw"], ["AUTH", "user", "pw"], ["INFO"], ["INFO", "persistence"],
    ["CLIENT", "ID"], ["CLIENT", "SETNAME", "n"], ["CLIENT", "GETNAME"],
    ["CLIENT", "SETINFO", "lib-name", "php"], ["CLIENT", "INFO"],
    ["COMMAND"], ["COMMAND", "COUNT"], ["COMMAND", "DOCS"],
    ["SESSION.NEW"], ["SESSION.NEW", "TTL", "60", "LIFETIME", "3600"],
    ["SESSION.READ", SID], ["SESSION.READ", SID, "CREATE", "TTL", "10", "LIFETIME", "20", "KEYS", "a", "b"],
    ["SESSION.COMMIT", SID, "CREATE", "TTL", "5", "SET", "k", "v", "IFVER", "3", "DEL", "k2", "IFVER", "1", "FENCE", "7", "UNLOCK"],
    ["SESSION.COMMIT", SID, "SET", "k", "v"],
    ["SESSION.DESTROY", SID], ["SESSION.EXISTS", SID], ["SESSION.TOUCH", SID, "TTL", "9"],
    ["SESSION.TTL", SID], ["SESSION.INCR", SID, "n", "-5", "CREATE", "FENCE", "1"],
    ["SESSION.CAS", SID, "k", "old", "new", "FENCE", "2", "UNLOCK"],
    ["SESSION.REGENERATE", SID, "GRACE", "30", "TO", "fedcba9876543210fedcba9876543210"],
    ["LOCK.ACQUIRE", SID, "KEY", "cart", "WAIT", "100", "LEASE", "1000", "REQID", "r1", "CREATE"],
    ["LOCK.ONCE", SID, "job", "WAIT", "0"], ["LOCK.RELEASE", SID, "KEY", "cart", "12"],
    ["LOCK.RENEW", SID, "5", "1000"], ["LOCK.RENEW", SID, "5", "LEASE", "1000"], ["LOCK.INFO"], ["LOCK.INFO", SID], ["LOCK.BREAK", SID, "KEY", "k"],
    ["session.read", SID], ["NOSUCH", "x"], ["SESSION.READ"], ["SESSION.NEW", "TTL", "-1"],
    ["SESSION.NEW", "TTL", "99999999999999999999999"],
]

def resp(argv):
    out = b"*%d\r\n" % len(argv)
    for a in argv:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

def write(d, name, data):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

for i, argv in enumerate(COMMANDS):
    # control byte: big limit (2), split in the middle (32 << 2)
    write("corpus/requests", "%02d-%s" % (i, argv[0].lower()), bytes([2 | (32 << 2)]) + resp(argv))
    write("corpus/commands", "%02d-%s" % (i, argv[0].lower()), b"\xff".join(a.encode() for a in argv))
# Inline, pipelines, framing edge cases, the small limit.
write("corpus/requests", "inline", bytes([2]) + b"PING hello\r\nSESSION.EXISTS " + SID.encode() + b"\n")
write("corpus/requests", "pipeline", bytes([2 | (10 << 2)]) + b"".join(resp(a) for a in COMMANDS[:6]))
write("corpus/requests", "empty-arrays", bytes([1]) + b"*0\r\n*-1\r\n\r\n" + resp(["PING"]))
write("corpus/requests", "too-large", bytes([0]) + resp(["SESSION.COMMIT", SID, "SET", "k", "v" * 100]))
write("corpus/requests", "partial", bytes([2 | (63 << 2)]) + b"*2\r\n$4\r\nPING\r\n$10\r\nabc")
write("corpus/requests", "bad-length", bytes([2]) + b"*1\r\n$-5\r\nx\r\n")
write("corpus/requests", "quoted-inline", bytes([2]) + b'ECHO "a b\\x41" \'c\'\r\n')
