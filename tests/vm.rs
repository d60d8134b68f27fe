//! Kernel tier (`vm_*`): scenarios in a QEMU (TCG) guest running Debian's kernel, where
//! dm-clone, open-iscsi and kernel WireGuard run for real (the host kernel has none).
//! Needs root; a host that lacks something it cannot install fails with the reason.
#![allow(clippy::print_stdout)]
use std::path::PathBuf;
use std::time::Duration;

use meshdrain_testkit::vm::{Disk, Scenario, Vm};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Prepares the VM (packages, dm-clone.ko, initramfs), runs one scenario and asserts
/// it exited 0, printing boot and scenario times and the log.
fn run(test: &str, script: &str, disks: Vec<Disk>, env: &[(&str, &str)], timeout: Duration) -> String {
    let mut s = Scenario::new(root().join("tests/vm").join(script));
    s.disks = disks;
    s.timeout = timeout;
    s.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    run_scenario(test, script, s)
}

/// Runs scenario `s` (tests/vm/`script`, the `meshdrain` binary added as MESHDRAIN_BIN);
/// as [`run`].
fn run_scenario(test: &str, script: &str, mut s: Scenario) -> String {
    let vm = Vm::prepare(root()).unwrap_or_else(|e| panic!("kernel tier cannot run: {e}"));
    s.binaries.push(("MESHDRAIN_BIN".into(), env!("CARGO_BIN_EXE_meshdrain").into()));
    let out = vm.run(&s).unwrap_or_else(|e| panic!("{script}: {e}"));
    println!("{}", out.log);
    println!(
        "vm {test} ({script}): kernel {} boot {:.1}s total {:.1}s (scenario {:.1}s) exit {}",
        vm.kernel,
        out.boot.as_secs_f64(),
        out.total.as_secs_f64(),
        (out.total - out.boot).as_secs_f64(),
        out.exit_code
    );
    assert_eq!(out.exit_code, 0, "{script} failed; log above; console tail:\n{}", tail(&out.console));
    out.log
}

fn tail(s: &str) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(30)..].join("\n")
}

