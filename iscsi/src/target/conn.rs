//! One connection: login, then a reader loop (CmdSN window, dispatch) and a
//! writer task (StatSN, Data-In splitting, vectored batched writes). A thin
//! shell around `login`, `window` and `scsi`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::window::{Admit, CmdWindow, QUEUE_DEPTH};
use super::{Export, Target};
use crate::login::{LoginEvent, LoginMachine, LoginPolicy};
use crate::negotiate::{Offer, SessionParams, SessionType};
use crate::pdu::{Codec, Opcode, Pdu, PduError, RESERVED_TAG, RejectReason, Residual};
use crate::scsi::{Lun, ScsiResult, Sense};
use crate::text;
use crate::wire::{WireError, read_pdu, write_pdus};

/// LUN 1 in SAM single-level peripheral addressing.
pub(crate) const LUN1: u64 = 1 << 48;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

enum Out {
    /// A response PDU; `advance` if it consumes a StatSN.
    Pdu(Pdu, bool),
    /// A finished SCSI command.
    Scsi { itt: u32, lun: u64, edtl: u32, result: ScsiResult },
    /// Flush and close (after a logout response).
    Close,
}

struct Shared {
    exp_cmd_sn: AtomicU32,
    in_flight: AtomicU32,
    inflight: Mutex<HashSet<u32>>,
    aborted: Mutex<HashSet<u32>>,
}

impl Shared {
    fn max_cmd_sn(&self) -> u32 {
        let exp = self.exp_cmd_sn.load(Ordering::Acquire);
        exp.wrapping_add(QUEUE_DEPTH.saturating_sub(self.in_flight.load(Ordering::Acquire) + 1))
    }
}

pub(super) async fn run(sock: TcpStream, peer: SocketAddr, local: SocketAddr, target: Arc<Target>, stop: watch::Receiver<bool>) {
    let span = tracing::info_span!("iscsi_conn", %peer);
    async move {
        match serve_conn(sock, peer, local, target, stop).await {
            Ok(()) => tracing::debug!("connection closed"),
            Err(e) => tracing::info!(error = %e, "connection dropped"),
        }
    }
    .instrument(span)
    .await
}

