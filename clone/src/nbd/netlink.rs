//! Configuring the kernel's nbd over generic netlink (family "nbd", Linux's
//! include/uapi/linux/nbd-netlink.h): CONNECT hands the device one end of our socket,
//! RECONFIGURE hands a restarted server's new socket to the same device, DISCONNECT ends
//! it. Hand-rolled: a netlink message is a 16-byte header, a 4-byte genetlink header and
//! 4-byte-aligned attributes. Replies come from the kernel, but are still parsed with
//! every length checked against the bytes received.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(1 << 15 | 1 << 14);

/// nbd genetlink commands.
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_CMD_RECONFIGURE: u8 = 3;
/// nbd genetlink attributes.
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// Server flags (include/uapi/linux/nbd.h).
pub const FLAG_HAS_FLAGS: u64 = 1 << 0;
/// The device can flush.
pub const FLAG_SEND_FLUSH: u64 = 1 << 2;
/// The device honours FUA.
pub const FLAG_SEND_FUA: u64 = 1 << 3;
/// The device discards.
pub const FLAG_SEND_TRIM: u64 = 1 << 5;

/// What CONNECT tells the kernel.
#[derive(Debug, Clone)]
pub struct Connect {
    /// `/dev/nbdN` to use (`None`: the kernel picks a free one).
    pub index: Option<u32>,
    /// Device size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u64,
    /// Seconds the device waits for a new socket after ours dies (a restarted server).
    pub dead_conn_timeout: u64,
    /// Names the backend: a RECONFIGURE must name the same.
    pub backend: String,
}

/// A generic netlink socket talking to the nbd family.
pub struct Nbd {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Nbd {
    /// Opens a netlink socket and resolves the nbd family (absent: the driver is not
    /// loaded).
    pub fn open() -> Result<Self, String> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_GENERIC) };
        if raw < 0 {
            return Err(os_err("generic netlink socket"));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval { tv_sec: 30, tv_usec: 0 };
        // SAFETY: a timeval option of the right size on our fd.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let mut me = Self { fd, family: 0, seq: 0 };
        let mut attrs = Vec::new();
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, b"nbd\0");
        let replies = me
            .request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &attrs)
            .map_err(|e| format!("the kernel's nbd netlink family: {e} (is the nbd module loaded? `modprobe nbd`)"))?;
        me.family = replies
            .iter()
            .find_map(|m| find_attr(m, CTRL_ATTR_FAMILY_ID))
            .and_then(|v| v.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])))
            .ok_or("the kernel's netlink controller did not name the nbd family id")?;
        Ok(me)
    }

    /// Configures a device on `sock` (the kernel takes its own reference to the socket);
    /// returns its index. Never sets DISCONNECT_ON_CLOSE: the device outlives us.
    pub fn connect(&mut self, c: &Connect, sock: RawFd) -> Result<u32, String> {
        let mut a = Vec::new();
        if let Some(i) = c.index {
            put_attr(&mut a, NBD_ATTR_INDEX, &i.to_ne_bytes());
        }
        put_attr(&mut a, NBD_ATTR_SIZE_BYTES, &c.size.to_ne_bytes());
        put_attr(&mut a, NBD_ATTR_BLOCK_SIZE_BYTES, &c.block_size.to_ne_bytes());
        // 0: a slow request (an on-demand fetch waiting for the source) is never failed
        // nor its socket dropped; the kernel only logs "possible stuck request" and, once
        // a new socket is in, resends what the dead one held (drivers/block/nbd.c).
        put_attr(&mut a, NBD_ATTR_TIMEOUT, &0u64.to_ne_bytes());
        let flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM;
        put_attr(&mut a, NBD_ATTR_SERVER_FLAGS, &flags.to_ne_bytes());
        put_attr(&mut a, NBD_ATTR_DEAD_CONN_TIMEOUT, &c.dead_conn_timeout.to_ne_bytes());
        put_backend(&mut a, &c.backend);
        put_socket(&mut a, sock);
        let replies = self.request(self.family, NBD_CMD_CONNECT, &a)?;
        replies
            .iter()
            .find_map(|m| find_attr(m, NBD_ATTR_INDEX))
            .and_then(|v| v.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
            .or(c.index)
            .ok_or_else(|| "the kernel configured an nbd device without naming its index".to_owned())
    }

    /// Gives configured device `index` a new socket in place of its dead one.
    pub fn reconfigure(
        &mut self,
        index: u32,
        backend: &str,
        dead_conn_timeout: u64,
        sock: RawFd,
    ) -> Result<(), String> {
        let mut a = Vec::new();
        put_attr(&mut a, NBD_ATTR_INDEX, &index.to_ne_bytes());
        put_attr(&mut a, NBD_ATTR_DEAD_CONN_TIMEOUT, &dead_conn_timeout.to_ne_bytes());
        put_backend(&mut a, backend);
        put_socket(&mut a, sock);
        self.request(self.family, NBD_CMD_RECONFIGURE, &a).map(|_| ())
    }

    /// Disconnects device `index` (requests after it fail; the device is free again).
    pub fn disconnect(&mut self, index: u32) -> Result<(), String> {
        let mut a = Vec::new();
        put_attr(&mut a, NBD_ATTR_INDEX, &index.to_ne_bytes());
        self.request(self.family, NBD_CMD_DISCONNECT, &a).map(|_| ())
    }

    /// Sends one request with ACK and collects the messages before the ack.
    fn request(&mut self, family: u16, cmd: u8, attrs: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[cmd, 1, 0, 0]);
        m.extend_from_slice(attrs);
        // SAFETY: sockaddr_nl zeroed is the kernel's address; buffers are ours.
        let sent = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(os_err("netlink send"));
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            // SAFETY: reading into our own buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(os_err("netlink receive"));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().expect("4")) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().expect("4"));
                if mlen < 16 || mlen > rest.len() {
                    return Err(format!("netlink reply of {mlen} bytes in {} received", rest.len()));
                }
                let body = &rest[16..mlen];
                rest = &rest[align(mlen).min(rest.len())..];
                if mseq != self.seq {
                    continue;
                }
                match mtype {
                    NLMSG_ERROR => {
                        let code = body.get(..4).map(|b| i32::from_ne_bytes(b.try_into().expect("4"))).unwrap_or(-1);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(std::io::Error::from_raw_os_error(-code).to_string());
                    }
                    NLMSG_DONE => return Ok(out),
                    _ if body.len() >= 4 => out.push(body[4..].to_vec()),
                    _ => {}
                }
            }
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute (padded to 4 bytes).
fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align(buf.len()), 0);
}

