//! What the agent and a holder process say to each other (docs/holder-process.md): the
//! spec file the agent writes before it starts a holder, the state file the holder keeps,
//! and the control socket's line-delimited JSON, one request and one reply per line
//! (`watch` alone answers with a stream of lines). The socket is local and root-only
//! (mode 0600 in the agent's run dir); every read of it is still bounded by a line cap.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshdrain_clone::Progress;
use meshdrain_clone::exposure::{Chosen, ExposeKind};
use serde::{Deserialize, Serialize};

use crate::dataplane::executor::CloneSpec;

/// Bumped when a request or reply changes meaning; an agent adopts only holders that
/// speak its version (a holder of an older build is stopped and started again).
pub const PROTOCOL: u32 = 1;

/// Longest request line a holder reads.
pub const MAX_REQUEST: u64 = 4 << 10;
/// Longest reply line the agent reads (a progress line is a few hundred bytes; a
/// digest or an error a few more).
pub const MAX_REPLY: u64 = 64 << 10;

/// One clone as the agent asked for it: written by the agent to `<volume>.json` before it
/// starts the holder, read by the holder at start and by a restarted agent to adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderSpec {
    /// The clone as the executor asked for it. Flattened: the file keeps the flat form
    /// agents of earlier builds wrote (so [`PROTOCOL`] is unchanged and they adopt it).
    #[serde(flatten)]
    pub clone_spec: CloneSpec,
    /// Engine region size.
    pub region_size: u64,
    /// Background fetches in flight.
    pub parallelism: usize,
    /// Regions per background fetch.
    pub batch_regions: usize,
    /// Workload reads within missing regions pass through to the source.
    pub read_through: bool,
    /// Test fault injection: preparing takes this much longer.
    pub prepare_delay_ms: u64,
    /// Where the FUSE file is mounted.
    pub mountpoint: PathBuf,
    /// Symlink to the loop device.
    pub link: PathBuf,
    /// Whether background hydration was started (a restarted holder resumes it).
    #[serde(default)]
    pub hydrating: bool,
    /// Whether the workload was started on this clone's device (its start hook ran).
    #[serde(default)]
    pub workload_started: bool,
    /// The start hook that ran (run again on a new device when a holder is restarted).
    #[serde(default)]
    pub start_hook: Option<String>,
    /// The source was declared lost (the engine does not persist it: a restarted holder
    /// is told again).
    #[serde(default)]
    pub source_lost: bool,
    /// How the clone is presented (`[dataplane] expose`; docs/exposures.md). Not written
    /// when `auto`, so spec files keep the form earlier agents wrote.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub expose: ExposeKind,
}

fn is_auto(k: &ExposeKind) -> bool {
    *k == ExposeKind::Auto
}

/// What a holder records about itself in `<volume>.state` (written whole, by rename).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderState {
    /// The holder's pid.
    pub pid: u32,
    /// Lease epoch it serves.
    pub epoch: u64,
    /// The loop device the workload uses (empty until exposed).
    pub device: PathBuf,
    /// Hand-off done: the dest is the volume and the source is never read again (a
    /// restarted holder then does not log in).
    pub handed_off: bool,
    /// Why the holder could not start, if it could not.
    pub error: Option<String>,
    /// The export's size as first read (a holder restarted after hand-off opens the
    /// complete metadata against it without logging in).
    #[serde(default)]
    pub source_size: u64,
    /// The exposure running (`status` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Chosen>,
    /// NBD: N of `/dev/nbdN`, so a holder restarted after a kill reconfigures the same
    /// device with its new socket (the workload keeps its device and sees no error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_index: Option<u32>,
    /// This process took over the device its dead predecessor served: the workload kept
    /// running on it and its start hook does not run again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reattached: bool,
    /// A return planned as a delta that this holder made a full move, and why (the copy
    /// kept here changed since its hand-off; docs/return.md). Kept by a restarted holder
    /// of the same epoch, which resumes that full clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_full: Option<String>,
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who are you: pid, epoch, device, protocol.
    Hello,
    /// One progress snapshot (`None` before hydration starts).
    Progress,
    /// A stream: a progress line whenever it changes (at least every second; a line
    /// without progress before hydration starts), until the connection closes.
    Watch,
    /// Starts background hydration (idempotent); answers with progress.
    Hydrate,
    /// Changes the hydration bandwidth (bytes/s; `None`: unlimited).
    Rate {
        /// The new limit.
        rate: Option<u64>,
    },
    /// Commits, hands off, completes the `--verify` digest, logs out of the source.
    Finalize,
    /// The source is gone for good: stop waiting for it; answers with the regions
    /// missing and all regions.
    SourceLost,
    /// The operator keeps the partial copy: missing regions become zeros.
    AcceptPartial,
    /// The workload's writes since the clone was created, as tracked (docs/return.md).
    Written,
    /// Tears the device down and exits.
    Stop,
    /// Exits leaving the device to the next holder of this clone, which takes it over
    /// (ublk user recovery, NBD reconfigure): an agent moving its holders onto a new
    /// binary (docs/holder-process.md, "Upgrades"). Refused for FUSE + loop, whose device
    /// dies with its process.
    ExitKeepingDevice,
}

