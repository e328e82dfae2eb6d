//! The request parser.
//!
//! Why not a general RESP decoder (redis-protocol's): a server must accept
//! only what Redis accepts, and must stay bounded against hostile input. The
//! general decoders recurse into nested arrays without a depth limit (a
//! request of `*1\r\n` repeated overflows the stack) and re-scan a partial
//! frame from its start on every read. This parser keeps its position across
//! reads, never nests, takes argument bytes out of the read buffer without
//! copying, and checks every length prefix against the limits before it
//! waits for or allocates anything.

use bytes::{Buf, Bytes, BytesMut};

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest request, all arguments and framing included.
    pub max_request_bytes: usize,
}

/// Why a request could not be parsed. Either way the stream can no longer be
/// framed, so the connection answers with an error and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Bytes that are not a request.
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// A request larger than the limit (known from a length prefix, or from
    /// the bytes received so far).
    #[error("request larger than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
}

/// The longest line the parser waits for: a length prefix or an inline
/// command. Redis uses 64 KiB for inline commands too.
const MAX_LINE: usize = 64 * 1024;

/// Arguments are preallocated up to this many; beyond it the vector grows
/// with the arguments actually received, so a hostile count allocates
/// nothing.
const MAX_PREALLOCATED_ARGS: usize = 64;

/// An incremental parser of requests; one per connection.
#[derive(Debug, Default)]
pub struct RequestParser {
    // Set while in the middle of a multibulk request.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    argc: usize,
    args: Vec<Bytes>,
    // Bytes of this request consumed so far (framing included).
    consumed: usize,
}

impl RequestParser {
    /// A parser at the start of a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next complete request out of `buf`. Returns `Ok(None)` when
    /// more bytes are needed; what was parsed so far is kept. An empty vector
    /// is never returned (empty inline lines and `*0` are skipped).
    ///
    /// # Errors
    /// [`ParseError`] when `buf` holds something that is not a request or is
    /// over the limit; the connection must then be closed.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: RequestLimits,
    ) -> Result<Option<Vec<Bytes>>, ParseError> {
        loop {
            if self.pending.is_none() {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                if first != b'*' {
                    match parse_inline(buf, limits)? {
                        Some(args) if args.is_empty() => continue,
                        other => return Ok(other),
                    }
                }
                let Some((argc, used)) = read_length(buf, b'*')? else {
                    return Ok(None);
                };
                let argc = match argc {
                    // `*0` and `*-1` are no request; Redis ignores them too.
                    n if n <= 0 => {
                        buf.advance(used);
                        continue;
                    }
                    n => n as usize,
                };
                // Each argument takes at least `$0\r\n\r\n`, six bytes.
                if argc.saturating_mul(6).saturating_add(used) > limits.max_request_bytes {
                    return Err(ParseError::TooLarge {
                        limit: limits.max_request_bytes,
                    });
                }
                buf.advance(used);
                self.pending = Some(Pending {
                    argc,
                    args: Vec::with_capacity(argc.min(MAX_PREALLOCATED_ARGS)),
                    consumed: used,
                });
            }
            let Some(p) = self.pending.as_mut() else {
                continue;
            };
            while p.args.len() < p.argc {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'$') => {}
                    Some(other) => {
                        return Err(ParseError::Protocol(format!(
                            "expected '$', got '{}'",
                            char::from(*other).escape_default()
                        )));
                    }
                }
                let Some((len, used)) = read_length(buf, b'$')? else {
                    return Ok(None);
                };
                let len = usize::try_from(len)
                    .map_err(|_| ParseError::Protocol("invalid bulk length".into()))?;
                let total = used + len + 2;
                if p.consumed.saturating_add(total) > limits.max_request_bytes {
                    return Err(ParseError::TooLarge {
                        limit: limits.max_request_bytes,
                    });
                }
                if buf.len() < total {
                    // Make room once for the whole argument, which the limit
                    // check above bounds.
                    buf.reserve(total - buf.len());
                    return Ok(None);
                }
                if &buf[used + len..total] != b"\r\n" {
                    return Err(ParseError::Protocol("bulk string not ended by CRLF".into()));
                }
                buf.advance(used);
                let arg = buf.split_to(len).freeze();
                buf.advance(2);
                p.consumed += total;
                p.args.push(arg);
            }
            let done = self.pending.take().map(|p| p.args);
            return Ok(done);
        }
    }
}

