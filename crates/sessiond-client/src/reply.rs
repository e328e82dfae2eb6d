//! Reply-shape parsers: the server's replies into the public types. They
//! never panic: a reply of the wrong shape is an `Error::Protocol` naming the
//! command and what was expected.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::types::{
    CasResult, CommitResult, Field, LockGrant, LockInfo, LockScope, LockWaiter, OnceResult,
    SessionData,
};
use crate::value::Value;

fn bad(what: &str, expected: &str, got: &Value) -> Error {
    Error::Protocol(format!(
        "{what}: expected {expected}, got {} {got:?}",
        got.kind()
    ))
}

/// An array of at least `min` elements (extra trailing elements are ignored
/// so that the server may append fields later).
pub(crate) fn array(v: Value, min: usize, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) if a.len() >= min => Ok(a),
        other => Err(bad(what, &format!("an array of {min}+ elements"), &other)),
    }
}

/// An integer; RESP3 booleans count as 0/1 and decimal strings are accepted.
pub(crate) fn int(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Bulk(_) | Value::Simple(_) => v
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(what, "an integer", v)),
        other => Err(bad(what, "an integer", other)),
    }
}

/// A non-negative integer.
pub(crate) fn uint(v: &Value, what: &str) -> Result<u64> {
    u64::try_from(int(v, what)?).map_err(|_| bad(what, "a non-negative integer", v))
}

/// `0`/`1` (or a RESP3 boolean).
pub(crate) fn flag(v: &Value, what: &str) -> Result<bool> {
    match int(v, what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(bad(what, "0 or 1", v)),
    }
}

/// A bulk or simple string, as bytes.
pub(crate) fn bytes(v: Value, what: &str) -> Result<Bytes> {
    match v {
        Value::Bulk(b) => Ok(b),
        Value::Simple(s) => Ok(Bytes::from(s)),
        other => Err(bad(what, "a string", &other)),
    }
}

/// A string or nil.
pub(crate) fn opt_bytes(v: Value, what: &str) -> Result<Option<Bytes>> {
    match v {
        Value::Nil => Ok(None),
        v => bytes(v, what).map(Some),
    }
}

/// A UTF-8 string.
pub(crate) fn string(v: Value, what: &str) -> Result<String> {
    match v {
        Value::Simple(s) => Ok(s),
        Value::Bulk(b) => String::from_utf8(b.to_vec())
            .map_err(|_| Error::Protocol(format!("{what}: expected UTF-8 text"))),
        other => Err(bad(what, "a string", &other)),
    }
}

