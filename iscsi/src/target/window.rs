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
}

impl CmdWindow {
    /// Starts at the CmdSN of the login request.
    pub fn new(exp: u32) -> CmdWindow {
        CmdWindow { exp, held: BTreeMap::new() }
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
            self.held.insert(ahead, pdu);
            // Re-key lazily: offsets are relative to `exp` at insert time.
            let exp = self.exp;
            let held = std::mem::take(&mut self.held);
            self.held = held.into_values().map(|p| (p.cmd_sn().wrapping_sub(exp), p)).collect();
            return Admit::Held;
        }
        let mut run = vec![pdu];
        self.exp = self.exp.wrapping_add(1);
        loop {
            let exp = self.exp;
            let next = self.held.iter().find(|(_, p)| p.cmd_sn() == exp).map(|(k, _)| *k);
            match next.and_then(|k| self.held.remove(&k)) {
                Some(p) => {
                    run.push(p);
                    self.exp = self.exp.wrapping_add(1);
                }
                None => break,
            }
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
}
