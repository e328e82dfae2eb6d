//! A blocking client for etcd v3's JSON gateway (`POST /v3/kv/range`,
//! `/v3/kv/put`, `/v3/kv/txn`; keys and values base64, 64-bit integers as
//! strings), over one keep-alive HTTP/1.1 connection with `TCP_NODELAY`.
//! The gateway costs etcd some JSON work per request that its gRPC clients
//! do not pay; that is noted with the results.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One connection to an etcd member.
pub struct Etcd {
    r: BufReader<TcpStream>,
    host: String,
}

/// A key's value and the revision that last changed it.
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl Etcd {
    pub fn connect(addr: SocketAddr) -> io::Result<Etcd> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        Ok(Etcd {
            r: BufReader::with_capacity(64 * 1024, s),
            host: addr.to_string(),
        })
    }

    /// POSTs `body` to `path`; the JSON answer.
    fn call(&mut self, path: &str, body: &Value) -> io::Result<Value> {
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(bad("connection closed in the headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut data = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                let mut chunk = vec![0; n + 2];
                self.r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&chunk[..n]);
            }
        } else {
            let n = length.ok_or_else(|| bad("answer without a length"))?;
            data.resize(n, 0);
            self.r.read_exact(&mut data)?;
        }
        if status != 200 {
            return Err(bad(format!(
                "etcd {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&data)
            )));
        }
        serde_json::from_slice(&data).map_err(|e| bad(format!("etcd {path}: {e}")))
    }

    /// Whether this member is the cluster's leader.
    pub fn is_leader(&mut self) -> io::Result<bool> {
        let r = self.call("/v3/maintenance/status", &json!({}))?;
        let me = r.get("header").and_then(|h| h.get("member_id"));
        Ok(me.is_some() && me == r.get("leader"))
    }

    /// The value of `key` and its revision; `None` when absent.
    pub fn get(&mut self, key: &str) -> io::Result<Option<Versioned>> {
        let r = self.call("/v3/kv/range", &json!({ "key": B64.encode(key) }))?;
        let Some(kv) = r.get("kvs").and_then(|k| k.get(0)) else {
            return Ok(None);
        };
        let value = B64
            .decode(kv.get("value").and_then(Value::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("value: {e}")))?;
        let mod_revision = kv
            .get("mod_revision")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("kv without mod_revision"))?;
        Ok(Some(Versioned {
            value,
            mod_revision,
        }))
    }

    /// Sets `key`.
    pub fn put(&mut self, key: &str, value: &[u8]) -> io::Result<()> {
        self.call(
            "/v3/kv/put",
            &json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        )?;
        Ok(())
    }

    /// Sets `key` to `value` if it was last changed at `mod_revision`
    /// (etcd's compare-and-put transaction); whether it was.
    pub fn cas(&mut self, key: &str, mod_revision: i64, value: &[u8]) -> io::Result<bool> {
        let k = B64.encode(key);
        let r = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{
                    "key": k,
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": mod_revision.to_string(),
                }],
                "success": [{ "request_put": { "key": k, "value": B64.encode(value) } }],
            }),
        )?;
        // The gateway leaves out fields at their default: no `succeeded`
        // means false.
        Ok(r.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }
}
