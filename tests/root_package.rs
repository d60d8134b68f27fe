//! The Debian package (scripts/build-deb, `[package.metadata.deb]` in Cargo.toml) and the
//! operator files it ships. `root_*` tests build the package, install it on this host with
//! `dpkg -i`, check its files, run `meshdrain --version`, then remove and purge it (a guard
//! purges it even when a check fails); they also run promtool over the alert rules and the
//! dashboard's queries. The other tests (unit tier) check the alert rules, the dashboard and
//! the unit against what the agent really exports and does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meshdrain::agent::metrics::Metrics;
use meshdrain::cluster::view::ClusterView;

const BIN: &str = env!("CARGO_BIN_EXE_meshdrain");
const RULES: &str = "packaging/prometheus/meshdrain.rules.yml";
const RULES_TEST: &str = "packaging/prometheus/meshdrain.rules.test.yml";
const DASHBOARD: &str = "packaging/grafana/meshdrain-dashboard.json";
const UNIT: &str = "systemd/meshdrain.service";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A fleet as agent `a` sees it: `a` and `b` alive, `c` dead, each with a mesh certificate;
/// `a`'s volume `db` cut over to `b`, whose hydration is stalled.
fn fleet_view() -> ClusterView {
    use meshdrain::cluster::schema::{self, Key, NodeRecord};
    use meshdrain::cluster::view::{RawNode, RawSnapshot};
    use meshdrain::decide::model::WireguardAdvert;
    let ca = meshdrain_mesh::FleetCa::generate();
    let node = |name: &str, alive: bool, extra: Vec<(String, String)>| {
        let key = meshdrain_mesh::NodeKey::generate().public().to_base64();
        let request = meshdrain_mesh::SigningRequest { name: name.into(), public_key: key.clone() };
        let cert = ca.sign(&request, std::time::SystemTime::now() + Duration::from_secs(86400)).unwrap();
        let record = NodeRecord {
            wireguard: Some(WireguardAdvert {
                public_key: key,
                endpoints: vec![],
                certificate: serde_json::to_value(&cert).ok(),
                revocations: None,
            }),
            ..NodeRecord::new(
                name.parse().unwrap(),
                meshdrain::decide::node::NodeState::Active,
                "[fd00::1]:7946".parse().unwrap(),
            )
        };
        let mut entries = vec![(Key::Node.render(), schema::encode(&record))];
        entries.extend(extra);
        RawNode {
            name: name.into(),
            generation: 1,
            gossip_addr: "[fd00::1]:7946".parse().unwrap(),
            alive,
            heartbeat: 1,
            entries,
        }
    };
    let volume = r#"{"v":1,"size":1048576,"epoch":2,"phase":"cut_over","holder":"b","at_ms":5}"#;
    let progress = r#"{"v":1,"source":"a","epoch":2,"phase":"running","stalled":true,"hydrated":4,"total":16,"bytes_per_s":9,"fetched_bytes":262144,"read_through_bytes":8192}"#;
    let raw = RawSnapshot {
        self_name: "a".into(),
        nodes: vec![
            node("a", true, vec![("vol/db".into(), volume.into())]),
            node("b", true, vec![("progress/db".into(), progress.into())]),
            node("c", false, vec![]),
        ],
    };
    ClusterView::from_raw(&raw)
}

/// The sample names a Prometheus server scrapes from agent `a` of [`fleet_view`] (with a
/// WireGuard session to `b`): rendered from the agent's own registry, gauges as named,
/// counters with `_total`.
fn exported_metric_names() -> BTreeSet<String> {
    let view = fleet_view();
    let m = Metrics::new();
    m.observe(&view);
    let b_key = view.nodes["b"].record.as_ref().unwrap().wireguard.as_ref().unwrap().public_key.clone();
    let status = serde_json::json!({ "backend": "kernel", "peers": [{ "public_key": b_key, "endpoint": null,
        "allowed_ips": [], "handshake_age_secs": 3, "rx_bytes": 1, "tx_bytes": 2 }] });
    m.observe_mesh(&view, &status);
    let text = m.render();
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some(if kind == "counter" { format!("{name}_total") } else { name.to_owned() })
        })
        .collect();
    // The series the alerts are about, with the labels their annotations use.
    for sample in [
        "meshdrain_volume_stalled{volume=\"db\",holder=\"b\"} 1",
        "meshdrain_volume_stranded{volume=\"db\",holder=\"b\"} 0",
        "meshdrain_node_alive{node=\"c\"} 0",
        "meshdrain_mesh_peer_up{peer=\"b\"} 1",
        "meshdrain_mesh_peer_received_bytes_total{peer=\"b\"} 1",
        "meshdrain_mesh_certificate_expiry_timestamp_seconds{node=\"a\"} ",
    ] {
        assert!(text.contains(sample), "{sample} missing from\n{text}");
    }
    names
}

