//! Loop devices bound and unbound through the kernel interface ([`meshdrain_clone::loopdev`]).
//! Privileged tier (`root_*`): needs root and loop support.
use std::io::Read;
use std::path::PathBuf;

use meshdrain_clone::loopdev;

fn require_root(what: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "{what} needs root (loop devices): run as root or skip with `-E 'not test(/^root_/)'`"
    );
}

#[test]
fn root_attach_finds_reads_and_detaches_a_file() {
    require_root("root_attach_finds_reads_and_detaches_a_file");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("img");
    std::fs::write(&f, vec![7u8; 1 << 20]).unwrap();

    let a = loopdev::attach(&f, true).unwrap();
    assert!(a.device.to_string_lossy().starts_with("/dev/loop"), "{a:?}");
    assert_eq!(loopdev::backed_by(&f), vec![a.device.clone()]);
    assert_eq!(loopdev::backed_under(dir.path()), vec![a.device.clone()]);
    let mut head = [0u8; 512];
    std::fs::File::open(&a.device).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(head, [7u8; 512]);
    loopdev::detach(&a.device).unwrap();
    assert_eq!(loopdev::backed_by(&f), Vec::<PathBuf>::new());

    let buffered = loopdev::attach(&f, false).unwrap();
    assert!(!buffered.direct_io, "buffered was asked for: {buffered:?}");
    assert_eq!(loopdev::backed_by(&f), vec![buffered.device.clone()]);
    loopdev::detach(&buffered.device).unwrap();
    assert_eq!(loopdev::backed_under(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn root_detach_of_a_missing_device_names_it() {
    require_root("root_detach_of_a_missing_device_names_it");
    let e = loopdev::detach(std::path::Path::new("/dev/loop-meshdrain-none")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "open /dev/loop-meshdrain-none: No such file or directory (os error 2) (no such loop device: is loop support loaded (`modprobe loop`)?)"
    );
}

#[test]
fn root_autoclear_device_unbinds_when_the_last_holder_closes() {
    require_root("root_autoclear_device_unbinds_when_the_last_holder_closes");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("img");
    std::fs::write(&f, vec![3u8; 1 << 20]).unwrap();
    let (a, handle) = loopdev::attach_autoclear(&f).unwrap();
    assert!(!a.direct_io, "{a:?}");
    assert_eq!(loopdev::backed_by(&f), vec![a.device.clone()]);
    drop(handle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !loopdev::backed_by(&f).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        loopdev::backed_by(&f),
        Vec::<PathBuf>::new(),
        "{} still bound after the last close",
        a.device.display()
    );
}
