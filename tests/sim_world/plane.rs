//! The simulation's fake data plane: commands the cores emit, logins, hydration and
//! workload writes (tests/sim_world/mod.rs).

use std::collections::BTreeSet;

use meshdrain::decide::core::{DataCommand, DataEvent};
use meshdrain::decide::model::{CloneProgress, Hydration, VolumeId};

use super::{Clone_, REGIONS, World};

impl World {
    pub fn execute(&mut self, i: usize, cmd: DataCommand) {
        let seed = self.seed;
        let name = self.nodes[i].name.clone();
        match cmd {
            DataCommand::StopWorkload { volume, epoch, .. } => {
                if self.rng.chance(3) {
                    self.nodes[i].events.push(DataEvent::HookFailed { volume, reason: "stop hook exited 1".into() });
                } else {
                    self.nodes[i].source_running.remove(&volume);
                    self.nodes[i].events.push(DataEvent::WorkloadStopped { volume, epoch });
                }
            }
            DataCommand::StartWorkload { volume, .. } => {
                self.nodes[i].source_running.insert(volume);
            }
            DataCommand::OpenExport { volume, holder, epoch, .. } => {
                assert!(
                    self.nodes[i].stopped.contains(&(volume.clone(), epoch)),
                    "seed {seed}: {name} exports {volume} for epoch {epoch} before its WorkloadStopped"
                );
                assert!(!self.nodes[i].source_running.contains(&volume), "seed {seed}: exporting a running volume");
                self.nodes[i].exports.insert(volume.clone(), (holder, epoch));
                self.nodes[i].events.push(DataEvent::ExportOpened { volume, epoch });
            }
            DataCommand::CloseExport { volume } => {
                self.nodes[i].exports.remove(&volume);
            }
            DataCommand::DeleteData { volume } => {
                // Another node not declared lost has every region: a copy, or (after a
                // second move, tests/sim_drain.rs) a clone whose missing regions its own
                // source, not this node, still has.
                let want = self.expected.get(&volume);
                let complete = self.nodes.iter().enumerate().any(|(j, n)| {
                    if n.name == name || self.lost.contains(&j) {
                        return false;
                    }
                    if n.copies.get(&volume) == want {
                        return true;
                    }
                    let Some(c) = n.clones.get(&volume).filter(|c| c.source != name && !c.source_lost) else {
                        return false;
                    };
                    let from = self.nodes.iter().position(|x| x.name == c.source);
                    let base = from.filter(|s| !self.lost.contains(s)).and_then(|s| self.nodes[s].copies.get(&volume));
                    base.zip(want).is_some_and(|(base, want)| {
                        c.dest.iter().zip(base).map(|(d, b)| d.unwrap_or(*b)).eq(want.iter().copied())
                    })
                });
                assert!(complete, "seed {seed}: {name} deletes {volume} while no other node has every region");
                assert!(!self.nodes[i].source_running.contains(&volume), "seed {seed}: deleting a running volume");
                self.nodes[i].copies.remove(&volume);
            }
            DataCommand::PrepareClone { volume, source, epoch, .. } => {
                let keep = self.nodes[i].clones.get(&volume).is_some_and(|c| c.epoch == epoch);
                if !keep {
                    if let Some(old) = self.nodes[i].clones.get(&volume) {
                        assert!(!old.running, "seed {seed}: replacing a clone the workload runs on");
                    }
                    self.nodes[i].clones.insert(
                        volume.clone(),
                        Clone_ {
                            epoch,
                            source,
                            dest: vec![None; REGIONS],
                            fetched: BTreeSet::new(),
                            running: false,
                            source_lost: false,
                        },
                    );
                }
                // Login happens over the next ticks (see `data_plane`).
            }
            DataCommand::StartHeldWorkload { volume, .. } => {
                let c = self.nodes[i]
                    .clones
                    .get_mut(&volume)
                    .unwrap_or_else(|| panic!("seed {seed}: start without a clone"));
                c.running = true;
            }
            DataCommand::Finalize { volume, .. } => {
                let Some(c) = self.nodes[i].clones.remove(&volume) else {
                    // Already swapped before a crash: idempotent.
                    assert!(
                        self.nodes[i].copies.contains_key(&volume),
                        "seed {seed}: finalize with neither clone nor data"
                    );
                    self.nodes[i].events.push(DataEvent::Finalized { volume, digest: None });
                    return;
                };
                let data: Vec<u32> = c
                    .dest
                    .iter()
                    .map(|r| {
                        r.unwrap_or_else(|| {
                            panic!(
                                "seed {seed}: {name} finalizes {volume} before full hydration: {:?}",
                                self.nodes[i].core.state.holding.get(&volume)
                            )
                        })
                    })
                    .collect();
                self.nodes[i].copies.insert(volume.clone(), data);
                self.hops += u64::from(c.source != super::n0());
                self.nodes[i].events.push(DataEvent::Finalized { volume, digest: None });
            }
            DataCommand::SetRateLimit { .. } => {}
            DataCommand::VerifyCopy { volume, epoch, .. } => {
                self.nodes[i].events.push(DataEvent::Verified { volume, epoch, result: Ok(()) });
            }
            DataCommand::DiscardClone { volume } => {
                if let Some(c) = self.nodes[i].clones.remove(&volume) {
                    // Only the operator's `partial delete` drops a copy the workload ran on.
                    assert!(!c.running || c.source_lost, "seed {seed}: discarding a clone the workload runs on");
                }
            }
            DataCommand::DeclareSourceLost { volume } => {
                let result = match self.nodes[i].clones.get_mut(&volume) {
                    Some(c) => {
                        c.source_lost = true;
                        Ok((c.dest.iter().filter(|r| r.is_none()).count() as u64, REGIONS as u64))
                    }
                    None => Err("no clone".to_owned()),
                };
                self.nodes[i].events.push(DataEvent::SourceLost { volume, result });
            }
            DataCommand::AcceptPartial { volume } => {
                let c = self.nodes[i].clones.get_mut(&volume).expect("accepting a partial copy with no clone");
                assert!(c.source_lost, "seed {seed}: accepting a partial copy of a live source");
                // Missing regions read as zeros from now on.
                for (r, v) in c.dest.iter_mut().enumerate() {
                    if v.is_none() {
                        *v = Some(0);
                        self.expected.get_mut(&volume).unwrap()[r] = 0;
                    }
                }
            }
            DataCommand::SetAside { volume, epoch, .. } => {
                let n = &mut self.nodes[i];
                n.source_running.remove(&volume);
                n.exports.remove(&volume);
                let had = n.clones.remove(&volume).is_some() | n.copies.remove(&volume).is_some();
                if had {
                    n.aside.push((volume, epoch));
                }
            }
            DataCommand::DeleteAside { volume, epoch } => {
                self.nodes[i].aside.retain(|a| *a != (volume.clone(), epoch));
            }
        }
    }

