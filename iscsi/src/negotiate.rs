//! Operational parameter negotiation (RFC 7143 §6.2, §13): each key's
//! result function (min, max, boolean AND/OR, list choice, declarative) and
//! the session parameters that come out. Pure; used by both the target's
//! login machine and the initiator.

/// Largest MaxRecvDataSegmentLength / MaxBurstLength the RFC allows (2^24 - 1).
pub const MAX_24: u32 = 0x00ff_ffff;

/// Whether a session moves data or only lists targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionType {
    /// Full-feature session with a LUN.
    #[default]
    Normal,
    /// SendTargets only.
    Discovery,
}

/// The negotiated state of one session/connection. `Default` is the RFC's
/// default for every key, which applies to keys nobody sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// CRC32C on headers.
    pub header_digest: bool,
    /// CRC32C on data segments.
    pub data_digest: bool,
    /// Largest data segment this side accepts (declared by us).
    pub max_recv_data_segment_length: u32,
    /// Largest data segment this side may send (declared by the peer).
    pub max_xmit_data_segment_length: u32,
    /// Largest Data-In/solicited Data-Out sequence.
    pub max_burst_length: u32,
    /// Largest unsolicited write data.
    pub first_burst_length: u32,
    /// Write data may ride in the command PDU.
    pub immediate_data: bool,
    /// Unsolicited Data-Out is not allowed.
    pub initial_r2t: bool,
    /// Outstanding R2Ts per task.
    pub max_outstanding_r2t: u32,
    /// Seconds to wait before reconnecting after a logout/drop.
    pub default_time2wait: u32,
    /// Seconds a task survives a connection loss (0 at ERL 0 in practice).
    pub default_time2retain: u32,
    /// We only support 0: a lost connection loses its tasks.
    pub error_recovery_level: u32,
    /// Connections per session; we support 1.
    pub max_connections: u32,
    /// Data PDUs arrive in offset order.
    pub data_pdu_in_order: bool,
    /// Data sequences arrive in offset order.
    pub data_sequence_in_order: bool,
    /// Normal or discovery.
    pub session_type: SessionType,
    /// The initiator's IQN.
    pub initiator_name: String,
    /// The target the session is for (empty for discovery).
    pub target_name: String,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            target_name: String::new(),
        }
    }
}

/// What this side wants, offered to or compared against the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Digest preference, best first.
    pub digests: Vec<&'static str>,
    /// Our MaxRecvDataSegmentLength.
    pub max_recv_data_segment_length: u32,
    /// Our MaxBurstLength.
    pub max_burst_length: u32,
    /// Our FirstBurstLength.
    pub first_burst_length: u32,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            digests: vec!["None", "CRC32C"],
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16_776_192,
            first_burst_length: 262_144,
        }
    }
}

/// The answer to one key (§6.2): a value, or one of the special answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The negotiated value to send back.
    Value(String),
    /// Declarative key: nothing to send back.
    Silent,
    /// The offered value is invalid or unacceptable.
    Reject,
    /// The key does not apply here (e.g. operational key in discovery).
    Irrelevant,
    /// We do not know the key.
    NotUnderstood,
}

impl Answer {
    /// Wire form, `None` for `Silent`.
    pub fn wire(&self) -> Option<String> {
        match self {
            Answer::Value(v) => Some(v.clone()),
            Answer::Silent => None,
            Answer::Reject => Some("Reject".into()),
            Answer::Irrelevant => Some("Irrelevant".into()),
            Answer::NotUnderstood => Some("NotUnderstood".into()),
        }
    }
}

fn parse_num(v: &str, lo: u32, hi: u32) -> Option<u32> {
    let n: u64 = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        v.parse().ok()?
    };
    (n >= lo as u64 && n <= hi as u64).then_some(n as u32)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes".into() } else { "No".into() }
}

/// Keys that only make sense in a normal session.
const NORMAL_ONLY: &[&str] = &[
    "MaxBurstLength",
    "FirstBurstLength",
    "ImmediateData",
    "InitialR2T",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "MaxConnections",
];

