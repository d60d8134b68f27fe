//! Kernel tier harness: boots Debian's 6.1 kernel under QEMU (TCG) with the host root
//! shared read-only over 9p and runs one scenario script inside, because the host kernel
//! lacks device-mapper, SCSI/iSCSI and kernel WireGuard.
//!
//! Everything slow is cached under `target/vm-cache/<kernel version>/`: the out-of-tree
//! `dm-clone.ko` and `ublk_drv.ko` (Debian builds 6.1 without `CONFIG_DM_CLONE` and
//! `CONFIG_BLK_DEV_UBLK`) and the busybox initramfs.
//! Every wait is bounded; the QEMU process is killed when a [`Vm`] run ends or is dropped.
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod initramfs;
use initramfs::build_initramfs;

/// Printed by the guest init just before it runs the scenario: ends the boot-time clock.
const START_MARK: &str = "meshdrain-vm: scenario start";

/// Why the kernel tier could not run or finish; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Packages are missing and this process cannot install them.
    #[error("kernel tier needs root to install its packages (`sudo scripts/install-deps vm`): {0}")]
    NotRoot(String),
    /// `scripts/install-deps vm` failed.
    #[error("`scripts/install-deps vm` failed ({status}); output tail:\n{tail}")]
    InstallDeps {
        /// Exit status of the script.
        status: String,
        /// Last lines of its output.
        tail: String,
    },
    /// No bootable Debian 6.1 kernel with headers was found.
    #[error(
        "no /boot/vmlinuz-6.1.*-amd64 with /lib/modules/<ver>/build (install linux-image-amd64 \
         and linux-headers-amd64: `scripts/install-deps vm`); found: {0}"
    )]
    NoKernel(String),
    /// Building a module (dm-clone.ko, ublk_drv.ko) out of tree failed.
    #[error("building {module} for {kernel} failed at `{step}`; output tail:\n{tail}")]
    ModuleBuild {
        /// The module, e.g. `ublk_drv.ko`.
        module: String,
        /// Kernel version it was built for.
        kernel: String,
        /// The command that failed.
        step: String,
        /// Last lines of its output.
        tail: String,
    },
    /// A host file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another VM run held the VM lock for too long.
    #[error("waited {0:?} for another VM run to finish (lock target/vm-cache/vm.lock)")]
    LockTimeout(Duration),
    /// The guest powered off without reporting the scenario's exit code.
    #[error("VM ended without a scenario result ({status}); boot failed? console tail:\n{console}")]
    BootFailed {
        /// QEMU's exit status.
        status: String,
        /// Last lines of the guest console.
        console: String,
    },
    /// The guest booted but the scenario left no exit code (killed or crashed the guest).
    #[error("scenario started but left no exit code ({status}); console tail:\n{console}")]
    NoResult {
        /// QEMU's exit status.
        status: String,
        /// Last lines of the guest console.
        console: String,
    },
    /// The scenario did not finish in time; the VM was killed.
    #[error("scenario `{scenario}` timed out after {after:?} (VM killed); console tail:\n{console}")]
    Timeout {
        /// The scenario script name.
        scenario: String,
        /// The time limit.
        after: Duration,
        /// Last lines of the guest console.
        console: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// A raw disk attached as a virtio drive; the scratch disk is `/dev/vda`, these follow
/// as `/dev/vdb`, `/dev/vdc`, ... in order.
#[derive(Debug, Clone)]
pub enum Disk {
    /// A new sparse zero-filled disk of this many MiB, created for the run.
    Blank(u64),
    /// An existing raw image (written by the guest).
    File(PathBuf),
}

/// One scenario run: which script, its arguments and environment, and its limits.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Path of the bash script on the host (the same path is visible in the guest).
    pub script: PathBuf,
    /// Arguments passed to the script.
    pub args: Vec<String>,
    /// Extra environment for the script.
    pub env: Vec<(String, String)>,
    /// Extra disks (`/dev/vdb` onward).
    pub disks: Vec<Disk>,
    /// Size of the writable scratch disk `/dev/vda` in MiB.
    pub scratch_mib: u64,
    /// Time limit for boot plus scenario; the VM is killed after it.
    pub timeout: Duration,
    /// Host binaries the scenario runs, as (environment variable, path): each is copied
    /// into the run's directory and the variable names the copy, so another build
    /// replacing the binary in the shared target dir mid-run cannot crash the scenario.
    pub binaries: Vec<(String, PathBuf)>,
}

