//! The TUN side: open `/dev/net/tun` with a virtio-net header and TSO/checksum offloads (reads
//! then return up to 64 KiB TCP super-packets, writes may be GSO packets), and give the link
//! its MTU, mesh address and up state with plain ioctls (no netlink, no `ip`). Closing the
//! descriptor removes the interface (it is not persistent).

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// An open TUN interface.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    /// Every packet carries a virtio-net header.
    pub vnet: bool,
    /// The kernel hands us GSO super-packets and partial checksums.
    pub offload: bool,
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqInt {
    name: [u8; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

#[repr(C)]
struct In6IfReq {
    addr: libc::in6_addr,
    prefixlen: u32,
    ifindex: libc::c_int,
}

fn ifname(name: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    let mut n = [0u8; libc::IFNAMSIZ];
    n[..name.len()].copy_from_slice(name.as_bytes());
    Ok(n)
}

fn ctl_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before wrapping.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Tun {
    /// Creates interface `name`. `want_offload`: ask for the virtio header and TSO; if that
    /// fails the device falls back to plain packets (logged once here).
    pub fn open(name: &str, want_offload: bool) -> io::Result<Self> {
        // SAFETY: open(2) on a constant C string; the result is checked before wrapping.
        let fd =
            cvt(unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
        // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let setiff = |flags: libc::c_short| -> io::Result<()> {
            let mut req = IfReqFlags { name: ifname(name)?, flags, _pad: [0; 22] };
            // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
            cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) }).map(drop)
        };
        let mut vnet = false;
        if want_offload {
            match setiff(IFF_TUN | IFF_NO_PI | IFF_VNET_HDR) {
                Ok(()) => vnet = true,
                Err(e) => {
                    tracing::warn!(interface = name, error = %e, "TUN virtio header refused, using plain packets")
                }
            }
        }
        if !vnet {
            setiff(IFF_TUN | IFF_NO_PI)?;
        }
        let mut offload = false;
        if vnet {
            // SAFETY: TUNSETOFFLOAD takes its flags by value.
            match cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) }) {
                Ok(_) => offload = true,
                Err(e) => {
                    tracing::warn!(interface = name, error = %e, "TUN offloads refused, using plain batched packets")
                }
            }
        }
        Ok(Self { fd, name: name.to_owned(), vnet, offload })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the MTU, brings the link up and adds `address/prefix_len` (on-link route
    /// included). DAD is skipped: the address is derived from a key, unique by construction,
    /// and gossip binds it at once.
    pub fn configure(&self, mtu: u32, address: Ipv6Addr, prefix_len: u8) -> io::Result<()> {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/accept_dad", self.name), "0");
        let s4 = ctl_socket(libc::AF_INET)?;
        let name = ifname(&self.name)?;
        let mut req = IfReqInt { name, value: mtu as libc::c_int, _pad: [0; 20] };
        // SAFETY: SIOCSIFMTU reads a `struct ifreq` with `ifr_mtu`, laid out as `req`.
        cvt(unsafe { libc::ioctl(s4.as_raw_fd(), libc::SIOCSIFMTU, &mut req) })?;
        let mut flags = IfReqFlags { name, flags: 0, _pad: [0; 22] };
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS use `ifr_flags`, laid out as `flags`.
        cvt(unsafe { libc::ioctl(s4.as_raw_fd(), libc::SIOCGIFFLAGS, &mut flags) })?;
        flags.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: as above.
        cvt(unsafe { libc::ioctl(s4.as_raw_fd(), libc::SIOCSIFFLAGS, &mut flags) })?;
        let mut idx = IfReqInt { name, value: 0, _pad: [0; 20] };
        // SAFETY: SIOCGIFINDEX writes `ifr_ifindex`, laid out as `idx.value`.
        cvt(unsafe { libc::ioctl(s4.as_raw_fd(), libc::SIOCGIFINDEX, &mut idx) })?;
        let s6 = ctl_socket(libc::AF_INET6)?;
        let mut a = In6IfReq {
            addr: libc::in6_addr { s6_addr: address.octets() },
            prefixlen: u32::from(prefix_len),
            ifindex: idx.value,
        };
        // SAFETY: on an AF_INET6 socket SIOCSIFADDR reads a `struct in6_ifreq`, laid out as `a`.
        cvt(unsafe { libc::ioctl(s6.as_raw_fd(), libc::SIOCSIFADDR, &mut a) })?;
        // Callers bind the address right away: wait (bounded) until the kernel lets them.
        let t0 = std::time::Instant::now();
        loop {
            match std::net::UdpSocket::bind((address, 0)) {
                Ok(_) => break,
                Err(e) if t0.elapsed() > Duration::from_secs(5) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        tracing::debug!(interface = %self.name, waited = ?t0.elapsed(), "mesh address usable");
        Ok(())
    }

    /// Waits until a packet can be read, at most `timeout`.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_in(self.fd.as_raw_fd(), timeout)
    }

    /// Reads one packet (with its virtio header if `vnet`); `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Writes one packet (with its virtio header if `vnet`).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of its length for the duration of the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

/// A libc return value as a result: negative means `errno` (shared by the TUN and UDP code).
pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// poll(2) for input on one descriptor; `Ok(false)` on timeout or EINTR.
pub fn poll_in(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as libc::c_int) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(r > 0)
}
