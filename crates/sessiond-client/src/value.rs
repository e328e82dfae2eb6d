//! Generic reply values and reply decoding.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::RangeFrame as Range2;
use redis_protocol::resp3::types::RangeFrame as Range3;

use crate::error::{Error, Result};

/// A decoded reply, as returned by [`Client::command`](crate::Client::command).
///
/// RESP2 and RESP3 replies map onto the same values: RESP3 sets and pushes
/// become [`Value::Array`], verbatim strings and big numbers become
/// [`Value::Bulk`]. Error replies never appear here; they are returned as
/// [`Error`]s.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Nil (`_` in RESP3, `$-1` / `*-1` in RESP2).
    Nil,
    /// An integer.
    Int(i64),
    /// A bulk string (also RESP3 verbatim strings and big numbers).
    Bulk(Bytes),
    /// A simple string such as `OK` or `PONG`.
    Simple(String),
    /// An array (also RESP3 sets and pushes).
    Array(Vec<Value>),
    /// A RESP3 map, as key/value pairs (in no particular order).
    Map(Vec<(Value, Value)>),
    /// A RESP3 double.
    Double(f64),
    /// A RESP3 boolean.
    Bool(bool),
}

impl Value {
    /// The integer, if this is an [`Int`](Value::Int).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bytes of a [`Bulk`](Value::Bulk) or [`Simple`](Value::Simple) string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The text of a [`Bulk`](Value::Bulk) (if UTF-8) or
    /// [`Simple`](Value::Simple) string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bulk(b) => std::str::from_utf8(b).ok(),
            Value::Simple(s) => Some(s),
            _ => None,
        }
    }

    /// True for [`Nil`](Value::Nil).
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// A short name of the variant, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Int(_) => "integer",
            Value::Bulk(_) => "bulk string",
            Value::Simple(_) => "simple string",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Double(_) => "double",
            Value::Bool(_) => "boolean",
        }
    }
}

/// One frame taken off the wire.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A reply: a value, or the server error it carried (a server error
    /// nested anywhere in the reply makes the whole reply that error).
    Reply(Result<Value>),
    /// A RESP3 push (out-of-band); not a reply to any request.
    Push,
}

/// Takes one complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a complete frame yet, and
/// `Err(Error::Protocol)` when the bytes cannot be framed at all.
///
/// The RESP3 decoder is tried first. It reads RESP2 replies too, except
/// RESP2's nil (`$-1`, `*-1`), which it takes for a streamed aggregate and
/// rejects; the RESP2 decoder is the fallback for those.
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Decoded>> {
    match redis_protocol::resp3::decode::complete::decode_range(buf) {
        Ok(None) => Ok(None),
        Ok(Some((frame, amt))) => {
            let bytes = buf.split_to(amt).freeze();
            Ok(Some(match frame {
                Range3::Push { .. } => Decoded::Push,
                frame => Decoded::Reply(from_resp3(&bytes, frame)?),
            }))
        }
        Err(e3) => match redis_protocol::resp2::decode::decode_range(buf) {
            Ok(None) => Ok(None),
            Ok(Some((frame, amt))) => {
                let bytes = buf.split_to(amt).freeze();
                Ok(Some(Decoded::Reply(from_resp2(&bytes, frame)?)))
            }
            Err(_) => Err(Error::Protocol(format!("cannot decode reply: {e3}"))),
        },
    }
}

fn slice(buf: &Bytes, (start, end): (usize, usize)) -> Result<Bytes> {
    if start <= end && end <= buf.len() {
        Ok(buf.slice(start..end))
    } else {
        Err(Error::Protocol(
            "decoder returned an out-of-range frame".into(),
        ))
    }
}

fn text(buf: &Bytes, range: (usize, usize)) -> Result<String> {
    Ok(String::from_utf8_lossy(&slice(buf, range)?).into_owned())
}