impl Scenario {
    /// A scenario with a 64 MiB scratch disk and a 5 minute limit.
    pub fn new(script: impl Into<PathBuf>) -> Self {
        Self {
            script: script.into(),
            args: Vec::new(),
            env: Vec::new(),
            disks: Vec::new(),
            scratch_mib: 64,
            timeout: Duration::from_secs(300),
            binaries: Vec::new(),
        }
    }
}

/// What a finished scenario reported.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The scenario script's exit code.
    pub exit_code: i32,
    /// The scenario's output (stdout and stderr).
    pub log: String,
    /// The whole guest console.
    pub console: String,
    /// Host wall time from QEMU start to the scenario start.
    pub boot: Duration,
    /// Host wall time from QEMU start to power off.
    pub total: Duration,
}

/// The prepared kernel tier: a chosen kernel, its dm-clone.ko and initramfs, all cached.
#[derive(Debug, Clone)]
pub struct Vm {
    root: PathBuf,
    cache: PathBuf,
    /// Version of the kernel booted, e.g. `6.1.0-56-amd64`.
    pub kernel: String,
    /// Path of the cached out-of-tree `dm-clone.ko` built for that kernel (on the 9p root).
    pub dm_clone_ko: PathBuf,
    /// Path of the cached out-of-tree `ublk_drv.ko` (Debian builds 6.1 without
    /// `CONFIG_BLK_DEV_UBLK`); scenarios get it as `MESHDRAIN_UBLK_KO`.
    pub ublk_ko: PathBuf,
    initramfs: PathBuf,
}

impl Vm {
    /// Installs packages (`scripts/install-deps vm`), picks the kernel and builds what is
    /// not cached yet. `root` is the workspace root (holding `scripts/` and `target/`).
    pub fn prepare(root: impl Into<PathBuf>) -> Result<Self, VmError> {
        let root: PathBuf = root.into();
        ensure_packages(&root)?;
        let kernel = pick_kernel(Path::new("/boot"), Path::new("/lib/modules"))?;
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let cache = target.join("vm-cache");
        let dir = cache.join(&kernel);
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let _lock = lock(&cache.join("build.lock"), Duration::from_secs(600))?;
        let dm_clone_ko = build_dm_clone(&root, &kernel, &dir)?;
        let ublk_ko = build_module(&root, &kernel, &dir, "ublk", &["linux-source-6.1/drivers/block/ublk_drv.c"])?;
        let initramfs = build_initramfs(&kernel, &dir)?;
        Ok(Self { root, cache, kernel, dm_clone_ko, ublk_ko, initramfs })
    }

