use super::*;
use crate::store::MemStore;

fn lun(blocks: usize) -> Lun {
    let data: Vec<u8> = (0..blocks * 512).map(|i| (i / 512) as u8).collect();
    Lun {
        store: Arc::new(MemStore(Bytes::from(data))),
        serial: "0123456789abcdef".into(),
        naa: [1; 16],
        max_transfer_blocks: MAX_TRANSFER_BLOCKS,
    }
}

fn sense_of(r: &ScsiResult) -> (u8, u8) {
    assert_eq!(r.status, CHECK_CONDITION);
    (r.sense[2], r.sense[12])
}

#[test]
fn reads_and_range() {
    let l = lun(16);
    let r = l.execute(&[0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0]);
    assert_eq!(r.status, GOOD);
    assert_eq!(r.data.len(), 1024);
    assert_eq!(r.data[0], 3);
    assert_eq!(r.data[600], 4);
    assert_eq!(sense_of(&l.execute(&[0x28, 0, 0, 0, 0, 15, 0, 0, 2, 0])), (0x05, 0x21));
    assert_eq!(sense_of(&l.execute(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0])), (0x05, 0x24));
    let r = l.execute(&[0x08, 0, 0, 1, 1, 0]);
    assert_eq!((r.status, r.data[0]), (GOOD, 1));
    let mut c16 = [0u8; 16];
    c16[0] = 0x88;
    c16[9] = 15;
    c16[13] = 1;
    assert_eq!(l.execute(&c16).data[0], 15);
}

#[test]
fn writes_are_protected_and_unknown_opcodes_invalid() {
    let l = lun(4);
    for op in WRITE_OPCODES {
        let mut cdb = [0u8; 16];
        cdb[0] = *op;
        assert_eq!(sense_of(&l.execute(&cdb)), (0x07, 0x27), "opcode {op:#x}");
    }
    assert_eq!(sense_of(&l.execute(&[0xc0, 0, 0, 0, 0, 0])), (0x05, 0x20));
}

#[test]
fn capacity_inquiry_mode_sense() {
    let l = lun(8);
    let r = l.execute(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&r.data[..], &[0, 0, 0, 7, 0, 0, 2, 0]);
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    assert_eq!(l.execute(&c).data[7], 7);
    for page in [0x00u8, 0x80, 0x83, 0xb0, 0xb1, 0xb2] {
        let r = l.execute(&[0x12, 1, page, 1, 0, 0]);
        assert_eq!((r.status, r.data[1]), (GOOD, page));
    }
    let r = l.execute(&[0x1a, 0, 0x3f, 0, 255, 0]);
    assert_eq!(r.data[2] & 0x80, 0x80, "write protect bit");
    let r = l.execute(&[0x5a, 0, 0x3f, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(r.data[3] & 0x80, 0x80, "write protect bit");
}

#[test]
fn lba_status_of_memory_is_one_mapped_extent() {
    let l = lun(8);
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[13] = 255;
    let r = l.execute(&c);
    assert_eq!(r.status, GOOD);
    assert_eq!(r.data.len(), 24);
    assert_eq!(&r.data[16..20], &[0, 0, 0, 8]);
    assert_eq!(r.data[20], 0);
}