/// Target side: answers one key the initiator offered, updating `p`.
/// Login-only keys (names, AuthMethod, CHAP_*) are handled by the caller.
pub fn respond(p: &mut SessionParams, ours: &Offer, key: &str, value: &str) -> Answer {
    if p.session_type == SessionType::Discovery && NORMAL_ONLY.contains(&key) {
        return Answer::Irrelevant;
    }
    let min = |p_field: &mut u32, lo: u32, hi: u32, our: u32| match parse_num(value, lo, hi) {
        Some(n) => {
            *p_field = n.min(our);
            Answer::Value(p_field.to_string())
        }
        None => Answer::Reject,
    };
    match key {
        "HeaderDigest" | "DataDigest" => {
            let chosen = value.split(',').find(|v| ours.digests.contains(v));
            match chosen {
                Some(c) => {
                    let on = c == "CRC32C";
                    if key == "HeaderDigest" {
                        p.header_digest = on
                    } else {
                        p.data_digest = on
                    }
                    Answer::Value(c.to_string())
                }
                None => Answer::Reject,
            }
        }
        "MaxRecvDataSegmentLength" => match parse_num(value, 512, MAX_24) {
            Some(n) => {
                p.max_xmit_data_segment_length = n;
                Answer::Silent
            }
            None => Answer::Reject,
        },
        "MaxBurstLength" => min(&mut p.max_burst_length, 512, MAX_24, ours.max_burst_length),
        "FirstBurstLength" => min(&mut p.first_burst_length, 512, MAX_24, ours.first_burst_length),
        "MaxOutstandingR2T" => min(&mut p.max_outstanding_r2t, 1, 65535, 1),
        "DefaultTime2Retain" => min(&mut p.default_time2retain, 0, 3600, 20),
        "ErrorRecoveryLevel" => min(&mut p.error_recovery_level, 0, 2, 0),
        "MaxConnections" => min(&mut p.max_connections, 1, 65535, 1),
        "DefaultTime2Wait" => match parse_num(value, 0, 3600) {
            Some(n) => {
                p.default_time2wait = n.max(2);
                Answer::Value(p.default_time2wait.to_string())
            }
            None => Answer::Reject,
        },
        // Boolean AND: Yes only if both say Yes.
        "ImmediateData" | "IFMarker" | "OFMarker" => match parse_bool(value) {
            Some(b) => {
                let ours = key == "ImmediateData";
                let r = b && ours;
                if key == "ImmediateData" {
                    p.immediate_data = r;
                }
                Answer::Value(yes_no(r))
            }
            None => Answer::Reject,
        },
        // Boolean OR: Yes if either says Yes. We always say Yes.
        "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
            Some(_) => Answer::Value(yes_no(true)),
            None => Answer::Reject,
        },
        "InitiatorAlias" => Answer::Silent,
        // Keys only a target may send.
        "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Answer::Reject,
        _ => Answer::NotUnderstood,
    }
}

/// Initiator side: applies the target's answer to a key we offered (or a
/// key it declared), checking the result against the rule for that key.
pub fn apply_answer(p: &mut SessionParams, key: &str, value: &str) -> Result<(), String> {
    let bad = || format!("target answered {key}={value}, which is not a valid result of what we offered");
    match key {
        "HeaderDigest" => p.header_digest = value == "CRC32C",
        "DataDigest" => p.data_digest = value == "CRC32C",
        "MaxRecvDataSegmentLength" => p.max_xmit_data_segment_length = parse_num(value, 512, MAX_24).ok_or_else(bad)?,
        "MaxBurstLength" => p.max_burst_length = parse_num(value, 512, MAX_24).ok_or_else(bad)?.min(p.max_burst_length),
        "FirstBurstLength" => p.first_burst_length = parse_num(value, 512, MAX_24).ok_or_else(bad)?,
        "ImmediateData" => p.immediate_data = parse_bool(value).ok_or_else(bad)?,
        "InitialR2T" => p.initial_r2t = parse_bool(value).ok_or_else(bad)?,
        // Only level 0 is supported: anything else is refused.
        "ErrorRecoveryLevel" if parse_num(value, 0, 0).is_none() => return Err(bad()),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let o = Offer::default();
        let mut p = SessionParams::default();
        assert_eq!(respond(&mut p, &o, "HeaderDigest", "CRC32C,None"), Answer::Value("CRC32C".into()));
        assert!(p.header_digest);
        assert_eq!(respond(&mut p, &o, "DataDigest", "MD5"), Answer::Reject);
        assert_eq!(respond(&mut p, &o, "MaxBurstLength", "99999999"), Answer::Reject);
        assert_eq!(respond(&mut p, &o, "MaxBurstLength", "1048576"), Answer::Value("1048576".into()));
        assert_eq!(respond(&mut p, &o, "ErrorRecoveryLevel", "2"), Answer::Value("0".into()));
        assert_eq!(respond(&mut p, &o, "InitialR2T", "No"), Answer::Value("Yes".into()));
        assert_eq!(respond(&mut p, &o, "ImmediateData", "Yes"), Answer::Value("Yes".into()));
        assert_eq!(respond(&mut p, &o, "IFMarker", "Yes"), Answer::Value("No".into()));
        assert_eq!(respond(&mut p, &o, "DefaultTime2Wait", "0"), Answer::Value("2".into()));
        assert_eq!(respond(&mut p, &o, "MaxRecvDataSegmentLength", "65536"), Answer::Silent);
        assert_eq!(p.max_xmit_data_segment_length, 65536);
        assert_eq!(respond(&mut p, &o, "X-com.example", "1"), Answer::NotUnderstood);
        p.session_type = SessionType::Discovery;
        assert_eq!(respond(&mut p, &o, "MaxBurstLength", "512"), Answer::Irrelevant);
    }
}
