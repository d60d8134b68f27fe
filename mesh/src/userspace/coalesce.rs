//! Userspace GRO: decrypted TCP segments of one flow, in sequence, become one GSO write to the
//! TUN (the kernel then sees a single 64 KiB packet, as from a NIC with GRO). Rules follow the
//! kernel's `tcp_gro_receive`: same addresses, ports, header fields, options and ACK; only ACK
//! (PSH on the last) set; each segment but the last exactly `gso_size`; 64 KiB at most.

use super::{
    F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, MAX_SUPER, TCP, TCP_ACK, TCP_PSH, VNET_HDR_LEN, VnetHdr, fold,
    get32, ipv4_header_checksum, pseudo, put16, tcp_shape,
};

struct Item {
    /// `VNET_HDR_LEN` bytes of room, then the IP packet.
    buf: Vec<u8>,
    ihl: usize,
    thl: usize,
    gso: usize,
    next_seq: u32,
    segs: usize,
    open: bool,
    tcp: bool,
}

/// Collects decrypted packets of one receive batch and writes them to the TUN merged.
pub struct Coalescer {
    vnet: bool,
    items: Vec<Item>,
    pool: Vec<Vec<u8>>,
    max_items: usize,
}

impl Coalescer {
    /// `vnet`: the TUN takes a virtio-net header (else packets are written one by one as
    /// they come). At most `max_items` packets are held before a flush.
    pub fn new(vnet: bool, max_items: usize) -> Self {
        Self { vnet, items: Vec::with_capacity(max_items), pool: Vec::with_capacity(max_items), max_items }
    }

    /// Adds one decrypted IP packet; may call `write` (flush) when the batch is full.
    pub fn push(&mut self, pkt: &[u8], write: &mut dyn FnMut(&[u8])) {
        if !self.vnet {
            write(pkt);
            return;
        }
        let shape = tcp_shape(pkt);
        if let Some((ihl, thl)) = shape
            && let Some(it) =
                self.items.iter_mut().rev().find(|it| it.tcp && same_flow(&it.buf[VNET_HDR_LEN..], pkt, ihl))
        {
            if it.open && mergeable(it, pkt, ihl, thl) {
                let payload = &pkt[ihl + thl..];
                it.buf.extend_from_slice(payload);
                it.next_seq = it.next_seq.wrapping_add(payload.len() as u32);
                it.segs += 1;
                let flags = pkt[ihl + 13];
                if flags & TCP_PSH != 0 {
                    it.buf[VNET_HDR_LEN + ihl + 13] |= TCP_PSH;
                    it.open = false;
                }
                if payload.len() < it.gso {
                    it.open = false;
                }
                return;
            }
            // Out of order or different headers: the flow's next packets start a new item,
            // written after this one (order within a flow is kept).
            it.open = false;
        }
        if self.items.len() >= self.max_items {
            self.flush(write);
        }
        let mut buf = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(VNET_HDR_LEN + MAX_SUPER));
        buf.clear();
        buf.resize(VNET_HDR_LEN, 0);
        buf.extend_from_slice(pkt);
        let item = match shape {
            Some((ihl, thl)) => {
                let payload = pkt.len() - ihl - thl;
                let flags = pkt[ihl + 13];
                Item {
                    buf,
                    ihl,
                    thl,
                    gso: payload,
                    next_seq: get32(pkt, ihl + 4).wrapping_add(payload as u32),
                    segs: 1,
                    open: payload > 0 && flags == TCP_ACK,
                    tcp: true,
                }
            }
            None => Item { buf, ihl: 0, thl: 0, gso: 0, next_seq: 0, segs: 1, open: false, tcp: false },
        };
        self.items.push(item);
    }

    /// Writes every held packet (merged ones as one GSO packet) and empties the batch.
    pub fn flush(&mut self, write: &mut dyn FnMut(&[u8])) {
        for mut it in self.items.drain(..) {
            let hdr = if it.segs > 1 {
                let ip = &mut it.buf[VNET_HDR_LEN..];
                let total = ip.len();
                let v4 = ip[0] >> 4 == 4;
                if v4 {
                    put16(ip, 2, total as u16);
                    ipv4_header_checksum(ip, it.ihl);
                } else {
                    put16(ip, 4, (total - 40) as u16);
                }
                // Partial checksum: the pseudo-header sum, the kernel treats the rest as
                // verified (the AEAD already authenticated every byte).
                let partial = fold(pseudo(ip, TCP, total - it.ihl));
                put16(ip, it.ihl + 16, partial);
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
                    hdr_len: (it.ihl + it.thl) as u16,
                    gso_size: it.gso as u16,
                    csum_start: it.ihl as u16,
                    csum_offset: 16,
                }
            } else {
                VnetHdr { flags: F_DATA_VALID, ..VnetHdr::default() }
            };
            hdr.write(&mut it.buf[..VNET_HDR_LEN]);
            write(&it.buf);
            self.pool.push(it.buf);
        }
    }

    /// Packets held, not yet written.
    pub fn pending(&self) -> usize {
        self.items.len()
    }
}

/// Same IP version, addresses and ports.
fn same_flow(a: &[u8], b: &[u8], ihl: usize) -> bool {
    if a[0] >> 4 != b[0] >> 4 {
        return false;
    }
    let addrs = if b[0] >> 4 == 4 { 12..20 } else { 8..40 };
    a.get(addrs.clone()) == b.get(addrs) && a.get(ihl..ihl + 4) == b.get(ihl..ihl + 4)
}

fn mergeable(it: &Item, p: &[u8], ihl: usize, thl: usize) -> bool {
    let h = &it.buf[VNET_HDR_LEN..];
    let payload = p.len() - ihl - thl;
    let same_ip = if p[0] >> 4 == 4 { h[1] == p[1] && h[8] == p[8] } else { h[..4] == p[..4] && h[7] == p[7] };
    same_ip
        && it.ihl == ihl
        && it.thl == thl
        && p[ihl + 13] & !TCP_PSH == TCP_ACK
        && h[ihl + 8..ihl + 12] == p[ihl + 8..ihl + 12]
        && h[ihl + 20..ihl + thl] == p[ihl + 20..ihl + thl]
        && get32(p, ihl + 4) == it.next_seq
        && payload > 0
        && payload <= it.gso
        && h.len() + payload <= MAX_SUPER
}
