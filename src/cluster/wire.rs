//! A bound on what a chitchat datagram decompresses to, read from the raw bytes before
//! chitchat sees them. chitchat 0.13 inflates every zstd block of a message into one
//! buffer before parsing anything, so a 65 KB datagram of tiny blocks that each declare
//! 64 KiB costs ~230 MB (docs/upstream/chitchat-decompression.md). This walks the same
//! layout chitchat writes (header, digest, delta as a block stream) and sums what each
//! block would produce, reading only zstd frame headers.

use chitchat::{ChitchatId, Deserializable};

/// The most a datagram may decompress to. A full 65 KB datagram of real gossip (zstd on
/// JSON records) inflates to well under 1 MiB; 4 MiB keeps headroom and bounds the
/// transient memory per datagram ~60 times below an unbounded bomb's.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 20;

/// chitchat's magic number, little endian, at the start of every message.
const CHITCHAT_MAGIC: u16 = 45_139;
/// chitchat decompresses a block into a buffer of this size: no block yields more.
const MAX_BLOCK_OUTPUT: u64 = u16::MAX as u64;

/// Why a datagram is not handed to chitchat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a chitchat message chitchat would accept.
    #[error("malformed chitchat datagram: {0}")]
    Malformed(&'static str),
    /// It would decompress to more than the cap.
    #[error("chitchat datagram would decompress to at least {bound} bytes (cap {MAX_DECOMPRESSED_BYTES})")]
    TooLarge {
        /// What it declared so far when the walk stopped.
        bound: u64,
    },
}

/// What `payload` (one chitchat message) would decompress to at most, or why it is refused.
pub fn decompressed_bound(payload: &[u8], cap: u64) -> Result<u64, WireError> {
    let mut buf = payload;
    let header = take(&mut buf, 4).ok_or(WireError::Malformed("shorter than the header"))?;
    if u16::from_le_bytes([header[0], header[1]]) != CHITCHAT_MAGIC {
        return Err(WireError::Malformed("bad magic number"));
    }
    let compressed_digest = match header[2] {
        0 => false,
        1 => true,
        _ => return Err(WireError::Malformed("unknown protocol version")),
    };
    let mut total = 0u64;
    let digest = |buf: &mut &[u8], total: &mut u64| {
        if compressed_digest { stream(buf, total, cap) } else { skip_plain_digest(buf) }
    };
    match header[3] {
        // Syn: digest, then the cluster id (a short string, copied, not inflated).
        0 => digest(&mut buf, &mut total)?,
        // SynAck: digest, then delta.
        1 => {
            digest(&mut buf, &mut total)?;
            stream(&mut buf, &mut total, cap)?;
        }
        // Ack: delta.
        2 => stream(&mut buf, &mut total, cap)?,
        // BadCluster: nothing follows.
        3 => {}
        _ => return Err(WireError::Malformed("unknown message type")),
    }
    Ok(total)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Some(head)
}

