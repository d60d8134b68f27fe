//! Sans-IO framing: bytes in, PDUs out and back. Handles AHS, padding to
//! 4 bytes and the optional CRC32C header and data digests (RFC 7143 §12.1).
//! Never touches a socket; the connection tasks feed it.

use bytes::{Buf, Bytes, BytesMut};

use super::{BHS_LEN, Opcode, Pdu};

/// Why a byte stream could not be framed into a PDU. Every variant but
/// `DataDigest` leaves the stream unsynchronised: the connection must drop.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    /// Byte 0 holds no assigned opcode: the peer is not speaking iSCSI.
    #[error(
        "unknown iSCSI opcode {0:#04x}: peer is not speaking iSCSI or the stream lost sync; dropping the connection"
    )]
    UnknownOpcode(u8),
    /// The data segment is larger than we declared we can receive.
    #[error(
        "data segment of {len} bytes exceeds our MaxRecvDataSegmentLength {max}: peer ignored negotiation; dropping the connection"
    )]
    DataTooLong {
        /// Length the header announced.
        len: usize,
        /// Our declared limit.
        max: usize,
    },
    /// The header digest did not match: the header cannot be trusted.
    #[error(
        "header digest mismatch (got {got:#010x}, computed {want:#010x}): corrupted link or digest settings differ; dropping the connection"
    )]
    HeaderDigest {
        /// Digest on the wire.
        got: u32,
        /// Digest computed here.
        want: u32,
    },
    /// The data digest did not match; the framing is intact, so the PDU can
    /// be rejected (reason 0x02) and the connection kept.
    #[error("data digest mismatch on a {opcode:?} PDU: corrupted payload; rejecting it")]
    DataDigest {
        /// Opcode of the damaged PDU.
        opcode: Opcode,
        /// Its header, for the Reject PDU.
        bhs: Box<[u8; BHS_LEN]>,
    },
}

/// Framing settings negotiated at login; the default is what applies during
/// login itself (no digests, 8 KiB segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// CRC32C after the header (and AHS).
    pub header_digest: bool,
    /// CRC32C after the padded data segment.
    pub data_digest: bool,
    /// Largest data segment we accept (our declared MaxRecvDataSegmentLength).
    pub max_recv_data: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec { header_digest: false, data_digest: false, max_recv_data: 8192 }
    }
}

/// Bytes of padding after a data segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// CRC32C as iSCSI puts it on the wire (little-endian).
fn digest(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0u32, |c, p| crc32c::crc32c_append(c, p))
}

/// One PDU ready for a vectored write: small header bytes, the data segment
/// shared zero-copy, and a tail of padding plus data digest.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// BHS, AHS and header digest.
    pub head: Bytes,
    /// The data segment, not copied.
    pub data: Bytes,
    /// Padding and data digest (at most 7 bytes).
    pub tail: Bytes,
}

impl Encoded {
    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len() + self.tail.len()
    }
    /// Whether nothing would be written (never true for a real PDU).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Codec {
    /// Encodes a PDU into parts for a vectored write; the length fields of
    /// the BHS are set from the segments.
    pub fn encode_parts(&self, pdu: &Pdu) -> Encoded {
        let mut head = Vec::with_capacity(BHS_LEN + pdu.ahs.len() + 4);
        self.encode_head_into(pdu, pdu.data.len(), &mut head);
        let mut tail = Vec::new();
        self.encode_tail_into(&pdu.data, &mut tail);
        Encoded { head: Bytes::from(head), data: pdu.data.clone(), tail: Bytes::from(tail) }
    }

    /// Appends the header part (BHS with lengths, AHS, header digest) of a
    /// PDU whose data segment is `data_len` bytes sent separately: the target
    /// streams read data from the page cache (sendfile) after this header.
    /// `pdu.data` is ignored.
    pub fn encode_head_into(&self, pdu: &Pdu, data_len: usize, out: &mut Vec<u8>) {
        let mut bhs = pdu.bhs;
        bhs[4] = (pdu.ahs.len() / 4) as u8;
        bhs[5..8].copy_from_slice(&(data_len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&bhs);
        out.extend_from_slice(&pdu.ahs);
        if self.header_digest {
            out.extend_from_slice(&digest(&[&bhs, &pdu.ahs]).to_le_bytes());
        }
    }

    /// Appends what follows a data segment on the wire: padding to 4 bytes
    /// and, when negotiated, the data digest (nothing for an empty segment).
    pub fn encode_tail_into(&self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let pad = &[0u8; 3][..pad_len(data.len())];
        out.extend_from_slice(pad);
        if self.data_digest {
            out.extend_from_slice(&digest(&[data, pad]).to_le_bytes());
        }
    }

    /// Encodes a PDU by appending it to `out` (copies the data segment).
    pub fn encode(&self, pdu: &Pdu, out: &mut BytesMut) {
        let e = self.encode_parts(pdu);
        out.reserve(e.len());
        out.extend_from_slice(&e.head);
        out.extend_from_slice(&e.data);
        out.extend_from_slice(&e.tail);
    }

    /// Decodes one PDU from the front of `buf`, consuming it. `Ok(None)`
    /// means more bytes are needed; nothing is consumed then.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, PduError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        let op = Opcode::from_u8(buf[0]).ok_or(PduError::UnknownOpcode(buf[0] & 0x3f))?;
        let ahs_len = buf[4] as usize * 4;
        let data_len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if data_len > self.max_recv_data {
            return Err(PduError::DataTooLong { len: data_len, max: self.max_recv_data });
        }
        let hd = if self.header_digest { 4 } else { 0 };
        let dd = if self.data_digest && data_len > 0 { 4 } else { 0 };
        let padded = data_len + pad_len(data_len);
        let total = BHS_LEN + ahs_len + hd + padded + dd;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let head_len = BHS_LEN + ahs_len;
        if self.header_digest {
            let got = u32::from_le_bytes(buf[head_len..head_len + 4].try_into().expect("4 bytes"));
            let want = digest(&[&buf[..head_len]]);
            if got != want {
                return Err(PduError::HeaderDigest { got, want });
            }
        }
        let mut frame = buf.split_to(total);
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&frame[..BHS_LEN]);
        frame.advance(BHS_LEN);
        let ahs = frame.split_to(ahs_len).freeze();
        frame.advance(hd);
        if dd > 0 {
            let got = u32::from_le_bytes(frame[padded..padded + 4].try_into().expect("4 bytes"));
            let want = digest(&[&frame[..padded]]);
            if got != want {
                return Err(PduError::DataDigest { opcode: op, bhs: Box::new(bhs) });
            }
        }
        let data = frame.split_to(data_len).freeze();
        Ok(Some(Pdu { bhs, ahs, data }))
    }
}
