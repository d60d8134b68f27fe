use std::collections::BTreeMap;

use super::*;
use crate::cluster::view::{RawNode, RawSnapshot};

/// The settings of node `n1` (shared with the other core test modules).
pub(super) fn config() -> CoreConfig {
    CoreConfig {
        name: "n1".parse().unwrap(),
        labels: BTreeMap::new(),
        free_bytes: 1 << 30,
        data_plane: true,
        gossip_addr: "10.0.0.1:7946".parse().unwrap(),
        mesh_addr: None,
        mesh_backend: None,
        export_addr: "10.0.0.1:3260".into(),
        timing: Timing::for_interval(100),
        wireguard: None,
    }
}

/// A view in which the holder `n2` is alive at 10.0.0.2.
fn view() -> ClusterView {
    let n2 = RawNode {
        name: "n2".into(),
        generation: 1,
        gossip_addr: "10.0.0.2:7946".parse().unwrap(),
        alive: true,
        heartbeat: 1,
        entries: vec![],
    };
    ClusterView::from_raw(&RawSnapshot { self_name: "n1".into(), nodes: vec![n2] })
}

/// What an agent of the previous version wrote for a volume granted to `n2` whose stop
/// hook was running, and one moving here.
const PREVIOUS_STATE: &str = r#"{"format":1,"node_state":"draining","last_request":{"seq":7,"nonce":"ab","action":"drain","rejected":null},"issued":{"n3":{"seq":9,"nonce":"cd","action":"cordon","issued_by":"n1","options":{"rate_limit":null,"parallel":null,"verify":false}}},"volumes":{"v":{"lease":{"id":"v","size":10,"epoch":2,"phase":{"phase":"granted","holder":"n2","at_ms":5,"exported":false}},"requires":{"zone":"a"},"hooks":{"stop":"systemctl stop db","start":null,"done":null},"arrived":{"from":"n0","epoch":1,"fetched_bytes":3}}},"holding":{"w":{"id":"w","source":"n4","epoch":3,"size":20,"phase":{"phase":"preparing"},"rate_limit":null,"digest":null}},"drain_options":{"rate_limit":null,"parallel":null,"verify":false},"incoming":{"w":{"export":{"addr":"10.0.0.4:3260","iqn":"iqn.2026-11.dev.meshdrain:n4.w"},"requires":{},"hooks":{"stop":null,"start":null,"done":null},"verify":false}}}"#;

#[test]
fn a_state_file_of_the_previous_version_loads_and_writes_back_the_same_bytes() {
    let state: CoreState = serde_json::from_str(PREVIOUS_STATE).unwrap();
    assert_eq!(state.volumes["v"].lease.holder().map(NodeName::as_str), Some("n2"));
    assert_eq!(serde_json::to_string(&state).unwrap(), PREVIOUS_STATE);
}

#[test]
fn an_export_opens_only_after_the_workload_stopped_of_its_grant() {
    let state: CoreState = serde_json::from_str(PREVIOUS_STATE).unwrap();
    let mut core = Core::new(config(), state);
    let v: VolumeId = "v".parse().unwrap();
    // The agent stopped while the stop hook ran: the restart runs it again, no export yet.
    let out = core.restart();
    let stop = DataCommand::StopWorkload { volume: v.clone(), hook: Some("systemctl stop db".into()), epoch: 2 };
    assert_eq!(out.commands.first(), Some(&stop));
    assert!(!out.commands.iter().any(|c| matches!(c, DataCommand::OpenExport { .. })), "{:?}", out.commands);
    // A stale report opens nothing; the one of this grant opens the export to the holder.
    let stale = core.data_event(DataEvent::WorkloadStopped { volume: v.clone(), epoch: 1 }, &view(), 10);
    assert_eq!(stale, Output::default());
    let out = core.data_event(DataEvent::WorkloadStopped { volume: v.clone(), epoch: 2 }, &view(), 11);
    let open = DataCommand::OpenExport {
        volume: v.clone(),
        holder: "n2".parse().unwrap(),
        holder_addr: "10.0.0.2".into(),
        epoch: 2,
    };
    assert_eq!(out, Output { commands: vec![open], persist: true });
    // It is kept (a restart now re-opens without the hook) but not published.
    assert!(matches!(core.state.volumes["v"].lease.phase, SourcePhase::Granted { stopped: true, .. }));
    assert!(!core.desired_keys()["vol/v"].contains("stopped"), "{}", core.desired_keys()["vol/v"]);
    let restarted = Core::new(config(), core.state.clone()).restart();
    assert!(!restarted.commands.iter().any(|c| matches!(c, DataCommand::StopWorkload { .. })));
}

#[test]
fn a_failed_stop_hook_never_leads_to_an_export() {
    let state: CoreState = serde_json::from_str(PREVIOUS_STATE).unwrap();
    let mut core = Core::new(config(), state);
    let v: VolumeId = "v".parse().unwrap();
    core.restart();
    let out = core.data_event(DataEvent::HookFailed { volume: v.clone(), reason: "exit 1".into() }, &view(), 10);
    assert_eq!(out, Output { commands: vec![DataCommand::CloseExport { volume: v.clone() }], persist: true });
    let late = core.data_event(DataEvent::WorkloadStopped { volume: v.clone(), epoch: 2 }, &view(), 11);
    assert_eq!(late, Output::default());
    assert_eq!(core.state.volumes["v"].lease.phase, SourcePhase::Failed { reason: "exit 1".into() });
}