    /// Boots the VM, runs `scenario` inside and returns its exit code and log. One VM
    /// runs at a time on this host (a lock under target/vm-cache), bounded by the timeout.
    pub fn run(&self, scenario: &Scenario) -> Result<Outcome, VmError> {
        let _lock = lock(&self.cache.join("vm.lock"), Duration::from_secs(900))?;
        let name = scenario.script.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let run = self.cache.join("runs").join(format!("{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&run);
        let out = run.join("out");
        fs::create_dir_all(&out).map_err(io(format!("create {}", out.display())))?;
        copy_scripts(&scenario.script, &out.join("scenario"))?;
        for (var, bin) in &scenario.binaries {
            let copy = out.join("bin").join(var);
            fs::create_dir_all(out.join("bin")).map_err(io("create bin dir"))?;
            fs::copy(bin, &copy).map_err(io(format!("copy {} to {}", bin.display(), copy.display())))?;
        }
        fs::write(out.join("run.sh"), self.run_script(scenario))
            .map_err(io(format!("write {}/run.sh", out.display())))?;
        // (path, deleted with the run): a disk deleted with the run never needs to be
        // durable on the host, so the guest's flushes stop at the host's page cache
        // (`cache=unsafe`). It spares the host's fsyncs; it did not remove the 2x noise
        // of timed guest writes (docs/benchmarks.md, "Hydration: the exposure is not in
        // the copy").
        let mut disks = vec![(sparse(&run.join("scratch.img"), scenario.scratch_mib)?, true)];
        for (i, d) in scenario.disks.iter().enumerate() {
            disks.push(match d {
                Disk::Blank(mib) => (sparse(&run.join(format!("disk{i}.img")), *mib)?, true),
                Disk::File(p) => (p.clone(), false),
            });
        }
        let console_path = run.join("console.log");
        let console = File::create(&console_path).map_err(io("create console.log"))?;
        // MESHDRAIN_VM_APPEND: more kernel parameters (experiments on the emulated machine,
        // e.g. `idle=poll`; docs/benchmarks.md).
        let mut append = String::from("console=ttyS0 panic=-1 loglevel=4");
        if let Ok(extra) = std::env::var("MESHDRAIN_VM_APPEND") {
            append = format!("{append} {extra}");
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
            .args(["-nic", "none", "-kernel"])
            .arg(format!("/boot/vmlinuz-{}", self.kernel))
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(append)
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!("local,path={},mount_tag=out,security_model=none", out.display()))
            // The checkout again, on its own: the guest puts tmpfs on /tmp and /run, which
            // would hide a checkout there (CI clones into /tmp).
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=project,security_model=none,readonly=on,multidevs=remap",
                self.root.display()
            ));
        for (d, scratch) in &disks {
            let cache = if *scratch { ",cache=unsafe" } else { "" };
            cmd.arg("-drive").arg(format!("file={},if=virtio,format=raw{cache}", d.display()));
        }
        cmd.stdin(Stdio::null()).stdout(console).stderr(Stdio::piped());
        let start = Instant::now();
        let child = cmd.spawn().map_err(io("start qemu-system-x86_64 (package qemu-system-x86)"))?;
        let mut guard = Killer(child);
        let mut boot = None;
        let status = loop {
            if let Some(status) = guard.0.try_wait().map_err(io("wait for qemu"))? {
                break status;
            }
            if boot.is_none() && read_lossy(&console_path).contains(START_MARK) {
                boot = Some(start.elapsed());
            }
            if start.elapsed() > scenario.timeout {
                let _ = guard.0.kill();
                let _ = guard.0.wait();
                return Err(VmError::Timeout {
                    scenario: name,
                    after: scenario.timeout,
                    console: tail(&read_lossy(&console_path), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let total = start.elapsed();
        let console = read_lossy(&console_path);
        let boot = boot.or_else(|| console.contains(START_MARK).then_some(total));
        let rc = fs::read_to_string(out.join("rc")).ok();
        let rc = rc.and_then(|s| s.trim().parse::<i32>().ok());
        match (rc, boot) {
            (Some(exit_code), Some(boot)) => {
                let log = read_lossy(&out.join("log"));
                let _ = fs::remove_dir_all(&run);
                Ok(Outcome { exit_code, log, console, boot, total })
            }
            _ => {
                let mut stderr = String::new();
                if let Some(mut e) = guard.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                let mut tail_text = tail(&console, 40);
                if !stderr.trim().is_empty() {
                    let _ = write!(tail_text, "\nqemu stderr:\n{}", tail(&stderr, 10));
                }
                let status = status.to_string();
                Err(match boot {
                    Some(_) => VmError::NoResult { status, console: tail_text },
                    None => VmError::BootFailed { status, console: tail_text },
                })
            }
        }
    }

    /// The per-run script the guest init executes in the chroot.
    fn run_script(&self, s: &Scenario) -> String {
        let mut env = String::new();
        let vars = [
            ("MESHDRAIN_ROOT", self.root.display().to_string()),
            ("MESHDRAIN_DM_CLONE_KO", self.dm_clone_ko.display().to_string()),
            ("MESHDRAIN_UBLK_KO", self.ublk_ko.display().to_string()),
            ("MESHDRAIN_VM_KERNEL", self.kernel.clone()),
            ("MESHDRAIN_VM_SCRATCH", "/dev/vda".to_string()),
            ("MESHDRAIN_VM_OUT", "/tmp/vm-out".to_string()),
        ];
        let bins = s.binaries.iter().map(|(k, _)| (k.as_str(), format!("/tmp/vm-out/bin/{k}")));
        let extra = s.env.iter().map(|(k, v)| (k.as_str(), v.clone())).chain(bins);
        for (k, v) in vars.iter().map(|(k, v)| (*k, v.clone())).chain(extra) {
            let _ = writeln!(env, "export {k}={}", quote(&v));
        }
        let args: Vec<String> = s.args.iter().map(|a| quote(a)).collect();
        format!(
            "#!/bin/bash\n# generated by testkit::vm\nexport PATH=/usr/local/sbin:/usr/local/bin:\
             /usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8\n{env}mkdir -p /run/lock\n\
             modprobe virtio_blk 2>/dev/null\nfor _ in $(seq 50); do [ -b /dev/vda ] && break; \
             sleep 0.1; done\n[ -e \"$MESHDRAIN_ROOT/Cargo.toml\" ] || {{ mkdir -p \"$MESHDRAIN_ROOT\" && mount -t 9p \
             -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 project \"$MESHDRAIN_ROOT\"; }}\n\
             cd \"$MESHDRAIN_ROOT\"\nsetsid -w bash {} {} 2>&1 | tee /tmp/vm-out/log\n\
             echo \"${{PIPESTATUS[0]}}\" > /tmp/vm-out/rc\nsync\n",
            quote(&format!("/tmp/vm-out/scenario/{}", file_name(&s.script))),
            args.join(" ")
        )
    }
}

/// Kills QEMU when the run ends early (panic, error): no VM outlives its test.
struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Copies the scenario and the `.sh` files beside it (its helpers) into the run's
/// directory: the guest runs the copy, so editing a script during a run cannot break it.
fn copy_scripts(script: &Path, to: &Path) -> Result<(), VmError> {
    fs::create_dir_all(to).map_err(io(format!("create {}", to.display())))?;
    let dir = script.parent().unwrap_or(Path::new("."));
    let entries = fs::read_dir(dir).map_err(io(format!("list {}", dir.display())))?;
    let helpers = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "sh"));
    for src in helpers.chain(std::iter::once(script.to_path_buf())) {
        let dst = to.join(file_name(&src));
        fs::copy(&src, &dst).map_err(io(format!("copy {} to {}", src.display(), dst.display())))?;
    }
    Ok(())
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn sparse(p: &Path, mib: u64) -> Result<PathBuf, VmError> {
    let f = File::create(p).map_err(io(format!("create {}", p.display())))?;
    f.set_len(mib << 20).map_err(io(format!("size {}", p.display())))?;
    Ok(p.to_path_buf())
}

/// Takes an exclusive lock on `path`, polling until `limit` (never an unbounded wait).
fn lock(path: &Path, limit: Duration) -> Result<File, VmError> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(format!("open {}", path.display())))?;
    let start = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(fs::TryLockError::WouldBlock) if start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(fs::TryLockError::WouldBlock) => return Err(VmError::LockTimeout(limit)),
            Err(fs::TryLockError::Error(e)) => return Err(io(format!("lock {}", path.display()))(e)),
        }
    }
}

