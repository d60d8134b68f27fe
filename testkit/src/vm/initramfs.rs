//! The guest's initramfs: busybox, the modules that mount the 9p host root (dependencies
//! first, from `modules.dep`) and a tiny init that chroots into the host root and runs the
//! scenario. Built as a `newc` cpio, cached by a hash of what goes in.
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{START_MARK, VmError, io};

/// Modules the initramfs loads (with their dependencies) to mount the 9p host root.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The modules to insmod, dependencies first, from `modules.dep` (built-ins skipped).
fn module_order(kernel: &str, wanted: &[&str]) -> Result<Vec<String>, VmError> {
    let base = PathBuf::from(format!("/lib/modules/{kernel}"));
    let dep =
        fs::read_to_string(base.join("modules.dep")).map_err(io(format!("read {}/modules.dep", base.display())))?;
    let norm = |s: &str| {
        let file = s.rsplit('/').next().unwrap_or(s);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut table = std::collections::HashMap::new();
    for line in dep.lines() {
        if let Some((m, deps)) = line.split_once(':') {
            table.insert(norm(m), (m.to_string(), deps.split_whitespace().map(norm).collect::<Vec<_>>()));
        }
    }
    fn visit(m: &str, t: &std::collections::HashMap<String, (String, Vec<String>)>, out: &mut Vec<String>) {
        let Some((path, deps)) = t.get(m) else { return }; // built in
        if out.contains(path) {
            return;
        }
        for d in deps {
            visit(d, t, out);
        }
        out.push(path.clone());
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), &table, &mut out);
    }
    Ok(out)
}

/// Appends one `newc` cpio entry (the format the kernel unpacks as initramfs).
fn cpio_entry(buf: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    cpio_node(buf, name, mode, data, (0, 0));
}

/// Appends one `newc` cpio entry with a device number (for `dev/console`).
fn cpio_node(buf: &mut Vec<u8>, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
    let ino = buf.len() as u32;
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    buf.extend_from_slice(header.as_bytes());
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The guest's first process: load 9p, mount the host root, chroot, run the scenario,
/// power off. Kept tiny; everything else happens in the chroot with the host's tools.
fn init_script(modules: &[String]) -> String {
    let mods: Vec<String> = modules.iter().map(|m| format!("/modules/{}", m.rsplit('/').next().unwrap_or(m))).collect();
    format!(
        r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "meshdrain-vm: init $(cut -d' ' -f1 /proc/uptime)s"
for m in {mods}; do insmod "$m" || echo "meshdrain-vm: insmod $m failed"; done
die() {{ echo "meshdrain-vm: $*"; poweroff -f; }}
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /mnt || die "mount 9p host root failed"
mount -t proc proc /mnt/proc; mount -t sysfs sysfs /mnt/sys; mount -t devtmpfs devtmpfs /mnt/dev
ln -s /proc/self/fd /mnt/dev/fd; ln -s /proc/self/fd/0 /mnt/dev/stdin
ln -s /proc/self/fd/1 /mnt/dev/stdout; ln -s /proc/self/fd/2 /mnt/dev/stderr
mkdir -p /mnt/dev/pts /mnt/dev/shm; mount -t devpts devpts /mnt/dev/pts; mount -t tmpfs tmpfs /mnt/dev/shm
mount -t tmpfs tmpfs /mnt/tmp; mount -t tmpfs tmpfs /mnt/run
mkdir -p /mnt/tmp/vm-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /mnt/tmp/vm-out || die "mount out share failed"
mount -t configfs configfs /mnt/sys/kernel/config 2>/dev/null
echo "{START_MARK} $(cut -d' ' -f1 /proc/uptime)s"
chroot /mnt /bin/bash /tmp/vm-out/run.sh
echo "meshdrain-vm: scenario end rc=$(cat /mnt/tmp/vm-out/rc 2>/dev/null)"
sync
umount /mnt/tmp/vm-out
poweroff -f
"#,
        mods = mods.join(" ")
    )
}

/// Builds (once per kernel and init script) the busybox initramfs as a newc cpio.
pub(super) fn build_initramfs(kernel: &str, dir: &Path) -> Result<PathBuf, VmError> {
    let modules = module_order(kernel, INITRAMFS_MODULES)?;
    let init = init_script(&modules);
    let busybox = Path::new("/bin/busybox");
    let bb = fs::read(busybox).map_err(io("read /bin/busybox (package busybox-static)"))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a of what goes in, names the cache file
    for b in init.bytes().chain(bb.len().to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let path = dir.join(format!("initramfs-{h:016x}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    let mut buf = Vec::new();
    for d in ["bin", "dev", "proc", "sys", "mnt", "modules", "tmp"] {
        cpio_entry(&mut buf, d, 0o040755, &[]);
    }
    cpio_node(&mut buf, "dev/console", 0o020600, &[], (5, 1));
    cpio_entry(&mut buf, "bin/busybox", 0o100755, &bb);
    for applet in ["sh", "mount", "umount", "insmod", "mkdir", "chroot", "poweroff", "cat", "cut", "echo", "sync", "ln"]
    {
        cpio_entry(&mut buf, &format!("bin/{applet}"), 0o120777, b"busybox");
    }
    for m in &modules {
        let src = format!("/lib/modules/{kernel}/{m}");
        let data = fs::read(&src).map_err(io(format!("read {src}")))?;
        let name = m.rsplit('/').next().unwrap_or(m);
        cpio_entry(&mut buf, &format!("modules/{name}"), 0o100644, &data);
    }
    cpio_entry(&mut buf, "init", 0o100755, init.as_bytes());
    cpio_entry(&mut buf, "TRAILER!!!", 0, &[]);
    for old in fs::read_dir(dir).into_iter().flatten().flatten() {
        if old.file_name().to_string_lossy().starts_with("initramfs-") {
            let _ = fs::remove_file(old.path());
        }
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(&buf).map_err(io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io(format!("move {}", path.display())))?;
    Ok(path)
}
