//! The bench's own blocking clients: one RESP2 client used for both sessiond
//! and Redis (so neither gets a more efficient driver), and a memcached text
//! protocol client. One request in flight per connection unless a caller
//! pipelines explicitly (only the loaders do, for every store alike).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Status(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn bulk(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            _ => None,
        }
    }

    pub fn array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The reply, or its error text as `Err`.
    pub fn check(self) -> Result<Value, String> {
        match self {
            Value::Error(e) => Err(e),
            v => Ok(v),
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn parse_num(b: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad number {:?}", String::from_utf8_lossy(b))))
}

/// A blocking RESP2 connection with `TCP_NODELAY`.
pub struct Resp {
    r: BufReader<TcpStream>,
    wbuf: Vec<u8>,
    line: Vec<u8>,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> io::Result<Resp> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        Ok(Resp {
            r: BufReader::with_capacity(64 * 1024, s),
            wbuf: Vec::with_capacity(4096),
            line: Vec::with_capacity(128),
        })
    }

    /// Queues one command (flushed by [`Resp::flush`] or [`Resp::call`]).
    pub fn push(&mut self, args: &[&[u8]]) {
        let w = &mut self.wbuf;
        // Writing into a Vec cannot fail.
        let _ = write!(w, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(w, "${}\r\n", a.len());
            w.extend_from_slice(a);
            w.extend_from_slice(b"\r\n");
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.r.get_mut().write_all(&self.wbuf)?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads one reply.
    pub fn read(&mut self) -> io::Result<Value> {
        read_value(&mut self.r, &mut self.line)
    }

    /// One round trip.
    /// Bounds each read and write (`None`: block).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.r.get_ref().set_read_timeout(t)?;
        self.r.get_ref().set_write_timeout(t)
    }

    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        self.push(args);
        self.flush()?;
        self.read()
    }

    /// Sends every command at once, then reads all replies.
    pub fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>]) -> io::Result<Vec<Value>> {
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
            self.push(&args);
        }
        self.flush()?;
        (0..cmds.len()).map(|_| self.read()).collect()
    }
}

fn read_line<'a>(r: &mut BufReader<TcpStream>, line: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    line.clear();
    let n = r.read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if n < 2 || line[n - 2] != b'\r' {
        return Err(bad("line without CRLF"));
    }
    Ok(&line[..n - 2])
}

fn read_value(r: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> io::Result<Value> {
    let l = read_line(r, line)?;
    let Some((&t, body)) = l.split_first() else {
        return Err(bad("empty line"));
    };
    Ok(match t {
        b'+' => Value::Status(body.to_vec()),
        b'-' => Value::Error(String::from_utf8_lossy(body).into_owned()),
        b':' => Value::Int(parse_num(body)?),
        b'$' => {
            let n = parse_num(body)?;
            if n < 0 {
                Value::Nil
            } else {
                let mut v = vec![0; n as usize + 2];
                io::Read::read_exact(r, &mut v)?;
                v.truncate(n as usize);
                Value::Bulk(v)
            }
        }
        b'*' => {
            let n = parse_num(body)?;
            if n < 0 {
                Value::Nil
            } else {
                let mut a = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    a.push(read_value(r, line)?);
                }
                Value::Array(a)
            }
        }
        _ => return Err(bad(format!("unexpected reply type {:?}", t as char))),
    })
}

/// A blocking memcached text-protocol connection.
pub struct Memc {
    r: BufReader<TcpStream>,
    wbuf: Vec<u8>,
    line: Vec<u8>,
}

impl Memc {
    pub fn connect(addr: SocketAddr) -> io::Result<Memc> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        Ok(Memc {
            r: BufReader::with_capacity(64 * 1024, s),
            wbuf: Vec::with_capacity(4096),
            line: Vec::with_capacity(128),
        })
    }

    fn push_set(&mut self, key: &[u8], exptime: u32, data: &[u8]) {
        self.wbuf.extend_from_slice(b"set ");
        self.wbuf.extend_from_slice(key);
        let _ = write!(self.wbuf, " 0 {exptime} {}\r\n", data.len());
        self.wbuf.extend_from_slice(data);
        self.wbuf.extend_from_slice(b"\r\n");
    }

    fn read_stored(&mut self) -> io::Result<()> {
        let l = read_line(&mut self.r, &mut self.line)?;
        if l == b"STORED" {
            Ok(())
        } else {
            Err(bad(format!("set: {}", String::from_utf8_lossy(l))))
        }
    }

    pub fn get(&mut self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.wbuf.extend_from_slice(b"get ");
        self.wbuf.extend_from_slice(key);
        self.wbuf.extend_from_slice(b"\r\n");
        self.r.get_mut().write_all(&self.wbuf)?;
        self.wbuf.clear();
        let l = read_line(&mut self.r, &mut self.line)?;
        if l == b"END" {
            return Ok(None);
        }
        if !l.starts_with(b"VALUE ") {
            return Err(bad(format!("get: {}", String::from_utf8_lossy(l))));
        }
        let len = l
            .split(|&b| b == b' ')
            .nth(3)
            .ok_or_else(|| bad("VALUE line without length"))
            .and_then(parse_num)? as usize;
        let mut v = vec![0; len + 2];
        io::Read::read_exact(&mut self.r, &mut v)?;
        v.truncate(len);
        if read_line(&mut self.r, &mut self.line)? != b"END" {
            return Err(bad("get: no END"));
        }
        Ok(Some(v))
    }

    pub fn set(&mut self, key: &[u8], exptime: u32, data: &[u8]) -> io::Result<()> {
        self.push_set(key, exptime, data);
        self.r.get_mut().write_all(&self.wbuf)?;
        self.wbuf.clear();
        self.read_stored()
    }

    /// Pipelined sets, for loading.
    pub fn set_many(&mut self, items: &[(Vec<u8>, Vec<u8>)], exptime: u32) -> io::Result<()> {
        for (k, v) in items {
            self.push_set(k, exptime, v);
        }
        self.r.get_mut().write_all(&self.wbuf)?;
        self.wbuf.clear();
        for _ in items {
            self.read_stored()?;
        }
        Ok(())
    }
}