/// A reply (or one line of a `watch` stream).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `hello`: the holder's protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// `hello`: the holder's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<HolderState>,
    /// `progress`, `hydrate`, `watch`: the engine's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// `source_lost`: (regions missing, all regions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<(u64, u64)>,
    /// `finalize`: the digest of what was read from the source (with `--verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `written`: the tracked writes (at most [`MAX_WRITTEN_RANGES`] ranges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<WrittenReply>,
}

/// Ranges a `written` reply carries at most (coarsened to fit [`MAX_REPLY`]).
pub const MAX_WRITTEN_RANGES: usize = 1024;

/// The `written` reply: the set's binding and its ranges (docs/return.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenReply {
    /// The clone id (hex) the set is bound to.
    pub clone: String,
    /// The clone's lease epoch.
    pub epoch: u64,
    /// `[offset, length]` pairs, ascending.
    pub ranges: Vec<[u64; 2]>,
}

impl Reply {
    /// A bare success.
    pub fn ok() -> Self {
        Self { ok: true, ..Default::default() }
    }

    /// A refusal saying why.
    pub fn err(why: impl Into<String>) -> Self {
        Self { ok: false, error: Some(why.into()), ..Default::default() }
    }
}

/// The files of one volume's holder under `<run>/clones`.
#[derive(Debug, Clone)]
pub struct HolderFiles {
    /// `<volume>.json`: the spec (the agent's).
    pub spec: PathBuf,
    /// `<volume>.state`: the holder's state.
    pub state: PathBuf,
    /// `<volume>.sock`: the control socket.
    pub socket: PathBuf,
    /// `<volume>.log`: the holder's log (rotated to `.log.1`).
    pub log: PathBuf,
}

impl HolderFiles {
    /// The files of `volume`'s holder in `dir`.
    pub fn new(dir: &Path, volume: &str) -> Self {
        Self {
            spec: dir.join(format!("{volume}.json")),
            state: dir.join(format!("{volume}.state")),
            socket: dir.join(format!("{volume}.sock")),
            log: dir.join(format!("{volume}.log")),
        }
    }

    /// Every file, for removal.
    pub fn all(&self) -> [PathBuf; 5] {
        [self.spec.clone(), self.state.clone(), self.socket.clone(), self.log.clone(), self.log.with_extension("log.1")]
    }
}