/// A string, lossily decoded; `None` when nil or empty.
fn opt_name(v: Value, what: &str) -> Result<Option<String>> {
    Ok(opt_bytes(v, what)?
        .filter(|b| !b.is_empty())
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A simple `OK` (or any string: some servers answer `+OK` as bulk).
pub(crate) fn ok(v: Value, what: &str) -> Result<()> {
    match &v {
        Value::Simple(_) | Value::Bulk(_) if v.as_bytes() == Some(b"OK") => Ok(()),
        other => Err(bad(what, "OK", other)),
    }
}

/// `SESSION.READ` reply (also the `read` part of lock grants).
pub(crate) fn session(v: Value, what: &str) -> Result<Option<SessionData>> {
    if v.is_nil() {
        return Ok(None);
    }
    let mut it = array(v, 4, what)?.into_iter();
    let (Some(id), Some(version), Some(created), Some(fields)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Error::Protocol(format!("{what}: short array")));
    };
    let raw = match fields {
        Value::Array(a) if a.len() % 3 == 0 => a,
        other => {
            return Err(bad(
                what,
                "a flat array of key, version, value triples",
                &other,
            ));
        }
    };
    let mut fields = Vec::with_capacity(raw.len() / 3);
    let mut raw = raw.into_iter();
    while let (Some(key), Some(version), Some(value)) = (raw.next(), raw.next(), raw.next()) {
        fields.push(Field {
            key: bytes(key, what)?,
            version: uint(&version, what)?,
            value: opt_bytes(value, what)?,
        });
    }
    Ok(Some(SessionData {
        id: string(id, what)?,
        version: uint(&version, what)?,
        created: flag(&created, what)?,
        fields,
    }))
}

/// `SESSION.COMMIT` reply.
pub(crate) fn commit_result(v: Value) -> Result<CommitResult> {
    const WHAT: &str = "SESSION.COMMIT";
    let mut it = array(v, 2, WHAT)?.into_iter();
    let (Some(version), Some(ops)) = (it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    let op_versions = array(ops, 0, WHAT)?
        .iter()
        .map(|v| uint(v, WHAT))
        .collect::<Result<_>>()?;
    Ok(CommitResult {
        version: uint(&version, WHAT)?,
        op_versions,
    })
}

/// `SESSION.INCR` reply.
pub(crate) fn incr_result(v: Value) -> Result<(i64, u64)> {
    const WHAT: &str = "SESSION.INCR";
    let a = array(v, 2, WHAT)?;
    Ok((int(&a[0], WHAT)?, uint(&a[1], WHAT)?))
}

/// `SESSION.CAS` reply.
pub(crate) fn cas_result(v: Value) -> Result<CasResult> {
    const WHAT: &str = "SESSION.CAS";
    let mut it = array(v, 2, WHAT)?.into_iter();
    let (Some(swapped), Some(version)) = (it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    let version = uint(&version, WHAT)?;
    if flag(&swapped, WHAT)? {
        Ok(CasResult::Swapped { version })
    } else {
        let current = match it.next() {
            Some(v) => opt_bytes(v, WHAT)?,
            None => return Err(Error::Protocol(format!("{WHAT}: mismatch without value"))),
        };
        Ok(CasResult::Mismatch { version, current })
    }
}

/// `LOCK.ACQUIRE` reply.
pub(crate) fn lock_grant(v: Value) -> Result<LockGrant> {
    const WHAT: &str = "LOCK.ACQUIRE";
    let mut it = array(v, 2, WHAT)?.into_iter();
    let (Some(token), Some(read)) = (it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    Ok(LockGrant {
        token: uint(&token, WHAT)?,
        data: session(read, WHAT)?,
    })
}

/// `LOCK.ONCE` reply.
pub(crate) fn once_result(v: Value) -> Result<OnceResult> {
    const WHAT: &str = "LOCK.ONCE";
    let mut it = array(v, 3, WHAT)?.into_iter();
    let (Some(token), Some(version), Some(value)) = (it.next(), it.next(), it.next()) else {
        return Err(Error::Protocol(format!("{WHAT}: short array")));
    };
    let token = uint(&token, WHAT)?;
    let version = uint(&version, WHAT)?;
    let value = opt_bytes(value, WHAT)?;
    Ok(if token == 0 {
        OnceResult::Computed { version, value }
    } else {
        OnceResult::MustCompute {
            token,
            version,
            value,
        }
    })
}

fn scope(v: Value, what: &str) -> Result<LockScope> {
    let s = bytes(v, what)?;
    if s.eq_ignore_ascii_case(b"session") {
        Ok(LockScope::Session)
    } else if s.eq_ignore_ascii_case(b"key") {
        Ok(LockScope::Key)
    } else {
        Err(Error::Protocol(format!(
            "{what}: unknown lock scope {:?}",
            String::from_utf8_lossy(&s)
        )))
    }
}

/// `LOCK.INFO` reply.
pub(crate) fn lock_infos(v: Value) -> Result<Vec<LockInfo>> {
    const WHAT: &str = "LOCK.INFO";
    if v.is_nil() {
        return Ok(Vec::new());
    }
    array(v, 0, WHAT)?
        .into_iter()
        .map(|entry| {
            let a: [Value; 10] = take_n(array(entry, 10, WHAT)?);
            let [
                session,
                scope_v,
                key,
                token,
                client_id,
                name,
                addr,
                held,
                lease,
                waiters,
            ] = a;
            let waiters = array(waiters, 0, WHAT)?
                .into_iter()
                .map(|w| {
                    let [client_id, name, addr, scope_v, key, waited] = take_n(array(w, 6, WHAT)?);
                    Ok(LockWaiter {
                        client_id: int(&client_id, WHAT)?,
                        name: opt_name(name, WHAT)?,
                        addr: opt_name(addr, WHAT)?.unwrap_or_default(),
                        scope: scope(scope_v, WHAT)?,
                        key: opt_bytes(key, WHAT)?,
                        waited_ms: uint(&waited, WHAT)?,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(LockInfo {
                session: string(session, WHAT)?,
                scope: scope(scope_v, WHAT)?,
                key: opt_bytes(key, WHAT)?,
                token: uint(&token, WHAT)?,
                holder_client_id: int(&client_id, WHAT)?,
                holder_name: opt_name(name, WHAT)?,
                holder_addr: opt_name(addr, WHAT)?.unwrap_or_default(),
                held_ms: uint(&held, WHAT)?,
                lease_left_ms: int(&lease, WHAT)?,
                waiters,
            })
        })
        .collect()
}

/// The first `N` elements of `v` (which the caller checked has at least `N`);
/// missing ones are filled with nil, which then fails the shape checks.
fn take_n<const N: usize>(v: Vec<Value>) -> [Value; N] {
    let mut it = v.into_iter();
    std::array::from_fn(|_| it.next().unwrap_or(Value::Nil))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn i(n: i64) -> Value {
        Value::Int(n)
    }
    fn arr(v: Vec<Value>) -> Value {
        Value::Array(v)
    }

    #[test]
    fn session_reply() {
        assert_eq!(session(Value::Nil, "t").ok(), Some(None));
        let v = arr(vec![
            b("demo1"),
            i(12),
            i(0),
            arr(vec![
                b("user"),
                i(10),
                b("alice"),
                b("missing"),
                i(0),
                Value::Nil,
            ]),
        ]);
        let s = session(v, "t").ok().flatten().expect("session");
        assert_eq!(s.id, "demo1");
        assert_eq!(s.version, 12);
        assert!(!s.created);
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.get("user").map(|v| &v[..]), Some(&b"alice"[..]));
        assert_eq!(s.get("missing"), None);
        assert_eq!(s.field("missing").map(|f| f.version), Some(0));
        assert_eq!(s.version_of("user"), 10);
        assert_eq!(s.version_of("nope"), 0);
        assert_eq!(s.get(b"nope"), None);

        // RESP3 boolean for `created`, empty fields.
        let v = arr(vec![b("x"), i(0), Value::Bool(true), arr(vec![])]);
        let s = session(v, "t").ok().flatten().expect("session");
        assert!(s.created);
        assert!(s.fields.is_empty());
    }

    #[test]
    fn bad_session_replies_are_protocol_errors() {
        let bad_replies = vec![
            i(1),
            arr(vec![]),
            arr(vec![b("x"), i(0), i(0)]),
            arr(vec![b("x"), i(0), i(0), arr(vec![b("k"), i(1)])]),
            arr(vec![b("x"), i(-1), i(0), arr(vec![])]),
            arr(vec![b("x"), i(0), i(2), arr(vec![])]),
            arr(vec![i(5), i(0), i(0), arr(vec![])]),
            arr(vec![b("x"), i(0), i(0), b("fields")]),
            arr(vec![b("x"), i(0), i(0), arr(vec![i(1), i(1), Value::Nil])]),
            arr(vec![
                b("x"),
                i(0),
                i(0),
                arr(vec![b("k"), b("v"), Value::Nil]),
            ]),
            arr(vec![b("x"), i(0), i(0), arr(vec![b("k"), i(1), i(3)])]),
            arr(vec![
                Value::Bulk(Bytes::from_static(b"\xff")),
                i(0),
                i(0),
                arr(vec![]),
            ]),
        ];
        for v in bad_replies {
            assert!(
                matches!(session(v.clone(), "t"), Err(Error::Protocol(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn commit_incr_cas() {
        let r = commit_result(arr(vec![i(9), arr(vec![i(9), i(0)])]));
        assert_eq!(
            r.ok(),
            Some(CommitResult {
                version: 9,
                op_versions: vec![9, 0]
            })
        );
        assert!(commit_result(arr(vec![i(9)])).is_err());
        assert!(commit_result(arr(vec![i(9), i(9)])).is_err());
        assert!(commit_result(Value::Nil).is_err());

        assert_eq!(incr_result(arr(vec![i(-5), i(3)])).ok(), Some((-5, 3)));
        assert!(incr_result(arr(vec![i(1)])).is_err());

        assert_eq!(
            cas_result(arr(vec![i(1), i(7)])).ok(),
            Some(CasResult::Swapped { version: 7 })
        );
        let m = cas_result(arr(vec![i(0), i(7), b("43")]));
        assert_eq!(
            m.ok(),
            Some(CasResult::Mismatch {
                version: 7,
                current: Some(Bytes::from_static(b"43"))
            })
        );
        assert_eq!(
            cas_result(arr(vec![i(0), i(0), Value::Nil])).ok(),
            Some(CasResult::Mismatch {
                version: 0,
                current: None
            })
        );
        assert!(cas_result(arr(vec![i(0), i(0)])).is_err());
        assert!(cas_result(arr(vec![i(2), i(0)])).is_err());
        assert!(CasResult::Swapped { version: 1 }.is_swapped());
        assert_eq!(
            CasResult::Mismatch {
                version: 4,
                current: None
            }
            .version(),
            4
        );
    }

    #[test]
    fn lock_and_once() {
        let g = lock_grant(arr(vec![
            i(17),
            arr(vec![
                b("demo1"),
                i(3),
                i(0),
                arr(vec![b("visits"), i(3), b("43")]),
            ]),
        ]))
        .expect("grant");
        assert_eq!(g.token, 17);
        assert_eq!(
            g.data
                .as_ref()
                .and_then(|d| d.get("visits"))
                .map(|v| &v[..]),
            Some(&b"43"[..])
        );
        let g = lock_grant(arr(vec![i(18), Value::Nil])).expect("grant");
        assert_eq!(g.data, None);
        assert!(lock_grant(arr(vec![i(-1), Value::Nil])).is_err());
        assert!(lock_grant(i(1)).is_err());

        assert_eq!(
            once_result(arr(vec![i(0), i(5), b("tok")])).ok(),
            Some(OnceResult::Computed {
                version: 5,
                value: Some(Bytes::from_static(b"tok"))
            })
        );
        assert_eq!(
            once_result(arr(vec![i(21), i(0), Value::Nil])).ok(),
            Some(OnceResult::MustCompute {
                token: 21,
                version: 0,
                value: None
            })
        );
        assert!(once_result(arr(vec![i(21), i(0)])).is_err());
    }

    #[test]
    fn lock_info_reply() {
        let waiter = arr(vec![
            i(8),
            b(""),
            b("127.0.0.1:5000"),
            b("key"),
            b("k"),
            i(12),
        ]);
        let v = arr(vec![
            arr(vec![
                b("s1"),
                Value::Simple("session".into()),
                Value::Nil,
                i(40),
                i(7),
                b("web1"),
                b("127.0.0.1:4000"),
                i(100),
                i(-1),
                arr(vec![waiter]),
            ]),
            arr(vec![
                b("s2"),
                b("key"),
                b("k"),
                i(41),
                i(9),
                Value::Nil,
                b("[::1]:1"),
                i(0),
                i(250),
                arr(vec![]),
            ]),
        ]);
        let infos = lock_infos(v).expect("infos");
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].session, "s1");
        assert_eq!(infos[0].scope, LockScope::Session);
        assert_eq!(infos[0].key, None);
        assert_eq!(infos[0].token, 40);
        assert_eq!(infos[0].holder_client_id, 7);
        assert_eq!(infos[0].holder_name.as_deref(), Some("web1"));
        assert_eq!(infos[0].lease_left_ms, -1);
        assert_eq!(
            infos[0].waiters,
            vec![LockWaiter {
                client_id: 8,
                name: None,
                addr: "127.0.0.1:5000".into(),
                scope: LockScope::Key,
                key: Some(Bytes::from_static(b"k")),
                waited_ms: 12,
            }]
        );
        assert_eq!(infos[1].scope, LockScope::Key);
        assert_eq!(infos[1].holder_name, None);
        assert_eq!(infos[1].lease_left_ms, 250);

        assert_eq!(lock_infos(arr(vec![])).ok(), Some(vec![]));
        assert!(lock_infos(arr(vec![arr(vec![b("s1")])])).is_err());
        assert!(lock_infos(b("x")).is_err());
        let bad_scope = arr(vec![arr(vec![
            b("s"),
            b("row"),
            Value::Nil,
            i(1),
            i(1),
            Value::Nil,
            b("a"),
            i(0),
            i(-1),
            arr(vec![]),
        ])]);
        assert!(matches!(lock_infos(bad_scope), Err(Error::Protocol(_))));
    }

    #[test]
    fn scalars() {
        assert_eq!(int(&b("12"), "t").ok(), Some(12));
        assert!(int(&b("x"), "t").is_err());
        assert!(int(&Value::Double(1.0), "t").is_err());
        assert_eq!(flag(&Value::Bool(false), "t").ok(), Some(false));
        assert!(flag(&i(2), "t").is_err());
        assert!(ok(Value::Simple("OK".into()), "t").is_ok());
        assert!(ok(b("OK"), "t").is_ok());
        assert!(ok(b("NO"), "t").is_err());
        assert_eq!(
            string(Value::Simple("s".into()), "t").ok(),
            Some("s".into())
        );
        assert!(bytes(i(1), "t").is_err());
    }
}