/// Converts a RESP3 frame. The outer `Result` is a framing failure (fatal for
/// the connection); the inner one a server error reply.
fn from_resp3(buf: &Bytes, frame: Range3) -> Result<Result<Value>> {
    Ok(Ok(match frame {
        Range3::BlobString { data, .. }
        | Range3::BigNumber { data, .. }
        | Range3::VerbatimString { data, .. } => Value::Bulk(slice(buf, data)?),
        Range3::SimpleString { data, .. } => Value::Simple(text(buf, data)?),
        Range3::BlobError { data, .. } | Range3::SimpleError { data, .. } => {
            return Ok(Err(Error::from_server(&text(buf, data)?)));
        }
        Range3::Boolean { data, .. } => Value::Bool(data),
        Range3::Null => Value::Nil,
        Range3::Number { data, .. } => Value::Int(data),
        Range3::Double { data, .. } => Value::Double(data),
        Range3::Array { data, .. } | Range3::Push { data, .. } => {
            let mut out = Vec::with_capacity(data.len());
            for f in data {
                match from_resp3(buf, f)? {
                    Ok(v) => out.push(v),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Value::Array(out)
        }
        Range3::Set { data, .. } => {
            let mut out = Vec::with_capacity(data.len());
            for f in data {
                match from_resp3(buf, f)? {
                    Ok(v) => out.push(v),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Value::Array(out)
        }
        Range3::Map { data, .. } => {
            let mut out = Vec::with_capacity(data.len());
            for (k, v) in data {
                let k = match from_resp3(buf, k)? {
                    Ok(k) => k,
                    Err(e) => return Ok(Err(e)),
                };
                let v = match from_resp3(buf, v)? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                out.push((k, v));
            }
            Value::Map(out)
        }
        Range3::Hello { .. } | Range3::ChunkedString(_) => {
            return Err(Error::Protocol(
                "unexpected HELLO or chunked-string frame in a reply".into(),
            ));
        }
    }))
}

/// Converts a RESP2 frame; see [`from_resp3`].
fn from_resp2(buf: &Bytes, frame: Range2) -> Result<Result<Value>> {
    Ok(Ok(match frame {
        Range2::SimpleString(r) => Value::Simple(text(buf, r)?),
        Range2::Error(r) => return Ok(Err(Error::from_server(&text(buf, r)?))),
        Range2::Integer(i) => Value::Int(i),
        Range2::BulkString(r) => Value::Bulk(slice(buf, r)?),
        Range2::Null => Value::Nil,
        Range2::Array(frames) => {
            let mut out = Vec::with_capacity(frames.len());
            for f in frames {
                match from_resp2(buf, f)? {
                    Ok(v) => out.push(v),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Value::Array(out)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Value> {
        let mut buf = BytesMut::from(bytes);
        match decode(&mut buf) {
            Ok(Some(Decoded::Reply(r))) => {
                assert!(buf.is_empty(), "left over: {buf:?}");
                r
            }
            other => panic!("{other:?}"),
        }
    }

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn resp2_frames() {
        assert_eq!(one(b"+PONG\r\n").ok(), Some(Value::Simple("PONG".into())));
        assert_eq!(one(b":-42\r\n").ok(), Some(Value::Int(-42)));
        assert_eq!(one(b"$5\r\nhe\r\no\r\n").ok(), Some(bulk("he\r\no")));
        assert_eq!(one(b"$0\r\n\r\n").ok(), Some(bulk("")));
        assert_eq!(one(b"$-1\r\n").ok(), Some(Value::Nil));
        assert_eq!(one(b"*-1\r\n").ok(), Some(Value::Nil));
        assert_eq!(one(b"*0\r\n").ok(), Some(Value::Array(vec![])));
        assert_eq!(
            one(b"*3\r\n$1\r\na\r\n:0\r\n$-1\r\n").ok(),
            Some(Value::Array(vec![bulk("a"), Value::Int(0), Value::Nil]))
        );
        assert!(matches!(
            one(b"-NOSESSION session \"x\" does not exist\r\n"),
            Err(Error::NoSession(m)) if m == "NOSESSION session \"x\" does not exist"
        ));
        // A nested error makes the reply an error, and framing stays intact.
        assert!(matches!(
            one(b"*2\r\n$-1\r\n-ERR inner\r\n"),
            Err(Error::Server { code, .. }) if code == "ERR"
        ));
    }

    #[test]
    fn resp3_frames() {
        assert_eq!(one(b"_\r\n").ok(), Some(Value::Nil));
        assert_eq!(one(b"#t\r\n").ok(), Some(Value::Bool(true)));
        assert_eq!(one(b",1.5\r\n").ok(), Some(Value::Double(1.5)));
        assert_eq!(
            one(b"(12345678901234567890123\r\n").ok(),
            Some(bulk("12345678901234567890123"))
        );
        assert_eq!(one(b"=9\r\ntxt:hello\r\n").ok(), Some(bulk("hello")));
        assert_eq!(
            one(b"~2\r\n:1\r\n:1\r\n")
                .map(|v| matches!(v, Value::Array(a) if a.len() == 1))
                .ok(),
            Some(true),
            "a set deduplicates"
        );
        assert_eq!(
            one(b"%1\r\n+proto\r\n:3\r\n").ok(),
            Some(Value::Map(vec![(
                Value::Simple("proto".into()),
                Value::Int(3)
            )]))
        );
        assert!(matches!(one(b"!9\r\nEXISTS no\r\n"), Err(Error::Exists(_))));
        // Attributes are dropped.
        assert_eq!(one(b"|1\r\n+a\r\n:1\r\n:7\r\n").ok(), Some(Value::Int(7)));
    }

    #[test]
    fn push_is_skipped_and_frames_split() {
        let mut buf = BytesMut::from(&b">2\r\n+message\r\n+x\r\n:5\r\n"[..]);
        assert!(matches!(decode(&mut buf), Ok(Some(Decoded::Push))));
        assert!(matches!(
            decode(&mut buf),
            Ok(Some(Decoded::Reply(Ok(Value::Int(5)))))
        ));
        assert!(matches!(decode(&mut buf), Ok(None)));
    }

    #[test]
    fn incomplete_frames_wait() {
        let full = b"*4\r\n$5\r\ndemo1\r\n:0\r\n#f\r\n*3\r\n$1\r\nk\r\n:7\r\n_\r\n";
        for n in 0..full.len() {
            let mut buf = BytesMut::from(&full[..n]);
            assert!(matches!(decode(&mut buf), Ok(None)), "prefix {n}");
            assert_eq!(buf.len(), n);
        }
        assert!(matches!(one(full), Ok(Value::Array(a)) if a.len() == 4));
        // Mixing RESP2 nil and RESP3 nil in one frame is not decodable.
        let mut buf = BytesMut::from(&b"*2\r\n$-1\r\n_\r\n"[..]);
        assert!(matches!(decode(&mut buf), Err(Error::Protocol(_))));
        let ok = b"*2\r\n$5\r\ndemo1\r\n$-1\r\n";
        for n in 0..ok.len() {
            let mut buf = BytesMut::from(&ok[..n]);
            assert!(matches!(decode(&mut buf), Ok(None)), "prefix {n}");
        }
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for bad in [
            &b"?what\r\n"[..],
            b":notanumber\r\n",
            b"$abc\r\n",
            b"$?\r\n;3\r\nabc\r\n;0\r\n",
            b"#x\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                matches!(decode(&mut buf), Err(Error::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn accessors() {
        assert_eq!(Value::Int(3).as_int(), Some(3));
        assert_eq!(bulk("x").as_int(), None);
        assert_eq!(bulk("x").as_bytes(), Some(&b"x"[..]));
        assert_eq!(Value::Simple("OK".into()).as_str(), Some("OK"));
        assert_eq!(Value::Bulk(Bytes::from_static(b"\xff")).as_str(), None);
        assert!(Value::Nil.is_nil());
        assert_eq!(Value::Map(vec![]).kind(), "map");
    }
}
