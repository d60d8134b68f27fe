//! One connection: login, then a reader loop (CmdSN window, dispatch) on
//! tokio and a writer thread ([`super::writer`]: StatSN, SCSI execution,
//! Data-In streaming). A thin shell around `login`, `window` and `scsi`.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;

use super::limits::{Held, Taken, charge};
use super::window::{Admit, CmdWindow, QUEUE_DEPTH};
use super::writer::{Out, Shared, SlowFloor, Writer};
use super::{Export, Target};
use crate::login::{LoginEvent, LoginMachine, LoginPolicy, Refusal};
use crate::negotiate::{Offer, SessionParams, SessionType};
use crate::pdu::{Codec, Opcode, Pdu, PduError, RESERVED_TAG, RejectReason};
use crate::text;
use crate::wire::{READ_CHUNK, WireError, read_pdu, write_pdus};

/// LUN 1 in SAM single-level peripheral addressing.
pub(crate) const LUN1: u64 = 1 << 48;

pub(super) async fn run(
    sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    target: Arc<Target>,
    stop: watch::Receiver<bool>,
    pending: Taken,
) {
    let span = tracing::info_span!("iscsi_conn", %peer);
    async move {
        match serve_conn(sock, peer, local, target, stop, pending).await {
            Ok(()) => tracing::debug!("connection closed"),
            Err(e) => tracing::info!(error = %e, "connection dropped"),
        }
    }
    .instrument(span)
    .await
}

/// Reads one login PDU before the login's deadline.
async fn login_pdu(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    held: &mut Held,
    deadline: tokio::time::Instant,
) -> Result<Pdu, WireError> {
    let r = tokio::time::timeout_at(deadline, read_pdu(rd, buf, &Codec::default())).await;
    held.set(buf.capacity());
    r.map_err(|_| WireError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "login did not finish in time")))?
}

/// Gives a PDU allocations of its own, so parking or echoing it never pins the
/// connection's read buffer; a SCSI command loses its data segment (write data,
/// which this read-only target never takes).
fn detach(mut p: Pdu) -> Pdu {
    // Even an empty slice of the buffer keeps the whole allocation alive.
    p.ahs = if p.ahs.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&p.ahs) };
    p.data = match p.opcode() {
        _ if p.data.is_empty() => Bytes::new(),
        Some(Opcode::ScsiCommand) => Bytes::new(),
        _ => Bytes::copy_from_slice(&p.data),
    };
    p
}

