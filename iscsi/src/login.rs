//! The target's login state machine (RFC 7143 §6.3, §11.12-13): stages,
//! continuation, names and access checks, CHAP, operational negotiation.
//! Pure: login request PDUs in, login response PDUs and an outcome out; the
//! connection stamps sequence numbers and writes.

use bytes::{Bytes, BytesMut};

use crate::chap::{self, CHAP_MD5, ChapCredentials};
use crate::negotiate::{self, Answer, Offer, SessionParams, SessionType};
use crate::pdu::{Opcode, Pdu};
use crate::text;

/// MaxRecvDataSegmentLength a discovery session gets at most (the RFC default).
pub const DISCOVERY_MAX_RECV: u32 = 8192;

/// Most login text (all continued PDUs of one step together) a target accepts
/// from a peer not yet admitted: a real login is under 2 KiB, a 1024-byte CHAP
/// challenge in hex 2 KiB more.
pub const MAX_LOGIN_TEXT: usize = 16 * 1024;

/// Login stage numbers (CSG/NSG).
pub mod stage {
    /// Security negotiation.
    pub const SECURITY: u8 = 0;
    /// Operational negotiation.
    pub const OPERATIONAL: u8 = 1;
    /// Full feature phase.
    pub const FULL_FEATURE: u8 = 3;
}

/// Why a login is refused; each maps to a status class and detail (§11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// CHAP failed or the required method was not offered (0x0201).
    AuthenticationFailed,
    /// Address or IQN not in the ACL, or fenced (0x0202).
    NotAuthorized,
    /// TargetName is not ours (0x0203).
    TargetNotFound,
    /// Malformed login, bad stage transition, bad text (0x0200).
    InitiatorError,
    /// Version range excludes 0 (0x0205).
    UnsupportedVersion,
    /// A required key is missing (0x0207).
    MissingParameter,
    /// Export is closing or shutting down (0x0301).
    ServiceUnavailable,
    /// A connection cap is full (0x0302, "out of resources").
    OutOfResources,
}

impl Refusal {
    /// Status class and detail for the login response.
    pub fn status(self) -> (u8, u8) {
        match self {
            Refusal::AuthenticationFailed => (2, 1),
            Refusal::NotAuthorized => (2, 2),
            Refusal::TargetNotFound => (2, 3),
            Refusal::InitiatorError => (2, 0),
            Refusal::UnsupportedVersion => (2, 5),
            Refusal::MissingParameter => (2, 7),
            Refusal::ServiceUnavailable => (3, 1),
            Refusal::OutOfResources => (3, 2),
        }
    }
}

/// What one login step produced besides the response PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginEvent {
    /// More login PDUs are expected.
    Continue,
    /// Login complete: the connection enters full feature phase.
    FullFeature(Box<SessionParams>),
    /// Login refused; the response carries the status; close after sending.
    Refused(Refusal, String),
}

/// The target's policy for one login: our name, the ACL decision for an
/// initiator IQN, CHAP and our negotiation offer.
pub struct LoginPolicy {
    /// Our target IQN.
    pub target_name: String,
    /// CHAP the initiator must pass, if any.
    pub chap: Option<ChapCredentials>,
    /// What we negotiate towards.
    pub offer: Offer,
    /// TSIH to give the session.
    pub tsih: u16,
    /// ACL decision on the initiator IQN (address already checked by the caller).
    pub authorize: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    NotStarted,
    WaitChapA,
    WaitChapResponse { id: u8, challenge: Vec<u8> },
    Done,
}

/// One connection's login in progress.
pub struct LoginMachine {
    policy: LoginPolicy,
    params: SessionParams,
    auth: Auth,
    named: bool,
    declared_mrdsl: bool,
    pending: BytesMut,
}

impl LoginMachine {
    /// Starts a login under a policy.
    pub fn new(policy: LoginPolicy) -> LoginMachine {
        LoginMachine {
            policy,
            params: SessionParams::default(),
            auth: Auth::NotStarted,
            named: false,
            declared_mrdsl: false,
            pending: BytesMut::new(),
        }
    }

    /// The initiator name once the first PDU named it (for logs).
    pub fn initiator_name(&self) -> &str {
        &self.params.initiator_name
    }