/// Writes `value` as JSON to `path` whole (temp file, fsync, rename), mode 0600.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a JSON file written by [`write_json`] (bounded: these are small).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let mut text = Vec::new();
    std::fs::File::open(path)?.take(1 << 20).read_to_end(&mut text)?;
    serde_json::from_slice(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads one line of at most `cap` bytes (without its newline); `None` at end of stream.
/// A longer line is an error: the peer is not speaking this protocol.
pub fn read_line(r: &mut impl BufRead, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r.by_ref().take(cap + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let why = if n as u64 > cap { format!("line longer than {cap} bytes") } else { "line cut short".to_owned() };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    line.pop();
    Ok(Some(line))
}

/// A connection to a holder's control socket.
pub struct Conn {
    reader: std::io::BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    /// Connects; every reply must come within `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> std::io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self { writer: stream.try_clone()?, reader: std::io::BufReader::new(stream) })
    }

    /// A handle to shut the connection down from another thread (ends a `watch`).
    pub fn handle(&self) -> std::io::Result<UnixStream> {
        self.writer.try_clone()
    }

    /// Sends `req`.
    pub fn send(&mut self, req: &Request) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)
    }

    /// The next reply line (`None`: the holder closed the connection).
    pub fn recv(&mut self) -> std::io::Result<Option<Reply>> {
        match read_line(&mut self.reader, MAX_REPLY)? {
            None => Ok(None),
            Some(line) => serde_json::from_slice(&line)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
}

/// One request, one reply, on a fresh connection; a refusal becomes an error carrying the
/// holder's reason.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, String> {
    let what = |e: std::io::Error| format!("holder socket {}: {e}", socket.display());
    let mut c = Conn::connect(socket, timeout).map_err(what)?;
    c.send(req).map_err(what)?;
    match c.recv().map_err(what)? {
        None => Err(format!("holder socket {}: closed without a reply", socket.display())),
        Some(r) if r.ok => Ok(r),
        Some(r) => Err(r.error.unwrap_or_else(|| "refused without a reason".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_the_cap_is_refused_and_one_at_the_cap_is_read() {
        let mut at_cap = vec![b'a'; 16];
        at_cap.push(b'\n');
        let got = read_line(&mut std::io::Cursor::new(at_cap), 16).unwrap();
        assert_eq!(got, Some(vec![b'a'; 16]));
        let mut over = vec![b'a'; 17];
        over.push(b'\n');
        let err = read_line(&mut std::io::Cursor::new(over), 16).unwrap_err();
        assert_eq!(err.to_string(), "line longer than 16 bytes");
        let err = read_line(&mut std::io::Cursor::new(b"abc".to_vec()), 16).unwrap_err();
        assert_eq!(err.to_string(), "line cut short");
        assert_eq!(read_line(&mut std::io::Cursor::new(Vec::new()), 16).unwrap(), None);
    }

    #[test]
    fn a_spec_file_keeps_its_flat_form() {
        // A spec file as agents write it (and wrote before CloneSpec was embedded).
        let text = r#"{"volume":"db","export":{"addr":"[fd00::1]:3260","iqn":"iqn.x:db"},"initiator_iqn":"iqn.y:e3","epoch":3,"size":1048576,"dest":"/pool/db.img","metadata":"/pool/db.meta","rate_limit":4096,"verify":true,"region_size":65536,"parallelism":4,"batch_regions":8,"read_through":true,"prepare_delay_ms":0,"mountpoint":"/run/fuse/db","link":"/run/dev/db","hydrating":true,"workload_started":false,"start_hook":null,"source_lost":false}"#;
        let spec: HolderSpec = serde_json::from_str(text).unwrap();
        assert_eq!(spec.clone_spec.export.iqn, "iqn.x:db");
        assert_eq!(spec.clone_spec.rate_limit, Some(4096));
        assert_eq!((spec.region_size, spec.parallelism, spec.hydrating), (65536, 4, true));
        assert_eq!(serde_json::to_string(&spec).unwrap(), text);
    }

    #[test]
    fn the_state_records_the_exposure_and_the_nbd_index_only_when_there_are_some() {
        let plain = HolderState { pid: 9, epoch: 2, ..Default::default() };
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("exposure") && !text.contains("nbd_index") && !text.contains("reattached"), "{text}");
        let nbd = HolderState { exposure: Some(Chosen::Nbd), nbd_index: Some(3), reattached: true, ..plain };
        let text = serde_json::to_string(&nbd).unwrap();
        assert!(text.ends_with(r#""exposure":"nbd","nbd_index":3,"reattached":true}"#), "{text}");
        assert_eq!(serde_json::from_str::<HolderState>(&text).unwrap(), nbd);
        // A spec naming an exposure keeps it; one written by an earlier agent reads as auto.
        let spec = r#"{"volume":"db","export":{"addr":"a:1","iqn":"i"},"initiator_iqn":"n","epoch":1,"size":1,"dest":"/d","metadata":"/m","rate_limit":null,"verify":false,"region_size":65536,"parallelism":1,"batch_regions":1,"read_through":true,"prepare_delay_ms":0,"mountpoint":"/f","link":"/l""#;
        let old: HolderSpec = serde_json::from_str(&format!("{spec}}}")).unwrap();
        assert_eq!(old.expose, ExposeKind::Auto);
        let new: HolderSpec = serde_json::from_str(&format!(r#"{spec},"expose":"fuse-loop"}}"#)).unwrap();
        assert_eq!(new.expose, ExposeKind::FuseLoop);
    }

    #[test]
    fn requests_have_the_documented_wire_form() {
        assert_eq!(serde_json::to_string(&Request::Rate { rate: Some(4096) }).unwrap(), r#"{"op":"rate","rate":4096}"#);
        assert_eq!(serde_json::to_string(&Request::SourceLost).unwrap(), r#"{"op":"source_lost"}"#);
        assert_eq!(serde_json::to_string(&Request::ExitKeepingDevice).unwrap(), r#"{"op":"exit_keeping_device"}"#);
        let r: Request = serde_json::from_str(r#"{"op":"finalize","extra":1}"#).unwrap();
        assert_eq!(r, Request::Finalize);
        assert_eq!(serde_json::to_string(&Reply::err("no")).unwrap(), r#"{"ok":false,"error":"no"}"#);
    }
}
