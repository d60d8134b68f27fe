//! The underlay socket: one dual-stack UDP socket, written with `sendmmsg` + UDP GSO (one
//! syscall sends every WireGuard datagram of a TUN super-packet) and read with `recvmmsg` +
//! UDP GRO (one syscall returns many datagrams, same-size runs glued with a segment size).
//! If the kernel refuses GSO the socket falls back to one datagram per message, logged once.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::tun::cvt;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most segments the kernel takes in one GSO send.
const MAX_GSO_SEGS: usize = 64;
/// Most bytes of one GSO send (UDP length field, minus headers, with room to spare).
const MAX_GSO_BYTES: usize = 65000;
/// Receive buffer per message: a whole GRO run.
pub const RX_BUF: usize = 65536;

/// Control-message room for one u16/int option, aligned like `cmsghdr`.
type Cmsg = [u64; 4];

/// The device's UDP socket.
#[derive(Debug)]
pub struct Udp {
    fd: OwnedFd,
    gso: AtomicBool,
    /// Reads may return GRO runs (see [`RxBatch::datagrams`]).
    pub gro: bool,
}

fn setsockopt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: an int option passed by pointer with its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    })
    .map(drop)
}

fn to_raw(a: SocketAddr) -> libc::sockaddr_in6 {
    let v6 = match a {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    };
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut s: libc::sockaddr_in6 = unsafe { zeroed() };
    s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    s.sin6_port = v6.port().to_be();
    s.sin6_addr = libc::in6_addr { s6_addr: v6.ip().octets() };
    s.sin6_flowinfo = v6.flowinfo();
    s.sin6_scope_id = v6.scope_id();
    s
}

fn from_raw(s: &libc::sockaddr_in6) -> SocketAddr {
    let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
    let port = u16::from_be(s.sin6_port);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::from((v4, port)),
        None => SocketAddr::V6(SocketAddrV6::new(ip, port, s.sin6_flowinfo, s.sin6_scope_id)),
    }
}

