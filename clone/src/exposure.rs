//! Which kernel path presents a userspace clone to the workload (docs/exposures.md):
//! ublk (io_uring, fewest hops), NBD over a local socket, or FUSE + loop (works
//! everywhere, ~52 us more per read). [`probe`] looks at what the running kernel offers,
//! [`choose`] turns the operator's `[dataplane] expose` into one concrete kind (pure, so
//! it is tested without the drivers), and [`Exposure`] is the running device whichever
//! it is.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{CloneError, Result};
use crate::expose::Exposed;
use crate::nbd::{NbdExposed, NbdOptions};

/// What the operator asks for (`[dataplane] expose`, `clone run --expose-kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExposeKind {
    /// The best the kernel has: ublk, else nbd, else FUSE + loop.
    #[default]
    Auto,
    /// ublk (`ublk_drv`): io_uring, user recovery keeps the device across a restart.
    Ublk,
    /// NBD over a local socket (`nbd`): a restarted server reconfigures the same device.
    Nbd,
    /// A FUSE file behind a loop device: any kernel with FUSE; dies with its process.
    FuseLoop,
}

impl ExposeKind {
    /// The configuration spelling (`auto`, `ublk`, `nbd`, `fuse-loop`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ublk => "ublk",
            Self::Nbd => "nbd",
            Self::FuseLoop => "fuse-loop",
        }
    }
}

impl std::fmt::Display for ExposeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExposeKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "ublk" => Ok(Self::Ublk),
            "nbd" => Ok(Self::Nbd),
            "fuse-loop" => Ok(Self::FuseLoop),
            other => Err(format!("unknown exposure {other:?}: use auto, ublk, nbd or fuse-loop")),
        }
    }
}

/// The exposure [`choose`] settled on: never `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Chosen {
    /// `/dev/ublkbN`.
    Ublk,
    /// `/dev/nbdN`.
    Nbd,
    /// `/dev/loopN` over a FUSE file.
    FuseLoop,
}

impl Chosen {
    /// The configuration spelling, as `status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ublk => "ublk",
            Self::Nbd => "nbd",
            Self::FuseLoop => "fuse-loop",
        }
    }
}

impl std::fmt::Display for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the running kernel offers (drivers are loaded by the operator, never by us).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probe {
    /// `/dev/ublk-control` or `/sys/module/ublk_drv` exists.
    pub ublk: bool,
    /// `/sys/module/nbd` or `/dev/nbd0` exists.
    pub nbd: bool,
    /// `/dev/fuse` exists.
    pub fuse: bool,
}

/// Looks at the running kernel.
pub fn probe() -> Probe {
    probe_under(Path::new("/"))
}

/// [`probe`] against another root (tests).
pub fn probe_under(root: &Path) -> Probe {
    let has = |p: &str| root.join(p).exists();
    Probe {
        ublk: has("dev/ublk-control") || has("sys/module/ublk_drv"),
        nbd: has("sys/module/nbd") || has("dev/nbd0"),
        fuse: has("dev/fuse"),
    }
}

/// Turns the operator's choice into one the kernel can serve: `auto` takes ublk, else
/// nbd, else FUSE + loop; an explicit choice the kernel lacks is refused, naming what is
/// missing and the fix (the agent checks this at start, before any clone runs).
pub fn choose(kind: ExposeKind, probe: Probe) -> Result<Chosen> {
    let refuse = |what: &str, fix: &str| {
        // `auto` has no better choice to suggest: only the fix.
        let or_auto =
            if kind == ExposeKind::Auto { "" } else { ", or set expose = \"auto\" (takes the best the kernel has)" };
        Err(CloneError::Config(format!("[dataplane] expose = \"{kind}\" but this kernel has {what}: {fix}{or_auto}")))
    };
    match kind {
        ExposeKind::Auto if probe.ublk => Ok(Chosen::Ublk),
        ExposeKind::Auto if probe.nbd => Ok(Chosen::Nbd),
        ExposeKind::Auto if probe.fuse => Ok(Chosen::FuseLoop),
        ExposeKind::Auto => refuse(
            "no ublk_drv, no nbd and no /dev/fuse",
            "load one (`modprobe ublk_drv`, `modprobe nbd` or `modprobe fuse`)",
        ),
        ExposeKind::Ublk if probe.ublk => Ok(Chosen::Ublk),
        ExposeKind::Ublk => refuse(
            "no ublk driver (no /dev/ublk-control, no /sys/module/ublk_drv)",
            "run `modprobe ublk_drv` (kernel 6.0 or later with CONFIG_BLK_DEV_UBLK)",
        ),
        ExposeKind::Nbd if probe.nbd => Ok(Chosen::Nbd),
        ExposeKind::Nbd => {
            refuse("no nbd driver (no /sys/module/nbd, no /dev/nbd0)", "run `modprobe nbd` (CONFIG_BLK_DEV_NBD)")
        }
        ExposeKind::FuseLoop if probe.fuse => Ok(Chosen::FuseLoop),
        ExposeKind::FuseLoop => refuse("no /dev/fuse", "run `modprobe fuse`"),
    }
}

