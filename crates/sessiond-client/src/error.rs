//! The client's error type.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to sessiond.
///
/// Server errors are classified by the code word that starts the error line
/// (see the "Errors" section of `docs/protocol.md`). Their `String` payload
/// (and `message` fields) hold the **whole** error line as the server sent it,
/// code word included, e.g. `NOSESSION session "x" does not exist`, so that
/// `to_string()` prints exactly what `redis-cli` would show.
///
/// After [`Error::Io`], [`Error::Protocol`] raised while framing a reply, or
/// [`Error::Closed`], the connection is dropped and every later call returns
/// [`Error::Closed`]; reconnect. Server errors and reply-shape errors leave the
/// connection usable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The reply could not be decoded, or did not have the shape the command
    /// documents.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed: the server closed it, or an earlier request
    /// failed or was cancelled mid-flight (which leaves the stream unframed, so
    /// the client drops it; this also releases the connection's locks).
    #[error("connection closed")]
    Closed,
    /// `NOSESSION`: the session does not exist.
    #[error("{0}")]
    NoSession(String),
    /// `CONFLICT`: a conditional commit failed.
    #[error("{message}")]
    Conflict {
        /// The conflicting keys, unquoted (lossy UTF-8 for binary keys).
        keys: Vec<String>,
        /// The whole error line.
        message: String,
    },
    /// `FENCED`: the fencing token is no longer the current grant.
    #[error("{0}")]
    Fenced(String),
    /// `TIMEOUT`: a lock wait ran out.
    #[error("{0}")]
    Timeout(String),
    /// `DEADLOCK`: the lock wait would close a cycle.
    #[error("{0}")]
    Deadlock(String),
    /// `LIMIT`: a size or count limit was exceeded.
    #[error("{0}")]
    Limit(String),
    /// `NOTINT`: `SESSION.INCR` on a non-integer value, or overflow.
    #[error("{0}")]
    NotInt(String),
    /// `BADID`: the session id is not valid.
    #[error("{0}")]
    BadId(String),
    /// `EXISTS`: the target id of `SESSION.REGENERATE … TO` already exists.
    #[error("{0}")]
    Exists(String),
    /// `NOTHELD`: a lock operation on a lock this connection does not hold.
    #[error("{0}")]
    NotHeld(String),
    /// `TRYAGAIN` (cluster): no leader was reachable from the node; nothing
    /// was applied, the request may be sent again (here or to another node).
    /// A client with a node list ([`Client::connect_any`](crate::Client::connect_any))
    /// retries it itself and returns it only when its attempts ran out.
    #[error("{0}")]
    TryAgain(String),
    /// The outcome of the request is unknown: it may or may not have been
    /// applied. Either the server said `UNKNOWN` (the leader failed during
    /// the request), or — with a node list — the connection was lost after
    /// the request was sent. The message starts with `UNKNOWN` in both
    /// cases; [`Error::code`] is `"UNKNOWN"`. Check the state (read it back)
    /// before doing it again if doing it twice matters.
    #[error("{0}")]
    Unknown(String),
    /// `NOAUTH` or `WRONGPASS`.
    #[error("{0}")]
    Auth(String),
    /// Any other server error (`ERR …`, unknown codes).
    #[error("{message}")]
    Server {
        /// The leading code word, e.g. `ERR`.
        code: String,
        /// The whole error line.
        message: String,
    },
}

impl Error {
    /// Classifies a server error line (without the leading `-` and trailing
    /// CRLF) by its code word.
    pub fn from_server(line: &str) -> Error {
        let message = line.to_owned();
        match code_word(line) {
            "NOSESSION" => Error::NoSession(message),
            "CONFLICT" => Error::Conflict {
                keys: parse_conflict_keys(line),
                message,
            },
            "FENCED" => Error::Fenced(message),
            "TIMEOUT" => Error::Timeout(message),
            "DEADLOCK" => Error::Deadlock(message),
            "LIMIT" => Error::Limit(message),
            "NOTINT" => Error::NotInt(message),
            "BADID" => Error::BadId(message),
            "EXISTS" => Error::Exists(message),
            "NOTHELD" => Error::NotHeld(message),
            "NOAUTH" | "WRONGPASS" => Error::Auth(message),
            "TRYAGAIN" => Error::TryAgain(message),
            "UNKNOWN" => Error::Unknown(message),
            code => Error::Server {
                code: code.to_owned(),
                message,
            },
        }
    }