fn run_logged(cmd: &mut Command) -> Result<(bool, String, String), VmError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(io(format!("run {shown}")))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), out.status.to_string(), tail(&text, 30)))
}

/// Runs `scripts/install-deps vm`; it is idempotent and quick when all is installed.
fn ensure_packages(root: &Path) -> Result<(), VmError> {
    let (ok, status, tail) = run_logged(Command::new(root.join("scripts/install-deps")).arg("vm"))?;
    if ok {
        return Ok(());
    }
    if tail.contains("need root") {
        return Err(VmError::NotRoot(tail));
    }
    Err(VmError::InstallDeps { status, tail })
}

/// Splits a version into number and text runs so `6.1.0-56` sorts after `6.1.0-9`.
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut chars = v.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digit = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != digit {
                break;
            }
            run.push(c);
            chars.next();
        }
        key.push(if digit { (run.parse().unwrap_or(u64::MAX), String::new()) } else { (0, run) });
    }
    key
}

/// The newest Debian 6.1 `-amd64` kernel in `boot` with headers (`<modules>/<ver>/build`);
/// never the host's running kernel by accident, never an `-rt-` one.
pub fn pick_kernel(boot: &Path, modules: &Path) -> Result<String, VmError> {
    let entries = fs::read_dir(boot).map_err(io(format!("list {}", boot.display())))?;
    let mut seen = Vec::new();
    let mut ok = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(ver) = name.strip_prefix("vmlinuz-") else { continue };
        seen.push(ver.to_string());
        if ver.starts_with("6.1.")
            && ver.ends_with("-amd64")
            && !ver.contains("-rt-")
            && modules.join(ver).join("build").join("Makefile").exists()
        {
            ok.push(ver.to_string());
        }
    }
    ok.sort_by_key(|v| version_key(v));
    ok.pop().ok_or_else(|| VmError::NoKernel(if seen.is_empty() { "nothing".into() } else { seen.join(", ") }))
}

