//! `meshdrain mesh`: enrol nodes into a fleet (CA, keys, certificates, revocations) and show
//! the mesh. Enrolment works offline on files; `status` asks the local agent.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use meshdrain_mesh::files::{create_ca, load_ca, load_json, save_json};
use meshdrain_mesh::{Certificate, NodeKey, PublicKey, RevocationList, SigningRequest};

use super::units::format_bytes;

/// Examples shown at the end of `meshdrain mesh --help`: enrolling a node, start to end.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain mesh init --dir /root/fleet-ca                      # once, on an admin machine
  meshdrain mesh keygen --name node1                            # on node1: key + signing request
  meshdrain mesh sign --ca-key /root/fleet-ca/fleet-ca.key \\
      --request node1.csr.json --out node1.cert.json            # on the admin machine
  meshdrain mesh status                                         # on any node: peers by name

See docs/operations.md for which file goes to which node.";

/// Subcommands of `meshdrain mesh`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = EXAMPLES)]
pub enum Command {
    /// Create a fleet CA in DIR (fleet-ca.key, keep it off the nodes; fleet-ca.pub, give it to every node).
    #[command(after_help = "\
Examples:
  meshdrain mesh init --dir /root/fleet-ca
      # fleet-ca.key stays here (offline if you can); copy fleet-ca.pub to every node
      # (mesh.fleet_ca in /etc/meshdrain/agent.toml)")]
    Init {
        /// Where to write the CA files.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Create (or reuse) this node's WireGuard key in the state dir and write a signing request.
    #[command(after_help = "\
Examples:
  meshdrain mesh keygen --name node1
      # key in /var/lib/meshdrain/wireguard.key (reused if present), request in
      # /var/lib/meshdrain/node.csr.json: hand the request to the fleet CA
  meshdrain mesh keygen --state-dir /srv/md --name node1 --out /tmp/node1.csr.json")]
    Keygen {
        /// The agent's state dir (the key is `<dir>/wireguard.key`, mode 0600).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/meshdrain")]
        state_dir: PathBuf,
        /// The node's name in its certificate.
        #[arg(long)]
        name: String,
        /// Where to write the signing request [default: <state-dir>/node.csr.json].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Sign a node's request with the fleet CA, giving it a certificate (key, name, mesh address, expiry).
    #[command(after_help = "\
Examples:
  meshdrain mesh sign --ca-key /root/fleet-ca/fleet-ca.key --request node1.csr.json \\
      --out node1.cert.json                       # prints the expiry: renew before it
  meshdrain mesh sign --ca-key /root/fleet-ca/fleet-ca.key --request node1.csr.json \\
      --out node1.cert.json --valid-for 90d
      # copy node1.cert.json to node1 (mesh.certificate in its agent.toml)")]
    Sign {
        /// The CA secret made by `mesh init`.
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// The request made by `mesh keygen`.
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", default_value = "365d")]
        valid_for: Duration,
        /// Where to write the certificate (the node's `mesh.certificate`).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Add a node's public key to the fleet's signed revocation list (created if absent).
    #[command(after_help = "\
Examples:
  meshdrain mesh revoke --ca-key /root/fleet-ca/fleet-ca.key \\
      --public-key 'kX3...=' --list revocations.json
  scp revocations.json node2:/var/lib/meshdrain/mesh-revocations.json
      # node2's agent adopts it within a tick; gossip carries it to every node")]
    Revoke {
        /// The CA secret made by `mesh init`.
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// The revoked node's WireGuard public key (base64).
        #[arg(long)]
        public_key: String,
        /// The revocation list file to update. To publish it, give (or copy it to) any one
        /// node's `mesh.revocations` file (default `<state_dir>/mesh-revocations.json`): that
        /// agent adopts it within a tick and gossip carries it to every node.
        #[arg(long, value_name = "FILE")]
        list: PathBuf,
    },
    /// Peers, handshake age, bytes and endpoints of the local agent's mesh.
    #[command(after_help = "\
Examples:
  meshdrain mesh status           # NAME, PUBLIC KEY, ENDPOINT, HANDSHAKE (12s ago), RX, TX
  meshdrain mesh status --json    # raw numbers: handshake_age_secs, rx_bytes, tx_bytes
  meshdrain mesh status --socket /run/meshdrain/control.sock")]
    Status {
        /// The agent's control socket [default: the global --control].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print the agent's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Bench/debug only: bring up one WireGuard interface with static peers and keep it up
    /// until SIGINT/SIGTERM (what the agent does, minus gossip).
    #[command(hide = true)]
    Up {
        /// Interface name (unique on the host).
        #[arg(long)]
        interface: String,
        /// State dir holding wireguard.key (created if absent).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// This node's mesh address (fd00::/8).
        #[arg(long)]
        address: std::net::Ipv6Addr,
        /// UDP listen port.
        #[arg(long, default_value_t = 51820)]
        listen_port: u16,
        /// `auto`, `kernel` or `userspace`.
        #[arg(long, default_value = "userspace")]
        backend: String,
        /// A peer as `PUBKEY,ENDPOINT,ADDRESS`.
        #[arg(long)]
        peer: Vec<String>,
    },
}

/// Runs one `meshdrain mesh` subcommand.
pub async fn run(command: Command, control: &super::ControlTarget) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init { dir } => {
            let (ca, key, public) = create_ca(&dir)?;
            println!(
                "fleet CA created\n  secret: {} (keep off the nodes)\n  public: {}\n  fleet:  {}\n  prefix: {}",
                key.display(),
                public.display(),
                ca.public().fleet_id(),
                ca.public().prefix()
            );
        }
        Command::Keygen { state_dir, name, out } => {
            let key_path = NodeKey::path_in(&state_dir);
            let existed = key_path.exists();
            let key = NodeKey::load_or_create(&state_dir)?;
            let out = out.unwrap_or_else(|| state_dir.join("node.csr.json"));
            let req = SigningRequest { name, public_key: key.public().to_base64() };
            save_json(&out, &req)?;
            print!("{}", keygen_text(&key_path, existed, &key.public().to_base64(), &out));
        }
        Command::Sign { ca_key, request, valid_for, out } => {
            let ca = load_ca(&ca_key)?;
            let req: SigningRequest = load_json(&request)?;
            let cert: Certificate = ca.sign(&req, SystemTime::now() + valid_for)?;
            save_json(&out, &cert)?;
            print!("{}", sign_text(&cert, &out, valid_for));
        }
        Command::Revoke { ca_key, public_key, list } => {
            let ca = load_ca(&ca_key)?;
            let key = PublicKey::from_base64(&public_key).context("--public-key")?;
            let (serial, mut revoked) = if list.exists() {
                let old: RevocationList = load_json(&list)?;
                old.verify(&ca.public()).with_context(|| format!("{} is not signed by this CA", list.display()))?;
                (old.body.serial, old.body.revoked)
            } else {
                (0, BTreeSet::new())
            };
            revoked.insert(key.to_base64());
            let n = revoked.len();
            save_json(&list, &ca.revocations(serial + 1, revoked))?;
            println!(
                "revoked {key}; {} now lists {n} node(s), serial {} (an agent reading it as mesh.revocations publishes it to the fleet)",
                list.display(),
                serial + 1
            );
        }
        Command::Up { interface, state_dir, address, listen_port, backend, peer } => {
            return up(interface, state_dir, address, listen_port, &backend, &peer).await;
        }
        Command::Status { socket, json } => {
            let socket = socket.unwrap_or_else(|| control.socket.clone());
            let mut client = crate::control::client::Client::connect(&socket).await.map_err(super::unreachable)?;
            let mesh: serde_json::Value = client.get(&crate::api::Request::MeshStatus).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&mesh)?);
            } else {
                print!("{}", status_table(&mesh));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `mesh keygen` says: whether the key is new or reused (never overwritten: the key is
/// the node's identity and mesh address), and where the request went.
fn keygen_text(key_path: &Path, existed: bool, public_key: &str, request: &Path) -> String {
    let key = if existed {
        format!("reusing the existing node key {} (not overwritten: the node keeps its identity)", key_path.display())
    } else {
        format!("created node key {} (mode 0600)", key_path.display())
    };
    format!(
        "{key}\npublic key: {public_key}\nsigning request: {} (hand it to the fleet CA: `meshdrain mesh sign`)\n",
        request.display()
    )
}

/// What `mesh sign` says: the certificate's subject and its expiry (UTC, RFC 3339), the date
/// to renew it by.
fn sign_text(cert: &Certificate, out: &Path, valid_for: Duration) -> String {
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(cert.body.not_after);
    format!(
        "certificate for {} written to {}\n  public key: {}\n  address:    {}\n  expires:    {} (valid for {})\n",
        cert.body.name,
        out.display(),
        cert.body.public_key,
        cert.body.address,
        humantime::format_rfc3339_seconds(expires),
        humantime::format_duration(valid_for)
    )
}

/// A handshake age as people read it: `12s ago`, `4m 10s ago`, `3h 5m ago`, `2d 4h ago`.
fn format_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s ago"),
        (0, 0, _) => format!("{m}m {s}s ago"),
        (0, _, _) => format!("{h}h {m}m ago"),
        _ => format!("{d}d {h}h ago"),
    }
}

/// The human form of the agent's mesh status JSON: peers by name (from their certificates),
/// ages and bytes in human units; `--json` keeps the raw numbers.
fn status_table(mesh: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let s = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut out = String::new();
    if mesh["backend"] == "none" {
        return "no mesh (mesh.backend = \"none\")\n".to_owned();
    }
    let _ = writeln!(
        out,
        "interface {} ({}) address {} port {} key {}",
        s(&mesh["interface"]),
        s(&mesh["backend"]),
        s(&mesh["address"]),
        s(&mesh["listen_port"]),
        s(&mesh["public_key"])
    );
    if let Some(e) = mesh.get("error") {
        let _ = writeln!(out, "error: {}", s(e));
    }
    let mut rows = vec![["NAME", "PUBLIC KEY", "ENDPOINT", "HANDSHAKE", "RX", "TX"].map(str::to_owned).to_vec()];
    for p in mesh["peers"].as_array().into_iter().flatten() {
        rows.push(vec![
            p["name"].as_str().unwrap_or("-").to_owned(),
            s(&p["public_key"]),
            p["endpoint"].as_str().unwrap_or("-").to_owned(),
            p["handshake_age_secs"].as_u64().map_or_else(|| "never".to_owned(), format_age),
            format_bytes(p["rx_bytes"].as_u64().unwrap_or(0)),
            format_bytes(p["tx_bytes"].as_u64().unwrap_or(0)),
        ]);
    }
    if rows.len() == 1 {
        let _ = writeln!(out, "no peers yet");
    } else {
        out.push_str(&super::table::render(&rows));
    }
    for r in mesh["refused"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "refused {}: {}", s(&r["peer"]), s(&r["reason"]));
    }
    let totals = &mesh["refusals"];
    if let Some(n @ 1..) = totals["refusals"].as_u64() {
        let _ = writeln!(
            out,
            "refusals since start: {n} ({} new sources or reasons, {} no longer listed)",
            totals["new_refusals"].as_u64().unwrap_or(0),
            totals["evicted"].as_u64().unwrap_or(0)
        );
    }
    out
}

async fn up(
    interface: String,
    state_dir: PathBuf,
    address: std::net::Ipv6Addr,
    listen_port: u16,
    backend: &str,
    peers: &[String],
) -> anyhow::Result<ExitCode> {
    use meshdrain_mesh::{BackendChoice, InterfaceSpec, PeerChange, PeerConfig, select_backend};
    let choice: BackendChoice = serde_json::from_value(serde_json::Value::String(backend.to_owned()))
        .context("--backend: use auto, kernel or userspace")?;
    let mut changes = Vec::new();
    for p in peers {
        let parts: Vec<&str> = p.split(',').collect();
        let [key, endpoint, addr] = parts[..] else { anyhow::bail!("--peer {p}: write PUBKEY,ENDPOINT,ADDRESS") };
        let key = PublicKey::from_base64(key)?;
        changes.push(PeerChange::Add(PeerConfig::host(key, addr.parse()?, Some(endpoint.parse()?))));
    }
    let key = NodeKey::load_or_create(&state_dir)?;
    let spec = InterfaceSpec { name: interface, key, address, listen_port, mtu: meshdrain_mesh::backend::DEFAULT_MTU };
    let mut b = select_backend(choice, &spec)?;
    b.apply(&changes)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Dropping the interface removes it (a kernel link; the userspace device's TUN and UAPI
    // socket, its threads stopping within a second).
    drop(b);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_status_names_peers_in_human_units() {
        let mesh = serde_json::json!({
            "interface": "md0", "backend": "userspace", "address": "fd12::1", "listen_port": 51820,
            "public_key": "SELF=",
            "peers": [
                {"public_key": "AAAA=", "name": "node2", "endpoint": "198.18.0.2:51820",
                 "allowed_ips": [], "handshake_age_secs": 12, "rx_bytes": 1536, "tx_bytes": 5_452_595},
                {"public_key": "BBBB=", "endpoint": null, "allowed_ips": [],
                 "handshake_age_secs": null, "rx_bytes": 0, "tx_bytes": 148},
            ],
            "refused": [], "refusals": {"refusals": 0},
        });
        assert_eq!(
            status_table(&mesh),
            "interface md0 (userspace) address fd12::1 port 51820 key SELF=\n\
             NAME   PUBLIC KEY  ENDPOINT          HANDSHAKE  RX       TX\n\
             node2  AAAA=       198.18.0.2:51820  12s ago    1.5 KiB  5.2 MiB\n\
             -      BBBB=       -                 never      0 B      148 B\n"
        );
    }

    #[test]
    fn handshake_ages_read_as_people_say_them() {
        let ages: Vec<String> = [0, 12, 250, 3 * 3600 + 5 * 60 + 9, 2 * 86400 + 4 * 3600].map(format_age).to_vec();
        assert_eq!(ages, ["0s ago", "12s ago", "4m 10s ago", "3h 5m ago", "2d 4h ago"]);
    }
}