/// Reads `<prefix><integer>\r\n` at the start of `buf`; returns the integer
/// and the bytes the line takes, or `None` if the line is incomplete.
fn read_length(buf: &[u8], prefix: u8) -> Result<Option<(i64, usize)>, ParseError> {
    debug_assert_eq!(buf.first(), Some(&prefix));
    let Some(nl) = find_crlf(buf, MAX_LINE)? else {
        return Ok(None);
    };
    let digits = &buf[1..nl];
    let what = if prefix == b'*' { "multibulk" } else { "bulk" };
    let n = std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ParseError::Protocol(format!("invalid {what} length")))?;
    Ok(Some((n, nl + 2)))
}

/// Position of the `\r\n` ending the first line, if it is in `buf`.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, ParseError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(pos) => Ok(Some(pos)),
        None if buf.len() > max => Err(ParseError::Protocol("too big inline request".into())),
        None => Ok(None),
    }
}

/// An inline command: one line of words separated by spaces, ended by `\n`
/// (with an optional `\r`), as typed into `telnet` or `nc`.
fn parse_inline(
    buf: &mut BytesMut,
    limits: RequestLimits,
) -> Result<Option<Vec<Bytes>>, ParseError> {
    let max = MAX_LINE.min(limits.max_request_bytes);
    let window = &buf[..buf.len().min(max + 1)];
    let Some(nl) = window.iter().position(|b| *b == b'\n') else {
        if buf.len() > max {
            return Err(ParseError::Protocol("too big inline request".into()));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1).freeze();
    let text = line.slice(..nl);
    let text = text.strip_suffix(b"\r").unwrap_or(&text);
    let args = text
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
        .map(|w| line.slice_ref(w))
        .collect();
    Ok(Some(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_request_bytes: 1024,
    };

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ParseError> {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = parser.parse(&mut buf, LIMITS)? {
            out.push(req);
        }
        Ok(out)
    }

    #[test]
    fn parses_multibulk_and_inline() {
        let mut input = encode(&[b"SET", b"k", b"v\r\nx"]);
        input.extend_from_slice(b"PING  hello\r\n\r\n");
        let reqs = parse_all(&input).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0][2], Bytes::from_static(b"v\r\nx"));
        assert_eq!(reqs[1], vec![Bytes::from("PING"), Bytes::from("hello")]);
    }

    #[test]
    fn hostile_lengths_are_refused_before_waiting() {
        assert_eq!(
            parse_all(b"*1\r\n$1000000000\r\n"),
            Err(ParseError::TooLarge { limit: 1024 })
        );
        assert_eq!(
            parse_all(b"*2147483647\r\n"),
            Err(ParseError::TooLarge { limit: 1024 })
        );
        assert!(matches!(
            parse_all(b"*1\r\n$-5\r\n"),
            Err(ParseError::Protocol(_))
        ));
        assert!(matches!(
            parse_all(b"*1\r\n*1\r\n"),
            Err(ParseError::Protocol(_))
        ));
        assert!(matches!(parse_all(b"*x\r\n"), Err(ParseError::Protocol(_))));
        assert!(matches!(
            parse_all(b"*1\r\n$1\r\nabc"),
            Err(ParseError::Protocol(_))
        ));
    }

    #[test]
    fn an_endless_line_is_refused() {
        let line = vec![b'a'; MAX_LINE + 10];
        assert!(matches!(parse_all(&line), Err(ParseError::Protocol(_))));
        let mut star = b"*".to_vec();
        star.extend(std::iter::repeat_n(b'1', MAX_LINE + 10));
        assert!(parse_all(&star).is_err());
    }

    proptest! {
        // Whatever the bytes, the parser returns (never panics), and what it
        // returns is bounded by the input.
        #[test]
        fn never_panics_on_garbage(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_all(&input);
        }

        #[test]
        fn garbage_after_a_star_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut input = b"*3\r\n$".to_vec();
            input.extend(tail);
            let _ = parse_all(&input);
        }

        // Any request, split at any points, parses to exactly itself.
        #[test]
        fn round_trips_across_any_split(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut wire = encode(&refs);
            wire.extend(encode(&refs));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(wire.len());
            let mut parser = RequestParser::new();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                buf.extend_from_slice(&wire[start..cut]);
                start = cut;
                while let Some(req) = parser.parse(&mut buf, LIMITS).unwrap() {
                    got.push(req);
                }
            }
            let want: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.clone())).collect();
            prop_assert_eq!(got, vec![want.clone(), want]);
        }
    }
}
