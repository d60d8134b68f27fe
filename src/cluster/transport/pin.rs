//! Pins a socket of the codec relay (src/cluster/transport.rs) to its one peer with
//! connect(2): the kernel then delivers it datagrams from that peer only, and answers any
//! other sender with "port unreachable". The relay's peers are sockets this process holds,
//! so no other local process (without CAP_NET_RAW) can write to a pinned socket.
//!
//! chitchat's `UdpSocket` does not expose its descriptor, so it is found by the address it
//! is bound to: in one network namespace only one UDP socket holds an address (none of
//! these sockets sets SO_REUSEADDR/SO_REUSEPORT).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{BorrowedFd, RawFd};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, SockType, SockaddrStorage, sockopt};

/// Connects this process's UDP socket bound to `local` to `peer`, then discards what other
/// senders queued on it before that. Returns how many datagrams were discarded.
pub(super) fn pin_to_peer(local: SocketAddr, peer: SocketAddr) -> anyhow::Result<usize> {
    let fd = find_udp_socket(local)?;
    socket::connect(fd, &SockaddrStorage::from(peer))
        .with_context(|| format!("pinning the gossip codec socket {local} to {peer} (connect)"))?;
    // connect(2) filters what arrives from now on; what came before is still queued.
    let mut scratch = [0u8; 1];
    let mut discarded = 0;
    loop {
        match socket::recv(fd, &mut scratch, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC) {
            Ok(_) => discarded += 1,
            Err(Errno::EAGAIN) => return Ok(discarded),
            // A pending ICMP error, or a signal: neither is data, keep draining.
            Err(Errno::EINTR | Errno::ECONNREFUSED) => {}
            Err(e) => return Err(e).with_context(|| format!("draining the gossip codec socket {local}")),
        }
    }
}

/// The descriptor of this process's UDP socket bound to `local`.
fn find_udp_socket(local: SocketAddr) -> anyhow::Result<RawFd> {
    let mut found = Vec::new();
    let dir = std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd to find the gossip codec socket")?;
    for entry in dir {
        let Some(fd) = entry?.file_name().to_str().and_then(|name| name.parse::<RawFd>().ok()) else {
            continue;
        };
        let Ok(bound) = socket::getsockname::<SockaddrStorage>(fd) else { continue };
        if std_addr(&bound) != Some(local) {
            continue;
        }
        // SAFETY: the borrow lasts for this one getsockopt. If another thread closed `fd`
        // meanwhile the call fails (EBADF) or reads a new socket's type, and a new socket
        // cannot be bound to `local` while chitchat's socket holds it.
        let kind = socket::getsockopt(&unsafe { BorrowedFd::borrow_raw(fd) }, sockopt::SockType);
        if kind == Ok(SockType::Datagram) {
            found.push(fd);
        }
    }
    match found[..] {
        [fd] => Ok(fd),
        [] => bail!("no UDP socket of this process is bound to {local} (the gossip codec socket vanished?)"),
        _ => bail!("{} UDP sockets of this process are bound to {local} (other network namespaces?)", found.len()),
    }
}

fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
        (Some(v4), _) => Some(SocketAddrV4::from(*v4).into()),
        (None, Some(v6)) => Some(SocketAddrV6::from(*v6).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_pinned_socket_hears_only_its_peer_and_loses_what_came_before() {
        let pinned = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = pinned.local_addr().unwrap();
        stranger.send_to(b"queued before", at).await.unwrap();
        stranger.send_to(b"queued too", at).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pin_to_peer(at, peer.local_addr().unwrap()).unwrap(), 2);
        // After: the stranger is refused by the kernel, the peer gets through.
        stranger.connect(at).await.unwrap();
        stranger.send(b"after").await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(2), stranger.recv(&mut [0; 8])).await.unwrap();
        assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
        peer.send_to(b"peer", at).await.unwrap();
        let mut buf = [0; 16];
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(2), pinned.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (&b"peer"[..], peer.local_addr().unwrap()));
        let unbound: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            pin_to_peer(unbound, at).unwrap_err().to_string(),
            "no UDP socket of this process is bound to 127.0.0.1:1 (the gossip codec socket vanished?)"
        );
    }
}