async fn serve_conn(sock: TcpStream, peer: SocketAddr, local: SocketAddr, target: Arc<Target>, stop: watch::Receiver<bool>) -> Result<(), WireError> {
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let login_codec = Codec::default();
    let first = tokio::time::timeout(LOGIN_TIMEOUT, read_pdu(&mut rd, &mut buf, &login_codec))
        .await
        .map_err(|_| WireError::Io(std::io::ErrorKind::TimedOut.into()))??;
    if first.opcode() != Some(Opcode::LoginRequest) {
        tracing::warn!(opcode = ?first.opcode(), "first PDU is not a login request; dropping");
        return Ok(());
    }
    let pairs = text::parse(&first.data).unwrap_or_default();
    let discovery = text::get(&pairs, "SessionType") == Some("Discovery");
    let export = if discovery { None } else { text::get(&pairs, "TargetName").and_then(|n| target.export(n)) };
    let tsih = target.next_tsih.fetch_add(1, Ordering::Relaxed).max(1);
    let policy = {
        let e = export.clone();
        let addr = peer.ip();
        LoginPolicy {
            target_name: export.as_ref().map(|e| e.iqn.clone()).unwrap_or_default(),
            chap: export.as_ref().and_then(|e| e.chap()),
            offer: Offer::default(),
            tsih,
            authorize: Box::new(move |iqn| e.as_ref().is_none_or(|e| e.admits(addr, iqn))),
        }
    };
    let mut machine = LoginMachine::new(policy);
    let mut stat_sn = first.exp_stat_sn();
    let mut req = first;
    let params: SessionParams = loop {
        let (mut rsp, ev) = machine.step(&req);
        rsp.stamp(stat_sn, req.cmd_sn(), req.cmd_sn().wrapping_add(QUEUE_DEPTH - 1));
        stat_sn = stat_sn.wrapping_add(1);
        write_pdus(&mut wr, &login_codec, &[rsp]).await?;
        match ev {
            LoginEvent::Continue => {}
            LoginEvent::FullFeature(p) => break *p,
            LoginEvent::Refused(r, why) => {
                tracing::warn!(%peer, initiator = machine.initiator_name(), refusal = ?r, reason = %why, "login refused");
                return Ok(());
            }
        }
        req = tokio::time::timeout(LOGIN_TIMEOUT, read_pdu(&mut rd, &mut buf, &login_codec))
            .await
            .map_err(|_| WireError::Io(std::io::ErrorKind::TimedOut.into()))??;
    };
    let login_cmd_sn = req.cmd_sn();
    tracing::info!(initiator = %params.initiator_name, target = %params.target_name, discovery, header_digest = params.header_digest,
        data_digest = params.data_digest, mrdsl = params.max_xmit_data_segment_length, "login complete");

    let session_id = target.next_session.fetch_add(1, Ordering::Relaxed);
    let (_keep, mut kill) = watch::channel(false);
    if let Some(e) = &export {
        kill = e.register(session_id, peer.ip(), &params.initiator_name);
    }
    let result = full_feature(rd, wr, buf, peer, local, &target, export.as_ref(), params, stat_sn, login_cmd_sn, kill, stop).await;
    if let Some(e) = &export {
        e.unregister(session_id);
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn full_feature(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: OwnedWriteHalf,
    mut buf: BytesMut,
    peer: SocketAddr,
    local: SocketAddr,
    target: &Arc<Target>,
    export: Option<&Arc<Export>>,
    params: SessionParams,
    stat_sn: u32,
    login_cmd_sn: u32,
    mut kill: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WireError> {
    let codec = Codec { header_digest: params.header_digest, data_digest: params.data_digest, max_recv_data: params.max_recv_data_segment_length as usize };
    let shared = Arc::new(Shared {
        exp_cmd_sn: AtomicU32::new(login_cmd_sn),
        in_flight: AtomicU32::new(0),
        inflight: Mutex::new(HashSet::new()),
        aborted: Mutex::new(HashSet::new()),
    });
    let (tx, rx) = mpsc::channel::<Out>(256);
    let params = Arc::new(params);
    let mut writer = tokio::spawn(writer(wr, codec, Arc::clone(&params), Arc::clone(&shared), rx, stat_sn).in_current_span());
    let mut window = CmdWindow::new(login_cmd_sn);
    let mut ping: Option<(u32, u32)> = None; // (ttt, intervals waited)
    let mut ping_ttt = 1u32;
    let mut graceful = false;
    let outcome: Result<(), WireError> = loop {
        tokio::select! {
            r = kill.changed() => {
                if r.is_ok() && *kill.borrow() {
                    tracing::warn!(%peer, initiator = %params.initiator_name, "session fenced or export closed; dropping connection");
                }
                break Ok(());
            }
            _ = stop.changed() => break Ok(()),
            _ = &mut writer => break Ok(()),
            r = tokio::time::timeout(target.nop_interval, read_pdu(&mut rd, &mut buf, &codec)) => match r {
                Err(_) => {
                    match &mut ping {
                        Some((_, waited)) if *waited >= 2 => {
                            tracing::warn!("initiator did not answer NOP-In pings; dropping connection");
                            break Ok(());
                        }
                        Some((_, waited)) => *waited += 1,
                        None => {
                            ping_ttt = ping_ttt.wrapping_add(1).max(1);
                            ping = Some((ping_ttt, 0));
                            let _ = tx.send(Out::Pdu(Pdu::nop_in(0, RESERVED_TAG, ping_ttt, Bytes::new()), false)).await;
                        }
                    }
                }
                Ok(Err(WireError::Pdu(PduError::DataDigest { bhs, .. }))) => {
                    tracing::warn!("data digest error; rejecting the PDU");
                    let _ = tx.send(Out::Pdu(Pdu::reject(RejectReason::DataDigestError, &bhs[..]), true)).await;
                }
                Ok(Err(WireError::Closed)) => { graceful = true; break Ok(()) }
                Ok(Err(e)) => break Err(e),
                Ok(Ok(pdu)) => {
                    ping = None;
                    let runnable = match pdu.opcode() {
                        Some(Opcode::DataOut) => {
                            tracing::debug!(itt = pdu.itt(), "ignoring Data-Out: this export never solicits write data");
                            continue;
                        }
                        Some(Opcode::Snack) => {
                            let _ = tx.send(Out::Pdu(Pdu::reject(RejectReason::SnackReject, &pdu.bhs), true)).await;
                            continue;
                        }
                        Some(Opcode::NopOut) if pdu.itt() == RESERVED_TAG => continue, // answer to our ping
                        Some(Opcode::ScsiCommand | Opcode::NopOut | Opcode::TaskMgmtRequest | Opcode::TextRequest | Opcode::LogoutRequest) => {
                            match window.admit(pdu, shared.in_flight.load(Ordering::Acquire)) {
                                Admit::Run(v) => v,
                                Admit::Held => continue,
                                Admit::Dropped { cmd_sn, exp } => {
                                    tracing::warn!(cmd_sn, exp, "command outside the CmdSN window; ignored");
                                    continue;
                                }
                            }
                        }
                        _ => {
                            tracing::warn!(opcode = ?pdu.opcode(), "unexpected PDU in full feature phase; rejecting and dropping");
                            let _ = tx.send(Out::Pdu(Pdu::reject(RejectReason::ProtocolError, &pdu.bhs), true)).await;
                            graceful = true;
                            break Ok(());
                        }
                    };
                    shared.exp_cmd_sn.store(window.exp(), Ordering::Release);
                    let mut logout = false;
                    for p in runnable {
                        logout |= dispatch(p, &tx, &shared, export, target, &params, peer, local).await;
                    }
                    if logout {
                        graceful = true;
                        break Ok(());
                    }
                }
            }
        }
    };
    if graceful {
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer).await;
    }
    writer.abort();
    outcome
}

/// Handles one admitted request; returns true after a logout.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    p: Pdu,
    tx: &mpsc::Sender<Out>,
    shared: &Arc<Shared>,
    export: Option<&Arc<Export>>,
    target: &Target,
    params: &SessionParams,
    peer: SocketAddr,
    local: SocketAddr,
) -> bool {
    match p.opcode() {
        Some(Opcode::ScsiCommand) => {
            let Some(export) = export else {
                let _ = tx.send(Out::Pdu(Pdu::reject(RejectReason::ProtocolError, &p.bhs), true)).await;
                return false;
            };
            let (itt, lun, edtl) = (p.itt(), p.lun(), p.edtl());
            let cdb: [u8; 16] = p.cdb().try_into().expect("16 bytes");
            shared.in_flight.fetch_add(1, Ordering::AcqRel);
            shared.inflight.lock().expect("inflight").insert(itt);
            let l = Arc::clone(&export.lun);
            if lun == LUN1 && matches!(cdb[0], 0x08 | 0x28 | 0xa8 | 0x88 | 0x9e) {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || l.execute(&cdb))
                        .await
                        .unwrap_or_else(|_| ScsiResult::check(Sense::READ_ERROR));
                    let _ = tx.send(Out::Scsi { itt, lun, edtl, result }).await;
                });
            } else {
                let result = execute_on_lun(&l, lun, &cdb);
                let _ = tx.send(Out::Scsi { itt, lun, edtl, result }).await;
            }
        }
        Some(Opcode::NopOut) => {
            let _ = tx.send(Out::Pdu(Pdu::nop_in(p.lun(), p.itt(), RESERVED_TAG, p.data.clone()), true)).await;
        }
        Some(Opcode::TaskMgmtRequest) => {
            let function = p.flags() & 0x7f;
            let response = match function {
                1 => {
                    let rtt = p.ttt();
                    if shared.inflight.lock().expect("inflight").contains(&rtt) {
                        shared.aborted.lock().expect("aborted").insert(rtt);
                    }
                    0
                }
                2 | 3 | 5 | 6 | 7 => {
                    let all: Vec<u32> = shared.inflight.lock().expect("inflight").iter().copied().collect();
                    shared.aborted.lock().expect("aborted").extend(all);
                    0
                }
                8 => 4,
                _ => 5,
            };
            tracing::info!(function, response, "task management request");
            let _ = tx.send(Out::Pdu(Pdu::tmf_response(p.itt(), response), true)).await;
        }
        Some(Opcode::TextRequest) => {
            let pairs = text::parse(&p.data).unwrap_or_default();
            let mut out: Vec<(String, String)> = Vec::new();
            for (k, v) in &pairs {
                if k == "SendTargets" {
                    let names = if params.session_type == SessionType::Discovery || v == "All" {
                        target.visible_to(peer.ip(), &params.initiator_name)
                    } else {
                        vec![params.target_name.clone()]
                    };
                    let addr = match local {
                        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                    };
                    for n in names.into_iter().filter(|n| v == "All" || v.is_empty() || v == n) {
                        out.push(("TargetName".into(), n));
                        out.push(("TargetAddress".into(), format!("{addr},1")));
                    }
                } else {
                    out.push((k.clone(), "NotUnderstood".into()));
                }
            }
            let _ = tx.send(Out::Pdu(Pdu::text_response(p.itt(), text::encode(&out)), true)).await;
        }
        Some(Opcode::LogoutRequest) => {
            let reason = p.flags() & 0x7f;
            let response = if reason == 2 { 2 } else { 0 };
            tracing::info!(reason, "logout");
            let _ = tx.send(Out::Pdu(Pdu::logout_response(p.itt(), response), true)).await;
            let _ = tx.send(Out::Close).await;
            return true;
        }
        _ => {}
    }
    false
}

