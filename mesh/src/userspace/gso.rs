//! Pure packet surgery for the TUN offloads: the virtio-net header the kernel puts in front of
//! every TUN packet once `IFF_VNET_HDR` is on, Internet checksums, TCP segmentation of the
//! kernel's 64 KiB GSO super-packets (TX: WireGuard encrypts each wire-sized segment) and the
//! reverse, coalescing decrypted TCP segments of one flow into one GSO write (RX: userspace
//! GRO). Doing this here instead of in the kernel is what lets one TUN syscall carry ~45
//! packets each way. No I/O, no allocation after the buffers reach their working size.

use std::ops::Range;

/// Bytes of the virtio-net header (`struct virtio_net_hdr`, no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the receiver may skip checksum validation.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` bit.
pub const GSO_ECN: u8 = 0x80;
/// Largest IP packet a GSO super-packet may become.
pub const MAX_SUPER: usize = 65535;

const TCP: u8 = 6;
#[cfg(test)]
const UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// The virtio-net header (native endian: TUN uses the host's byte order by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` flags.
    pub flags: u8,
    /// `GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers (IP + TCP) of a GSO packet.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`VNET_HDR_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }

    /// Writes the header into `b[..VNET_HDR_LEN]`.
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Why a packet from the TUN could not be segmented (it is dropped; TCP retransmits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    /// Too short or inconsistent headers.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A GSO type we never enable (UDP, IPv6 extension headers).
    #[error("unsupported GSO packet: {0}")]
    Unsupported(&'static str),
}

/// Ones' complement sum of `data` added to `acc`, not folded. Summing native-endian words
/// and swapping at the end is byte-order independent (RFC 1071), and 32-bit words into a
/// 64-bit accumulator never overflow for packets.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 4];
        w[..rest.len()].copy_from_slice(rest);
        acc += u64::from(u32::from_ne_bytes(w));
    }
    acc
}

/// Folds a [`sum`] to 16 bits in network byte order (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::from_be(acc as u16)
}

/// The pseudo-header sum of an IPv4 or IPv6 packet `ip` for an L4 length `l4_len`.
fn pseudo(ip: &[u8], proto: u8, l4_len: usize) -> u64 {
    let addrs = if ip[0] >> 4 == 4 { &ip[12..20] } else { &ip[8..40] };
    let tail = [0, 0, (l4_len >> 8) as u8, l4_len as u8, 0, 0, 0, proto];
    sum(&tail, sum(addrs, 0))
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Recomputes an IPv4 header checksum in place.
fn ipv4_header_checksum(ip: &mut [u8], ihl: usize) {
    put16(ip, 10, 0);
    let c = !fold(sum(&ip[..ihl], 0));
    put16(ip, 10, c);
}

/// Completes a partial checksum (`F_NEEDS_CSUM`) in place: the field holds the pseudo-header
/// sum, the result is the complement of the sum from `csum_start` to the end.
pub fn complete_checksum(pkt: &mut [u8], csum_start: usize, csum_offset: usize) -> Result<(), GsoError> {
    let at = csum_start + csum_offset;
    if at + 2 > pkt.len() {
        return Err(GsoError::Malformed("checksum offset beyond packet"));
    }
    let mut c = !fold(sum(&pkt[csum_start..], 0));
    if c == 0 && csum_offset == 6 {
        c = 0xffff; // UDP: 0 means "no checksum"
    }
    put16(pkt, at, c);
    Ok(())
}

/// IP header length and L4 protocol of an IPv4 or IPv6 packet (no IPv6 extension headers).
fn ip_header(pkt: &[u8]) -> Result<(usize, u8), GsoError> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return Err(GsoError::Malformed("IPv4 header length"));
            }
            Ok((ihl, pkt[9]))
        }
        Some(6) if pkt.len() >= 40 => Ok((40, pkt[6])),
        _ => Err(GsoError::Malformed("not an IP packet")),
    }
}

/// A reusable arena of packets: one buffer, one span per packet.
#[derive(Debug, Default)]
pub struct Packets {
    buf: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl Packets {
    /// Empties the arena, keeping its capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// No packets.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Packet `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.buf[self.spans[i].clone()]
    }

