//! tgtd (the Linux SCSI target framework's daemon), the independent iSCSI target our
//! initiator and clone tests read through: one file as LUN 1 on a free loopback port.
//! Killed and reaped on drop, also on panic.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running tgtd serving one LUN.
pub struct Tgtd {
    child: Child,
    port: u16,
    iqn: String,
}

impl Tgtd {
    /// Serves `file` as LUN 1 of target `iqn` on 127.0.0.1 at a free port, any initiator
    /// admitted. Panics naming the package when tgt is not installed.
    pub fn start(file: &Path, iqn: &str) -> Tgtd {
        let tgtd = crate::require_program("tgtd", "tgt");
        let tgtadm = crate::require_program("tgtadm", "tgt");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // tgtd's control port names its IPC socket and must stay below 32768; the pid keeps
        // concurrent test binaries apart (bench/clone.sh uses 10000..19999).
        let control = (20000 + std::process::id() % 12000).to_string();
        let child = Command::new(tgtd)
            .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C", &control])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tgtd");
        let tgt = Tgtd { child, port, iqn: iqn.to_owned() };
        let adm = |args: &[&str]| {
            // Bounded: tgtd can take seconds to come up on a loaded machine.
            for _ in 0..300 {
                let o = Command::new(&tgtadm).args(["-C", &control]).args(args).output().expect("run tgtadm");
                if o.status.success() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("tgtadm {args:?} kept failing; is tgtd able to start (root needed)?");
        };
        let path = file.to_str().expect("a UTF-8 path");
        adm(&["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn]);
        adm(&["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", path]);
        adm(&["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]);
        tgt
    }

    /// The portal's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `iscsi://127.0.0.1:<port>/<iqn>/1`, the LUN as our initiator's URL.
    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{}/1", self.port, self.iqn)
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
