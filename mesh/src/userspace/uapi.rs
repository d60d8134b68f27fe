//! A read-only WireGuard UAPI socket (`/var/run/wireguard/<if>.sock`, the cross-platform
//! configuration protocol) so `wg show` works on the userspace device as on the kernel one.
//! Only `get=1` is answered; `set=1` gets EPERM, because the agent alone configures the mesh
//! (through [`crate::WireguardBackend`]). The private key is never sent. Best effort: if the
//! socket cannot be made (another live device holds the name, no /var/run) the device runs
//! without it, logged once.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::peers::PeerConfig;

/// Where the UAPI sockets live (shared by all network namespaces of the host).
pub const DIR: &str = "/var/run/wireguard";

/// The socket of interface `name`, bound, with its path (removed by [`serve`] on exit).
pub fn bind(name: &str) -> Option<(UnixListener, PathBuf)> {
    let path = PathBuf::from(format!("{DIR}/{name}.sock"));
    let made = (|| -> std::io::Result<UnixListener> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(DIR)?;
        if UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "a live device answers on it"));
        }
        let _ = std::fs::remove_file(&path); // stale, from a killed process
        let l = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })();
    match made {
        Ok(l) => Some((l, path)),
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "no UAPI socket: `wg show` will not see this interface");
            None
        }
    }
}

/// Answers clients until `stop`, then removes the socket file.
pub fn serve(l: UnixListener, path: PathBuf, stop: &AtomicBool, get: &dyn Fn() -> String) {
    while !stop.load(Ordering::Relaxed) {
        if !super::tun::poll_in(l.as_raw_fd(), super::device::POLL).unwrap_or(false) {
            continue;
        }
        if let Ok((s, _)) = l.accept() {
            let _ = answer(s, get);
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn answer(mut s: UnixStream, get: &dyn Fn() -> String) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut req = Vec::with_capacity(64);
    let mut b = [0u8; 512];
    while !req.ends_with(b"\n\n") && req.len() < 64 << 10 {
        let n = s.read(&mut b)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&b[..n]);
    }
    let reply = if req.starts_with(b"get=1\n") { get() + "errno=0\n\n" } else { "errno=1\n\n".to_owned() };
    s.write_all(reply.as_bytes())
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The `get=1` body for a device on `listen_port` with `peers` (configuration, time since the
/// last handshake, tx and rx bytes), at wall-clock `now`.
pub fn render(listen_port: u16, peers: &[(PeerConfig, Option<Duration>, u64, u64)], now: SystemTime) -> String {
    let mut o = format!("listen_port={listen_port}\n");
    for (c, hs, tx, rx) in peers {
        let _ =
            writeln!(o, "public_key={}\npreshared_key={}\nprotocol_version=1", hex(&c.public_key.0), "0".repeat(64));
        if let Some(e) = c.endpoint {
            let _ = writeln!(o, "endpoint={e}");
        }
        let at = hs.and_then(|d| now.checked_sub(d)).and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        let (sec, nsec) = at.map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(o, "last_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}");
        let _ = writeln!(o, "tx_bytes={tx}\nrx_bytes={rx}\npersistent_keepalive_interval=0");
        for (ip, len) in &c.allowed_ips {
            let _ = writeln!(o, "allowed_ip={ip}/{len}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;

    #[test]
    fn get_reply_lists_peers_in_uapi_form() {
        let c = PeerConfig::host(
            PublicKey([0xab; 32]),
            "fd00::2".parse().unwrap(),
            Some("198.18.0.2:51820".parse().unwrap()),
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let text = render(51820, &[(c, Some(Duration::from_millis(2500)), 7, 9)], now);
        let want = format!(
            "listen_port=51820\npublic_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=198.18.0.2:51820\n\
             last_handshake_time_sec=997\nlast_handshake_time_nsec=500000000\ntx_bytes=7\nrx_bytes=9\n\
             persistent_keepalive_interval=0\nallowed_ip=fd00::2/128\n",
            "ab".repeat(32),
            "0".repeat(64)
        );
        assert_eq!(text, want);
        let never = PeerConfig::host(PublicKey([1; 32]), "fd00::3".parse().unwrap(), None);
        let t = render(1, &[(never, None, 0, 0)], now);
        assert!(t.contains("last_handshake_time_sec=0\n") && !t.contains("endpoint="), "{t}");
    }
}
