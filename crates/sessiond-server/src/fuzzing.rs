//! The bodies of the fuzz targets, shared by the coverage-guided fuzzer
//! (`fuzz/`, run by `scripts/fuzz.sh`) and the test that replays the
//! committed corpus and past findings on every `cargo test`
//! (`tests/fuzz_corpus.rs`). Not an API.

use bytes::{Bytes, BytesMut};

use crate::cmd::{Command, error_reply};
use crate::protocol::{ParseError, Protocol, RequestLimits, RequestParser, encode};

/// What a stream of bytes parsed into: the requests, and the error that
/// ended it, if one did.
type Parsed = (Vec<Vec<Bytes>>, Option<ParseError>);

fn parse_stream(chunks: &[&[u8]], limits: RequestLimits) -> Parsed {
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&mut buf, limits) {
                Ok(Some(argv)) => {
                    assert!(!argv.is_empty(), "an empty request was returned");
                    requests.push(argv);
                }
                Ok(None) => break,
                // The connection answers and closes: nothing after counts.
                Err(e) => return (requests, Some(e)),
            }
        }
    }
    (requests, None)
}

/// Parses every request as a command and uses what came out the way the
/// server does (its name, the write gate, the error reply in both
/// protocols). Must not panic.
fn parse_commands(requests: &[Vec<Bytes>]) {
    for argv in requests {
        match Command::parse(argv.clone()) {
            Ok(cmd) => {
                let _ = cmd.name();
                let _ = crate::write_gate::is_write(&cmd);
                let _ = format!("{cmd:?}");
            }
            Err(e) => {
                let reply = error_reply(&e);
                let mut out = BytesMut::new();
                encode(&reply, Protocol::Resp2, &mut out);
                encode(&reply, Protocol::Resp3, &mut out);
                let lines = out.windows(2).filter(|w| w == b"\r\n").count();
                assert_eq!(lines, 2, "an error reply is one line: {out:?}");
            }
        }
    }
}

/// The request parser and command parsing on arbitrary bytes.
///
/// The first byte picks the size limit and where the stream is split in
/// two reads; the rest is the stream. Checks that nothing panics, and that
/// the requests (and the error) do not depend on how the bytes arrive: all
/// at once, in two reads, or (for short inputs) one byte at a time.
pub fn requests(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let limits = RequestLimits {
        max_request_bytes: match control & 3 {
            0 => 64,
            1 => 1024,
            _ => 1 << 20,
        },
    };
    let whole = parse_stream(&[stream], limits);
    let at = usize::from(control >> 2) * stream.len() / 63;
    let at = at.min(stream.len());
    let split = parse_stream(&[&stream[..at], &stream[at..]], limits);
    assert_eq!(whole, split, "split at {at} parsed differently");
    if stream.len() <= 512 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let bytewise = parse_stream(&bytes, limits);
        assert_eq!(whole, bytewise, "byte by byte parsed differently");
    }
    parse_commands(&whole.0);
}

/// Command parsing on an argument vector built from arbitrary bytes: the
/// arguments are separated by 0xFF bytes (so the fuzzer reaches deep
/// argument combinations without having to get RESP framing right).
pub fn commands(data: &[u8]) {
    let argv: Vec<Bytes> = data
        .split(|b| *b == 0xFF)
        .map(Bytes::copy_from_slice)
        .collect();
    if argv.len() > 1024 {
        return;
    }
    parse_commands(&[argv]);
}
