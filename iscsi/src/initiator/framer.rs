//! Receive-side framing for the session task: one buffer per PDU, sized from its
//! header, with the payload read straight into it. A shared growing receive buffer
//! copies the partial PDU it holds every time it must grow while earlier payloads are
//! still referenced (they are: Data-In segments are handed on without a copy), which
//! costs a memmove of up to a whole segment per PDU; this never copies a payload.
//!
//! Cancel-safe: all progress lives in the [`Framer`], so the session task may drop
//! [`Framer::next`] in a `select!` and call it again.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::pdu::{BHS_LEN, Codec, Pdu};

/// PDU framing state of one connection.
pub(super) struct Framer {
    /// Bytes of the next header read so far (or left over from login).
    head: BytesMut,
    /// The PDU being received and its total length on the wire.
    frame: Option<(BytesMut, usize)>,
}

impl Framer {
    /// Starts with what login left in its buffer.
    pub(super) fn new(leftover: BytesMut) -> Self {
        Self { head: leftover, frame: None }
    }

    /// The next whole PDU.
    pub(super) async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R, codec: &Codec) -> Result<Pdu, String> {
        // Bounded: every turn either returns or reads at least one byte (0 is EOF).
        loop {
            if let Some((frame, total)) = &mut self.frame {
                let want = *total - frame.len();
                if want == 0 {
                    let (mut frame, _) = self.frame.take().expect("present");
                    return match codec.decode(&mut frame) {
                        Ok(Some(p)) => Ok(p),
                        Ok(None) => Err("framing error: whole PDU did not decode".into()),
                        Err(e) => Err(e.to_string()),
                    };
                }
                let n = rd.read_buf(&mut (&mut *frame).limit(want)).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("target closed the connection mid-PDU".into());
                }
                continue;
            }
            if self.head.len() >= BHS_LEN {
                let (total, data_at) = wire_len(&self.head[..BHS_LEN], codec)?;
                let mut frame = aligned_frame(total, data_at);
                let take = self.head.len().min(total);
                frame.extend_from_slice(&self.head.split_to(take));
                self.frame = Some((frame, total));
                continue;
            }
            // Read only up to the end of the header: the payload goes to its own buffer.
            let want = BHS_LEN - self.head.len();
            self.head.reserve(want);
            let n = rd.read_buf(&mut (&mut self.head).limit(want)).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(if self.head.is_empty() {
                    "target closed the connection".into()
                } else {
                    "target closed the connection mid-header".into()
                });
            }
        }
    }
}

/// Payload alignment in memory: a dest opened with O_DIRECT can take Data-In segments
/// as they are (a page also satisfies every logical block size).
pub(super) const DATA_ALIGN: usize = 4096;

/// An empty buffer for a PDU of `total` bytes whose payload starts `data_at` bytes in,
/// placed so that the payload lands on a [`DATA_ALIGN`] boundary (small PDUs: as is).
fn aligned_frame(total: usize, data_at: usize) -> BytesMut {
    if total - data_at < DATA_ALIGN {
        return BytesMut::with_capacity(total);
    }
    let mut frame = BytesMut::with_capacity(total + DATA_ALIGN);
    let pad = (DATA_ALIGN - (frame.as_ptr() as usize + data_at) % DATA_ALIGN) % DATA_ALIGN;
    frame.resize(pad, 0);
    let _ = frame.split_to(pad);
    frame
}

/// Length on the wire of the PDU whose basic header is `bhs` (AHS, digests, padding),
/// and where its payload starts.
fn wire_len(bhs: &[u8], codec: &Codec) -> Result<(usize, usize), String> {
    let ahs_len = bhs[4] as usize * 4;
    let data_len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    if data_len > codec.max_recv_data {
        return Err(format!(
            "data segment of {data_len} bytes exceeds our MaxRecvDataSegmentLength {}",
            codec.max_recv_data
        ));
    }
    let hd = if codec.header_digest { 4 } else { 0 };
    let dd = if codec.data_digest && data_len > 0 { 4 } else { 0 };
    let padded = data_len.div_ceil(4) * 4;
    Ok((BHS_LEN + ahs_len + hd + padded + dd, BHS_LEN + ahs_len + hd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Opcode;
    use bytes::Bytes;

    #[tokio::test]
    async fn frames_pdus_split_anywhere_and_survives_cancellation() {
        let codec = Codec { header_digest: true, data_digest: true, max_recv_data: 1 << 20 };
        let pdus: Vec<Pdu> = [1000usize, 8192, 1003]
            .iter()
            .enumerate()
            .map(|(i, n)| Pdu::nop_out(i as u32, 0xffff_ffff, 1, 1, Bytes::from(vec![i as u8 + 1; *n])))
            .collect();
        let mut wire = Vec::new();
        for p in &pdus {
            let e = codec.encode_parts(p);
            wire.extend_from_slice(&e.head);
            wire.extend_from_slice(&e.data);
            wire.extend_from_slice(&e.tail);
        }
        // Deliver in odd-sized pieces, with the first 10 bytes as login leftover.
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let rest = wire[10..].to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in rest.chunks(37) {
                tx.write_all(c).await.unwrap();
            }
        });
        let mut f = Framer::new(BytesMut::from(&wire[..10]));
        let mut got = Vec::new();
        while got.len() < pdus.len() {
            // Cancel half the calls after a moment: no byte may be lost.
            tokio::select! {
                p = f.next(&mut rx, &codec) => got.push(p.unwrap()),
                _ = tokio::task::yield_now() => {}
            }
        }
        writer.await.unwrap();
        for (a, b) in pdus.iter().zip(&got) {
            assert_eq!(b.opcode(), Some(Opcode::NopOut));
            assert_eq!(a.itt(), b.itt());
            assert_eq!(a.data, b.data);
        }
        assert_eq!(got[1].data.as_ptr() as usize % DATA_ALIGN, 0, "large payloads land aligned");
    }
}