fn execute_on_lun(l: &Lun, lun: u64, cdb: &[u8]) -> ScsiResult {
    if lun == LUN1 || cdb[0] == 0xa0 {
        return l.execute(cdb);
    }
    if cdb[0] == 0x12 && cdb[1] & 1 == 0 {
        // No LU here: peripheral qualifier 3, device type 0x1f.
        let mut d = vec![0u8; 36];
        d[0] = 0x7f;
        d[2] = 0x06;
        d[3] = 0x02;
        d[4] = 31;
        let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
        d.truncate(alloc);
        return ScsiResult { status: crate::scsi::GOOD, sense: Vec::new(), data: Bytes::from(d) };
    }
    ScsiResult::check(Sense::LUN_NOT_SUPPORTED)
}

/// Turns a SCSI result into Data-In PDUs (status in the last) or a SCSI Response.
fn scsi_pdus(params: &SessionParams, itt: u32, lun: u64, edtl: u32, r: ScsiResult) -> Vec<(Pdu, bool)> {
    let produced = r.data.len() as u64;
    let residual = Residual::of(edtl, produced);
    let mut data = r.data;
    data.truncate(edtl as usize);
    if r.status != crate::scsi::GOOD || data.is_empty() {
        return vec![(Pdu::scsi_response(itt, r.status, &r.sense, residual), true)];
    }
    let seg = params.max_xmit_data_segment_length.max(512) as usize;
    let burst = params.max_burst_length.max(512) as usize;
    let mut out = Vec::with_capacity(data.len().div_ceil(seg));
    let total = data.len();
    let mut off = 0usize;
    let mut sn = 0u32;
    let mut burst_left = burst;
    while off < total {
        let n = seg.min(total - off).min(burst_left);
        let last = off + n == total;
        burst_left -= n;
        let fin = last || burst_left == 0;
        if burst_left == 0 {
            burst_left = burst;
        }
        let chunk = data.slice(off..off + n);
        let status = last.then_some((crate::scsi::GOOD, residual));
        out.push((Pdu::data_in(lun, itt, sn, off as u32, chunk, fin, status), last));
        off += n;
        sn += 1;
    }
    out
}

