//! The CmdSN window (RFC 7143 §4.2.2.1, serial arithmetic per RFC 1982):
//! which numbered commands to run now, hold for a gap, or drop. Pure.

use std::collections::BTreeMap;

use crate::pdu::Pdu;

/// Commands one connection may have outstanding.
pub const QUEUE_DEPTH: u32 = 64;

/// What to do with an arriving command.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Run these now, in order (the command and any it unblocked).
    Run(Vec<Pdu>),
    /// In the window but ahead of a gap: held until the gap fills.
    Held,
    /// Parking it would take the held commands past the byte budget: the
    /// initiator is hostile or broken, the connection is dropped.
    OverBudget {
        /// Bytes held (with this one) had it been parked.
        bytes: usize,
    },
    /// Outside the window (too low: a duplicate; too high: overrun): ignored, as the RFC says.
    Dropped {
        /// CmdSN of the dropped command.
        cmd_sn: u32,
        /// ExpCmdSN at the time.
        exp: u32,
    },
}

/// ExpCmdSN/MaxCmdSN bookkeeping for one session.
#[derive(Debug)]
pub struct CmdWindow {
    exp: u32,
    held: BTreeMap<u32, Pdu>,
    held_bytes: usize,
    budget: usize,
}

/// What a parked PDU costs: its header, AHS and data segment.
fn cost(p: &Pdu) -> usize {
    crate::pdu::BHS_LEN + p.ahs.len() + p.data.len()
}

impl CmdWindow {
    /// Starts at the CmdSN of the login request, with no byte budget.
    pub fn new(exp: u32) -> CmdWindow {
        CmdWindow::with_budget(exp, usize::MAX)
    }
    /// Starts at `exp`; parked commands may hold at most `budget` bytes.
    pub fn with_budget(exp: u32, budget: usize) -> CmdWindow {
        CmdWindow { exp, held: BTreeMap::new(), held_bytes: 0, budget }
    }
    /// Bytes the parked commands hold (the connection's accounting).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
    /// Current ExpCmdSN.
    pub fn exp(&self) -> u32 {
        self.exp
    }
    /// MaxCmdSN given how many commands are still running.
    pub fn max(&self, in_flight: u32) -> u32 {
        self.exp.wrapping_add(QUEUE_DEPTH.saturating_sub(in_flight + 1))
    }
    /// Admits a command PDU (immediate ones run at once, unnumbered).
    pub fn admit(&mut self, pdu: Pdu, in_flight: u32) -> Admit {
        if pdu.immediate() {
            return Admit::Run(vec![pdu]);
        }
        let sn = pdu.cmd_sn();
        let ahead = sn.wrapping_sub(self.exp);
        let room = self.max(in_flight).wrapping_sub(self.exp);
        if ahead > room || ahead >= QUEUE_DEPTH {
            return Admit::Dropped { cmd_sn: sn, exp: self.exp };
        }
        if ahead > 0 {
            // Keyed by CmdSN: a duplicate of a parked command replaces it.
            let replaced = self.held.get(&sn).map_or(0, cost);
            let bytes = self.held_bytes - replaced + cost(&pdu);
            if bytes > self.budget {
                return Admit::OverBudget { bytes };
            }
            self.held.insert(sn, pdu);
            self.held_bytes = bytes;
            return Admit::Held;
        }
        let mut run = vec![pdu];
        self.exp = self.exp.wrapping_add(1);
        while let Some(p) = self.held.remove(&self.exp) {
            self.held_bytes -= cost(&p);
            run.push(p);
            self.exp = self.exp.wrapping_add(1);
        }
        Admit::Run(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(sn: u32) -> Pdu {
        Pdu::scsi_command(0, sn, sn, 0, &[0; 6], 0, false)
    }

    #[test]
    fn in_order_gap_and_out_of_window() {
        let mut w = CmdWindow::new(u32::MAX - 1);
        assert!(matches!(w.admit(cmd(u32::MAX - 1), 0), Admit::Run(v) if v.len() == 1));
        assert_eq!(w.admit(cmd(0), 0), Admit::Held);
        assert!(matches!(w.admit(cmd(u32::MAX), 0), Admit::Run(v) if v.len() == 2));
        assert_eq!(w.exp(), 1);
        assert!(matches!(w.admit(cmd(0), 0), Admit::Dropped { .. }), "too low");
        assert!(matches!(w.admit(cmd(1 + QUEUE_DEPTH), 0), Admit::Dropped { .. }), "too high");
        assert!(matches!(w.admit(cmd(w.max(10) + 1), 10), Admit::Dropped { .. }), "past MaxCmdSN");
    }

    #[test]
    fn parked_bytes_are_counted_and_bounded() {
        let with_data = |sn: u32, n: usize| {
            let mut p = cmd(sn);
            p.data = bytes::Bytes::from(vec![0u8; n]);
            p
        };
        let mut w = CmdWindow::with_budget(10, 2 * (48 + 1000));
        assert_eq!(w.admit(with_data(12, 1000), 0), Admit::Held);
        assert_eq!(w.admit(with_data(13, 1000), 0), Admit::Held);
        assert_eq!(w.held_bytes(), 2 * 1048);
        assert_eq!(w.admit(with_data(14, 1), 0), Admit::OverBudget { bytes: 2 * 1048 + 49 });
        // A duplicate of a parked CmdSN replaces it without double counting.
        assert_eq!(w.admit(with_data(13, 1000), 0), Admit::Held);
        assert_eq!(w.held_bytes(), 2 * 1048);
        assert!(matches!(w.admit(cmd(10), 0), Admit::Run(v) if v.len() == 1));
        assert!(matches!(w.admit(cmd(11), 0), Admit::Run(v) if v.len() == 3));
        assert_eq!(w.held_bytes(), 0);
    }
}
