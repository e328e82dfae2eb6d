//! Replies and their encoding.

use bytes::{BufMut, Bytes, BytesMut};

use super::Protocol;

/// A reply to one command. Commands build these; only [`encode`] knows the
/// wire format, so commands are tested without a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`-style status line.
    Simple(String),
    /// `-CODE message`; neither may contain CR or LF ([`Reply::error`]
    /// makes sure). The code is what clients and metrics match on.
    Error {
        /// The error code, e.g. `CONFLICT`.
        code: &'static str,
        /// The message after it.
        message: String,
    },
    /// `:n`.
    Int(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// Nil (`$-1` in RESP2, `_` in RESP3).
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP3); a flat array of key, value, … in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Self {
        Reply::Simple("OK".into())
    }

    /// An error line `CODE message`, with CR and LF replaced so the line
    /// stays one line whatever the message holds.
    pub fn error(code: &'static str, message: impl AsRef<str>) -> Self {
        Reply::Error {
            code,
            message: message.as_ref().replace(['\r', '\n'], " "),
        }
    }

    /// The error code, when this is an error reply.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Reply::Error { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A bulk string from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Self {
        Reply::Bulk(b.into())
    }

    /// An integer from an unsigned count; saturates at `i64::MAX`.
    pub fn uint(n: u64) -> Self {
        Reply::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error { .. })
    }
}

/// Appends `reply` to `out` in the given protocol.
pub fn encode(reply: &Reply, proto: Protocol, out: &mut BytesMut) {
    match reply {
        Reply::Simple(s) => line(out, b'+', s.as_bytes()),
        Reply::Error { code, message } => {
            out.reserve(code.len() + message.len() + 4);
            out.put_u8(b'-');
            out.put_slice(code.as_bytes());
            out.put_u8(b' ');
            out.put_slice(message.as_bytes());
            out.put_slice(b"\r\n");
        }
        Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
        Reply::Bulk(b) => {
            line(out, b'$', b.len().to_string().as_bytes());
            out.put_slice(b);
            out.put_slice(b"\r\n");
        }
        Reply::Nil => match proto {
            Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
            Protocol::Resp3 => out.put_slice(b"_\r\n"),
        },
        Reply::Array(items) => {
            line(out, b'*', items.len().to_string().as_bytes());
            for item in items {
                encode(item, proto, out);
            }
        }
        Reply::Map(pairs) => {
            match proto {
                Protocol::Resp2 => line(out, b'*', (pairs.len() * 2).to_string().as_bytes()),
                Protocol::Resp3 => line(out, b'%', pairs.len().to_string().as_bytes()),
            }
            for (k, v) in pairs {
                encode(k, proto, out);
                encode(v, proto, out);
            }
        }
    }
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(prefix);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redis_protocol::resp2::decode::decode as decode2;
    use redis_protocol::resp2::types::OwnedFrame as F2;
    use redis_protocol::resp3::decode::complete::decode as decode3;
    use redis_protocol::resp3::types::OwnedFrame as F3;

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,12}".prop_map(Reply::Simple),
            (
                prop::sample::select(vec!["ERR", "CONFLICT", "FENCED"]),
                "[a-z ]{0,12}"
            )
                .prop_map(|(code, message)| Reply::Error { code, message }),
            any::<i64>().prop_map(Reply::Int),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(|v| Reply::Bulk(v.into())),
            Just(Reply::Nil),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Reply::Array),
                // Unique keys: a RESP3 decoder folds a map into a hash map,
                // and sessiond never sends a map with a repeated key.
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|m| {
                    Reply::Map(m.into_iter().map(|(k, v)| (Reply::bulk(k), v)).collect())
                }),
            ]
        })
    }

    // What redis-protocol's decoder should see for `r` in RESP2.
    fn as_resp2(r: &Reply) -> F2 {
        match r {
            Reply::Simple(s) => F2::SimpleString(s.clone().into_bytes()),
            Reply::Error { code, message } => F2::Error(format!("{code} {message}")),
            Reply::Int(n) => F2::Integer(*n),
            Reply::Bulk(b) => F2::BulkString(b.to_vec()),
            Reply::Nil => F2::Null,
            Reply::Array(items) => F2::Array(items.iter().map(as_resp2).collect()),
            Reply::Map(pairs) => F2::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [as_resp2(k), as_resp2(v)])
                    .collect(),
            ),
        }
    }

    proptest! {
        // Our encoder agrees with an independent decoder, in both versions.
        #[test]
        fn encodes_what_redis_protocol_decodes(reply in arb_reply()) {
            let mut out = BytesMut::new();
            encode(&reply, Protocol::Resp2, &mut out);
            let (frame, used) = decode2(&out).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(frame, as_resp2(&reply));

            let mut out3 = BytesMut::new();
            encode(&reply, Protocol::Resp3, &mut out3);
            let (frame3, used3) = decode3(&out3).unwrap().unwrap();
            prop_assert_eq!(used3, out3.len());
            prop_assert_eq!(count3(&frame3), count(&reply));
        }
    }

    // Number of leaves, to compare shapes across the two type systems.
    fn count(r: &Reply) -> usize {
        match r {
            Reply::Array(items) => 1 + items.iter().map(count).sum::<usize>(),
            Reply::Map(pairs) => {
                1 + pairs
                    .iter()
                    .map(|(k, v)| count(k) + count(v))
                    .sum::<usize>()
            }
            _ => 1,
        }
    }

    fn count3(f: &F3) -> usize {
        match f {
            F3::Array { data, .. } => 1 + data.iter().map(count3).sum::<usize>(),
            F3::Map { data, .. } => {
                1 + data
                    .iter()
                    .map(|(k, v)| count3(k) + count3(v))
                    .sum::<usize>()
            }
            _ => 1,
        }
    }

    #[test]
    fn nil_differs_by_protocol() {
        let mut a = BytesMut::new();
        encode(&Reply::Nil, Protocol::Resp2, &mut a);
        assert_eq!(&a[..], b"$-1\r\n");
        let mut b = BytesMut::new();
        encode(&Reply::Nil, Protocol::Resp3, &mut b);
        assert_eq!(&b[..], b"_\r\n");
    }

    #[test]
    fn error_text_stays_on_one_line() {
        assert_eq!(
            Reply::error("ERR", "a\r\nb"),
            Reply::Error {
                code: "ERR",
                message: "a  b".into()
            }
        );
    }
}
