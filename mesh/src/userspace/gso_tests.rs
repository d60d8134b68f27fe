use super::*;

/// Reference checksum: plain big-endian 16-bit words, written independently of `sum`.
fn ref_csum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut acc: u32 = 0;
    for w in bytes.chunks(2) {
        let v = if w.len() == 2 { u16::from_be_bytes([w[0], w[1]]) } else { u16::from_be_bytes([w[0], 0]) };
        acc += u32::from(v);
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo_bytes(ip: &[u8], l4_len: usize) -> Vec<u8> {
    let mut v = if ip[0] >> 4 == 4 { ip[12..20].to_vec() } else { ip[8..40].to_vec() };
    v.extend_from_slice(&(l4_len as u32).to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 6]);
    v
}

/// A hand-built TCP packet with correct checksums; `opts` are TCP options (multiple of 4).
fn tcp_packet(v4: bool, seq: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    let thl = 20 + opts.len();
    let mut tcp = vec![0u8; thl];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&777u32.to_be_bytes());
    tcp[12] = ((thl / 4) as u8) << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
    tcp[20..].copy_from_slice(opts);
    let l4 = thl + payload.len();
    let mut ip = if v4 {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + l4) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = 64;
        h[9] = 6;
        h[12..16].copy_from_slice(&[198, 18, 0, 1]);
        h[16..20].copy_from_slice(&[198, 18, 0, 2]);
        let c = ref_csum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    } else {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(l4 as u16).to_be_bytes());
        h[6] = 6;
        h[7] = 64;
        h[8] = 0xfd;
        h[23] = 1;
        h[24] = 0xfd;
        h[39] = 2;
        h
    };
    let c = ref_csum(&[&pseudo_bytes(&ip, l4), &tcp, payload]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip.extend_from_slice(payload);
    ip
}

fn tcp_checksum_ok(p: &[u8]) -> bool {
    let ihl = if p[0] >> 4 == 4 { 20 } else { 40 };
    ref_csum(&[&pseudo_bytes(p, p.len() - ihl), &p[ihl..]]) == 0
}

fn payload_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn checksum_matches_rfc1071_example_and_reference() {
    // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
    assert_eq!(fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)), 0xddf2);
    for len in [0, 1, 2, 3, 5, 63, 1400, 1401] {
        let d = payload_of(len);
        assert_eq!(!fold(sum(&d, 0)), ref_csum(&[&d]), "len {len}");
    }
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr { flags: 1, gso_type: 4, hdr_len: 72, gso_size: 1348, csum_start: 40, csum_offset: 16 };
    let mut b = [0u8; VNET_HDR_LEN];
    h.write(&mut b);
    assert_eq!(VnetHdr::parse(&b), Some(h));
    assert_eq!(VnetHdr::parse(&b[..9]), None);
}

fn segment_round_trip(v4: bool) {
    let ts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]; // NOP NOP timestamps
    let data = payload_of(5000);
    let big = tcp_packet(v4, 1_000_000, TCP_ACK | TCP_PSH, &ts, &data);
    let ihl = if v4 { 20 } else { 40 };
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
        hdr_len: (ihl + 32) as u16,
        gso_size: 1200,
        csum_start: ihl as u16,
        csum_offset: 16,
    };
    let mut out = Packets::default();
    let mut pkt = big.clone();
    prepare(&hdr, &mut pkt, &mut out).unwrap();
    assert_eq!(out.len(), 5);
    for i in 0..out.len() {
        let s = out.get(i);
        let chunk = &data[i * 1200..((i + 1) * 1200).min(5000)];
        // Each segment equals a hand-built packet with the right seq, flags and id.
        let flags = if i == 4 { TCP_ACK | TCP_PSH } else { TCP_ACK };
        let mut want = tcp_packet(v4, 1_000_000 + (i * 1200) as u32, flags, &ts, chunk);
        if v4 {
            want[4..6].copy_from_slice(&(0x1234u16 + i as u16).to_be_bytes());
            want[10..12].copy_from_slice(&[0, 0]);
            let c = ref_csum(&[&want[..20]]);
            want[10..12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(ref_csum(&[&s[..20]]), 0, "IPv4 header checksum of segment {i}");
        }
        assert!(tcp_checksum_ok(s), "TCP checksum of segment {i}");
        assert_eq!(s, &want[..], "segment {i}");
    }
    // Coalescing the segments back gives the super-packet again, with a partial checksum.
    let mut c = Coalescer::new(true, 8);
    let mut written = Vec::new();
    for i in 0..out.len() {
        c.push(out.get(i), &mut |b| written.push(b.to_vec()));
    }
    c.flush(&mut |b| written.push(b.to_vec()));
    assert_eq!(written.len(), 1);
    let h = VnetHdr::parse(&written[0]).unwrap();
    assert_eq!(h.gso_type, hdr.gso_type);
    assert_eq!(h.gso_size, 1200);
    assert_eq!((h.flags, h.csum_start, h.csum_offset, h.hdr_len), (F_NEEDS_CSUM, ihl as u16, 16, (ihl + 32) as u16));
    let mut merged = written[0][VNET_HDR_LEN..].to_vec();
    // Completing the partial checksum gives the original packet byte for byte (the IPv4 id
    // is the first segment's, as in the original).
    complete_checksum(&mut merged, ihl, 16).unwrap();
    assert_eq!(merged, big);
}

