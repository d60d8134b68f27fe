//! Typed dm-clone table line and status line, like devicemapper-rs's
//! `CacheTargetParams`: `FromStr` and `Display` round-trip the text the kernel takes
//! and prints.
use std::fmt;
use std::str::FromStr;

use devicemapper::{Device, DmError, ErrorEnum, Sectors, TargetParams, TargetTypeBuf};

/// dm target name.
pub const CLONE_TARGET_NAME: &str = "clone";

fn invalid(msg: String) -> DmError {
    DmError::Dm(ErrorEnum::Invalid, msg)
}

fn num<T: FromStr>(v: Option<&&str>, what: &str) -> Result<T, DmError> {
    let v = v.ok_or_else(|| invalid(format!("dm-clone: missing {what}")))?;
    v.parse().map_err(|_| invalid(format!("dm-clone: {what} {v:?} is not a number")))
}

/// The parameters of one `clone` table line:
/// `clone <metadata> <dest> <source> <region sectors> [<#features> <features>*] [<#core args> <core args>*]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneTargetParams {
    /// Metadata device.
    pub metadata: Device,
    /// Destination device (becomes the volume).
    pub dest: Device,
    /// Source device (the remote disk).
    pub source: Device,
    /// Region size.
    pub region_size: Sectors,
    /// Start with background hydration off (`no_hydration`).
    pub no_hydration: bool,
    /// Do not pass discards down to the dest (`no_discard_passdown`).
    pub no_discard_passdown: bool,
    /// `hydration_threshold`: regions hydrated per batch before the kernel yields.
    pub hydration_threshold: Option<u64>,
    /// `hydration_batch_size`: contiguous regions copied per kcopyd job.
    pub hydration_batch_size: Option<u64>,
}

impl CloneTargetParams {
    /// A table with hydration enabled and kernel default tuning.
    pub fn new(metadata: Device, dest: Device, source: Device, region_size: Sectors) -> Self {
        Self {
            metadata,
            dest,
            source,
            region_size,
            no_hydration: false,
            no_discard_passdown: false,
            hydration_threshold: None,
            hydration_batch_size: None,
        }
    }
}

impl fmt::Display for CloneTargetParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", CLONE_TARGET_NAME, self.param_str())
    }
}

impl FromStr for CloneTargetParams {
    type Err = DmError;

    fn from_str(s: &str) -> Result<Self, DmError> {
        let v: Vec<&str> = s.split_whitespace().collect();
        if v.first() != Some(&CLONE_TARGET_NAME) {
            return Err(invalid(format!("expected a clone table line, found {s:?}")));
        }
        if v.len() < 5 {
            return Err(invalid(format!("clone table {s:?}: expected at least 5 fields")));
        }
        let dev = |i: usize, what: &str| {
            v[i].parse::<Device>().map_err(|_| invalid(format!("clone table: {what} {:?} is not major:minor", v[i])))
        };
        let mut p = Self::new(
            dev(1, "metadata device")?,
            dev(2, "dest device")?,
            dev(3, "source device")?,
            Sectors(num(v.get(4), "region size")?),
        );
        let mut i = 5;
        if i < v.len() {
            let n: usize = num(v.get(i), "feature count")?;
            for f in
                v.get(i + 1..i + 1 + n).ok_or_else(|| invalid(format!("clone table {s:?}: {n} features announced")))?
            {
                match *f {
                    "no_hydration" => p.no_hydration = true,
                    "no_discard_passdown" => p.no_discard_passdown = true,
                    other => return Err(invalid(format!("clone table: unknown feature {other:?}"))),
                }
            }
            i += 1 + n;
        }
        if i < v.len() {
            let n: usize = num(v.get(i), "core argument count")?;
            let args = v
                .get(i + 1..i + 1 + n)
                .ok_or_else(|| invalid(format!("clone table {s:?}: {n} core args announced")))?;
            for kv in args.chunks(2) {
                match kv {
                    ["hydration_threshold", x] => p.hydration_threshold = Some(num(Some(x), "hydration_threshold")?),
                    ["hydration_batch_size", x] => p.hydration_batch_size = Some(num(Some(x), "hydration_batch_size")?),
                    other => return Err(invalid(format!("clone table: unknown core args {other:?}"))),
                }
            }
            i += 1 + n;
        }
        if i != v.len() {
            return Err(invalid(format!("clone table {s:?}: trailing fields")));
        }
        Ok(p)
    }
}

