//! A hostile or broken target on 127.0.0.1: it logs anyone in (or plays a CHAP
//! challenge it chooses) and answers READ CAPACITY(16) with whatever it is told,
//! so the initiator's checks of what a target says can be tested.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use meshdrain_iscsi::pdu::{Codec, Opcode, Pdu, Residual};
use meshdrain_iscsi::wire::{read_pdu, write_pdus};
use tokio::net::{TcpListener, TcpStream};

/// What the fake target does.
#[derive(Clone, Debug)]
pub enum Fake {
    /// Logs in without authentication, then answers READ CAPACITY(16) with this
    /// last LBA and block size, and GOOD to every other command.
    Capacity { last_lba: u64, block_size: u32 },
    /// Asks for CHAP and sends this CHAP_C.
    Challenge(String),
}

/// Serves `fake` on 127.0.0.1:0 in the background until the runtime ends.
pub async fn start(fake: Fake) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, fake.clone()));
        }
    });
    addr
}

async fn serve(mut s: TcpStream, fake: Fake) -> Option<()> {
    let c = Codec::default();
    let mut buf = BytesMut::new();
    let mut stat_sn = 0u32;
    let mut send = async |s: &mut TcpStream, mut p: Pdu, cmd_sn: u32| {
        p.stamp(stat_sn, cmd_sn.wrapping_add(1), cmd_sn.wrapping_add(32));
        stat_sn += 1;
        write_pdus(s, &c, &[p]).await.ok()
    };
    let req = read_pdu(&mut s, &mut buf, &c).await.ok()?;
    match fake {
        Fake::Challenge(chal) => {
            let rsp = Pdu::login_response(&req, 0, 0, 0, false, 0, 0, Bytes::from_static(b"AuthMethod=CHAP\0"));
            send(&mut s, rsp, req.cmd_sn().wrapping_sub(1)).await?;
            let req = read_pdu(&mut s, &mut buf, &c).await.ok()?;
            let keys = format!("CHAP_A=5\0CHAP_I=1\0CHAP_C={chal}\0");
            send(
                &mut s,
                Pdu::login_response(&req, 0, 0, 0, false, 0, 0, Bytes::from(keys)),
                req.cmd_sn().wrapping_sub(1),
            )
            .await?;
            // Whatever comes next is the initiator's answer (there should be none).
            let _ = read_pdu(&mut s, &mut buf, &c).await;
            None
        }
        Fake::Capacity { last_lba, block_size } => {
            let rsp = Pdu::login_response(&req, 1, 1, 3, true, 0, 0, Bytes::new());
            send(&mut s, rsp, req.cmd_sn().wrapping_sub(1)).await?;
            let ff = Codec { max_recv_data: 1 << 20, ..Codec::default() };
            loop {
                let p = read_pdu(&mut s, &mut buf, &ff).await.ok()?;
                let (itt, cmd_sn) = (p.itt(), p.cmd_sn());
                let rsp = match p.opcode() {
                    Some(Opcode::ScsiCommand) if p.cdb()[0] == 0x9e && p.cdb()[1] & 0x1f == 0x10 => {
                        let mut d = vec![0u8; 32];
                        d[0..8].copy_from_slice(&last_lba.to_be_bytes());
                        d[8..12].copy_from_slice(&block_size.to_be_bytes());
                        Pdu::data_in(p.lun(), itt, 0, 0, Bytes::from(d), true, Some((0, Residual::of(p.edtl(), 32))))
                    }
                    Some(Opcode::ScsiCommand) => Pdu::scsi_response(itt, 0, &[], Residual::of(p.edtl(), 0)),
                    Some(Opcode::NopOut) => Pdu::nop_in(0, itt, 0xffff_ffff, Bytes::new()),
                    _ => return None,
                };
                send(&mut s, rsp, cmd_sn).await?;
            }
        }
    }
}