fn put_backend(buf: &mut Vec<u8>, backend: &str) {
    if backend.is_empty() {
        return;
    }
    let mut v: Vec<u8> = backend.bytes().filter(|b| *b != 0).take(255).collect();
    v.push(0);
    put_attr(buf, NBD_ATTR_BACKEND_IDENTIFIER, &v);
}

/// NBD_ATTR_SOCKETS { NBD_SOCK_ITEM { NBD_SOCK_FD = fd } }.
fn put_socket(buf: &mut Vec<u8>, fd: RawFd) {
    let mut item = Vec::new();
    put_attr(&mut item, NBD_SOCK_FD, &(fd as u32).to_ne_bytes());
    let mut items = Vec::new();
    put_attr(&mut items, NBD_SOCK_ITEM | NLA_F_NESTED, &item);
    put_attr(buf, NBD_ATTR_SOCKETS | NLA_F_NESTED, &items);
}

/// The value of top-level attribute `kind` in a genetlink body (after its 4-byte header).
fn find_attr(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    let mut rest = attrs;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let k = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        if k == kind {
            return Some(&rest[4..len]);
        }
        rest = &rest[align(len).min(rest.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_sockets_found() {
        let mut a = Vec::new();
        put_attr(&mut a, NBD_ATTR_INDEX, &7u32.to_ne_bytes());
        put_backend(&mut a, "abc");
        put_socket(&mut a, 9);
        assert_eq!(a.len() % 4, 0);
        assert_eq!(find_attr(&a, NBD_ATTR_INDEX), Some(&7u32.to_ne_bytes()[..]));
        assert_eq!(find_attr(&a, NBD_ATTR_BACKEND_IDENTIFIER), Some(&b"abc\0"[..]));
        let socks = find_attr(&a, NBD_ATTR_SOCKETS).unwrap();
        let item = find_attr(socks, NBD_SOCK_ITEM).unwrap();
        assert_eq!(find_attr(item, NBD_SOCK_FD), Some(&9u32.to_ne_bytes()[..]));
        // A length past the bytes present is not followed.
        let bad = [200u8, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(find_attr(&bad, 1), None);
    }
}