/// Where a starting exposure puts things, and what an earlier process left to re-attach.
#[derive(Debug, Clone, Default)]
pub struct ExposeOptions {
    /// FUSE + loop: the mount point of the FUSE file.
    pub mountpoint: PathBuf,
    /// The symlink the workload uses, pointed at the device.
    pub symlink: Option<PathBuf>,
    /// NBD: the device an earlier process of this clone configured (`/dev/nbdN`), to
    /// reconfigure with a new socket instead of making a new device.
    pub nbd_index: Option<u32>,
    /// Names the clone to the kernel (NBD's backend identifier: a reconfigure by a
    /// process of another clone is refused). The dest path does.
    pub backend: String,
}

pub use crate::ublk::UblkExposed;

/// Starts the ublk exposure: recovers the `/dev/ublkbN` the symlink points at when its
/// server died (a restarted holder: the workload sees no error), else adds a new device.
pub fn start_ublk(engine: Arc<Engine>, opts: &ExposeOptions) -> Result<UblkExposed> {
    crate::ublk::start_or_recover(engine, opts.symlink.as_deref())
}

/// A running exposure of a userspace clone.
#[derive(Debug)]
pub enum Exposure {
    /// `/dev/loopN` over a FUSE file.
    FuseLoop(Exposed),
    /// `/dev/nbdN` served over a local socket.
    Nbd(NbdExposed),
    /// `/dev/ublkbN`.
    Ublk(UblkExposed),
}

impl Exposure {
    /// Starts `chosen` for `engine`. Needs root.
    pub fn start(chosen: Chosen, engine: Arc<Engine>, opts: &ExposeOptions) -> Result<Self> {
        match chosen {
            Chosen::FuseLoop => Exposed::start(engine, &opts.mountpoint, opts.symlink.as_deref()).map(Self::FuseLoop),
            Chosen::Nbd => {
                let nbd = NbdOptions {
                    symlink: opts.symlink.clone(),
                    reattach: opts.nbd_index,
                    backend: opts.backend.clone(),
                    ..Default::default()
                };
                NbdExposed::start(engine, &nbd).map(Self::Nbd)
            }
            Chosen::Ublk => start_ublk(engine, opts).map(Self::Ublk),
        }
    }

    /// The block device the workload uses.
    pub fn device(&self) -> &Path {
        match self {
            Self::FuseLoop(x) => x.device(),
            Self::Nbd(x) => x.device(),
            Self::Ublk(x) => x.device(),
        }
    }

    /// Which exposure runs.
    pub fn kind(&self) -> Chosen {
        match self {
            Self::FuseLoop(_) => Chosen::FuseLoop,
            Self::Nbd(_) => Chosen::Nbd,
            Self::Ublk(_) => Chosen::Ublk,
        }
    }

    /// The NBD device's index (for a restarted process to reconfigure it).
    pub fn nbd_index(&self) -> Option<u32> {
        match self {
            Self::Nbd(x) => Some(x.index()),
            _ => None,
        }
    }

    /// Whether this process took over a device a dead predecessor served (the workload
    /// kept its device and saw no error).
    pub fn reattached(&self) -> bool {
        match self {
            Self::Nbd(x) => x.reattached(),
            Self::Ublk(x) => x.reattached(),
            _ => false,
        }
    }

    /// Whether a successor process can take the device over (ublk, nbd): a process of
    /// FUSE + loop takes its device with it.
    pub fn can_hand_over(&self) -> bool {
        !matches!(self, Self::FuseLoop(_))
    }

