//! Session ids from the operating system's CSPRNG.

use sessiond_core::SessionId;

/// Bytes of entropy in a server-made id: 160 bits.
const ID_BYTES: usize = 20;

/// A new session id: 160 bits from `getrandom` (the kernel's CSPRNG), as 40
/// lowercase hex characters, which PHP accepts as a session id.
pub fn new_session_id() -> SessionId {
    let mut raw = [0u8; ID_BYTES];
    if let Err(e) = getrandom::fill(&mut raw) {
        // Without a CSPRNG no id is safe to hand out; this cannot be served.
        panic!("the operating system's random number generator failed: {e}");
    }
    let mut hex = [0u8; ID_BYTES * 2];
    for (i, b) in raw.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    SessionId::parse(&hex).unwrap_or_else(|_| unreachable!("hex is a valid id"))
}

/// [`new_session_id`] after `prefix` (a user's session-id prefix, checked
/// at start to leave room for the 40 characters).
pub fn new_session_id_with_prefix(prefix: Option<&str>) -> SessionId {
    let id = new_session_id();
    match prefix {
        None => id,
        Some(p) => SessionId::parse(format!("{p}{id}").as_bytes())
            .unwrap_or_else(|_| unreachable!("prefixes are checked valid at start")),
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_40_hex_chars_and_distinct() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.as_str().len(), 40);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
