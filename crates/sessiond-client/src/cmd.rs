//! Request encoding: RESP arrays of bulk strings.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

/// A request being built: the encoded arguments and their count.
#[derive(Debug, Default)]
pub(crate) struct Cmd {
    argc: usize,
    body: BytesMut,
    /// Safe to send again although it changes something (an acquire with a
    /// request id: a retry adopts the grant or wait already made).
    retryable: bool,
}

impl Cmd {
    /// Starts a request with the command name.
    pub(crate) fn new(name: &str) -> Cmd {
        let mut cmd = Cmd::default();
        cmd.arg(name);
        cmd
    }

    /// Appends one argument.
    pub(crate) fn arg(&mut self, arg: impl AsRef<[u8]>) -> &mut Cmd {
        let arg = arg.as_ref();
        self.body.reserve(arg.len() + 16);
        self.body.put_u8(b'$');
        self.body.put_slice(arg.len().to_string().as_bytes());
        self.body.put_slice(b"\r\n");
        self.body.put_slice(arg);
        self.body.put_slice(b"\r\n");
        self.argc += 1;
        self
    }

    /// Appends an unsigned integer argument in decimal.
    pub(crate) fn arg_u64(&mut self, v: u64) -> &mut Cmd {
        self.arg(v.to_string())
    }

    /// Appends a signed integer argument in decimal.
    pub(crate) fn arg_i64(&mut self, v: i64) -> &mut Cmd {
        self.arg(v.to_string())
    }

    /// Appends `keyword seconds` (rounded up) when `d` is set.
    pub(crate) fn opt_secs(&mut self, keyword: &str, d: Option<Duration>) -> &mut Cmd {
        if let Some(d) = d {
            self.arg(keyword).arg_u64(secs_ceil(d));
        }
        self
    }

    /// Appends `keyword milliseconds` (rounded up) when `d` is set.
    pub(crate) fn opt_ms(&mut self, keyword: &str, d: Option<Duration>) -> &mut Cmd {
        if let Some(d) = d {
            self.arg(keyword).arg_u64(ms_ceil(d));
        }
        self
    }

    /// Appends `KEY key` when `key` is set.
    pub(crate) fn opt_key(&mut self, key: Option<&[u8]>) -> &mut Cmd {
        if let Some(key) = key {
            self.arg("KEY").arg(key);
        }
        self
    }

    /// Appends `FENCE token` when set.
    pub(crate) fn opt_fence(&mut self, fence: Option<u64>) -> &mut Cmd {
        if let Some(token) = fence {
            self.arg("FENCE").arg_u64(token);
        }
        self
    }

    /// Appends `keyword` when `flag` is true.
    pub(crate) fn flag(&mut self, keyword: &str, flag: bool) -> &mut Cmd {
        if flag {
            self.arg(keyword);
        }
        self
    }

    /// Writes the complete request (`*argc` header and arguments) to `out`.
    /// The command name (the first argument), as sent.
    pub(crate) fn name(&self) -> &[u8] {
        // The body starts with `$len\r\nNAME\r\n`.
        let b = &self.body[..];
        let Some(nl) = b.iter().position(|&c| c == b'\n') else {
            return &[];
        };
        let len: usize = std::str::from_utf8(&b[1..nl.saturating_sub(1).max(1)])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        b.get(nl + 1..nl + 1 + len).unwrap_or(&[])
    }

    /// True for commands that change nothing a retry could apply twice
    /// (reads, and commands about the connection or the node): after a lost
    /// reply or `UNKNOWN` they may be sent again.
    pub(crate) fn is_retryable(&self) -> bool {
        const READS: [&[u8]; 8] = [
            b"SESSION.READ",
            b"SESSION.EXISTS",
            b"SESSION.TTL",
            b"LOCK.INFO",
            b"PING",
            b"INFO",
            b"CLUSTER.INFO",
            b"ECHO",
        ];
        let name = self.name();
        self.retryable || READS.iter().any(|r| r.eq_ignore_ascii_case(name))
    }

    /// Marks the request as safe to send again (see [`Cmd::is_retryable`]).
    pub(crate) fn mark_retryable(&mut self) -> &mut Cmd {
        self.retryable = true;
        self
    }

    pub(crate) fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(self.body.len() + 16);
        out.put_u8(b'*');
        out.put_slice(self.argc.to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(&self.body);
    }
}

/// Whole seconds, rounded up (`TTL`, `LIFETIME`, `GRACE`).
pub(crate) fn secs_ceil(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Milliseconds, rounded up (`WAIT`, `LEASE`).
pub(crate) fn ms_ceil(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(cmd: &Cmd) -> Vec<u8> {
        let mut out = BytesMut::new();
        cmd.encode_into(&mut out);
        out.to_vec()
    }

    #[test]
    fn encodes_arrays_of_bulk_strings() {
        let mut cmd = Cmd::new("SESSION.COMMIT");
        cmd.arg("id")
            .flag("CREATE", true)
            .flag("UNLOCK", false)
            .opt_secs("TTL", Some(Duration::from_millis(1500)))
            .opt_ms("WAIT", None)
            .opt_fence(Some(7))
            .arg(b"bin\r\n\0")
            .arg("")
            .arg_i64(-3);
        assert_eq!(
            encoded(&cmd),
            b"*10\r\n$14\r\nSESSION.COMMIT\r\n$2\r\nid\r\n$6\r\nCREATE\r\n$3\r\nTTL\r\n$1\r\n2\r\n\
              $5\r\nFENCE\r\n$1\r\n7\r\n$6\r\nbin\r\n\0\r\n$0\r\n\r\n$2\r\n-3\r\n"
                .to_vec()
        );
        let mut cmd = Cmd::new("LOCK.RELEASE");
        cmd.arg("s").opt_key(Some(b"k")).arg_u64(9);
        assert_eq!(
            encoded(&cmd),
            b"*5\r\n$12\r\nLOCK.RELEASE\r\n$1\r\ns\r\n$3\r\nKEY\r\n$1\r\nk\r\n$1\r\n9\r\n".to_vec()
        );
    }

    #[test]
    fn names_and_retryable_commands() {
        let mut cmd = Cmd::new("SESSION.READ");
        cmd.arg("id").arg("KEYS").arg("a");
        assert_eq!(cmd.name(), b"SESSION.READ");
        assert!(cmd.is_retryable());
        assert!(Cmd::new("lock.info").is_retryable());
        for name in [
            "SESSION.COMMIT",
            "SESSION.INCR",
            "LOCK.ACQUIRE",
            "SESSION.DESTROY",
            "X",
        ] {
            assert_eq!(Cmd::new(name).name(), name.as_bytes());
            assert!(!Cmd::new(name).is_retryable(), "{name}");
        }
        assert_eq!(Cmd::default().name(), b"");
    }

    #[test]
    fn rounding() {
        assert_eq!(secs_ceil(Duration::ZERO), 0);
        assert_eq!(secs_ceil(Duration::from_secs(5)), 5);
        assert_eq!(secs_ceil(Duration::from_nanos(1)), 1);
        assert_eq!(secs_ceil(Duration::from_millis(5001)), 6);
        assert_eq!(secs_ceil(Duration::MAX), u64::MAX);
        assert_eq!(ms_ceil(Duration::ZERO), 0);
        assert_eq!(ms_ceil(Duration::from_micros(1)), 1);
        assert_eq!(ms_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(ms_ceil(Duration::from_secs(2)), 2000);
        assert_eq!(ms_ceil(Duration::MAX), u64::MAX);
    }
}