/// Builds `dm-clone.ko` from `/usr/src/linux-source-6.1.tar.xz` with the Kbuild in
/// `tests/vm/dm-clone/`, once per kernel version (and Kbuild/source change).
fn build_dm_clone(root: &Path, kernel: &str, dir: &Path) -> Result<PathBuf, VmError> {
    build_module(
        root,
        kernel,
        dir,
        "dm-clone",
        &["linux-source-6.1/drivers/md/dm-clone*", "linux-source-6.1/drivers/md/*.h"],
    )
}

/// Builds the module `tests/vm/<name>/Kbuild` makes (its `obj-m`, e.g. `ublk_drv.o`) from
/// the `members` of `/usr/src/linux-source-6.1.tar.xz` (extracted flat), against
/// `/lib/modules/<kernel>/build`; cached in `dir` until the kernel, tarball or Kbuild change.
fn build_module(root: &Path, kernel: &str, dir: &Path, name: &str, members: &[&str]) -> Result<PathBuf, VmError> {
    let tarball = Path::new("/usr/src/linux-source-6.1.tar.xz");
    let kbuild_src = root.join("tests/vm").join(name).join("Kbuild");
    let kbuild = fs::read_to_string(&kbuild_src).map_err(io(format!("read {}", kbuild_src.display())))?;
    let obj = kbuild
        .lines()
        .find_map(|l| l.strip_prefix("obj-m := "))
        .map(|o| o.trim().trim_end_matches(".o").to_string())
        .unwrap_or_else(|| name.to_string());
    let module = format!("{obj}.ko");
    let ko = dir.join(&module);
    let meta = fs::metadata(tarball).map_err(io(format!("{} (package linux-source-6.1)", tarball.display())))?;
    let stamp = format!("{kernel}\n{}\n{:?}\n{kbuild}", meta.len(), meta.modified().ok());
    let stamp_path = dir.join(format!("{name}.stamp"));
    if ko.exists() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(ko);
    }
    let build = dir.join(format!("{name}-build"));
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build).map_err(io(format!("create {}", build.display())))?;
    let fail = |step: &str, tail: String| VmError::ModuleBuild {
        module: module.clone(),
        kernel: kernel.into(),
        step: step.into(),
        tail,
    };
    let (ok, _, t) = run_logged(
        Command::new("tar")
            .current_dir(&build)
            .args(["-xJf"])
            .arg(tarball)
            .args(["--strip-components=3", "--wildcards"])
            .args(members),
    )?;
    if !ok {
        return Err(fail("tar -xJf linux-source-6.1.tar.xz", t));
    }
    fs::write(build.join("Kbuild"), &kbuild).map_err(io("write Kbuild"))?;
    let kdir = format!("/lib/modules/{kernel}/build");
    let (ok, _, t) =
        run_logged(Command::new("make").args(["-C", &kdir]).arg(format!("M={}", build.display())).arg("modules"))?;
    if !ok {
        return Err(fail(&format!("make -C {kdir} modules"), t));
    }
    fs::rename(build.join(&module), &ko).map_err(io(format!("move {}", ko.display())))?;
    fs::write(&stamp_path, stamp).map_err(io(format!("write {}", stamp_path.display())))?;
    let _ = fs::remove_dir_all(&build);
    Ok(ko)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
    }

    #[test]
    fn picks_newest_61_with_headers_never_rt() {
        let d = std::env::temp_dir().join(format!("vm-pick-{}", std::process::id()));
        for v in ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-60-amd64", "6.12.1+deb12-rt-amd64"] {
            fs::create_dir_all(d.join("boot")).unwrap();
            fs::write(d.join("boot").join(format!("vmlinuz-{v}")), "").unwrap();
            if v != "6.1.0-60-amd64" {
                fs::create_dir_all(d.join("mods").join(v).join("build")).unwrap();
                fs::write(d.join("mods").join(v).join("build/Makefile"), "").unwrap();
            }
        }
        assert_eq!(pick_kernel(&d.join("boot"), &d.join("mods")).unwrap(), "6.1.0-56-amd64");
        let _ = fs::remove_dir_all(&d);
    }
}