async fn serve_conn(
    sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    target: Arc<Target>,
    stop: watch::Receiver<bool>,
    pending: Taken,
) -> Result<(), WireError> {
    let (mut rd, mut wr) = sock.into_split();
    let mut held = Held::new(&target.counters);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let login_codec = Codec::default();
    let deadline = tokio::time::Instant::now() + target.limits.login_timeout;
    let first = login_pdu(&mut rd, &mut buf, &mut held, deadline).await?;
    if first.opcode() != Some(Opcode::LoginRequest) {
        tracing::warn!(opcode = %first.opcode().map_or_else(|| "invalid".to_owned(), |o| format!("{o:?}")), "first PDU is not a login request; dropping");
        return Ok(());
    }
    let pairs = text::parse(&first.data).unwrap_or_default();
    let discovery = text::get(&pairs, "SessionType") == Some("Discovery");
    let export = if discovery { None } else { text::get(&pairs, "TargetName").and_then(|n| target.export(n)) };
    let tsih = target.next_tsih.fetch_add(1, Ordering::Relaxed).max(1);
    let policy = {
        let (e, t) = (export.clone(), Arc::clone(&target));
        let addr = peer.ip();
        LoginPolicy {
            target_name: export.as_ref().map(|e| e.iqn.clone()).unwrap_or_default(),
            chap: export.as_ref().and_then(|e| e.chap()),
            offer: Offer {
                max_recv_data_segment_length: target.limits.max_recv_data_segment_length,
                ..Offer::default()
            },
            tsih,
            // Normal: this export admits the initiator. Discovery (no export): some export does.
            authorize: Box::new(move |iqn| match &e {
                Some(e) => e.admits(addr, iqn),
                None => t.admits_any(addr, iqn),
            }),
        }
    };
    let mut machine = LoginMachine::new(policy);
    let mut stat_sn = first.exp_stat_sn();
    let mut req = first;
    let mut slots = Vec::new();
    let params: SessionParams = loop {
        let (mut rsp, ev) = machine.step(&req);
        let ev = match ev {
            LoginEvent::FullFeature(p) => {
                match target.take_slots(export.as_ref(), p.session_type == SessionType::Discovery) {
                    Ok(s) => {
                        slots = s;
                        LoginEvent::FullFeature(p)
                    }
                    Err(why) => {
                        let (_, _, csg, nsg) = req.login_stages();
                        let (class, detail) = Refusal::OutOfResources.status();
                        rsp = Pdu::login_response(&req, 0, csg, nsg, false, class, detail, Bytes::new());
                        LoginEvent::Refused(Refusal::OutOfResources, format!("connection cap reached: {why}"))
                    }
                }
            }
            other => other,
        };
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
        req = login_pdu(&mut rd, &mut buf, &mut held, deadline).await?;
    };
    drop(pending);
    let discovery = params.session_type == SessionType::Discovery;
    let export = if discovery { None } else { export };
    let login_cmd_sn = req.cmd_sn();
    tracing::info!(initiator = %params.initiator_name, target = %params.target_name, discovery, header_digest = params.header_digest,
        data_digest = params.data_digest, mrdsl = params.max_xmit_data_segment_length, "login complete");

    let session_id = target.next_session.fetch_add(1, Ordering::Relaxed);
    let (_keep, mut kill) = watch::channel(false);
    if let Some(e) = &export {
        kill = e.register(session_id, peer.ip(), &params.initiator_name);
    }
    let conn = Conn { peer, local, target: &target, export: export.as_ref(), held };
    let result = full_feature(conn, rd, wr, buf, params, stat_sn, login_cmd_sn, kill, stop).await;
    if let Some(e) = &export {
        e.unregister(session_id);
    }
    drop(slots);
    result
}

/// What a full-feature connection knows of where it is.
struct Conn<'a> {
    peer: SocketAddr,
    local: SocketAddr,
    target: &'a Arc<Target>,
    export: Option<&'a Arc<Export>>,
    /// Bytes of the read buffer and parked commands, in the portal's total.
    held: Held,
}

/// The reply budget: replies queued for the writer and not yet sent.
struct Replies {
    budget: Arc<Semaphore>,
    cap: usize,
}

/// Opcodes a discovery session answers (RFC 7143 §4.3: SendTargets only).
fn discovery_allows(op: Option<Opcode>) -> bool {
    matches!(op, Some(Opcode::TextRequest | Opcode::NopOut | Opcode::LogoutRequest))
}