impl TargetParams for CloneTargetParams {
    fn param_str(&self) -> String {
        let mut s = format!("{} {} {} {}", self.metadata, self.dest, self.source, *self.region_size);
        let mut features = Vec::new();
        if self.no_hydration {
            features.push("no_hydration");
        }
        if self.no_discard_passdown {
            features.push("no_discard_passdown");
        }
        let mut core = Vec::new();
        if let Some(t) = self.hydration_threshold {
            core.push(format!("hydration_threshold {t}"));
        }
        if let Some(b) = self.hydration_batch_size {
            core.push(format!("hydration_batch_size {b}"));
        }
        if !features.is_empty() || !core.is_empty() {
            s.push_str(&format!(" {}", features.len()));
            for f in &features {
                s.push_str(&format!(" {f}"));
            }
        }
        if !core.is_empty() {
            s.push_str(&format!(" {}", core.len() * 2));
            for c in &core {
                s.push_str(&format!(" {c}"));
            }
        }
        s
    }

    fn target_type(&self) -> TargetTypeBuf {
        TargetTypeBuf::new(CLONE_TARGET_NAME.into()).expect("\"clone\" is a valid target type")
    }
}

/// The four dm-clone messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneMessage {
    /// Start background hydration.
    EnableHydration,
    /// Stop background hydration (on-demand copies go on).
    DisableHydration,
    /// Regions hydrated before the kernel yields to I/O.
    HydrationThreshold(u64),
    /// Contiguous regions per copy job.
    HydrationBatchSize(u64),
}

impl fmt::Display for CloneMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EnableHydration => write!(f, "enable_hydration"),
            Self::DisableHydration => write!(f, "disable_hydration"),
            Self::HydrationThreshold(n) => write!(f, "hydration_threshold {n}"),
            Self::HydrationBatchSize(n) => write!(f, "hydration_batch_size {n}"),
        }
    }
}

impl FromStr for CloneMessage {
    type Err = DmError;
    fn from_str(s: &str) -> Result<Self, DmError> {
        let v: Vec<&str> = s.split_whitespace().collect();
        match v.as_slice() {
            ["enable_hydration"] => Ok(Self::EnableHydration),
            ["disable_hydration"] => Ok(Self::DisableHydration),
            ["hydration_threshold", n] => Ok(Self::HydrationThreshold(num(Some(n), "threshold")?)),
            ["hydration_batch_size", n] => Ok(Self::HydrationBatchSize(num(Some(n), "batch size")?)),
            _ => Err(invalid(format!("unknown dm-clone message {s:?}"))),
        }
    }
}

/// Metadata mode at the end of a status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataMode {
    /// `rw`: healthy.
    ReadWrite,
    /// `ro`: metadata went read-only after an error.
    ReadOnly,
    /// `Fail`: the target failed.
    Fail,
}

/// One dm-clone status line:
/// `<meta block size> <used>/<total meta blocks> <region size> <hydrated>/<total regions>
/// <hydrating> <#features> <features>* <#core args> <core args>* <mode>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneStatus {
    /// Metadata block size (sectors).
    pub metadata_block_size: u64,
    /// Metadata blocks used.
    pub metadata_used: u64,
    /// Metadata blocks total.
    pub metadata_total: u64,
    /// Region size (sectors).
    pub region_size: u64,
    /// Regions hydrated.
    pub hydrated: u64,
    /// Regions total.
    pub total: u64,
    /// Regions being hydrated now.
    pub hydrating: u64,
    /// Feature words.
    pub features: Vec<String>,
    /// Core argument words.
    pub core_args: Vec<String>,
    /// Metadata mode.
    pub mode: MetadataMode,
}

