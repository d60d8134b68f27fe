#!/usr/bin/env python3
"""Writes the seed corpora of the byte-format fuzz targets (fuzz/corpus/<target>/seed-*):
a few real inputs each, in the framing the target reads (see each target's header).
The mesh seeds (cert, join) come from fuzz/seedgen, which needs the fixture keys."""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def pdu(op, flags, data=b"", ahs=b"", hd=False, dd=False, itt=1):
    bhs = bytearray(48)
    bhs[0], bhs[1], bhs[4] = op, flags, len(ahs) // 4
    bhs[5:8] = len(data).to_bytes(3, "big")
    bhs[16:20] = itt.to_bytes(4, "big")
    head = bytes(bhs) + ahs
    out = head + (struct.pack("<I", crc32c(head)) if hd else b"")
    if data:
        padded = data + b"\0" * ((4 - len(data) % 4) % 4)
        out += padded + (struct.pack("<I", crc32c(padded)) if dd else b"")
    return out


def record(head, payload):
    return bytes([head]) + struct.pack("<H", len(payload)) + payload


def text(**kv):
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in kv.items())


IQN_I = "iqn.2026-11.dev.meshdrain:i"
IQN_T = "iqn.2026-11.dev.meshdrain:fuzz"
OPS = text(HeaderDigest="None,CRC32C", DataDigest="None", MaxRecvDataSegmentLength=262144,
           MaxBurstLength=1048576, FirstBurstLength=65536, ImmediateData="Yes", InitialR2T="No",
           DefaultTime2Wait=2, DefaultTime2Retain=0, ErrorRecoveryLevel=0, MaxConnections=1,
           MaxOutstandingR2T=1, IFMarker="No", OFMarker="No", DataPDUInOrder="Yes",
           DataSequenceInOrder="Yes", InitiatorAlias="fuzz")

# pdu: [codec sel][frames]; sel bit0 header digest, bit1 data digest, bits 2-3 limit.
login = text(InitiatorName=IQN_I, TargetName=IQN_T, AuthMethod="None")
write("pdu", "login", bytes([4]) + pdu(0x43, 0x81, login))
cdb = bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]) + bytes(6)
cmd = bytearray(pdu(0x01, 0xC1, itt=2))
cmd[32:48] = cdb
write("pdu", "digests", bytes([7]) + pdu(0x01, 0xC1, hd=True, dd=True) + pdu(0x00, 0x80, b"ping!", hd=True, dd=True))
write("pdu", "ahs-and-partial", bytes([4]) + bytes(cmd) + pdu(0x01, 0x81, ahs=bytes(8)) + pdu(0x05, 0x80, b"x" * 600)[:100])
write("pdu", "two-frames", bytes([8]) + pdu(0x04, 0x80, b"SendTargets=All\0") + pdu(0x06, 0x80))

# login_text: [chap bit][records [flags][u16 len][text]]; flags T(0x80) C(0x40) CSG<<2 NSG.
names = text(InitiatorName=IQN_I, TargetName=IQN_T, SessionType="Normal", AuthMethod="None")
write("login_text", "normal", b"\0" + record(0x81, names) + record(0x87, OPS))
write("login_text", "discovery",
      b"\0" + record(0x87, text(InitiatorName=IQN_I, SessionType="Discovery", MaxRecvDataSegmentLength=8192)))
write("login_text", "continued", b"\0" + record(0x41, names[:20]) + record(0x81, names[20:]) + record(0x87, OPS))
chap = text(InitiatorName=IQN_I, TargetName=IQN_T, AuthMethod="CHAP,None")
write("login_text", "chap", b"\1" + record(0x01, chap) + record(0x01, text(CHAP_A="5"))
      + record(0x81, text(CHAP_N="fuzzuser", CHAP_R="0x" + "00" * 16)) + record(0x87, OPS))

# chap: [bit0: send the correct response][CHAP_R value]
write("chap", "wrong", b"\0" + b"0x0123456789abcdef0123456789ABCDEF")
write("chap", "correct", b"\1")
write("chap", "short", b"\0" + b"0Xab")

# config: TOML
base = """name = "node1"
state_dir = "/var/lib/meshdrain"
[labels]
zone = "a"
[gossip]
listen = "127.0.0.1:7946"
seeds = ["127.0.0.1:7947", "seed.example:7946"]
interval_ms = 200
phi_threshold = 8.5
[metrics]
listen = "127.0.0.1:9477"
"""
write("config", "example", base.encode())
write("config", "mesh", (base + """[mesh]
backend = "userspace"
interface = "md0"
listen_port = 51820
endpoint = "198.18.0.1:51820"
certificate = "/etc/meshdrain/node.cert.json"
fleet_ca = "/etc/meshdrain/fleet-ca.pub"
seeds = [{ public_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", endpoint = "198.18.0.2:51820" }]
""").encode())
write("config", "iscsi", (base.replace('listen = "127.0.0.1:7946"', 'listen = "0.0.0.0:7946"\nadvertise = "198.18.0.1:7946"')
                          + """[dataplane]
backend = "iscsi"
export_port = 3260
clone = "userspace"
region_size = 65536
clone_parallelism = 4
clone_in_flight = 4194304
clone_read_through = false
[pool]
dir = "/var/lib/meshdrain/pool"
capacity_bytes = 107374182400
""").encode())

