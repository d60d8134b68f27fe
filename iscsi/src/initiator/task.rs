//! The session task: owns the connection, tags commands, respects the
//! CmdSN window, collects Data-In, answers target NOP-In pings, and on a
//! dropped connection reconnects with backoff and replays every pending
//! command (reads are idempotent).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::login::{LoggedIn, login};
use super::{InitiatorConfig, InitiatorError, Request};
use crate::pdu::{Codec, Opcode, Pdu, RESERVED_TAG};
use crate::scsi::{GOOD, Sense};
use crate::wire::write_pdus;

use super::framer::Framer;

struct Pending {
    req: Request,
    /// Data-In payloads in order (DataPDUInOrder=Yes), shared with the receive buffer.
    segments: Vec<Bytes>,
    /// Bytes received so far (the next expected buffer offset).
    got: usize,
}

/// Starts the task after a first successful login (so connect errors surface).
pub(super) async fn start(cfg: InitiatorConfig) -> Result<mpsc::Sender<Request>, InitiatorError> {
    let isid: [u8; 6] = [0x80, rand::random(), rand::random(), rand::random(), rand::random(), 0];
    let conn = connect_once(&cfg, isid).await?;
    let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1) * 2);
    let span = tracing::info_span!("iscsi_session", target = %cfg.target, addr = %cfg.address);
    tokio::spawn(run(cfg, isid, conn, rx).instrument(span));
    Ok(tx)
}

