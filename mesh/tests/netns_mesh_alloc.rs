//! netns tier, own test binary because it installs a counting global allocator: the
//! userspace WireGuard data path must not allocate per packet. Needs root and /dev/net/tun.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use meshdrain_mesh::{FleetCa, PeerChange};
use meshdrain_testkit::netns::{Lan, Netns, require, require_tun};
#[path = "../../tests/common/mesh_node.rs"]
mod mesh_node;
use mesh_node::{bring_up, peer_of};

/// Counts heap allocations of the whole process (the data path must not allocate per packet).
struct Counting;
static ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

/// Streams `len` bytes one way over TCP with fixed buffers (no allocation per write).
fn stream(from: &Netns, to_ns: &Netns, to_addr: Ipv6Addr, port: u16, len: usize) {
    let listener = to_ns.run_in(move || TcpListener::bind((to_addr, port))).unwrap().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < len {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended after {got} bytes");
            got += n;
        }
    });
    from.run_in(move || {
        let mut c = TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(10)).unwrap();
        let buf = vec![7u8; 1 << 16];
        let mut sent = 0;
        while sent < len {
            c.write_all(&buf).unwrap();
            sent += buf.len();
        }
    })
    .unwrap();
    server.join().unwrap();
}

#[test]
fn netns_mesh_userspace_data_path_does_not_allocate_per_packet() {
    require(&[]).unwrap();
    require_tun().unwrap();
    let lan = Lan::new(2).unwrap();
    let ca = FleetCa::generate();
    let mut a = bring_up(&lan.nodes[0], &ca, "a");
    let mut b = bring_up(&lan.nodes[1], &ca, "b");
    a.backend.apply(&[PeerChange::Add(peer_of(&b, Lan::underlay(1)))]).unwrap();
    b.backend.apply(&[PeerChange::Add(peer_of(&a, Lan::underlay(0)))]).unwrap();
    // Warm up: handshake, buffers at their working size.
    stream(&lan.nodes[0], &lan.nodes[1], b.address, 7021, 8 << 20);
    let before = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    stream(&lan.nodes[0], &lan.nodes[1], b.address, 7022, 64 << 20);
    let allocs = ALLOCS.load(std::sync::atomic::Ordering::Relaxed) - before;
    // 64 MiB is ~50 000 packets each way; the test's own threads and sockets take a few dozen
    // allocations (24 measured).
    assert!(allocs < 500, "{allocs} allocations while 64 MiB crossed the tunnel");
    let st = a.backend.status().unwrap();
    assert!(st.peers[0].tx_bytes > 72 << 20, "counters: {:?}", st.peers[0]);
}