# gossip_values: [decoder sel][JSON or key]
def js(sel, value):
    return bytes([sel]) + json.dumps(value, separators=(",", ":")).encode()

write("gossip_values", "node", js(0, {
    "v": 1, "name": "node1", "state": "draining", "gossip_addr": "127.0.0.1:7946", "mesh_addr": "fd00::1",
    "mesh_backend": "userspace", "free_bytes": 10, "labels": {"zone": "a"}, "volumes": 2, "agent_version": "0.1.0",
    "wireguard": {"public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", "endpoints": ["198.18.0.1:51820"],
                  "certificate": {"name": "n", "not_after": 1.5e9}, "revocations": None},
    "last_request": {"seq": 5, "nonce": "n", "action": "drain"}}))
write("gossip_values", "volume", js(1, {
    "v": 1, "size": 1048576, "epoch": 3, "phase": "granted", "holder": "node2", "at_ms": 5, "exported": True,
    "requires": {"zone": "a"}, "export": {"addr": "[fd00::1]:3260", "iqn": IQN_T}, "rate_limit": 1000,
    "hooks": {"stop": "true"}, "arrived": {"from": "node0", "epoch": 2, "fetched_bytes": 7}, "verify": True}))
write("gossip_values", "volume-cut-over", js(1, {
    "v": 1, "size": 4096, "epoch": 1, "phase": "cut_over", "holder": "node2", "at_ms": 9, "verifying": True,
    "verify_failed": "digest differs"}))
write("gossip_values", "claim", js(2, {"v": 1, "epoch": 4}))
write("gossip_values", "progress", js(3, {
    "v": 1, "source": "node1", "epoch": 3, "phase": "running", "stalled": False, "hydrated": 5, "total": 10,
    "bytes_per_s": 100, "fetched_bytes": 4096, "read_through_bytes": 0, "error": None}))
write("gossip_values", "done", js(4, {"v": 1, "source": "node1", "epoch": 3, "size": 1048576, "digest": "ab12"}))
write("gossip_values", "request", js(5, {
    "v": 1, "seq": 5, "nonce": "n", "action": "drain", "issued_by": "node1",
    "options": {"rate_limit": 100, "parallel": 2, "verify": True}}))
write("gossip_values", "key", b"\6claim/node1/vol-7")

# clone_metadata: [mode][region sel][size u32 LE][epoch][persist count] + raw store or patches
def meta(mode, rsel, size, epoch, count, rest=b""):
    return bytes([mode, rsel]) + struct.pack("<I", size) + bytes([epoch, count]) + rest

MIB = 1 << 20
write("clone_metadata", "created", meta(1, 7, MIB, 4, 5))
write("clone_metadata", "complete-named", meta(1 | 2 | 8, 7, MIB + 100, 4, 9))
write("clone_metadata", "bitmap-flip", meta(1 | 8, 0, 3 * MIB, 7, 3, struct.pack("<HB", 4096 + 9, 1)))
write("clone_metadata", "reserved-flip", meta(1, 1, MIB, 1, 2, struct.pack("<HB", 1000, 0x80)))
write("clone_metadata", "truncated", meta(1 | 4, 7, MIB, 4, 5, struct.pack("<HB", 4200, 0)))
write("clone_metadata", "other-dest", meta(1 | 8 | 16, 7, MIB, 4, 1))
write("clone_metadata", "zeroed", meta(0, 7, MIB, 4, 0, bytes(4096 + 4096)))
# A version 1 file (header checksum, raw bitmap): region 4096 (sel 7), 1 MiB, source
# "iqn.fuzz:src1", epoch 1 (the target's epoch byte 4 gives src1 epoch 1).
src = b"iqn.fuzz:src1"
h = bytearray(512)
h[0:8] = b"MDCLONE\0"
h[8:12] = struct.pack("<I", 1)
h[16:40] = struct.pack("<QQQ", 4096, MIB, 1)
h[40:42] = struct.pack("<H", len(src))
h[42:42 + len(src)] = src
h[508:512] = struct.pack("<I", crc32c(bytes(h[:508])))
write("clone_metadata", "v1", meta(0, 7, MIB, 4, 0, bytes(h) + bytes(4096 - 512) + b"\x05" + bytes(31)))
