//! A minimal HTTP/1.1 client: one `GET` per connection (`Connection: close`).
//!
//! The lab needs nothing more than GET with a cookie and the body, and a
//! fresh connection per request is what concurrent browser AJAX calls look
//! like to the web server. Hand-rolled to keep the workspace's dependency
//! tree small.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the app runs: `http://host:port` plus an optional path prefix.
#[derive(Clone, Debug)]
pub struct BaseUrl {
    /// `host:port` to connect to (and to send as `Host`).
    pub authority: String,
    /// Path of the app's front controller, e.g. `/` or `/racelab/`.
    pub path: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/path]`; https is not supported.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Status and body of a response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET base?query` with an optional session cookie (`name=value`).
pub async fn get(
    base: &BaseUrl,
    query: &str,
    cookie: Option<&str>,
    timeout: Duration,
) -> Result<Response> {
    tokio::time::timeout(timeout, get_inner(base, query, cookie))
        .await
        .with_context(|| format!("no response within {timeout:?}"))?
}

async fn get_inner(base: &BaseUrl, query: &str, cookie: Option<&str>) -> Result<Response> {
    let mut stream = TcpStream::connect(&base.authority)
        .await
        .with_context(|| format!("connect to {}", base.authority))?;
    stream.set_nodelay(true)?;
    let mut req = format!(
        "GET {}?{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: racelab\r\nAccept: application/json\r\nConnection: close\r\n",
        base.path, query, base.authority
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::with_capacity(4096);
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

/// Parses a whole `Connection: close` response (length, chunked, or to EOF).
fn parse_response(raw: &[u8]) -> Result<Response> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("truncated HTTP response (no end of headers)")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("non-UTF-8 HTTP headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            bail!("truncated HTTP body: {} of {n} bytes", rest.len());
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk header")?;
        let size_str = std::str::from_utf8(&rest[..eol])?;
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .with_context(|| format!("bad chunk size {size_str:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Percent-encodes a query value (unreserved characters pass through).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        let r = parse_response(
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 200 OK\r\nX: y\r\n\r\nall of it").unwrap();
        assert_eq!(r.body, b"all of it");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi").is_err());
    }

    #[test]
    fn parses_base_urls() {
        let b = BaseUrl::parse("http://127.0.0.1:8080/app/").unwrap();
        assert_eq!(
            (b.authority.as_str(), b.path.as_str()),
            ("127.0.0.1:8080", "/app/")
        );
        let b = BaseUrl::parse("http://localhost").unwrap();
        assert_eq!(
            (b.authority.as_str(), b.path.as_str()),
            ("localhost:80", "/")
        );
        assert!(BaseUrl::parse("https://x").is_err());
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
