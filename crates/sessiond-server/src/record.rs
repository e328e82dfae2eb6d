//! Checksummed records for append-only files: `[u32 len][u32 crc32]`
//! then the value's postcard encoding, little-endian. The cluster's Raft
//! log (`cluster::log_store`) and the single server's change log
//! (`storage::logged`) are sequences of them; a reader stops at the first
//! record that is torn or fails its checksum, which is where a crash cut
//! the last write.

use std::io;

use serde::Serialize;

/// `[u32 len][u32 crc32]`.
pub const HEADER: usize = 8;

/// Appends one record holding `payload`'s postcard encoding to `buf`.
pub fn encode_record<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> io::Result<()> {
    let payload = postcard::to_stdvec(value).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(())
}

/// The record at the start of `buf` and its length, or why there is none.
pub fn decode_record<T: serde::de::DeserializeOwned>(
    buf: &[u8],
) -> Result<(T, usize), &'static str> {
    let (Some(len), Some(crc)) = (buf.get(0..4), buf.get(4..HEADER)) else {
        return Err("torn record header");
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let Some(payload) = buf.get(HEADER..HEADER.saturating_add(len)) else {
        return Err("torn record");
    };
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch");
    }
    let value = postcard::from_bytes(payload).map_err(|_| "undecodable record")?;
    Ok((value, HEADER + len))
}
