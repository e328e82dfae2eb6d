//! Session ids.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::StoreError;

/// The longest session id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A validated session id: 1 to 128 bytes of `[A-Za-z0-9,._:-]`.
///
/// The alphabet is PHP's (`[a-zA-Z0-9,-]`) plus `._:` so ids from other
/// frameworks fit too; it keeps ids safe to print in logs and error lines.
/// Cloning is cheap: the map, the expiry index and the lock table share one
/// allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// Validates `raw` as a session id.
    ///
    /// # Errors
    /// [`StoreError::BadId`] when it is empty, too long or has a byte outside
    /// the alphabet.
    ///
    /// ```
    /// use sessiond_core::SessionId;
    /// assert!(SessionId::parse(b"abc-123").is_ok());
    /// assert!(SessionId::parse(b"no spaces").is_err());
    /// ```
    pub fn parse(raw: &[u8]) -> Result<Self, StoreError> {
        if raw.is_empty() || raw.len() > MAX_ID_LEN || !raw.iter().all(|b| is_id_byte(*b)) {
            return Err(StoreError::BadId);
        }
        // Every byte is ASCII, so this cannot fail.
        let s = std::str::from_utf8(raw).map_err(|_| StoreError::BadId)?;
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b',' | b'.' | b'_' | b':' | b'-')
}

impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

// Serialized as the string; deserializing validates it again, so an image
// from elsewhere cannot smuggle in an id the protocol would refuse.
impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SessionId::parse(raw.as_bytes()).map_err(serde::de::Error::custom)
    }
}
