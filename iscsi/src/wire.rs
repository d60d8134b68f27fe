//! The only async I/O helpers shared by target and initiator: read one PDU
//! into a reusable buffer, and write a batch of PDUs with one vectored write
//! chain (header, data and tail slices; the data is never copied).

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pdu::{Codec, Pdu, PduError};

/// Bytes [`read_pdu`] asks the socket for at a time (and the least a buffer grows by).
pub const READ_CHUNK: usize = 16 * 1024;

/// Why reading a PDU failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid PDU.
    #[error(transparent)]
    Pdu(#[from] PduError),
    /// Peer closed the connection cleanly between PDUs.
    #[error("peer closed the connection")]
    Closed,
}

/// Reads until one PDU is framed (or the peer closes / sends garbage).
pub async fn read_pdu<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut, codec: &Codec) -> Result<Pdu, WireError> {
    loop {
        if let Some(p) = codec.decode(buf)? {
            return Ok(p);
        }
        // Small steps: the codec reserves a large PDU's exact size itself, so a
        // connection's buffer is bounded by the data segment length it negotiated.
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = r.read_buf(buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                WireError::Closed
            } else {
                WireError::Io(io::ErrorKind::UnexpectedEof.into())
            });
        }
    }
}

/// Writes PDUs back to back with vectored writes; no payload copies.
pub async fn write_pdus<W: AsyncWrite + Unpin>(w: &mut W, codec: &Codec, pdus: &[Pdu]) -> io::Result<()> {
    let mut parts: Vec<Bytes> = Vec::with_capacity(pdus.len() * 3);
    for p in pdus {
        let e = codec.encode_parts(p);
        parts.push(e.head);
        if !e.data.is_empty() {
            parts.push(e.data);
        }
        if !e.tail.is_empty() {
            parts.push(e.tail);
        }
    }
    write_all_parts(w, parts).await
}

async fn write_all_parts<W: AsyncWrite + Unpin>(w: &mut W, mut parts: Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<IoSlice<'_>> = parts[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let p = &mut parts[first];
            if n >= p.len() {
                n -= p.len();
                first += 1;
            } else {
                p.advance(n);
                n = 0;
            }
        }
    }
    w.flush().await
}
