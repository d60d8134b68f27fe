//! meshdrain-testkit: privileged test fixtures (network namespaces, veth, bridges, QEMU VMs, tgtd)
//! shared by the netns and vm test tiers. Every fixture cleans up on drop, also on panic.
pub mod netns;
pub mod tgtd;
pub mod vm;