#[allow(clippy::too_many_arguments)]
async fn full_feature(
    mut c: Conn<'_>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: OwnedWriteHalf,
    mut buf: BytesMut,
    params: SessionParams,
    stat_sn: u32,
    login_cmd_sn: u32,
    mut kill: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WireError> {
    let target = c.target;
    let limits = &target.limits;
    let discovery = params.session_type == SessionType::Discovery;
    let codec = Codec {
        header_digest: params.header_digest,
        data_digest: params.data_digest,
        max_recv_data: params.max_recv_data_segment_length as usize,
    };
    let shared = Arc::new(Shared::new(login_cmd_sn));
    // Commands queue here until the writer runs them; the CmdSN window
    // (QUEUE_DEPTH) bounds them, the slack covers pings and rejects. Replies
    // with data are also bounded in bytes (`Limits::reply_bytes`).
    let (tx, rx) = mpsc::channel::<Out>(QUEUE_DEPTH as usize * 2 + 64);
    let replies = Replies { budget: Arc::new(Semaphore::new(limits.reply_bytes)), cap: limits.reply_bytes };
    let params = Arc::new(params);
    let sock_fd = wr.as_ref().as_raw_fd();
    let fd = wr.as_ref().as_fd().try_clone_to_owned().map_err(WireError::Io)?;
    let floor = SlowFloor {
        bytes_per_sec: limits.slow_reader_floor,
        window: limits.slow_reader_window,
        counters: Arc::clone(&target.counters),
    };
    let lun = c.export.map(|e| Arc::clone(&e.lun));
    let w = Writer::new(fd, codec, Arc::clone(&params), Arc::clone(&shared), lun, stat_sn, floor);
    // A plain thread, not spawn_blocking: it lives as long as the
    // connection, and the blocking pool's cap would leave connection 513
    // without a writer. It never recurses: a small stack is plenty.
    let span = tracing::Span::current();
    let (done_tx, mut writer) = tokio::sync::oneshot::channel::<()>();
    let budget = Arc::clone(&replies.budget);
    std::thread::Builder::new()
        .name("iscsi-tx".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let _g = span.enter();
            if let Err(e) = w.run(rx) {
                tracing::info!(error = %e, "writer stopped");
            }
            // A reader waiting for reply room must not wait for a writer that is gone.
            budget.close();
            let _ = done_tx.send(());
        })
        .map_err(WireError::Io)?;
    let mut window = CmdWindow::with_budget(login_cmd_sn, limits.held_bytes);
    let mut ping: Option<(u32, u32)> = None; // (ttt, intervals waited)
    let mut ping_ttt = 1u32;
    let mut graceful = false;
    let mut writer_done = false;
    let outcome: Result<(), WireError> = 'conn: loop {
        c.held.set(buf.capacity() + window.held_bytes());
        tokio::select! {
            r = kill.changed() => {
                if r.is_ok() && *kill.borrow() {
                    tracing::warn!(peer = %c.peer, initiator = %params.initiator_name, "session fenced or export closed; dropping connection");
                }
                break Ok(());
            }
            _ = stop.changed() => break Ok(()),
            _ = &mut writer => {
                writer_done = true;
                break Ok(());
            }
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
                    let pdu = detach(pdu);
                    if discovery && !discovery_allows(pdu.opcode()) {
                        tracing::warn!(opcode = %pdu.opcode().map_or_else(|| "invalid".to_owned(), |o| format!("{o:?}")), "discovery session sent a PDU other than SendTargets, NOP-Out or Logout; rejecting and dropping");
                        let _ = tx.send(Out::Pdu(Pdu::reject(RejectReason::ProtocolError, &pdu.bhs), true)).await;
                        graceful = true;
                        break Ok(());
                    }
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
                                Admit::OverBudget { bytes } => {
                                    tracing::warn!(bytes, held_bytes = limits.held_bytes,
                                        "out-of-order commands would hold more than held_bytes; dropping the connection");
                                    break Ok(());
                                }
                                Admit::Dropped { cmd_sn, exp } => {
                                    tracing::warn!(cmd_sn, exp, "command outside the CmdSN window; ignored");
                                    continue;
                                }
                            }
                        }
                        _ => {
                            tracing::warn!(opcode = %pdu.opcode().map_or_else(|| "invalid".to_owned(), |o| format!("{o:?}")), "unexpected PDU in full feature phase; rejecting and dropping");
                            let _ = tx.send(Out::Pdu(Pdu::reject(RejectReason::ProtocolError, &pdu.bhs), true)).await;
                            graceful = true;
                            break Ok(());
                        }
                    };
                    shared.exp_cmd_sn.store(window.exp(), Ordering::Release);
                    c.held.set(buf.capacity() + window.held_bytes());
                    let mut logout = false;
                    for p in runnable {
                        // Waiting for reply room must not outlast a fence, a shutdown or the writer.
                        tokio::select! {
                            l = dispatch(p, &tx, &shared, &c, &replies, &params) => logout |= l,
                            _ = kill.changed() => break 'conn Ok(()),
                            _ = stop.changed() => break 'conn Ok(()),
                            _ = &mut writer => {
                                writer_done = true;
                                break 'conn Ok(());
                            }
                        }
                    }
                    if logout {
                        graceful = true;
                        break Ok(());
                    }
                }
            }
        }
    };
    drop(tx);
    if !graceful {
        shared.stop.store(true, Ordering::Release);
        // Unsent bytes are thrown away (RST at close): a dropped slow or silent
        // reader does not keep megabytes of socket buffer behind it either.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt and shutdown on the connection's socket, still open (we
        // hold `wr`); `linger` outlives the call and its size is passed.
        unsafe {
            libc::setsockopt(
                sock_fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::shutdown(sock_fd, libc::SHUT_RDWR)
        };
    }
    if !writer_done && tokio::time::timeout(Duration::from_secs(5), &mut writer).await.is_err() {
        tracing::warn!("writer did not stop within 5 s; closing the socket under it");
        shared.stop.store(true, Ordering::Release);
        // SAFETY: as above.
        unsafe { libc::shutdown(sock_fd, libc::SHUT_RDWR) };
    }
    drop(wr);
    outcome
}