impl Udp {
    /// Binds `[::]:port` (IPv4 too, as mapped addresses) with large buffers and GRO on.
    pub fn bind(port: u16) -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; checked before wrapping.
        let fd = cvt(unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: just returned by socket(2), owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
            if setsockopt(&fd, libc::SOL_SOCKET, force, 8 << 20).is_err() {
                let _ = setsockopt(&fd, libc::SOL_SOCKET, plain, 8 << 20);
            }
        }
        let addr = to_raw(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
        // SAFETY: `addr` is a valid sockaddr_in6 of the given size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as u32,
            )
        })?;
        let gro = match setsockopt(&fd, SOL_UDP, UDP_GRO, 1) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(port, error = %e, "UDP GRO unavailable, receiving datagrams one by one");
                false
            }
        };
        Ok(Self { fd, gso: AtomicBool::new(true), gro })
    }

    /// Waits until a datagram can be read, at most `timeout`.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        super::tun::poll_in(self.fd.as_raw_fd(), timeout)
    }

    /// Sends one datagram (handshakes, keepalives, cookie replies).
    pub fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<()> {
        let a = to_raw(dst);
        // SAFETY: `buf` and `a` are valid for the duration of the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&a as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as u32,
            )
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Sends the datagrams laid end to end in `buf` (lengths in `lens`) to `dst`: runs of
    /// equal length go out as one GSO message each, all messages in one `sendmmsg`.
    pub fn send_batch(&self, buf: &[u8], lens: &[usize], dst: SocketAddr, tx: &mut TxScratch) -> io::Result<()> {
        let gso = self.gso.load(Ordering::Relaxed);
        tx.plan(lens, gso);
        match self.send_planned(buf, dst, tx, gso) {
            Err(e) if gso && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)) => {
                self.gso.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "UDP GSO refused by the kernel, sending datagrams one by one");
                tx.plan(lens, false);
                self.send_planned(buf, dst, tx, false)
            }
            r => r,
        }
    }

    fn send_planned(&self, buf: &[u8], dst: SocketAddr, tx: &mut TxScratch, gso: bool) -> io::Result<()> {
        let mut addr = to_raw(dst);
        tx.iov.clear();
        tx.hdrs.clear();
        for m in &tx.plan {
            tx.iov.push(libc::iovec { iov_base: buf[m.start..].as_ptr() as *mut libc::c_void, iov_len: m.len });
        }
        for (i, m) in tx.plan.iter().enumerate() {
            // SAFETY: msghdr is plain data; all-zero is valid.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_in6).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
            h.msg_hdr.msg_iov = &mut tx.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            if gso && m.seg > 0 {
                let c = &mut tx.cmsg[i];
                *c = [0; 4];
                let cp = c.as_mut_ptr().cast::<libc::cmsghdr>();
                // SAFETY: `c` is 32 aligned bytes, room for one cmsghdr plus a u16.
                unsafe {
                    (*cp).cmsg_level = SOL_UDP;
                    (*cp).cmsg_type = UDP_SEGMENT;
                    (*cp).cmsg_len = libc::CMSG_LEN(2) as usize;
                    libc::CMSG_DATA(cp).cast::<u16>().write_unaligned(m.seg as u16);
                }
                h.msg_hdr.msg_control = cp.cast();
                // SAFETY: pure arithmetic.
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            }
            tx.hdrs.push(h);
        }
        let mut done = 0;
        while done < tx.hdrs.len() {
            let rest = &mut tx.hdrs[done..];
            // SAFETY: every header points at live iovecs, cmsgs and `addr` for the call.
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), rest.as_mut_ptr(), rest.len() as u32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Reads a batch without blocking; returns how many messages `rx` now holds.
    pub fn recv_batch(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let n = rx.bufs.len();
        for i in 0..n {
            let h = &mut rx.hdrs[i];
            rx.iov[i] = libc::iovec { iov_base: rx.bufs[i].as_mut_ptr().cast(), iov_len: RX_BUF };
            h.msg_hdr.msg_name = (&mut rx.addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
            h.msg_hdr.msg_iov = &mut rx.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = rx.cmsg[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = size_of::<Cmsg>();
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by `rx` for the call.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                rx.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        rx.count = r as usize;
        Ok(rx.count)
    }
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    start: usize,
    len: usize,
    seg: usize,
}

/// Send-side scratch owned by one thread (no allocation once warm).
pub struct TxScratch {
    plan: Vec<Planned>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsg: Vec<Cmsg>,
}

impl Default for TxScratch {
    fn default() -> Self {
        Self {
            plan: Vec::with_capacity(256),
            iov: Vec::with_capacity(256),
            hdrs: Vec::with_capacity(256),
            cmsg: vec![[0; 4]; 256],
        }
    }
}

impl TxScratch {
    /// Groups datagrams into messages: with GSO, a run of equal lengths (the last may be
    /// shorter) up to the kernel's limits; without, one datagram each.
    fn plan(&mut self, lens: &[usize], gso: bool) {
        self.plan.clear();
        let mut start = 0;
        let mut i = 0;
        while i < lens.len() {
            let seg = lens[i];
            let mut len = seg;
            let mut j = i + 1;
            if gso {
                while j < lens.len() && j - i < MAX_GSO_SEGS && len + lens[j] <= MAX_GSO_BYTES && lens[j] <= seg {
                    len += lens[j];
                    j += 1;
                    if lens[j - 1] < seg {
                        break;
                    }
                }
            }
            self.plan.push(Planned { start, len, seg: if j - i > 1 { seg } else { 0 } });
            start += len;
            i = j;
        }
        if self.cmsg.len() < self.plan.len() {
            self.cmsg.resize(self.plan.len(), [0; 4]);
        }
    }
}

/// Receive-side buffers owned by one thread.
pub struct RxBatch {
    bufs: Vec<Box<[u8]>>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_in6>,
    cmsg: Vec<Cmsg>,
    count: usize,
}

impl RxBatch {
    /// Room for `n` messages of [`RX_BUF`] bytes.
    pub fn new(n: usize) -> Self {
        Self {
            bufs: (0..n).map(|_| vec![0u8; RX_BUF].into_boxed_slice()).collect(),
            // SAFETY: plain data; all-zero is valid.
            iov: (0..n).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: plain data; all-zero is valid.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: plain data; all-zero is valid.
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            cmsg: vec![[0; 4]; n],
            count: 0,
        }
    }

    /// Message `i` of the last read: its bytes, sender and the GRO segment size (each
    /// datagram is that long, the last may be shorter; the whole length if not glued).
    pub fn message(&self, i: usize) -> (&[u8], SocketAddr, usize) {
        let h = &self.hdrs[i];
        let len = h.msg_len as usize;
        let mut seg = len;
        if h.msg_hdr.msg_controllen >= size_of::<libc::cmsghdr>() {
            let cp = self.cmsg[i].as_ptr().cast::<libc::cmsghdr>();
            // SAFETY: the kernel wrote at most `msg_controllen` bytes of cmsgs into our buffer.
            unsafe {
                if (*cp).cmsg_level == SOL_UDP && (*cp).cmsg_type == UDP_GRO {
                    let v = libc::CMSG_DATA(cp).cast::<libc::c_int>().read_unaligned();
                    if v > 0 {
                        seg = v as usize;
                    }
                }
            }
        }
        (&self.bufs[i][..len], from_raw(&self.addrs[i]), seg.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(lens: &[usize], gso: bool) -> Vec<(usize, usize, usize)> {
        let mut t = TxScratch::default();
        t.plan(lens, gso);
        t.plan.iter().map(|p| (p.start, p.len, p.seg)).collect()
    }

    #[test]
    fn gso_plan_groups_equal_runs_and_respects_limits() {
        assert_eq!(planned(&[100, 100, 60, 100], true), vec![(0, 260, 100), (260, 100, 0)]);
        assert_eq!(planned(&[100, 100, 60], false), vec![(0, 100, 0), (100, 100, 0), (200, 60, 0)]);
        assert_eq!(planned(&[50, 100], true), vec![(0, 50, 0), (50, 100, 0)]);
        // 48 datagrams of 1452 bytes exceed one 64 KiB send: split where the bytes run out.
        let big = planned(&[1452; 48], true);
        assert_eq!(big, vec![(0, 44 * 1452, 1452), (44 * 1452, 4 * 1452, 1452)]);
        assert_eq!(planned(&[10; 70], true), vec![(0, 640, 10), (640, 60, 10)]);
    }

    #[test]
    fn socket_addresses_round_trip_including_mapped_ipv4() {
        for a in ["198.18.1.2:51820", "[fd00::1]:7"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(from_raw(&to_raw(a)), a);
        }
    }
}