    /// The server's error code word (`"NOSESSION"`, `"ERR"`, `"WRONGPASS"`, …),
    /// or `None` for client-side errors (I/O, protocol, closed).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Io(_) | Error::Protocol(_) | Error::Closed => None,
            Error::NoSession(_) => Some("NOSESSION"),
            Error::Conflict { .. } => Some("CONFLICT"),
            Error::Fenced(_) => Some("FENCED"),
            Error::Timeout(_) => Some("TIMEOUT"),
            Error::Deadlock(_) => Some("DEADLOCK"),
            Error::Limit(_) => Some("LIMIT"),
            Error::NotInt(_) => Some("NOTINT"),
            Error::BadId(_) => Some("BADID"),
            Error::Exists(_) => Some("EXISTS"),
            Error::NotHeld(_) => Some("NOTHELD"),
            Error::TryAgain(_) => Some("TRYAGAIN"),
            Error::Unknown(_) => Some("UNKNOWN"),
            Error::Auth(m) => Some(code_word(m)),
            Error::Server { code, .. } => Some(code),
        }
    }

    /// True for errors sent by the server (those with a [`code`](Error::code)).
    /// [`Error::Unknown`] counts as one also when the client made it (a
    /// connection lost after sending), because it has the same meaning.
    pub fn is_server_error(&self) -> bool {
        self.code().is_some()
    }

    /// True when the request may or may not have been applied
    /// ([`Error::Unknown`]).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::Unknown(_))
    }
}

fn code_word(line: &str) -> &str {
    line.split_ascii_whitespace().next().unwrap_or("")
}

/// Extracts the quoted keys after `keys:` in a `CONFLICT` message. Accepts
/// any separator between the quoted strings, and both Redis-style and
/// Rust-`Debug`-style escapes inside them (`\"`, `\\`, `\n`, `\r`, `\t`,
/// `\0`, `\a`, `\b`, `\xHH`, `\u{XXXX}`).
fn parse_conflict_keys(line: &str) -> Vec<String> {
    let Some(pos) = line.find("keys:") else {
        return Vec::new();
    };
    let rest = &line.as_bytes()[pos + "keys:".len()..];
    let mut keys = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        if rest[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut key = Vec::new();
        while i < rest.len() && rest[i] != b'"' {
            if rest[i] == b'\\' && i + 1 < rest.len() {
                i += 1;
                match rest[i] {
                    b'n' => key.push(b'\n'),
                    b'r' => key.push(b'\r'),
                    b't' => key.push(b'\t'),
                    b'a' => key.push(0x07),
                    b'b' => key.push(0x08),
                    b'0' => key.push(0),
                    b'u' => match parse_unicode_escape(&rest[i + 1..]) {
                        Some((c, used)) => {
                            let mut utf8 = [0; 4];
                            key.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                            i += used;
                        }
                        None => key.push(b'u'),
                    },
                    b'x' => match rest.get(i + 1..i + 3).and_then(hex_byte) {
                        Some(b) => {
                            key.push(b);
                            i += 2;
                        }
                        None => key.push(b'x'),
                    },
                    other => key.push(other),
                }
            } else {
                key.push(rest[i]);
            }
            i += 1;
        }
        keys.push(String::from_utf8_lossy(&key).into_owned());
        i += 1; // the closing quote
    }
    keys
}

/// Parses the `{XXXX}` of a Rust `\u{XXXX}` escape; returns the char and the
/// number of bytes used.
fn parse_unicode_escape(rest: &[u8]) -> Option<(char, usize)> {
    let body = rest.strip_prefix(b"{")?;
    let end = body.iter().position(|&b| b == b'}')?;
    let hex = std::str::from_utf8(&body[..end]).ok()?;
    let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
    Some((c, end + 2))
}