/// Every `meshdrain_*` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("meshdrain_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is valid JSON");
    let panels = dash["panels"].as_array().expect("dashboard has panels");
    panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_owned())
        .collect()
}

#[test]
fn package_dashboard_queries_only_metrics_the_agent_exports() {
    let exported = exported_metric_names();
    let exprs = dashboard_exprs();
    assert_eq!(exprs.len(), 16, "{exprs:#?}");
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names_in(e)).collect();
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(unknown.is_empty(), "the dashboard queries {unknown:?}, which the agent does not export ({exported:?})");
    // What issue 19 asks the dashboard to show: drain progress, hydration rate, mesh peers and bytes.
    for wanted in [
        "meshdrain_volumes",
        "meshdrain_volume_hydrated_ratio",
        "meshdrain_volume_hydration_bytes_per_second",
        "meshdrain_mesh_peer_up",
        "meshdrain_mesh_peer_received_bytes_total",
        "meshdrain_mesh_peer_sent_bytes_total",
    ] {
        assert!(queried.contains(wanted), "the dashboard does not graph {wanted}");
    }
    // Every panel reads the dashboard's datasource variable, so it imports anywhere.
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert_eq!(dash["templating"]["list"][0]["name"], "datasource");
    for p in dash["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
    }
}

#[test]
fn package_alert_rules_cover_issue_19_with_exported_metrics() {
    let rules = read(RULES);
    let exported = exported_metric_names();
    let used = metric_names_in(&rules);
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "the alert rules query {unknown:?}, which the agent does not export");
    // Each alert with its expression's metric and how long the condition must last.
    let alerts: Vec<(String, String, String)> = rules
        .split("- alert: ")
        .skip(1)
        .map(|block| {
            let name = block.lines().next().unwrap().trim().to_owned();
            let field = |key: &str| {
                block.lines().find_map(|l| l.trim().strip_prefix(key)).map(|v| v.trim().to_owned()).unwrap_or_default()
            };
            (name, field("expr:"), field("for:"))
        })
        .collect();
    let find =
        |name: &str| alerts.iter().find(|a| a.0 == name).unwrap_or_else(|| panic!("no alert {name}: {alerts:?}"));
    let stalled = find("MeshdrainVolumeStalled");
    assert!(stalled.1.contains("meshdrain_volume_stalled") && stalled.2 == "5m", "{stalled:?}");
    let stranded = find("MeshdrainVolumeStranded");
    assert!(stranded.1.contains("meshdrain_volume_stranded") && stranded.2 == "5m", "{stranded:?}");
    assert!(find("MeshdrainNodeDead").1.contains("meshdrain_node_alive"));
    assert!(find("MeshdrainMeshPeerMissing").1.contains("meshdrain_mesh_peer_up"));
    assert!(find("MeshdrainCertificateExpiring").1.contains("meshdrain_mesh_certificate_expiry_timestamp_seconds"));
}

