//! A cursor over a request's arguments.

use bytes::Bytes;
use sessiond_core::engine::dedupe::MAX_REQID_BYTES;
use sessiond_core::{SessionId, StoreError};

/// Why a request could not be parsed or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// No such command.
    #[error("unknown command {0}")]
    Unknown(String),
    /// Too few or too many arguments.
    #[error("wrong number of arguments for {0}")]
    Arity(String),
    /// A number that is not one.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// An unknown option or a misplaced argument.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// An error of the core.
    #[error(transparent)]
    Core(#[from] StoreError),
    /// Any other error: code and message.
    #[error("{0} {1}")]
    Other(&'static str, String),
}

/// The arguments of one request, consumed front to back.
#[derive(Debug)]
pub struct Args {
    name: String,
    original: String,
    rest: std::vec::IntoIter<Bytes>,
}

impl Args {
    /// Wraps a request; its first element is the command name.
    ///
    /// # Errors
    /// [`CmdError::Unknown`] for an empty request.
    pub fn new(argv: Vec<Bytes>) -> Result<Self, CmdError> {
        let mut rest = argv.into_iter();
        let first = rest
            .next()
            .ok_or_else(|| CmdError::Unknown(String::new()))?;
        let original = String::from_utf8_lossy(&first).into_owned();
        Ok(Self {
            name: original.to_ascii_uppercase(),
            original,
            rest,
        })
    }

    /// The command name, upper-case.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command name as sent.
    pub fn original_name(&self) -> &str {
        &self.original
    }

    fn arity(&self) -> CmdError {
        CmdError::Arity(self.name.clone())
    }

    /// Arguments left.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The next argument.
    ///
    /// # Errors
    /// [`CmdError::Arity`] when there is none.
    pub fn bytes(&mut self) -> Result<Bytes, CmdError> {
        self.rest.next().ok_or_else(|| self.arity())
    }

    /// The next argument, if any.
    pub fn maybe_bytes(&mut self) -> Option<Bytes> {
        self.rest.next()
    }

    /// The next argument as UTF-8 text.
    ///
    /// # Errors
    /// Arity, or a syntax error when it is not UTF-8.
    pub fn string(&mut self) -> Result<String, CmdError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| CmdError::Syntax("expected text".into()))
    }

    /// The next argument as a request id (`REQID`): 1 to
    /// [`MAX_REQID_BYTES`] printable ASCII characters.
    ///
    /// # Errors
    /// Arity, or an id out of those bounds.
    pub fn reqid(&mut self) -> Result<String, CmdError> {
        let id = self.string()?;
        if id.is_empty() || id.len() > MAX_REQID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(CmdError::Syntax(format!(
                "REQID must be 1 to {MAX_REQID_BYTES} printable ASCII characters"
            )));
        }
        Ok(id)
    }

    /// The next argument as a session id.
    ///
    /// # Errors
    /// Arity, or [`StoreError::BadId`].
    pub fn id(&mut self) -> Result<SessionId, CmdError> {
        let b = self.bytes()?;
        Ok(SessionId::parse(&b)?)
    }

    /// The next argument as a signed integer.
    ///
    /// # Errors
    /// Arity, or [`CmdError::NotInteger`].
    pub fn i64(&mut self) -> Result<i64, CmdError> {
        let b = self.bytes()?;
        sessiond_core::store::parse_i64(&b).ok_or(CmdError::NotInteger)
    }

    /// The next argument as a non-negative integer.
    ///
    /// # Errors
    /// Arity, or [`CmdError::NotInteger`].
    pub fn u64(&mut self) -> Result<u64, CmdError> {
        u64::try_from(self.i64()?).map_err(|_| CmdError::NotInteger)
    }

    /// Seconds as milliseconds.
    ///
    /// # Errors
    /// As [`Self::u64`].
    pub fn seconds_as_ms(&mut self) -> Result<u64, CmdError> {
        self.u64()?.checked_mul(1000).ok_or(CmdError::NotInteger)
    }

    /// A TTL or lifetime in seconds: [`Self::seconds_as_ms`], and at least
    /// one second (a session that ends as it is made is a mistake, not a
    /// request; SESSION.DESTROY ends one).
    ///
    /// # Errors
    /// As [`Self::u64`]; a syntax error for 0.
    pub fn lifetime_as_ms(&mut self, option: &str) -> Result<u64, CmdError> {
        match self.seconds_as_ms()? {
            0 => Err(CmdError::Syntax(format!(
                "{option} must be at least 1 second"
            ))),
            ms => Ok(ms),
        }
    }

    /// The next argument as an upper-cased keyword, if any is left.
    pub fn keyword(&mut self) -> Option<String> {
        self.rest
            .next()
            .map(|b| String::from_utf8_lossy(&b).to_ascii_uppercase())
    }

    /// Whether the next argument is `kw` (case-insensitive); consumes it if so.
    pub fn eat(&mut self, kw: &str) -> bool {
        match self.rest.as_slice().first() {
            Some(b) if b.eq_ignore_ascii_case(kw.as_bytes()) => {
                self.rest.next();
                true
            }
            _ => false,
        }
    }

    /// Errors if arguments are left over.
    ///
    /// # Errors
    /// [`CmdError::Syntax`] naming the first extra argument.
    pub fn finish(mut self) -> Result<(), CmdError> {
        match self.rest.next() {
            None => Ok(()),
            Some(extra) => Err(CmdError::Syntax(format!(
                "unexpected argument {:?}",
                String::from_utf8_lossy(&extra)
            ))),
        }
    }
}
