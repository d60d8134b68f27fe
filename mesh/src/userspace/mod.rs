//! Our own userspace WireGuard device: boringtun's sans-IO `noise::Tunn` for the protocol,
//! and a data path built for throughput on few cores (see [`device`]).

pub mod gso;