fn u16_le(buf: &mut &[u8]) -> Result<u16, WireError> {
    take(buf, 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or(WireError::Malformed("truncated length"))
}

/// The V0 digest: a count, then (node id, heartbeat, gc version, max version) entries.
fn skip_plain_digest(buf: &mut &[u8]) -> Result<(), WireError> {
    let count = u16_le(buf)?;
    for _ in 0..count {
        ChitchatId::deserialize(buf).map_err(|_| WireError::Malformed("bad node id in digest"))?;
        take(buf, 24).ok_or(WireError::Malformed("truncated digest entry"))?;
    }
    Ok(())
}

/// chitchat's block stream: tag 0 ends it, 1 is a zstd block, 2 a stored block; each
/// non-final block has a u16 length. Adds what the blocks inflate to into `total`.
fn stream(buf: &mut &[u8], total: &mut u64, cap: u64) -> Result<(), WireError> {
    loop {
        let tag = take(buf, 1).ok_or(WireError::Malformed("truncated block stream"))?[0];
        let produced = match tag {
            0 => return Ok(()),
            1 => {
                let len = u16_le(buf)? as usize;
                let block = take(buf, len).ok_or(WireError::Malformed("truncated compressed block"))?;
                zstd_block_output(block)?
            }
            2 => {
                let len = u16_le(buf)?;
                take(buf, len as usize).ok_or(WireError::Malformed("truncated stored block"))?;
                u64::from(len)
            }
            _ => return Err(WireError::Malformed("unknown block type")),
        };
        *total += produced;
        if *total > cap {
            return Err(WireError::TooLarge { bound: *total });
        }
    }
}

/// What one zstd block decompresses to: the content size its single frame declares
/// (zstd refuses to produce more than declared). A block of several frames, or a frame
/// that does not declare its size, is charged chitchat's whole block buffer.
fn zstd_block_output(block: &[u8]) -> Result<u64, WireError> {
    let whole_frame = zstd::zstd_safe::find_frame_compressed_size(block).is_ok_and(|n| n == block.len());
    match zstd::zstd_safe::get_frame_content_size(block) {
        Ok(Some(size)) if whole_frame => Ok(size.min(MAX_BLOCK_OUTPUT + 1)),
        Ok(_) => Ok(MAX_BLOCK_OUTPUT),
        Err(_) => Err(WireError::Malformed("not a zstd frame")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ack whose delta is `blocks` zstd blocks, each inflating to 65535 zero bytes:
    /// the decompression bomb of docs/upstream/chitchat-decompression.md.
    pub(crate) fn zstd_bomb(max_len: usize) -> (Vec<u8>, usize) {
        let frame = zstd::bulk::compress(&vec![0u8; u16::MAX as usize], 19).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&CHITCHAT_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 2]);
        let mut blocks = 0;
        while out.len() + 3 + frame.len() < max_len {
            out.push(1);
            out.extend_from_slice(&(frame.len() as u16).to_le_bytes());
            out.extend_from_slice(&frame);
            blocks += 1;
        }
        out.push(0);
        (out, blocks)
    }

    #[test]
    fn a_bomb_is_refused_after_reading_only_frame_headers() {
        let (bomb, blocks) = zstd_bomb(65_507);
        // What chitchat would have inflated: every block in full.
        let inflated = blocks as u64 * u64::from(u16::MAX);
        assert!(inflated > 150 << 20, "{blocks} blocks inflate to {inflated} bytes");
        let err = decompressed_bound(&bomb, MAX_DECOMPRESSED_BYTES).unwrap_err();
        let WireError::TooLarge { bound } = err else { panic!("{err:?}") };
        assert!(bound > MAX_DECOMPRESSED_BYTES && bound <= MAX_DECOMPRESSED_BYTES + u64::from(u16::MAX));
    }

    #[test]
    fn small_streams_are_measured_and_garbage_is_malformed() {
        let (one, blocks) = zstd_bomb(200);
        assert!(blocks >= 1);
        assert_eq!(decompressed_bound(&one, MAX_DECOMPRESSED_BYTES), Ok(blocks as u64 * 65_535));
        // A stored block counts its own length; BadCluster has no body.
        let mut stored = vec![0x53, 0xb0, 1, 2, 2, 3, 0, b'a', b'b', b'c', 0];
        assert_eq!(decompressed_bound(&stored, MAX_DECOMPRESSED_BYTES), Ok(3));
        stored.truncate(8);
        assert_eq!(
            decompressed_bound(&stored, MAX_DECOMPRESSED_BYTES),
            Err(WireError::Malformed("truncated stored block"))
        );
        assert_eq!(decompressed_bound(&[0x53, 0xb0, 1, 3], 0), Ok(0));
        assert_eq!(decompressed_bound(b"junk", 10), Err(WireError::Malformed("bad magic number")));
        let not_zstd = [0x53, 0xb0, 1, 2, 1, 4, 0, 1, 2, 3, 4, 0];
        assert_eq!(decompressed_bound(&not_zstd, 1 << 20), Err(WireError::Malformed("not a zstd frame")));
    }
}