/// Host environment `name` parsed as MiB, or `default` (bench/vm.sh sets bigger sizes).
fn mib(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn vm_dm_clone() {
    let size = mib("MESHDRAIN_VM_DM_MIB", 32);
    let tuned = std::env::var("MESHDRAIN_VM_TUNED").unwrap_or_else(|_| "4096 256".into());
    let log = run(
        "vm_dm_clone",
        "dm_clone.sh",
        vec![Disk::Blank(size), Disk::Blank(size), Disk::Blank(8)],
        &[("VM_DM_MIB", &size.to_string()), ("VM_TUNED", &tuned)],
        Duration::from_secs(300 + size),
    );
    assert!(log.contains("RATE default") && log.contains("RATE tuned"), "no hydration rates in the log");
    assert!(log.contains("RATE ours"), "meshdrain clone run --backend dm did not report a rate");
    assert!(log.contains("resumed after the source came back"), "stall/resume through our code not shown");
}

#[test]
fn vm_open_iscsi() {
    let size = mib("MESHDRAIN_VM_LUN_MIB", 64);
    run(
        "vm_open_iscsi",
        "open_iscsi.sh",
        vec![],
        &[("VM_LUN_MIB", &size.to_string()), ("VM_ISCSI_TARGET", "ours")],
        Duration::from_secs(300 + size),
    );
}

/// Scenario 3 without our code: kernel WireGuard (ip/wg) in two namespaces and
/// wireguard-go in a third. When `vm_kernel_wireguard` fails and this passes, the fault is
/// in our mesh backends, not in the guest. Ignored by default to keep the tier in budget.
#[test]
#[ignore = "diagnostic for vm_kernel_wireguard (ip/wg + wireguard-go): cargo nextest run -p meshdrain --test vm --run-ignored all vm_wireguard_plumbing"]
fn vm_wireguard_plumbing() {
    run("vm_wireguard_plumbing", "kernel_wireguard.sh", vec![], &[("VM_WG_MODE", "raw")], Duration::from_secs(300));
}

/// Scenario 3: our mesh backends (`meshdrain mesh up`): the kernel backend (defguard over
/// netlink) in two namespaces, our userspace device (boringtun's Noise on TUN offloads) in
/// a third; ping and TCP between every pair.
#[test]
fn vm_kernel_wireguard() {
    let log = run(
        "vm_kernel_wireguard",
        "kernel_wireguard.sh",
        vec![],
        &[("VM_WG_MODE", "meshdrain")],
        Duration::from_secs(300),
    );
    for pair in ["a (kernel) -> c (userspace)", "c (userspace) -> b (kernel)", "a (kernel) -> b (kernel)"] {
        assert!(log.contains(&format!("{pair}: ping ok, TCP 512 KiB ok")), "no {pair} transfer in the log");
    }
}

/// Scenario 4: a whole drain over the kernel data path: agents in two guest namespaces
/// over kernel WireGuard, our target on the source, open-iscsi + dm-clone on the holder
/// (`dataplane.clone = "dm"`), an ext4 workload started before hydration ends; mid-move
/// the source's agent dies (holder reports stalled), then the holder's (it adopts the clone).
#[test]
fn vm_full_drain() {
    let mib = mib("MESHDRAIN_VM_VOL_MIB", 64);
    // `agent`: the agents run the kernel mesh; `sidecar`: `meshdrain mesh up` beside them.
    let mesh = std::env::var("MESHDRAIN_VM_MESH").unwrap_or_else(|_| "agent".into());
    let env = [("VM_VOL_MIB", mib.to_string()), ("VM_MESH", mesh)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = run("vm_full_drain", "full_drain.sh", vec![], &env, Duration::from_secs(600));
    assert!(
        log.contains("checksums equal, fsck clean, linear on the dest, no iSCSI session left"),
        "no hand-off proof"
    );
    assert!(log.contains("src deleted its copy only after done"), "no deletion-order proof");
    assert!(log.contains("source agent killed: holder reports stalled"), "no stall proof");
    assert!(log.contains("the holder adopted the dm-clone device"), "no adoption proof");
}

/// Issue 20: the dm-clone path skips what the source does not hold. A 256 MiB volume 5 %
/// allocated moves over open-iscsi + dm-clone; the source's agent reads at most 8 % of it
/// (its /proc/<pid>/io, printed as the `SPARSE read` line), the dest's bytes equal.
#[test]
fn vm_dm_clone_sparse() {
    let mib = mib("MESHDRAIN_VM_SPARSE_MIB", 256);
    let log = run(
        "vm_dm_clone_sparse",
        "dm_clone_sparse.sh",
        vec![],
        &[("VM_VOL_MIB", &mib.to_string())],
        Duration::from_secs(420),
    );
    let line = log.lines().find(|l| l.starts_with("SPARSE read ")).expect("no SPARSE read line in the log");
    println!("{line}");
    assert!(line.contains("sha256 equal"), "{line}");
    assert!(log.contains("holder: ") && log.contains("skipped="), "the holder did not report skipped bytes");
}

/// Issue 20: the userspace clone served through ublk_drv (built out of tree) from our
/// iSCSI target: ext4 written while hydrating, the serving process killed with SIGKILL
/// mid-I/O, a new one re-attaching to the same /dev/ublkbN (user recovery) with the
/// workload seeing no error, hydration complete, checksums equal, fsck clean.
#[test]
fn vm_ublk_exposure() {
    let mib = mib("MESHDRAIN_VM_UBLK_MIB", 48);
    // MESHDRAIN_VM_UBLK_BENCH=1 adds the latency comparison (ublk, FUSE + loop, open-iscsi).
    let bench = std::env::var("MESHDRAIN_VM_UBLK_BENCH").unwrap_or_default();
    let log = run(
        "vm_ublk_exposure",
        "ublk_exposure.sh",
        vec![],
        &[("VM_VOL_MIB", &mib.to_string()), ("VM_UBLK_BENCH", &bench)],
        Duration::from_secs(300),
    );
    let line = log.lines().find(|l| l.starts_with("UBLK recovery: ")).expect("no UBLK recovery line in the log");
    println!("{line}");
    for l in log.lines().filter(|l| l.starts_with("LATENCY ")) {
        println!("{l}");
    }
    assert!(line.contains("checksums equal, fsck clean"), "{line}");
    assert!(log.contains("no I/O error"), "the workload's outcome is not in the log");
}

/// Issue 20: the userspace clone served as /dev/nbdN (Debian's nbd as shipped) by a
/// holder process with `expose = "nbd"`, from our iSCSI target: ext4 written while
/// hydrating, the holder killed with SIGKILL mid-I/O, a new holder reconfiguring the same
/// device with its new socket (the workload sees no error), hydration complete, checksums
/// equal, fsck clean; and the 4 KiB on-demand read latency through nbd and FUSE + loop.
#[test]
fn vm_nbd_exposure() {
    let mib = mib("MESHDRAIN_VM_NBD_MIB", 32);
    let log = run(
        "vm_nbd_exposure",
        "nbd_exposure.sh",
        vec![],
        &[("VM_VOL_MIB", &mib.to_string())],
        Duration::from_secs(300),
    );
    let line = log.lines().find(|l| l.starts_with("NBD restart: ")).expect("no NBD restart line in the log");
    println!("{line}");
    for l in log.lines().filter(|l| l.starts_with("LATENCY ")) {
        println!("{l}");
    }
    assert!(line.contains("served again by a new holder, checksums equal, fsck clean"), "{line}");
    assert!(log.contains("no I/O error"), "the workload's outcome is not in the log");
}

/// Issue 20: ublk the agent's way: a holder process (`clone hold`, `expose = "ublk"`)
/// serves the clone as /dev/ublkbN behind its symlink, ext4 on it while hydrating; the
/// holder is killed with SIGKILL mid-I/O and a new holder from the same spec recovers the
/// same device (`reattached`), the workload sees no error; that holder then exits on
/// request leaving the device (`exit_keeping_device`, docs/holder-process.md "Upgrades")
/// and a third recovers it; checksums equal, fsck clean.
#[test]
fn vm_ublk_holder() {
    let mib = mib("MESHDRAIN_VM_UBLK_HOLDER_MIB", 32);
    let log =
        run("vm_ublk_holder", "ublk_holder.sh", vec![], &[("VM_VOL_MIB", &mib.to_string())], Duration::from_secs(300));
    let line = log.lines().find(|l| l.starts_with("UBLK holder restart: ")).expect("no UBLK holder restart line");
    println!("{line}");
    assert!(
        line.contains(
            "recovered by a new holder, left by it on request and recovered by a third, checksums equal, fsck clean"
        ),
        "{line}"
    );
    assert!(log.contains("no I/O error"), "the workload's outcome is not in the log");
}

/// Issue 20's benchmark (bench/vm.sh; docs/benchmarks.md "Exposures in the VM"): in one
/// guest, 4 KiB O_DIRECT on-demand and hydrated reads through each exposure (fuse-loop, nbd,
/// ublk) against the plain remote read of the same LUN through our initiator and through
/// open-iscsi, and hydration of the whole source through each exposure. Ignored: a
/// benchmark, slow under TCG, not a proof; bench/vm.sh runs it with --run-ignored.
/// Sizes: MESHDRAIN_VM_BENCH_MIB (default 256, quick 64), MESHDRAIN_VM_BENCH_READS (default
/// 100, quick 50), MESHDRAIN_VM_BENCH_ROUNDS (default 5, quick 1), MESHDRAIN_VM_BENCH_QUICK=1,
/// MESHDRAIN_VM_BENCH_TRACE=1 (the holders' per-request split), MESHDRAIN_VM_BENCH_PARTS
/// (default "lat hyd": the reads and the hydrations; one of them alone for a quicker look),
/// MESHDRAIN_VM_BENCH_EXPOSURES (default "fuse-loop nbd ublk": fewer holders served at once);
/// MESHDRAIN_VM_ONDEMAND_BIN names the ondemand_latency example (clone/examples) for the
/// read through our initiator.
#[test]
#[ignore = "benchmark, run by bench/vm.sh: cargo nextest run -p meshdrain --test vm --run-ignored all vm_exposure_bench"]
fn vm_exposure_bench() {
    let quick = std::env::var("MESHDRAIN_VM_BENCH_QUICK").is_ok_and(|v| v == "1");
    let size = mib("MESHDRAIN_VM_BENCH_MIB", if quick { 64 } else { 256 });
    let reads = mib("MESHDRAIN_VM_BENCH_READS", if quick { 50 } else { 100 });
    let rounds = mib("MESHDRAIN_VM_BENCH_ROUNDS", if quick { 1 } else { 5 }).clamp(1, 10);
    let mut s = Scenario::new(root().join("tests/vm/exposure_bench.sh"));
    // The hydration dests (ext4 in the guest); sparse on the host, deleted with the run.
    s.disks = vec![Disk::Blank(size + 64)];
    s.timeout = Duration::from_secs(300 + rounds * (200 + 3 * size));
    s.env = vec![
        ("VM_BENCH_MIB".into(), size.to_string()),
        ("VM_BENCH_READS".into(), reads.to_string()),
        ("VM_BENCH_ROUNDS".into(), rounds.to_string()),
    ];
    // MESHDRAIN_VM_BENCH_TRACE=1: the holders' per-request trace splits each on-demand read
    // into the handler's time and the rest (tests/vm/exposure_bench.sh, VM_BENCH_TRACE).
    if std::env::var("MESHDRAIN_VM_BENCH_TRACE").is_ok_and(|v| v == "1") {
        s.env.push(("VM_BENCH_TRACE".into(), "1".into()));
    }
    if let Some(bin) = std::env::var_os("MESHDRAIN_VM_ONDEMAND_BIN") {
        s.binaries.push(("MESHDRAIN_ONDEMAND_BIN".into(), bin.into()));
    }
    let parts = std::env::var("MESHDRAIN_VM_BENCH_PARTS").unwrap_or_else(|_| "lat hyd".into());
    let exposures = std::env::var("MESHDRAIN_VM_BENCH_EXPOSURES").unwrap_or_else(|_| "fuse-loop nbd ublk".into());
    s.env.push(("VM_BENCH_PARTS".into(), parts.clone()));
    s.env.push(("VM_BENCH_EXPOSURES".into(), exposures.clone()));
    let log = run_scenario("vm_exposure_bench", "exposure_bench.sh", s);
    let (lat, hyd) = (parts.split_whitespace().any(|p| p == "lat"), parts.split_whitespace().any(|p| p == "hyd"));
    for x in exposures.split_whitespace() {
        let mut expected = Vec::new();
        if lat {
            expected.extend([format!("XBENCH read {x}-ondemand "), format!("XBENCH read {x}-hydrated ")]);
        }
        if hyd {
            expected.push(format!("XBENCH hydrate {x} "));
        }
        for what in expected {
            assert!(log.contains(&what), "no `{what}` line in the log");
        }
    }
    assert!(!lat || log.contains("XBENCH read open-iscsi "), "no open-iscsi read in the log");
    assert!(
        log.contains(&format!("XBENCH done: parts {parts} run through every exposure, every dest equal to the source"))
    );
}

/// Issue 20: the agent's own NBD path (docs/exposures.md "The restart story"): two agents
/// over the kernel mesh, tgt with `clone = "userspace"` and `expose = "nbd"` drains an
/// ext4 volume; its agent's holder serves /dev/nbdN to a workload writing while hydrating;
/// kill -9 of the holder (the agent's supervisor restarts it onto the same device, no
/// second start hook) and of the agent (the new agent adopts the holder), then the agent
/// restarted on another build moves the holder onto it (same device, docs/holder-process.md
/// "Upgrades"); no I/O error, hand-off, checksums equal, fsck clean, `status --json` shows
/// the exposure.
#[test]
fn vm_agent_nbd() {
    let mib = mib("MESHDRAIN_VM_AGENT_NBD_MIB", 32);
    let log =
        run("vm_agent_nbd", "agent_nbd.sh", vec![], &[("VM_VOL_MIB", &mib.to_string())], Duration::from_secs(400));
    let line = log.lines().find(|l| l.starts_with("AGENT NBD: ")).expect("no AGENT NBD line in the log");
    println!("{line}");
    for proof in [
        "the agent's supervisor restarted it",
        "start hook not run again",
        "the new agent adopted holder",
        "on the new build took it over",
        "exposure nbd",
        "no I/O error",
        "status --json: clone db exposed via nbd at ",
        "drained ",
    ] {
        assert!(log.contains(proof), "no `{proof}` in the log");
    }
    assert!(line.contains("start hook once, checksums equal, fsck clean"), "{line}");
}