#[test]
fn ipv6_segments_and_coalesces_back() {
    segment_round_trip(false);
}

#[test]
fn ipv4_segments_and_coalesces_back() {
    segment_round_trip(true);
}

#[test]
fn partial_udp_checksum_is_completed() {
    let payload = payload_of(33);
    let mut p = tcp_packet(false, 0, 0, &[], &[]); // reuse addresses, then make it UDP
    p.truncate(40);
    p[6] = UDP;
    let l4 = 8 + payload.len();
    p[4..6].copy_from_slice(&(l4 as u16).to_be_bytes());
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&53u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5353u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(l4 as u16).to_be_bytes());
    let mut ps = p[8..40].to_vec();
    ps.extend_from_slice(&(l4 as u32).to_be_bytes());
    ps.extend_from_slice(&[0, 0, 0, UDP]);
    let want = ref_csum(&[&ps, &udp, &payload]);
    // The kernel leaves the folded pseudo-header sum in the field.
    let partial = !ref_csum(&[&ps]);
    udp[6..8].copy_from_slice(&partial.to_be_bytes());
    p.extend_from_slice(&udp);
    p.extend_from_slice(&payload);
    let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 40, csum_offset: 6, ..VnetHdr::default() };
    let mut out = Packets::default();
    prepare(&hdr, &mut p, &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(u16::from_be_bytes([p[46], p[47]]), want);
}

#[test]
fn malformed_and_unsupported_packets_are_refused() {
    let mut out = Packets::default();
    let tcp6 = VnetHdr { gso_type: GSO_TCPV6, gso_size: 100, ..VnetHdr::default() };
    assert_eq!(segment(&tcp6, &[0x60; 30], &mut out), Err(GsoError::Malformed("not an IP packet")));
    let v4 = tcp_packet(true, 1, TCP_ACK, &[], &payload_of(300));
    assert_eq!(segment(&tcp6, &v4, &mut out), Err(GsoError::Unsupported("GSO type does not match the packet")));
    let udp = VnetHdr { gso_type: 5, gso_size: 100, ..VnetHdr::default() };
    assert_eq!(segment(&udp, &v4, &mut out), Err(GsoError::Unsupported("not TCP")));
    let zero = VnetHdr { gso_type: GSO_TCPV4, gso_size: 0, ..VnetHdr::default() };
    assert_eq!(segment(&zero, &v4, &mut out), Err(GsoError::Malformed("GSO size 0")));
}

fn run(c: &mut Coalescer, pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut written = Vec::new();
    for p in pkts {
        c.push(p, &mut |b| written.push(b.to_vec()));
    }
    c.flush(&mut |b| written.push(b.to_vec()));
    written
}