async fn writer(mut wr: OwnedWriteHalf, codec: Codec, params: Arc<SessionParams>, shared: Arc<Shared>, mut rx: mpsc::Receiver<Out>, mut stat_sn: u32) {
    let mut batch: Vec<Out> = Vec::with_capacity(32);
    let mut pdus: Vec<Pdu> = Vec::with_capacity(64);
    loop {
        if rx.recv_many(&mut batch, 32).await == 0 {
            return;
        }
        let mut close = false;
        for m in batch.drain(..) {
            let list: Vec<(Pdu, bool)> = match m {
                Out::Pdu(p, adv) => vec![(p, adv)],
                Out::Close => {
                    close = true;
                    continue;
                }
                Out::Scsi { itt, lun, edtl, result } => {
                    shared.inflight.lock().expect("inflight").remove(&itt);
                    shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    if shared.aborted.lock().expect("aborted").remove(&itt) {
                        tracing::debug!(itt, "task aborted; its response is not sent");
                        continue;
                    }
                    scsi_pdus(&params, itt, lun, edtl, result)
                }
            };
            for (mut p, advance) in list {
                let (exp, max) = (shared.exp_cmd_sn.load(Ordering::Acquire), shared.max_cmd_sn());
                p.stamp(stat_sn, exp, max);
                if advance {
                    stat_sn = stat_sn.wrapping_add(1);
                }
                pdus.push(p);
            }
        }
        if let Err(e) = write_pdus(&mut wr, &codec, &pdus).await {
            tracing::info!(error = %e, "write to initiator failed");
            return;
        }
        pdus.clear();
        if close {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
            return;
        }
    }
}