    /// Logins, hydration and workload writes.
    pub fn data_plane(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            if !self.nodes[i].up {
                continue;
            }
            let ids: Vec<VolumeId> = self.nodes[i].clones.keys().cloned().collect();
            for id in ids {
                let (epoch, source) = {
                    let c = &self.nodes[i].clones[&id];
                    (c.epoch, c.source.clone())
                };
                let s = self.nodes.iter().position(|x| x.name == source).unwrap();
                let me = self.nodes[i].name.clone();
                let reachable = self.nodes[s].up && self.linked(i, s);
                let allowed = self.nodes[s].exports.get(&id) == Some(&(me.clone(), epoch));
                let holder_phase_ready = self.nodes[i].core.state.holding.get(&id).map(|h| h.phase.clone());
                if matches!(holder_phase_ready, Some(meshdrain::decide::lease::HolderPhase::Preparing)) && reachable {
                    self.nodes[i].events.push(if allowed {
                        DataEvent::CloneReady { volume: id.clone(), epoch }
                    } else {
                        DataEvent::CloneFailed { volume: id.clone(), epoch, reason: "login refused".into() }
                    });
                }
                if !self.nodes[i].clones[&id].running {
                    continue;
                }
                // Workload writes whole regions on the clone.
                if self.rng.chance(30) {
                    let r = self.rng.below(REGIONS as u64) as usize;
                    let val = self.rng.next() as u32;
                    self.nodes[i].clones.get_mut(&id).unwrap().dest[r] = Some(val);
                    self.expected.get_mut(&id).unwrap()[r] = val;
                }
                let stalled = !(reachable && allowed) || self.nodes[i].clones[&id].source_lost;
                if !stalled {
                    for _ in 0..3 {
                        let missing: Vec<usize> =
                            (0..REGIONS).filter(|r| self.nodes[i].clones[&id].dest[*r].is_none()).collect();
                        if missing.is_empty() {
                            break;
                        }
                        let r = missing[self.rng.below(missing.len() as u64) as usize];
                        let val = self.nodes[s]
                            .copies
                            .get(&id)
                            .unwrap_or_else(|| panic!("seed {}: {id} read after delete", self.seed))[r];
                        let c = self.nodes[i].clones.get_mut(&id).unwrap();
                        assert!(c.fetched.insert(r), "seed {}: region {r} of {id} fetched twice", self.seed);
                        c.dest[r] = Some(val);
                    }
                }
                let c = &self.nodes[i].clones[&id];
                let hydrated = c.dest.iter().filter(|r| r.is_some()).count() as u64;
                self.nodes[i].events.push(DataEvent::Progress {
                    volume: id.clone(),
                    progress: CloneProgress {
                        hydration: Hydration { hydrated, total: REGIONS as u64, ..Default::default() },
                        stalled,
                        error: None,
                    },
                });
                if hydrated == REGIONS as u64 {
                    self.nodes[i].events.push(DataEvent::Hydrated { volume: id.clone() });
                }
            }
            // The source's own workload writes while it runs there.
            let running: Vec<VolumeId> = self.nodes[i].source_running.iter().cloned().collect();
            for id in running {
                if self.rng.chance(20)
                    && let Some(copy) = self.nodes[i].copies.get_mut(&id)
                {
                    let r = self.rng.below(REGIONS as u64) as usize;
                    let val = self.rng.next() as u32;
                    copy[r] = val;
                    self.expected.get_mut(&id).unwrap()[r] = val;
                }
            }
        }
    }
}