async fn connect_once(cfg: &InitiatorConfig, isid: [u8; 6]) -> Result<(TcpStream, LoggedIn, BytesMut), InitiatorError> {
    let mut sock = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&cfg.address))
        .await
        .map_err(|_| InitiatorError::Connect {
            addr: cfg.address.clone(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| InitiatorError::Connect { addr: cfg.address.clone(), source })?;
    let _ = sock.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(512 * 1024);
    let li = tokio::time::timeout(Duration::from_secs(15), login(&mut sock, cfg, isid, &mut buf)).await.map_err(
        |_| InitiatorError::Protocol { target: cfg.target.clone(), why: "login timed out after 15 s".into() },
    )??;
    Ok((sock, li, buf))
}

async fn run(
    cfg: InitiatorConfig,
    isid: [u8; 6],
    first: (TcpStream, LoggedIn, BytesMut),
    mut rx: mpsc::Receiver<Request>,
) {
    let mut conn = Some(first);
    let mut carry: VecDeque<Request> = VecDeque::new();
    let mut backoff = Duration::from_millis(50);
    let mut down_since: Option<Instant> = None;
    loop {
        let (sock, li, buf) = match conn.take() {
            Some(c) => c,
            None => match connect_once(&cfg, isid).await {
                Ok(c) => {
                    tracing::info!(replayed = carry.len(), "reconnected");
                    backoff = Duration::from_millis(50);
                    down_since = None;
                    c
                }
                Err(e) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    let refused = matches!(e, InitiatorError::LoginRefused { .. });
                    if refused || since.elapsed() > cfg.reconnect_for {
                        tracing::warn!(error = %e, "giving up on the session");
                        let why = e.to_string();
                        for r in carry.drain(..) {
                            let _ = r
                                .reply
                                .send(Err(InitiatorError::Closed { target: cfg.target.clone(), why: why.clone() }));
                        }
                        rx.close();
                        while let Some(r) = rx.recv().await {
                            let _ = r
                                .reply
                                .send(Err(InitiatorError::Closed { target: cfg.target.clone(), why: why.clone() }));
                        }
                        return;
                    }
                    tracing::info!(error = %e, backoff_ms = backoff.as_millis() as u64, "reconnect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        match connected(&cfg, sock, li, buf, &mut rx, &mut carry).await {
            Ok(()) => return, // caller dropped every Session handle
            Err(e) => {
                tracing::warn!(error = %e, pending = carry.len(), "connection lost; reconnecting");
                down_since.get_or_insert_with(Instant::now);
            }
        }
    }
}

/// Runs one connection. Returns Ok when the session is no longer used, Err
/// when the connection broke (pending requests are moved to `carry`).
async fn connected(
    cfg: &InitiatorConfig,
    sock: TcpStream,
    li: LoggedIn,
    buf: BytesMut,
    rx: &mut mpsc::Receiver<Request>,
    carry: &mut VecDeque<Request>,
) -> Result<(), String> {
    let (mut rd, mut wr) = sock.into_split();
    let codec = Codec {
        header_digest: li.params.header_digest,
        data_digest: li.params.data_digest,
        max_recv_data: li.params.max_recv_data_segment_length as usize,
    };
    let lun = (cfg.lun as u64) << 48;
    let mut cmd_sn = li.cmd_sn;
    let mut max_cmd_sn = li.max_cmd_sn;
    let mut exp_stat_sn = li.exp_stat_sn;
    let mut next_itt = 1u32;
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    let mut out: Vec<Pdu> = Vec::new();
    let mut accepting = true;
    let mut framer = Framer::new(buf);
    let result: Result<(), String> = loop {
        // Send what the window allows.
        while !carry.is_empty() && pending.len() < cfg.queue_depth && (max_cmd_sn.wrapping_sub(cmd_sn) as i32) >= 0 {
            let req = carry.pop_front().expect("non-empty");
            let itt = next_itt;
            next_itt = next_itt.wrapping_add(1);
            if next_itt == RESERVED_TAG {
                next_itt = 1;
            }
            out.push(Pdu::scsi_command(lun, itt, cmd_sn, exp_stat_sn, &req.cdb, req.edtl, req.edtl > 0));
            cmd_sn = cmd_sn.wrapping_add(1);
            pending.insert(itt, Pending { segments: Vec::new(), got: 0, req });
        }
        if !out.is_empty() {
            if let Err(e) = write_pdus(&mut wr, &codec, &out).await {
                break Err(format!("write failed: {e}"));
            }
            out.clear();
        }
        if !accepting && pending.is_empty() && carry.is_empty() {
            let lo = Pdu::logout_request(next_itt, 0, cmd_sn, exp_stat_sn);
            let _ = write_pdus(&mut wr, &codec, &[lo]).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), framer.next(&mut rd, &codec)).await;
            return Ok(());
        }
        let room = pending.len() + carry.len() < cfg.queue_depth;
        tokio::select! {
            r = rx.recv(), if accepting && room => match r {
                Some(req) => carry.push_back(req),
                None => accepting = false,
            },
            r = framer.next(&mut rd, &codec) => {
                let pdu = match r {
                    Ok(p) => p,
                    Err(e) => break Err(format!("read failed: {e}")),
                };
                let op = pdu.opcode();
                if matches!(op, Some(Opcode::ScsiResponse | Opcode::NopIn | Opcode::TaskMgmtResponse | Opcode::LogoutResponse | Opcode::Reject | Opcode::AsyncMessage))
                    || (op == Some(Opcode::DataIn) && pdu.flags() & 0x01 != 0)
                {
                    let m = pdu.max_cmd_sn();
                    if (m.wrapping_sub(max_cmd_sn) as i32) > 0 {
                        max_cmd_sn = m;
                    }
                }
                match op {
                    Some(Opcode::DataIn) => {
                        let Some(p) = pending.get_mut(&pdu.itt()) else { continue };
                        let off = pdu.buffer_offset() as usize;
                        let end = off + pdu.data.len();
                        if end > p.req.edtl as usize {
                            break Err(format!("Data-In past the expected length ({end} > {})", p.req.edtl));
                        }
                        if off != p.got {
                            break Err(format!("Data-In out of order (offset {off}, expected {}) although DataPDUInOrder=Yes", p.got));
                        }
                        p.got = end;
                        if !pdu.data.is_empty() {
                            p.segments.push(pdu.data.clone());
                        }
                        if pdu.flags() & 0x01 != 0 {
                            exp_stat_sn = pdu.stat_sn().wrapping_add(1);
                            let p = pending.remove(&pdu.itt()).expect("present");
                            finish(p, pdu.scsi_status(), &pdu, &[]);
                        }
                    }
                    Some(Opcode::ScsiResponse) => {
                        exp_stat_sn = pdu.stat_sn().wrapping_add(1);
                        if let Some(p) = pending.remove(&pdu.itt()) {
                            let sense = pdu.sense().to_vec();
                            finish(p, pdu.scsi_status(), &pdu, &sense);
                        }
                    }
                    Some(Opcode::NopIn) => {
                        if pdu.ttt() != RESERVED_TAG {
                            let mut reply = Pdu::nop_out(RESERVED_TAG, pdu.ttt(), cmd_sn, exp_stat_sn, Bytes::new());
                            reply.set_lun(pdu.lun());
                            out.push(reply);
                        } else {
                            exp_stat_sn = pdu.stat_sn().wrapping_add(1);
                        }
                    }
                    Some(Opcode::Reject) => {
                        break Err(format!("target rejected a PDU (reason {:#04x})", pdu.bhs[2]));
                    }
                    Some(Opcode::AsyncMessage) => {
                        if pdu.bhs[36] == 1 || pdu.bhs[36] == 2 || pdu.bhs[36] == 3 {
                            break Err(format!("target asked us to log out (async event {})", pdu.bhs[36]));
                        }
                    }
                    Some(Opcode::LogoutResponse) => break Err("unsolicited logout response".into()),
                    other => break Err(format!("unexpected {other:?} from target")),
                }
            }
        }
    };
    // Replay in the original order ahead of requests not yet sent.
    let mut replay: Vec<(u32, Request)> = pending.into_iter().map(|(itt, p)| (itt, p.req)).collect();
    replay.sort_by_key(|(itt, _)| *itt);
    for (_, r) in replay.into_iter().rev() {
        carry.push_front(r);
    }
    result
}

fn finish(p: Pending, status: u8, pdu: &Pdu, sense: &[u8]) {
    let opcode = p.req.cdb[0];
    let r = if status == GOOD {
        let mut segments = p.segments;
        // Underflow: the target moved less than asked for; never hand out more than it meant.
        if pdu.flags() & 0x02 != 0 {
            let mut keep = (p.req.edtl as usize).saturating_sub(pdu.residual() as usize).min(p.got);
            segments.retain_mut(|s| {
                let n = s.len().min(keep);
                s.truncate(n);
                keep -= n;
                n > 0
            });
        }
        Ok(segments)
    } else if status == 0x02 && sense.len() >= 8 && (sense[0] & 0x7f >= 0x72 || sense.len() >= 14) {
        let (key, asc, ascq) = if sense[0] & 0x7f >= 0x72 {
            (sense[1] & 0x0f, sense[2], sense[3])
        } else {
            (sense[2] & 0x0f, sense[12], sense[13])
        };
        Err(InitiatorError::Check { opcode, sense: Sense { key, asc, ascq } })
    } else {
        Err(InitiatorError::Status { opcode, status })
    };
    let _ = p.req.reply.send(r);
}
