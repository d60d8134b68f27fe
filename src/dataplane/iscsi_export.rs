//! The source side of the real data path: each granted volume is a read-only LUN on our
//! iSCSI target, listening on this node's mesh address. The ACL admits exactly one
//! initiator (the holder's address and its per-epoch name), so re-granting at a new epoch
//! drops the old holder's sessions and keeps it out: the export is the fence.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use meshdrain_iscsi::{Acl, Target, TargetConfig};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::executor::{ExportGrant, ExportService};

/// Our iSCSI target serving this node's exports.
pub struct IscsiExports {
    target: Arc<Target>,
    /// Volume id → IQN of its open export.
    open: Mutex<BTreeMap<String, String>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    listen: SocketAddr,
}

impl std::fmt::Debug for IscsiExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiExports").field("listen", &self.listen).field("open", &self.open).finish()
    }
}

impl IscsiExports {
    /// Binds the portal on `listen` (this node's mesh address) and serves it until dropped.
    /// Must run inside the agent's runtime.
    pub async fn bind(listen: SocketAddr, limits: meshdrain_iscsi::target::Limits) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen for iSCSI on {listen}: {e} (is another target using the port? set dataplane.export_port)"
                ),
            )
        })?;
        let listen = listener.local_addr()?;
        let target = Target::with_limits(std::time::Duration::from_secs(10), limits);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let served = target.clone();
        tokio::spawn(async move {
            if let Err(e) = meshdrain_iscsi::serve(listener, served, stop_rx).await {
                warn!("iSCSI portal stopped: {e}");
            }
        });
        info!(%listen, "iSCSI portal listening");
        Ok(Self { target, open: Mutex::new(BTreeMap::new()), stop: Mutex::new(Some(stop_tx)), listen })
    }

    /// Where the portal listens (the port is resolved when 0 was asked for).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Sessions logged in to a volume's export (for status and tests).
    pub fn sessions(&self, volume: &str) -> usize {
        let iqn = self.open.lock().expect("exports lock").get(volume).cloned();
        iqn.and_then(|iqn| self.target.export(&iqn)).map_or(0, |e| e.session_count())
    }
}

impl Drop for IscsiExports {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().expect("stop lock").take() {
            let _ = stop.send(());
        }
    }
}

fn acl_for(grant: &ExportGrant) -> Result<Acl, String> {
    let addr: IpAddr = grant.holder_addr.trim_matches(['[', ']']).parse().map_err(|_| {
        format!("holder address {:?} of volume {} is not an IP address", grant.holder_addr, grant.volume)
    })?;
    Ok(Acl { addresses: vec![addr], initiators: vec![grant.initiator_iqn.clone()] })
}

impl ExportService for IscsiExports {
    fn open(&self, grant: &ExportGrant) -> Result<(), String> {
        let acl = acl_for(grant)?;
        if let Some(export) = self.target.export(&grant.iqn) {
            // A new holder or epoch: the old one's sessions go now.
            export.set_acl(acl, grant.epoch);
        } else {
            let config = TargetConfig::new(&grant.iqn, grant.path.clone()).with_acl(acl).with_epoch(grant.epoch);
            self.target.open_export(config).map_err(|e| e.to_string())?;
        }
        self.open.lock().expect("exports lock").insert(grant.volume.clone(), grant.iqn.clone());
        Ok(())
    }

    fn close(&self, volume: &str) {
        if let Some(iqn) = self.open.lock().expect("exports lock").remove(volume) {
            self.target.close_export(&iqn);
        }
    }
}