    /// Handles one login request; returns the response to send and the outcome.
    pub fn step(&mut self, req: &Pdu) -> (Pdu, LoginEvent) {
        let (transit, cont, csg, nsg) = req.login_stages();
        let refuse = |this: &Self, r: Refusal, why: String| {
            let (c, d) = r.status();
            let _ = this;
            (Pdu::login_response(req, 0, csg, nsg, false, c, d, Bytes::new()), LoginEvent::Refused(r, why))
        };
        if req.opcode() != Some(Opcode::LoginRequest) {
            return refuse(self, Refusal::InitiatorError, "non-login PDU before login completed".into());
        }
        if req.bhs[3] > 0 {
            return refuse(self, Refusal::UnsupportedVersion, format!("version-min {} > 0", req.bhs[3]));
        }
        if self.pending.len() + req.data.len() > MAX_LOGIN_TEXT {
            return refuse(self, Refusal::InitiatorError, format!("login text longer than {MAX_LOGIN_TEXT} bytes"));
        }
        self.pending.extend_from_slice(&req.data);
        if cont {
            // Continued text: acknowledge with an empty response, no transit.
            return (Pdu::login_response(req, 0, csg, nsg, false, 0, 0, Bytes::new()), LoginEvent::Continue);
        }
        let pairs = match text::parse(&std::mem::take(&mut self.pending)) {
            Ok(p) => p,
            Err(e) => return refuse(self, Refusal::InitiatorError, e.to_string()),
        };
        if transit && (nsg == 2 || nsg <= csg) || csg == 2 || csg == stage::FULL_FEATURE {
            return refuse(self, Refusal::InitiatorError, format!("invalid stage transition {csg} -> {nsg}"));
        }
        let mut out: Vec<(String, String)> = Vec::new();
        if !self.named {
            if let Err((r, why)) = self.check_names(&pairs, &mut out) {
                return refuse(self, r, why);
            }
            self.named = true;
        }
        if csg == stage::OPERATIONAL && self.policy.chap.is_some() && self.auth != Auth::Done {
            return refuse(
                self,
                Refusal::AuthenticationFailed,
                "CHAP is required but the initiator skipped security negotiation".into(),
            );
        }
        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" => {}
                "AuthMethod" | "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                    if csg != stage::SECURITY {
                        out.push((k.clone(), "Irrelevant".into()));
                        continue;
                    }
                    if let Err(why) = self.security_key(k, v, &pairs, &mut out) {
                        return refuse(self, Refusal::AuthenticationFailed, why);
                    }
                }
                _ => {
                    // A key is answered once per response (RFC 7143 §6.2: a key sent twice is
                    // a protocol error): what we declared first (TargetPortalGroupTag) stands.
                    if let Some(w) = negotiate::respond(&mut self.params, &self.policy.offer, k, v).wire()
                        && !answered(&out, k)
                    {
                        out.push((k.clone(), w));
                    }
                }
            }
        }
        if csg == stage::SECURITY && self.auth == Auth::NotStarted && self.policy.chap.is_none() {
            self.auth = Auth::Done;
        }
        let can_transit = transit && (csg != stage::SECURITY || self.auth == Auth::Done);
        if self.policy.chap.is_some() && csg == stage::SECURITY && transit && self.auth == Auth::NotStarted {
            return refuse(
                self,
                Refusal::AuthenticationFailed,
                "CHAP is required but the initiator offered no AuthMethod".into(),
            );
        }
        let done = can_transit && nsg == stage::FULL_FEATURE;
        // Declared once the initiator leaves security. The key is declarative: each side
        // states its own, so our declaration is the one answer the key gets in this response
        // (it replaces a `Reject` of an invalid value the initiator declared for itself).
        if (done || (can_transit && nsg == stage::OPERATIONAL)) && !self.declared_mrdsl {
            out.retain(|(k, _)| k != "MaxRecvDataSegmentLength");
            self.declared_mrdsl = true;
            let ours = self.policy.offer.max_recv_data_segment_length;
            self.params.max_recv_data_segment_length = match self.params.session_type {
                // SendTargets needs no more than the RFC default; echoes stay small.
                SessionType::Discovery => ours.min(DISCOVERY_MAX_RECV),
                SessionType::Normal => ours,
            };
            out.push(("MaxRecvDataSegmentLength".into(), self.params.max_recv_data_segment_length.to_string()));
        }
        let tsih = if done { self.policy.tsih } else { 0 };
        let rsp_nsg = if can_transit { nsg } else { csg };
        let rsp = Pdu::login_response(req, tsih, csg, rsp_nsg, can_transit, 0, 0, text::encode(&out));
        if done {
            if self.params.first_burst_length > self.params.max_burst_length {
                self.params.first_burst_length = self.params.max_burst_length;
            }
            (rsp, LoginEvent::FullFeature(Box::new(self.params.clone())))
        } else {
            (rsp, LoginEvent::Continue)
        }
    }

    fn check_names(
        &mut self,
        pairs: &[(String, String)],
        out: &mut Vec<(String, String)>,
    ) -> Result<(), (Refusal, String)> {
        let initiator = text::get(pairs, "InitiatorName")
            .ok_or((Refusal::MissingParameter, "first login PDU has no InitiatorName".to_string()))?;
        self.params.initiator_name = initiator.to_string();
        self.params.session_type = match text::get(pairs, "SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            other => return Err((Refusal::InitiatorError, format!("unknown SessionType {other}"))),
        };
        if self.params.session_type == SessionType::Normal {
            let t = text::get(pairs, "TargetName")
                .ok_or((Refusal::MissingParameter, "normal session login has no TargetName".to_string()))?;
            // An empty name, or no export behind the policy, is never a match: a
            // normal session exists only for an export (the target module docs).
            if t.is_empty() || t != self.policy.target_name {
                return Err((
                    Refusal::TargetNotFound,
                    format!("initiator asked for target {t:?}, which is not open here"),
                ));
            }
            self.params.target_name = t.to_string();
            out.push(("TargetPortalGroupTag".into(), "1".into()));
        }
        // For a discovery session, `authorize` answers whether any export admits the initiator.
        if !(self.policy.authorize)(initiator) {
            return Err((
                Refusal::NotAuthorized,
                format!("initiator {initiator} is not in the export's ACL (or is fenced)"),
            ));
        }
        Ok(())
    }

    fn security_key(
        &mut self,
        k: &str,
        v: &str,
        pairs: &[(String, String)],
        out: &mut Vec<(String, String)>,
    ) -> Result<(), String> {
        match k {
            "AuthMethod" => {
                let offered: Vec<&str> = v.split(',').collect();
                if self.policy.chap.is_some() {
                    if !offered.contains(&"CHAP") {
                        return Err(format!("CHAP is required but the initiator offered AuthMethod={v}"));
                    }
                    out.push((k.into(), "CHAP".into()));
                    self.auth = Auth::WaitChapA;
                } else if offered.contains(&"None") {
                    out.push((k.into(), "None".into()));
                    self.auth = Auth::Done;
                } else {
                    return Err(format!("export has no CHAP configured but the initiator requires AuthMethod={v}"));
                }
            }
            "CHAP_A" => {
                if self.auth != Auth::WaitChapA {
                    return Err("CHAP_A out of sequence".into());
                }
                if !v.split(',').any(|a| a == CHAP_MD5) {
                    return Err(format!("initiator offered CHAP_A={v}; only MD5 (5) is supported"));
                }
                let id: u8 = rand::random();
                let challenge: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
                out.push(("CHAP_A".into(), CHAP_MD5.into()));
                out.push(("CHAP_I".into(), id.to_string()));
                out.push(("CHAP_C".into(), chap::to_hex(&challenge)));
                self.auth = Auth::WaitChapResponse { id, challenge };
            }
            "CHAP_N" => {}
            "CHAP_I" | "CHAP_C" => return Err("mutual CHAP is not supported by this target".into()),
            "CHAP_R" => {
                let Auth::WaitChapResponse { id, challenge } = &self.auth else {
                    return Err("CHAP_R out of sequence".into());
                };
                let creds = self.policy.chap.as_ref().ok_or("CHAP_R without CHAP")?;
                let user = text::get(pairs, "CHAP_N").unwrap_or("");
                let got = chap::from_hex(v).ok_or("CHAP_R is not hex")?;
                let want = chap::response(*id, creds.secret.as_bytes(), challenge);
                if user != creds.user || got != want {
                    return Err(format!("CHAP response for user {user:?} does not match the export's secret"));
                }
                self.auth = Auth::Done;
            }
            _ => {}
        }
        let _ = Answer::Silent;
        Ok(())
    }
}

/// Whether `key` is already answered in this response.
fn answered(out: &[(String, String)], key: &str) -> bool {
    out.iter().any(|(k, _)| k == key)
}
