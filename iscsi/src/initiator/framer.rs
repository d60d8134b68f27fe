//! Receive-side framing for the session task: one buffer per PDU, sized from its
//! header, with the payload read straight into it. A shared growing receive buffer
//! copies the partial PDU it holds every time it must grow while earlier payloads are
//! still referenced (they are: Data-In segments are handed on without a copy), which
//! costs a memmove of up to a whole segment per PDU; this never copies a payload.
//! Data-In payloads (without digests) go to page-aligned buffers from a per-connection
//! [`Pool`], handed back by the last reader: no page faults or zeroing per PDU.
//!
//! Cancel-safe: all progress lives in the [`Framer`], so the session task may drop
//! [`Framer::next`] in a `select!` and call it again.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::pool::{Filling, Pool};
use crate::pdu::{BHS_LEN, Codec, Opcode, Pdu};

/// A Data-In payload being received into a pooled buffer.
struct Payload {
    /// The PDU, its data still empty.
    pdu: Pdu,
    buf: Filling,
    /// Payload bytes received so far.
    got: usize,
    /// Padding after the payload still to read (digests are off on this path).
    pad: usize,
}

/// PDU framing state of one connection.
pub(super) struct Framer {
    /// Bytes of the next header read so far (or left over from login).
    head: BytesMut,
    /// The PDU being received and its total length on the wire.
    frame: Option<(BytesMut, usize)>,
    /// The Data-In payload being received.
    payload: Option<Payload>,
    pool: Arc<Pool>,
}

impl Framer {
    /// Starts with what login left in its buffer.
    pub(super) fn new(leftover: BytesMut) -> Self {
        Self { head: leftover, frame: None, payload: None, pool: Arc::default() }
    }

    /// The next whole PDU.
    pub(super) async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R, codec: &Codec) -> Result<Pdu, String> {
        // Bounded: every turn either returns or reads at least one byte (0 is EOF).
        loop {
            if let Some(p) = &mut self.payload {
                let len = p.buf.bytes_mut().len();
                if p.got == len && p.pad == 0 {
                    let Payload { mut pdu, buf, .. } = self.payload.take().expect("present");
                    pdu.data = buf.freeze();
                    return Ok(pdu);
                }
                let n = if p.got < len {
                    rd.read(&mut p.buf.bytes_mut()[p.got..]).await
                } else {
                    let mut pad = [0u8; 3];
                    rd.read(&mut pad[..p.pad]).await
                }
                .map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("target closed the connection mid-PDU".into());
                }
                if p.got < len {
                    p.got += n;
                } else {
                    p.pad -= n;
                }
                continue;
            }
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
                // A Data-In payload read whole from the socket (no login leftover behind
                // its header, no digests to check over the frame) goes to a pooled buffer.
                let data_len = u32::from_be_bytes([0, self.head[5], self.head[6], self.head[7]]) as usize;
                if self.head[0] & 0x3f == Opcode::DataIn as u8
                    && self.head.len() == BHS_LEN
                    && data_at == BHS_LEN
                    && data_len > 0
                    && !codec.header_digest
                    && !codec.data_digest
                {
                    let mut bhs = [0u8; BHS_LEN];
                    bhs.copy_from_slice(&self.head.split_to(BHS_LEN));
                    let pdu = Pdu { bhs, ahs: Bytes::new(), data: Bytes::new() };
                    let buf = self.pool.take(data_len);
                    self.payload = Some(Payload { pdu, buf, got: 0, pad: total - BHS_LEN - data_len });
                    continue;
                }
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

    #[tokio::test]
    async fn data_in_payloads_come_in_pooled_aligned_buffers_split_anywhere() {
        let codec = Codec { header_digest: false, data_digest: false, max_recv_data: 1 << 20 };
        let sizes = [8192usize, 4096, 1002, 8192];
        let payload: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 7 + 3) as u8).collect();
        let mut wire = Vec::new();
        let mut off = 0;
        for (i, n) in sizes.iter().enumerate() {
            let data = Bytes::copy_from_slice(&payload[off..off + n]);
            let p = Pdu::data_in(0, 1, i as u32, off as u32, data, i + 1 == sizes.len(), None);
            let e = codec.encode_parts(&p);
            wire.extend_from_slice(&e.head);
            wire.extend_from_slice(&e.data);
            wire.extend_from_slice(&e.tail);
            off += n;
            if i == 1 {
                // Something else between Data-In PDUs.
                let e = codec.encode_parts(&Pdu::nop_in(0, 9, 0xffff_ffff, Bytes::from_static(b"ping")));
                wire.extend_from_slice(&e.head);
                wire.extend_from_slice(&e.data);
                wire.extend_from_slice(&e.tail);
            }
        }
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in wire.chunks(37) {
                tx.write_all(c).await.unwrap();
            }
        });
        let mut f = Framer::new(BytesMut::new());
        let mut got = Vec::new();
        while got.len() < sizes.len() + 1 {
            tokio::select! {
                p = f.next(&mut rx, &codec) => got.push(p.unwrap()),
                _ = tokio::task::yield_now() => {}
            }
        }
        writer.await.unwrap();
        assert_eq!(got[2].opcode(), Some(Opcode::NopIn));
        assert_eq!(&got[2].data[..], b"ping");
        let data_ins: Vec<&Pdu> = got.iter().filter(|p| p.opcode() == Some(Opcode::DataIn)).collect();
        let joined: Vec<u8> = data_ins.iter().flat_map(|p| p.data.iter().copied()).collect();
        assert!(joined == payload, "payload bytes equal, padding dropped");
        assert!(data_ins.iter().all(|p| (p.data.as_ptr() as usize).is_multiple_of(DATA_ALIGN)), "aligned payloads");
        assert_eq!(data_ins.iter().map(|p| p.buffer_offset()).collect::<Vec<_>>(), [0, 8192, 12288, 13290]);
    }
}