fn hex_byte(h: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(h).ok()?;
    u8::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes() {
        let cases = [
            ("NOSESSION session \"demo2\" does not exist", "NOSESSION"),
            ("FENCED token 1 is not the current grant", "FENCED"),
            ("TIMEOUT lock wait timed out", "TIMEOUT"),
            ("DEADLOCK wait would deadlock", "DEADLOCK"),
            (
                "LIMIT value of \"k\" is 5 bytes, more than the limit of 4",
                "LIMIT",
            ),
            ("NOTINT value of \"user\" is not an integer", "NOTINT"),
            (
                "BADID session id must match [A-Za-z0-9,._:-]{1,128}",
                "BADID",
            ),
            ("EXISTS session \"x\" already exists", "EXISTS"),
            ("NOTHELD lock not held", "NOTHELD"),
            ("TRYAGAIN no leader", "TRYAGAIN"),
            ("UNKNOWN the leader failed", "UNKNOWN"),
            ("NOAUTH Authentication required.", "NOAUTH"),
            ("WRONGPASS invalid username-password pair", "WRONGPASS"),
            ("ERR unknown command 'X'", "ERR"),
            ("WEIRD something", "WEIRD"),
        ];
        for (line, code) in cases {
            let e = Error::from_server(line);
            assert_eq!(e.code(), Some(code), "{line}");
            assert_eq!(e.to_string(), line);
            assert!(e.is_server_error());
        }
        assert!(matches!(
            Error::from_server("NOSESSION x"),
            Error::NoSession(_)
        ));
        assert!(matches!(Error::from_server("NOAUTH x"), Error::Auth(_)));
        assert!(matches!(
            Error::from_server("TRYAGAIN x"),
            Error::TryAgain(_)
        ));
        assert!(Error::from_server("UNKNOWN x").is_outcome_unknown());
        assert!(matches!(Error::from_server("WRONGPASS x"), Error::Auth(_)));
        assert!(matches!(
            Error::from_server("ERR x"),
            Error::Server { code, .. } if code == "ERR"
        ));
        assert!(matches!(
            Error::from_server(""),
            Error::Server { code, .. } if code.is_empty()
        ));
        assert_eq!(Error::Closed.code(), None);
        assert!(!Error::Protocol("x".into()).is_server_error());
    }

    #[test]
    fn conflict_keys() {
        let e = Error::from_server("CONFLICT version mismatch on keys: \"a\"");
        match e {
            Error::Conflict { keys, message } => {
                assert_eq!(keys, vec!["a"]);
                assert_eq!(message, "CONFLICT version mismatch on keys: \"a\"");
            }
            other => panic!("{other:?}"),
        }
        let e = Error::from_server(
            r#"CONFLICT version mismatch on keys: "a", "b c" "q\"x\\y" "\x41\n""#,
        );
        match e {
            Error::Conflict { keys, .. } => {
                assert_eq!(keys, vec!["a", "b c", "q\"x\\y", "A\n"]);
            }
            other => panic!("{other:?}"),
        }
        // The format sessiond itself uses: Rust `{:?}` of each key, joined by ", ".
        let keys_in = [
            "a",
            "tab\there",
            "nul\0",
            "esc\u{1b}",
            "quote\"'",
            "é\u{fffd}",
        ];
        let line = format!(
            "CONFLICT version mismatch on keys: {}",
            keys_in
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match Error::from_server(&line) {
            Error::Conflict { keys, .. } => assert_eq!(keys, keys_in),
            other => panic!("{other:?}"),
        }
        // No key list, bad escapes and unterminated quotes do not panic.
        for line in [
            "CONFLICT",
            "CONFLICT keys:",
            "CONFLICT keys: \"abc",
            "CONFLICT keys: \"\\",
            "CONFLICT keys: \"\\x4\"",
            "CONFLICT keys: \"\\xzz\"",
            "CONFLICT keys: \"\\u{zz}\"",
            "CONFLICT keys: \"\\u{110000}\"",
            "CONFLICT keys: \"\\u{1b\"",
            "CONFLICT keys: \"\\u",
        ] {
            let _ = Error::from_server(line);
        }
        match Error::from_server("CONFLICT keys: \"\\xzz\"") {
            Error::Conflict { keys, .. } => assert_eq!(keys, vec!["xzz"]),
            other => panic!("{other:?}"),
        }
    }
}