    /// Lets this process exit without tearing the device down, for a successor that
    /// takes it over (docs/exposures.md); FUSE + loop, which cannot, is stopped instead.
    pub fn leave(self) -> Result<()> {
        match self {
            Self::FuseLoop(x) => x.stop(),
            Self::Nbd(x) => {
                x.leave_for_successor();
                Ok(())
            }
            Self::Ublk(x) => {
                x.leave_for_recovery();
                Ok(())
            }
        }
    }

    /// Tears the device down (the workload's device goes away).
    pub fn stop(self) -> Result<()> {
        match self {
            Self::FuseLoop(x) => x.stop(),
            Self::Nbd(x) => x.stop(),
            Self::Ublk(x) => x.stop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Probe = Probe { ublk: true, nbd: true, fuse: true };
    const NONE: Probe = Probe { ublk: false, nbd: false, fuse: false };

    #[test]
    fn auto_takes_ublk_then_nbd_then_fuse_loop() {
        assert_eq!(choose(ExposeKind::Auto, ALL).unwrap(), Chosen::Ublk);
        assert_eq!(choose(ExposeKind::Auto, Probe { ublk: false, ..ALL }).unwrap(), Chosen::Nbd);
        assert_eq!(choose(ExposeKind::Auto, Probe { fuse: true, ..NONE }).unwrap(), Chosen::FuseLoop);
        let e = choose(ExposeKind::Auto, NONE).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid clone configuration: [dataplane] expose = \"auto\" but this kernel has no ublk_drv, no nbd and no /dev/fuse: load one (`modprobe ublk_drv`, `modprobe nbd` or `modprobe fuse`)"
        );
    }

    #[test]
    fn an_explicit_choice_is_taken_when_present_and_refused_naming_the_fix_when_not() {
        assert_eq!(choose(ExposeKind::Nbd, ALL).unwrap(), Chosen::Nbd);
        assert_eq!(choose(ExposeKind::FuseLoop, ALL).unwrap(), Chosen::FuseLoop);
        assert_eq!(choose(ExposeKind::Ublk, ALL).unwrap(), Chosen::Ublk);
        let e = choose(ExposeKind::Nbd, Probe { nbd: false, ..ALL }).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid clone configuration: [dataplane] expose = \"nbd\" but this kernel has no nbd driver (no /sys/module/nbd, no /dev/nbd0): run `modprobe nbd` (CONFIG_BLK_DEV_NBD), or set expose = \"auto\" (takes the best the kernel has)"
        );
        let e = choose(ExposeKind::Ublk, Probe { ublk: false, ..ALL }).unwrap_err().to_string();
        assert!(e.contains("no ublk driver") && e.contains("modprobe ublk_drv"), "{e}");
        let e = choose(ExposeKind::FuseLoop, Probe { fuse: false, ..ALL }).unwrap_err().to_string();
        assert!(e.contains("no /dev/fuse") && e.contains("modprobe fuse"), "{e}");
    }

    #[test]
    fn kinds_have_the_configuration_spelling() {
        for (k, s) in [
            (ExposeKind::Auto, "\"auto\""),
            (ExposeKind::Ublk, "\"ublk\""),
            (ExposeKind::Nbd, "\"nbd\""),
            (ExposeKind::FuseLoop, "\"fuse-loop\""),
        ] {
            assert_eq!(serde_json::to_string(&k).unwrap(), s);
            assert_eq!(serde_json::from_str::<ExposeKind>(s).unwrap(), k);
            assert_eq!(s.trim_matches('"').parse::<ExposeKind>().unwrap(), k);
        }
        assert_eq!(serde_json::to_string(&Chosen::FuseLoop).unwrap(), "\"fuse-loop\"");
        assert!("loop".parse::<ExposeKind>().unwrap_err().contains("use auto, ublk, nbd or fuse-loop"));
    }

    #[test]
    fn the_probe_reads_the_driver_paths() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(probe_under(root.path()), NONE);
        std::fs::create_dir_all(root.path().join("sys/module/nbd")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/fuse"), b"").unwrap();
        assert_eq!(probe_under(root.path()), Probe { ublk: false, nbd: true, fuse: true });
        std::fs::write(root.path().join("dev/ublk-control"), b"").unwrap();
        assert!(probe_under(root.path()).ublk);
    }
}