    /// Appends a copy of `p`.
    pub fn push(&mut self, p: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(p);
        self.spans.push(start..self.buf.len());
    }

    fn push_parts(&mut self, head: &[u8], payload: &[u8]) -> &mut [u8] {
        let start = self.buf.len();
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(payload);
        self.spans.push(start..self.buf.len());
        &mut self.buf[start..]
    }
}

/// Splits a TCP GSO super-packet `pkt` (without the vnet header) into MSS-sized packets with
/// complete IP and TCP checksums, appended to `out`. Like the kernel's `tcp_gso_segment`:
/// sequence numbers advance, IPv4 ids increment, FIN/PSH stay on the last segment only and
/// CWR on the first.
pub fn segment(hdr: &VnetHdr, pkt: &[u8], out: &mut Packets) -> Result<(), GsoError> {
    let v4 = match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 => true,
        GSO_TCPV6 => false,
        _ => return Err(GsoError::Unsupported("not TCP")),
    };
    let (ihl, proto) = ip_header(pkt)?;
    if proto != TCP || (pkt[0] >> 4 == 4) != v4 {
        return Err(GsoError::Unsupported("GSO type does not match the packet"));
    }
    if pkt.len() < ihl + 20 {
        return Err(GsoError::Malformed("TCP header"));
    }
    let thl = usize::from(pkt[ihl + 12] >> 4) * 4;
    let hlen = ihl + thl;
    if thl < 20 || pkt.len() < hlen {
        return Err(GsoError::Malformed("TCP header length"));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(GsoError::Malformed("GSO size 0"));
    }
    let (head, payload) = pkt.split_at(hlen);
    let seq0 = get32(head, ihl + 4);
    let id0 = get16(head, 4);
    let flags0 = head[ihl + 13];
    let n = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let p = out.push_parts(head, chunk);
        let total = hlen + chunk.len();
        if v4 {
            put16(p, 2, total as u16);
            put16(p, 4, id0.wrapping_add(i as u16));
            ipv4_header_checksum(p, ihl);
        } else {
            put16(p, 4, (total - 40) as u16);
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        p[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < n {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        p[ihl + 13] = flags;
        put16(p, ihl + 16, 0);
        let c = !fold(sum(&p[ihl..total], pseudo(p, TCP, total - ihl)));
        put16(p, ihl + 16, c);
    }
    Ok(())
}

/// Prepares one packet read from the TUN for encryption: segments GSO packets into `out`, or
/// completes a partial checksum in place and leaves `out` empty (the caller sends `pkt`).
pub fn prepare(hdr: &VnetHdr, pkt: &mut [u8], out: &mut Packets) -> Result<(), GsoError> {
    out.clear();
    if hdr.gso_type != GSO_NONE {
        return segment(hdr, pkt, out);
    }
    if hdr.flags & F_NEEDS_CSUM != 0 {
        complete_checksum(pkt, usize::from(hdr.csum_start), usize::from(hdr.csum_offset))?;
    }
    Ok(())
}

#[path = "coalesce.rs"]
mod coalesce;
pub use coalesce::Coalescer;

/// Headers of a TCP packet that may be coalesced (IPv4 without options and with DF, or IPv6
/// without extension headers), else `None`.
fn tcp_shape(p: &[u8]) -> Option<(usize, usize)> {
    let (ihl, proto) = ip_header(p).ok()?;
    if proto != TCP || p.len() < ihl + 20 {
        return None;
    }
    if p[0] >> 4 == 4 && (ihl != 20 || get16(p, 6) != 0x4000 || usize::from(get16(p, 2)) != p.len()) {
        return None;
    }
    if p[0] >> 4 == 6 && usize::from(get16(p, 4)) + 40 != p.len() {
        return None;
    }
    let thl = usize::from(p[ihl + 12] >> 4) * 4;
    (thl >= 20 && p.len() >= ihl + thl).then_some((ihl, thl))
}

#[cfg(test)]
#[path = "gso_tests.rs"]
mod tests;