/// The unit's `[Service]` and `[Unit]` settings, comments dropped.
fn unit_settings() -> Vec<(String, String)> {
    read(UNIT)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

#[test]
fn package_unit_leaves_holders_running_and_mounts_visible() {
    let settings = unit_settings();
    let get = |k: &str| settings.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("KillMode"), ["process"]);
    // Any of these gives the unit a mount namespace whose mounts do not reach the host.
    for key in [
        "PrivateTmp",
        "PrivateMounts",
        "PrivateDevices",
        "ProtectSystem",
        "ProtectHome",
        "ProtectKernelLogs",
        "ProtectKernelModules",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "ProtectProc",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "MountFlags",
        // Implies DeviceAllow=char-rtc, closing the device cgroup on older systemd.
        "ProtectClock",
        "DeviceAllow",
    ] {
        assert!(get(key).is_empty(), "{UNIT} sets {key}: {:?}", get(key));
    }
    assert_eq!(get("ExecStart"), ["/usr/bin/meshdrain agent --config /etc/meshdrain/agent.toml"]);
    // Until the operator creates agent.toml the unit fails first thing, saying what to do
    // (its check run on a temporary path instead of /etc/meshdrain/agent.toml).
    let pre = get("ExecStartPre");
    let script = pre[0].strip_prefix("/bin/sh -c '").and_then(|s| s.strip_suffix('\'')).expect("sh -c '...'");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let script = script.replacen("test -e /etc/meshdrain/agent.toml ", &format!("test -e {} ", config.display()), 1);
    let out = Command::new("/bin/sh").arg("-c").arg(&script).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "meshdrain: /etc/meshdrain/agent.toml does not exist: copy /etc/meshdrain/agent.toml.example there, set \
         name, gossip and mesh, then systemctl start meshdrain\n"
    );
    std::fs::write(&config, "").unwrap();
    assert!(Command::new("/bin/sh").arg("-c").arg(&script).status().unwrap().success());
    assert_eq!(pre[1], "/usr/bin/meshdrain agent --check --config /etc/meshdrain/agent.toml");
    // Every file the unit's Documentation= names is one the package installs: an asset's
    // destination, or a file matched by a `dir/*.ext` asset into a destination directory.
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let assets: Vec<(String, String)> = cargo["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a[0].as_str().unwrap().to_owned(), format!("/{}", a[1].as_str().unwrap())))
        .collect();
    let installed = |path: &str| {
        assets.iter().any(|(src, dest)| {
            dest == path
                || (dest.ends_with('/')
                    && path.strip_prefix(dest.as_str()).is_some_and(|name| {
                        let dir = src.rsplit_once('/').map_or("", |(d, _)| d);
                        let ext = src.rsplit_once("*.").map_or("", |(_, e)| e);
                        !name.contains('/')
                            && name.ends_with(&format!(".{ext}"))
                            && repo().join(dir).join(name).is_file()
                    }))
        })
    };
    let docs: Vec<&str> = get("Documentation").iter().flat_map(|d| d.split_whitespace()).collect();
    assert!(docs.contains(&"man:meshdrain(1)"), "{docs:?}");
    assert!(docs.contains(&"file:///usr/share/doc/meshdrain/docs/operations.md"), "{docs:?}");
    for doc in docs.iter().filter_map(|d| d.strip_prefix("file://")) {
        assert!(installed(doc), "Documentation={doc} is not among the package's assets {assets:?}");
    }
    assert!(!installed("/usr/share/doc/meshdrain/docs/no-such-guide.md"));
}

// ---- privileged tier ----

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// `dpkg` with the given arguments, waiting while another apt or dpkg holds the lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = Command::new("dpkg").args(args).output().expect("running dpkg");
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("lock") || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `dpkg-query`'s two-letter status of the meshdrain package, or `None` when dpkg has no
/// record of it.
fn package_status() -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", "meshdrain"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !s.starts_with("un")).then_some(s)
}

/// Purges the package when dropped, so a failed check does not leave it on the host.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let out = dpkg(&["--purge", "meshdrain"]);
        if !out.status.success() {
            eprintln!("cleanup: dpkg --purge meshdrain: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// PIDs of processes running the installed binary (none may run: nothing starts the agent).
fn running_installed_binary() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.to_string_lossy().trim_end_matches(" (deleted)") == "/usr/bin/meshdrain")
        })
        .collect()
}

fn target_dir() -> PathBuf {
    Path::new(BIN).parent().and_then(Path::parent).expect("the binary lives in <target>/<profile>/").to_owned()
}