#[test]
fn coalescer_keeps_order_and_splits_on_gaps_and_flags() {
    let d = payload_of(1000);
    let seg = |seq: u32, flags: u8, len: usize| tcp_packet(false, seq, flags, &[], &d[..len]);
    let mut c = Coalescer::new(true, 16);
    // 3 in sequence, a gap, then 2 in sequence with PSH on the last, then one after PSH.
    let pkts = vec![
        seg(0, TCP_ACK, 1000),
        seg(1000, TCP_ACK, 1000),
        seg(2000, TCP_ACK, 1000),
        seg(9000, TCP_ACK, 1000),
        seg(10000, TCP_ACK | TCP_PSH, 500),
        seg(10500, TCP_ACK, 1000),
        seg(11500, TCP_ACK | TCP_FIN, 0),
    ];
    let w = run(&mut c, &pkts);
    let shapes: Vec<(u8, u16, usize)> = w
        .iter()
        .map(|b| {
            let h = VnetHdr::parse(b).unwrap();
            (h.gso_type, h.gso_size, b.len() - VNET_HDR_LEN - 60)
        })
        .collect();
    assert_eq!(shapes, vec![(GSO_TCPV6, 1000, 3000), (GSO_TCPV6, 1000, 1500), (GSO_NONE, 0, 1000), (GSO_NONE, 0, 0)]);
    // The PSH of the last merged segment is kept on the merged header.
    assert_eq!(w[1][VNET_HDR_LEN + 40 + 13], TCP_ACK | TCP_PSH);
    assert_eq!(c.pending(), 0);
}

#[test]
fn coalescer_merges_interleaved_flows_separately_and_passes_others() {
    let d = payload_of(800);
    let a = |seq: u32| tcp_packet(true, seq, TCP_ACK, &[], &d);
    let b = |seq: u32| {
        let mut p = tcp_packet(true, seq, TCP_ACK, &[], &d);
        p[20..22].copy_from_slice(&40001u16.to_be_bytes()); // other source port
        p
    };
    let ping = {
        let mut p = tcp_packet(true, 0, 0, &[], &[1, 2, 3]);
        p[9] = 1; // ICMP
        p
    };
    let pkts = vec![a(0), b(0), a(800), ping.clone(), b(800), a(1600)];
    let w = run(&mut Coalescer::new(true, 16), &pkts);
    assert_eq!(w.len(), 3);
    assert_eq!(w[0].len() - VNET_HDR_LEN, 40 + 3 * 800);
    assert_eq!(w[1].len() - VNET_HDR_LEN, 40 + 2 * 800);
    assert_eq!(&w[2][VNET_HDR_LEN..], &ping[..]);
    assert_eq!(VnetHdr::parse(&w[2]).unwrap().flags, F_DATA_VALID);
    // Without a vnet header every packet goes out as it came, immediately.
    let plain = run(&mut Coalescer::new(false, 16), &pkts);
    assert_eq!(plain, pkts);
}

#[test]
fn coalescer_flushes_when_full() {
    let d = payload_of(100);
    let pkts: Vec<Vec<u8>> = (0..5).map(|i| tcp_packet(false, i * 1000, TCP_ACK, &[], &d)).collect();
    let mut c = Coalescer::new(true, 2);
    let mut early = 0;
    for p in &pkts {
        c.push(p, &mut |_| early += 1);
    }
    assert_eq!((early, c.pending()), (4, 1));
}

#[test]
fn mutated_and_truncated_packets_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bases = [
        tcp_packet(false, 5, TCP_ACK, &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7], &payload_of(3000)),
        tcp_packet(true, 5, TCP_ACK | TCP_PSH, &[], &payload_of(2000)),
    ];
    let mut out = Packets::default();
    let mut co = Coalescer::new(true, 8);
    let mut written = 0usize;
    for i in 0..20_000 {
        let mut p = bases[i % 2].clone();
        for _ in 0..rng.random_range(0..4) {
            let at = rng.random_range(0..60.min(p.len()));
            p[at] = rng.random();
        }
        p.truncate(rng.random_range(0..=p.len()));
        let hdr = VnetHdr {
            flags: rng.random_range(0..2),
            gso_type: [GSO_NONE, GSO_TCPV4, GSO_TCPV6, 5, 0x81][rng.random_range(0..5)],
            hdr_len: rng.random_range(0..100),
            gso_size: rng.random_range(0..1500),
            csum_start: rng.random_range(0..80),
            csum_offset: [6, 16, 200][rng.random_range(0..3)],
        };
        let _ = prepare(&hdr, &mut p.clone(), &mut out);
        co.push(&p, &mut |b| written += b.len());
    }
    co.flush(&mut |b| written += b.len());
    assert!(written > 0);
}
