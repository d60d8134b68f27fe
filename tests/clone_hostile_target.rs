//! `meshdrain clone run` against a hostile target whose READ CAPACITY(16) answer
//! cannot be true (block size 0, not a power of two, above 64 KiB, or a last LBA
//! whose +1 overflows): a clear error, a non-zero exit, and no dest or metadata
//! written. The target here logs anyone in and lies about its size.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use meshdrain_iscsi::pdu::{Codec, Opcode, Pdu, Residual};
use meshdrain_iscsi::wire::{read_pdu, write_pdus};
use tokio::net::{TcpListener, TcpStream};

async fn fake_target(last_lba: u64, block_size: u32) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, last_lba, block_size));
        }
    });
    addr
}

async fn serve(mut s: TcpStream, last_lba: u64, block_size: u32) -> Option<()> {
    let mut buf = Default::default();
    let c = Codec::default();
    let req = read_pdu(&mut s, &mut buf, &c).await.ok()?;
    let mut rsp = Pdu::login_response(&req, 1, 1, 3, true, 0, 0, Vec::new().into());
    rsp.stamp(0, req.cmd_sn(), req.cmd_sn() + 31);
    write_pdus(&mut s, &c, &[rsp]).await.ok()?;
    let ff = Codec { max_recv_data: 1 << 20, ..Codec::default() };
    for stat_sn in 1u32.. {
        let p = read_pdu(&mut s, &mut buf, &ff).await.ok()?;
        let mut rsp = match p.opcode() {
            Some(Opcode::ScsiCommand) if p.cdb()[0] == 0x9e && p.cdb()[1] & 0x1f == 0x10 => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&last_lba.to_be_bytes());
                d[8..12].copy_from_slice(&block_size.to_be_bytes());
                Pdu::data_in(p.lun(), p.itt(), 0, 0, d.into(), true, Some((0, Residual::of(p.edtl(), 32))))
            }
            Some(Opcode::ScsiCommand) => Pdu::scsi_response(p.itt(), 0, &[], Residual::of(p.edtl(), 0)),
            Some(Opcode::NopOut) => Pdu::nop_in(0, p.itt(), 0xffff_ffff, Vec::new().into()),
            _ => return None,
        };
        rsp.stamp(stat_sn, p.cmd_sn() + 1, p.cmd_sn() + 32);
        write_pdus(&mut s, &ff, &[rsp]).await.ok()?;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_run_refuses_an_impossible_capacity_and_writes_nothing() {
    for (last_lba, block_size, want) in [
        (2047u64, 0u32, "block size of 0 bytes"),
        (2047, 1000, "block size of 1000 bytes"),
        (2047, 128 * 1024, "block size of 131072 bytes"),
        (u64::MAX, 512, "last LBA 18446744073709551615"),
    ] {
        let addr = fake_target(last_lba, block_size).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, meta) = (dir.path().join("dest.img"), dir.path().join("meta"));
        let source = format!("iscsi://{addr}/iqn.2026-11.dev.meshdrain:hostile/1");
        let args: Vec<String> = ["clone", "run", "--backend", "userspace", "--source", &source, "--dest"]
            .iter()
            .map(|s| s.to_string())
            .chain([dest.display().to_string(), "--metadata".into(), meta.display().to_string()])
            .collect();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                common::meshdrain(&a)
            }),
        )
        .await
        .expect("clone run ends")
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{last_lba}/{block_size}: clone run succeeded");
        assert!(stderr.contains(want) && stderr.contains("broken or hostile"), "{last_lba}/{block_size}: {stderr}");
        assert!(!dest.exists() && !meta.exists(), "nothing is written");
    }
}