/// Queues a reply with data once the reply budget has room for it; false if
/// the writer is gone.
async fn reply(tx: &mpsc::Sender<Out>, c: &Conn<'_>, replies: &Replies, p: Pdu) -> bool {
    let Some(charge) = charge(&replies.budget, replies.cap, &c.target.counters, p.data.len()).await else {
        return false;
    };
    tx.send(Out::Reply(p, charge)).await.is_ok()
}

/// Handles one admitted request; returns true after a logout.
async fn dispatch(
    p: Pdu,
    tx: &mpsc::Sender<Out>,
    shared: &Arc<Shared>,
    c: &Conn<'_>,
    replies: &Replies,
    params: &SessionParams,
) -> bool {
    match p.opcode() {
        Some(Opcode::ScsiCommand) => {
            if c.export.is_none() {
                let _ = tx.send(Out::Pdu(Pdu::reject(RejectReason::ProtocolError, &p.bhs), true)).await;
                return false;
            }
            let (itt, lun, edtl) = (p.itt(), p.lun(), p.edtl());
            let cdb: [u8; 16] = p.cdb().try_into().expect("16 bytes");
            shared.in_flight.fetch_add(1, Ordering::AcqRel);
            shared.inflight.lock().expect("inflight").insert(itt);
            let _ = tx.send(Out::Exec { itt, lun, edtl, cdb }).await;
        }
        Some(Opcode::NopOut) => {
            reply(tx, c, replies, Pdu::nop_in(p.lun(), p.itt(), RESERVED_TAG, p.data.clone())).await;
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
                        c.target.visible_to(c.peer.ip(), &params.initiator_name)
                    } else {
                        vec![params.target_name.clone()]
                    };
                    let addr = match c.local {
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
            reply(tx, c, replies, Pdu::text_response(p.itt(), text::encode(&out))).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked or echoed PDU must not keep the read buffer's allocation alive
    /// (63 parked commands once pinned 16 MiB of buffers per connection).
    #[test]
    fn detached_pdus_leave_the_read_buffer_unshared() {
        let codec = Codec { max_recv_data: 1 << 20, ..Codec::default() };
        for op in [Opcode::ScsiCommand, Opcode::NopOut] {
            let mut p = match op {
                Opcode::ScsiCommand => Pdu::scsi_command(LUN1, 1, 2, 0, &[0; 6], 0, false),
                _ => Pdu::nop_out(1, RESERVED_TAG, 2, 0, Bytes::new()),
            };
            p.data = Bytes::from(vec![9u8; 64 * 1024]);
            let mut buf = BytesMut::new();
            codec.encode(&p, &mut buf);
            let cap = buf.capacity();
            let d = detach(codec.decode(&mut buf).unwrap().unwrap());
            assert!(buf.try_reclaim(cap), "{op:?}: the buffer is still shared");
            let want = if op == Opcode::ScsiCommand { 0 } else { 64 * 1024 };
            assert_eq!(d.data.len(), want);
        }
    }
}