fn require_root() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "root_* tests run as root (they install a package with dpkg)");
}

#[test]
fn root_package_installs_checks_and_removes() {
    require_root();
    assert_eq!(package_status(), None, "meshdrain is already known to dpkg on this host; the test would replace it");
    assert!(
        !Path::new("/usr/bin/meshdrain").exists(),
        "/usr/bin/meshdrain exists (not from this test): remove it first"
    );
    let pre_existing: Vec<(&str, bool)> = ["/etc/meshdrain", "/run/meshdrain", "/var/lib/meshdrain"]
        .iter()
        .map(|p| (*p, Path::new(p).exists()))
        .collect();

    // Package the binary the test harness built (debug; no cargo build here).
    let out_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    run(Command::new(repo().join("scripts/build-deb"))
        .args(["--binary", BIN, "--fast", "--output"])
        .arg(out_dir.path()));
    eprintln!("package built in {:.1}s", started.elapsed().as_secs_f64());
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("build-deb wrote a .deb");
    let version = env!("CARGO_PKG_VERSION");
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(deb.file_name().unwrap().to_string_lossy(), format!("meshdrain_{version}-1_{}.deb", arch.trim()));
    let info = stdout(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains(" Package: meshdrain\n") && info.contains(&format!(" Version: {version}-1\n")), "{info}");
    let depends = info.lines().find(|l| l.trim_start().starts_with("Depends:")).unwrap_or_default();
    assert!(depends.contains("libc6"), "{info}");
    eprintln!("{}", stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb)));

    let out = dpkg(&["-i", deb.to_str().unwrap()]);
    let guard = Installed;
    assert!(
        out.status.success(),
        "dpkg -i: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(package_status().as_deref(), Some("ii"));
    let files: Vec<PathBuf> = stdout(Command::new("dpkg").args(["-L", "meshdrain"]))
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();

    // The binary, the unit and tmpfiles entry, the example config as the one conffile.
    let meta = std::fs::metadata("/usr/bin/meshdrain").unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777, 0o755);
    let version_line = stdout(Command::new("/usr/bin/meshdrain").arg("--version"));
    assert_eq!(version_line, format!("meshdrain {version}\n"));
    for (installed, source) in [
        ("/lib/systemd/system/meshdrain.service", UNIT),
        ("/usr/lib/tmpfiles.d/meshdrain.conf", "systemd/meshdrain.tmpfiles.conf"),
        ("/etc/meshdrain/agent.toml.example", "systemd/agent.example.toml"),
        ("/usr/share/doc/meshdrain/README.md", "README.md"),
        ("/usr/share/doc/meshdrain/examples/meshdrain.rules.yml", RULES),
        ("/usr/share/doc/meshdrain/examples/meshdrain-dashboard.json", DASHBOARD),
    ] {
        assert_eq!(std::fs::read_to_string(installed).unwrap_or_default(), read(source), "{installed}");
    }
    for doc in std::fs::read_dir(repo().join("docs")).unwrap().filter_map(Result::ok) {
        let name = doc.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            assert!(Path::new("/usr/share/doc/meshdrain/docs").join(&name).is_file(), "docs/{name} not installed");
        }
    }
    let conffiles = stdout(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "meshdrain"]));
    let conffiles: Vec<&str> = conffiles.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(conffiles, ["/etc/meshdrain/agent.toml.example"]);
    assert!(!Path::new("/etc/meshdrain/agent.toml").exists() || pre_existing[0].1, "the package made a real config");

    // One gzip'd man page per visible command, exactly the ones the binary generates.
    let pages = tempfile::tempdir().unwrap();
    run(Command::new("/usr/bin/meshdrain").arg("manpages").arg(pages.path()));
    let mut want: Vec<String> = std::fs::read_dir(pages.path())
        .unwrap()
        .map(|e| format!("/usr/share/man/man1/{}.gz", e.unwrap().file_name().to_string_lossy()))
        .collect();
    want.sort();
    let mut got: Vec<String> =
        files.iter().map(|p| p.to_string_lossy().into_owned()).filter(|p| p.starts_with("/usr/share/man/")).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(got.iter().any(|p| p.ends_with("/meshdrain-drain.1.gz")) && got.len() > 15, "{got:?}");
    let drain_page = stdout(Command::new("zcat").arg("/usr/share/man/man1/meshdrain-drain.1.gz"));
    assert!(drain_page.contains(".TH meshdrain-drain 1"), "{drain_page}");

    // Completions where each shell looks, equal to what the binary prints.
    for (path, shell) in [
        ("/usr/share/bash-completion/completions/meshdrain", "bash"),
        ("/usr/share/zsh/vendor-completions/_meshdrain", "zsh"),
        ("/usr/share/fish/vendor_completions.d/meshdrain.fish", "fish"),
    ] {
        let printed = stdout(Command::new("/usr/bin/meshdrain").args(["completions", shell]));
        assert_eq!(std::fs::read_to_string(path).unwrap(), printed, "{path}");
    }

    // The unit as systemd reads it: binary, man pages and docs all present.
    let verify =
        Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/meshdrain.service"]).output().unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/meshdrain.service").unwrap();
    let doc_files: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .filter_map(|d| d.strip_prefix("file://"))
        .collect();
    assert!(doc_files.len() >= 2 && doc_files.iter().all(|d| Path::new(d).is_file()), "{doc_files:?}");
    // Installed, not started: nothing runs the agent, and it is not enabled.
    assert_eq!(running_installed_binary(), Vec::<u32>::new());
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/meshdrain.service").exists());

    // Remove: everything but the conffile goes; dpkg keeps the config ("rc").
    let out = dpkg(&["-r", "meshdrain"]);
    assert!(out.status.success(), "dpkg -r: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(package_status().as_deref(), Some("rc"));
    let left: Vec<PathBuf> = files.iter().filter(|p| p.exists()).cloned().collect();
    assert_eq!(left, [PathBuf::from("/etc/meshdrain/agent.toml.example")]);

    // Purge: the conffile goes too, and dpkg forgets the package.
    let out = dpkg(&["--purge", "meshdrain"]);
    assert!(out.status.success(), "dpkg --purge: {}", String::from_utf8_lossy(&out.stderr));
    drop(guard);
    assert_eq!(package_status(), None);
    assert!(
        files.iter().all(|p| !p.exists()),
        "left after purge: {:?}",
        files.iter().filter(|p| p.exists()).collect::<Vec<_>>()
    );
    assert_eq!(Path::new("/etc/meshdrain").exists(), pre_existing[0].1, "/etc/meshdrain after purge");
    // What the postinst's tmpfiles run created on this host (state dirs are kept on purge).
    for (dir, existed) in &pre_existing[1..] {
        if !existed {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// promtool from Debian's prometheus package, unpacked (not installed: that would start a
/// Prometheus server) into the target dir once.
fn promtool() -> PathBuf {
    let cache = target_dir().join("promtool");
    let tool = cache.join("root/usr/bin/promtool");
    if tool.exists() {
        return tool;
    }
    std::fs::create_dir_all(&cache).unwrap();
    run(Command::new("apt-get").args(["download", "-q", "prometheus"]).current_dir(&cache));
    let deb = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("apt-get download prometheus wrote a .deb");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(cache.join("root")));
    tool
}

#[test]
fn root_package_alert_rules_and_dashboard_pass_promtool() {
    require_root();
    let promtool = promtool();
    let check = stdout(Command::new(&promtool).args(["check", "rules"]).arg(repo().join(RULES)));
    assert!(check.contains("SUCCESS: 6 rules found"), "{check}");
    // The rules' own unit tests: each alert fires when and as it should (and not before).
    let test = stdout(Command::new(&promtool).args(["test", "rules"]).arg(repo().join(RULES_TEST)));
    assert!(test.contains("SUCCESS"), "{test}");
    // The dashboard's queries parse: promtool checks them as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let exprs = dashboard_exprs();
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m").replace('\'', "''");
        rules.push_str(&format!("      - record: dashboard:query{i}\n        expr: '{e}'\n"));
    }
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let check = stdout(Command::new(&promtool).args(["check", "rules"]).arg(&file));
    assert!(check.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{check}");
}