impl FromStr for CloneStatus {
    type Err = DmError;
    fn from_str(s: &str) -> Result<Self, DmError> {
        let v: Vec<&str> = s.split_whitespace().collect();
        let pair = |x: Option<&&str>, what: &str| -> Result<(u64, u64), DmError> {
            let x = x.ok_or_else(|| invalid(format!("dm-clone status {s:?}: missing {what}")))?;
            let (a, b) =
                x.split_once('/').ok_or_else(|| invalid(format!("dm-clone status: {what} {x:?} is not a/b")))?;
            Ok((num(Some(&a), what)?, num(Some(&b), what)?))
        };
        let (metadata_used, metadata_total) = pair(v.get(1), "metadata usage")?;
        let (hydrated, total) = pair(v.get(3), "hydrated regions")?;
        let nf: usize = num(v.get(5), "feature count")?;
        let features: Vec<String> = v
            .get(6..6 + nf)
            .ok_or_else(|| invalid(format!("dm-clone status {s:?}: short features")))?
            .iter()
            .map(|x| x.to_string())
            .collect();
        let nc: usize = num(v.get(6 + nf), "core arg count")?;
        let core_args: Vec<String> = v
            .get(7 + nf..7 + nf + nc)
            .ok_or_else(|| invalid(format!("dm-clone status {s:?}: short core args")))?
            .iter()
            .map(|x| x.to_string())
            .collect();
        let mode = match v.get(7 + nf + nc) {
            Some(&"rw") => MetadataMode::ReadWrite,
            Some(&"ro") => MetadataMode::ReadOnly,
            Some(&"Fail") => MetadataMode::Fail,
            other => return Err(invalid(format!("dm-clone status {s:?}: metadata mode {other:?}"))),
        };
        Ok(Self {
            metadata_block_size: num(v.first(), "metadata block size")?,
            metadata_used,
            metadata_total,
            region_size: num(v.get(2), "region size")?,
            hydrated,
            total,
            hydrating: num(v.get(4), "hydrating regions")?,
            features,
            core_args,
            mode,
        })
    }
}

impl fmt::Display for CloneStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} {} {}/{} {} {}",
            self.metadata_block_size,
            self.metadata_used,
            self.metadata_total,
            self.region_size,
            self.hydrated,
            self.total,
            self.hydrating,
            self.features.len()
        )?;
        for x in &self.features {
            write!(f, " {x}")?;
        }
        write!(f, " {}", self.core_args.len())?;
        for x in &self.core_args {
            write!(f, " {x}")?;
        }
        let mode = match self.mode {
            MetadataMode::ReadWrite => "rw",
            MetadataMode::ReadOnly => "ro",
            MetadataMode::Fail => "Fail",
        };
        write!(f, " {mode}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips() {
        for line in [
            "clone 253:2 253:1 8:16 8",
            "clone 253:2 253:1 8:16 8 1 no_hydration",
            "clone 253:2 253:1 8:16 128 2 no_hydration no_discard_passdown 4 hydration_threshold 4096 hydration_batch_size 256",
            "clone 253:2 253:1 8:16 128 0 2 hydration_batch_size 16",
        ] {
            let p: CloneTargetParams = line.parse().unwrap();
            assert_eq!(p.to_string(), line);
            assert_eq!(p.to_string().parse::<CloneTargetParams>().unwrap(), p);
        }
        assert!("clone 1:2 3:4".parse::<CloneTargetParams>().is_err());
        assert!("cache 1:2 3:4 5:6 8".parse::<CloneTargetParams>().is_err());
        assert!("clone 1:2 3:4 5:6 8 1 bogus".parse::<CloneTargetParams>().is_err());
    }

    #[test]
    fn status_parses_and_round_trips() {
        let line = "8 72/4096 8 3000/16384 12 1 no_hydration 4 hydration_threshold 1 hydration_batch_size 1 rw";
        let s: CloneStatus = line.parse().unwrap();
        assert_eq!((s.hydrated, s.total, s.hydrating), (3000, 16384, 12));
        assert_eq!(s.mode, MetadataMode::ReadWrite);
        assert_eq!(s.to_string(), line);
        assert!("8 72/4096 8 x/1 0 0 0 rw".parse::<CloneStatus>().is_err());
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            CloneMessage::EnableHydration,
            CloneMessage::DisableHydration,
            CloneMessage::HydrationThreshold(4096),
            CloneMessage::HydrationBatchSize(256),
        ] {
            assert_eq!(m.to_string().parse::<CloneMessage>().unwrap(), m);
        }
    }
}
