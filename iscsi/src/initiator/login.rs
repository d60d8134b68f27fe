//! Initiator side of login: security stage (None or CHAP), operational
//! stage with our offer, then full feature phase.

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::{InitiatorConfig, InitiatorError};
use crate::chap;
use crate::login::stage;
use crate::negotiate::{self, SessionParams};
use crate::pdu::{Codec, Opcode, Pdu};
use crate::text;
use crate::wire::read_pdu;

/// What login leaves for the full feature phase.
pub(super) struct LoggedIn {
    pub params: SessionParams,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
}

fn meaning(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (1, _) => "redirect (not supported)",
        (2, 1) => "authentication failed",
        (2, 2) => "initiator not authorized (ACL or fenced)",
        (2, 3) => "target not found",
        (2, 7) => "missing parameter",
        (2, _) => "initiator error",
        (3, 2) => "out of resources (a connection cap on the target is full)",
        (3, _) => "target error or service unavailable",
        _ => "unknown",
    }
}

pub(super) async fn login(
    sock: &mut TcpStream,
    cfg: &InitiatorConfig,
    isid: [u8; 6],
    buf: &mut BytesMut,
) -> Result<LoggedIn, InitiatorError> {
    let codec = Codec::default();
    let proto = |why: String| InitiatorError::Protocol { target: cfg.target.clone(), why };
    let mut cmd_sn = 1u32;
    let mut exp_stat_sn = 0u32;
    let mut params = SessionParams {
        max_recv_data_segment_length: 262_144,
        max_burst_length: 16_776_192,
        ..SessionParams::default()
    };
    let auth = if cfg.chap.is_some() { "CHAP,None" } else { "None" };
    let mut csg = stage::SECURITY;
    let mut keys: Vec<(String, String)> = vec![
        ("InitiatorName".into(), cfg.initiator_name.clone()),
        ("TargetName".into(), cfg.target.clone()),
        ("SessionType".into(), "Normal".into()),
        ("AuthMethod".into(), auth.into()),
    ];
    let digest = |on: bool| if on { "CRC32C,None" } else { "None" };
    let operational: Vec<(String, String)> = vec![
        ("HeaderDigest".into(), digest(cfg.header_digest).into()),
        ("DataDigest".into(), digest(cfg.data_digest).into()),
        ("MaxRecvDataSegmentLength".into(), "262144".into()),
        ("MaxBurstLength".into(), "16776192".into()),
        ("FirstBurstLength".into(), "262144".into()),
        ("ImmediateData".into(), "Yes".into()),
        ("InitialR2T".into(), "Yes".into()),
        ("MaxOutstandingR2T".into(), "1".into()),
        ("ErrorRecoveryLevel".into(), "0".into()),
        ("DefaultTime2Wait".into(), "0".into()),
        ("DefaultTime2Retain".into(), "0".into()),
        ("MaxConnections".into(), "1".into()),
        ("DataPDUInOrder".into(), "Yes".into()),
        ("DataSequenceInOrder".into(), "Yes".into()),
        ("IFMarker".into(), "No".into()),
        ("OFMarker".into(), "No".into()),
    ];
    let mut chap_state = 0u8; // 0 none, 1 sent CHAP_A, 2 sent response
    for _round in 0..16 {
        let can_transit = csg != stage::SECURITY || cfg.chap.is_none() || chap_state == 2;
        let nsg = if csg == stage::SECURITY { stage::OPERATIONAL } else { stage::FULL_FEATURE };
        let req = Pdu::login_request(isid, 0, 1, cmd_sn, exp_stat_sn, csg, nsg, can_transit, text::encode(&keys));
        crate::wire::write_pdus(sock, &codec, &[req])
            .await
            .map_err(|source| InitiatorError::Connect { addr: cfg.address.clone(), source })?;
        let rsp = read_pdu(sock, buf, &codec).await.map_err(|e| proto(format!("during login: {e}")))?;
        if rsp.opcode() != Some(Opcode::LoginResponse) {
            return Err(proto(format!("expected a login response, got {:?}", rsp.opcode())));
        }
        let (class, detail) = rsp.login_status();
        if class != 0 {
            return Err(InitiatorError::LoginRefused {
                target: cfg.target.clone(),
                class,
                detail,
                meaning: meaning(class, detail),
            });
        }
        exp_stat_sn = rsp.stat_sn().wrapping_add(1);
        let _ = cmd_sn;
        cmd_sn = rsp.exp_cmd_sn();
        let pairs = text::parse(&rsp.data).map_err(|e| proto(e.to_string()))?;
        keys = Vec::new();
        for (k, v) in &pairs {
            if v == "Reject" || v == "NotUnderstood" {
                continue;
            }
            negotiate::apply_answer(&mut params, k, v).map_err(proto)?;
        }
        let (transit, _, _, rnsg) = rsp.login_stages();
        if csg == stage::SECURITY
            && let Some(creds) = &cfg.chap
        {
            if chap_state == 0 && text::get(&pairs, "AuthMethod") == Some("CHAP") {
                keys.push(("CHAP_A".into(), chap::CHAP_MD5.into()));
                chap_state = 1;
                continue;
            }
            if chap_state == 1 {
                let id: u8 = text::get(&pairs, "CHAP_I")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| proto("target sent no CHAP_I".into()))?;
                let c = text::get(&pairs, "CHAP_C").ok_or_else(|| proto("target sent no CHAP_C".into()))?;
                // A hostile target's challenge is an authentication failure, never a panic.
                let c = chap::from_hex(c).ok_or_else(|| {
                    proto(format!(
                        "CHAP authentication failed: the target's CHAP_C {:?} is not an even number of hex digits",
                        c.chars().take(40).collect::<String>()
                    ))
                })?;
                keys.push(("CHAP_N".into(), creds.user.clone()));
                keys.push(("CHAP_R".into(), chap::to_hex(&chap::response(id, creds.secret.as_bytes(), &c))));
                chap_state = 2;
                continue;
            }
        }
        if transit {
            if rnsg == stage::FULL_FEATURE {
                let max_cmd_sn = rsp.max_cmd_sn();
                return Ok(LoggedIn { params, cmd_sn, exp_stat_sn, max_cmd_sn });
            }
            csg = rnsg;
            if csg == stage::OPERATIONAL {
                keys = operational.clone();
            }
        }
    }
    Err(proto("login did not reach full feature phase in 16 rounds".into()))
}
