//! Pure drain logic: the node lifecycle and node requests (volume drain state machines
//! and placement join them). No I/O, no clocks, no tokio: inputs in, decisions out.

pub mod node;
pub mod placement;
pub mod request;
