//! The owner loop's answers to `meshdrain node lost` and `meshdrain partial`
//! (docs/failures.md): the core decides, the loop persists, publishes and acts.

use tracing::warn;

use super::{Agent, now_ms};
use crate::api::ApiError;
use crate::cluster::gossip::Gossip;
use crate::decide::model::NodeName;

impl<G: Gossip> Agent<G> {
    /// `meshdrain node lost`: the core decides; the declaration is persisted before it is
    /// published (a restart republishes it), and pushed at once.
    pub(super) async fn node_lost(
        &mut self,
        node: &NodeName,
        force: bool,
        accept_data_loss: bool,
        dry_run: bool,
    ) -> Result<crate::api::LostReport, ApiError> {
        let before = self.core.state.clone();
        let (effects, out) = self.core.declare_lost(node, force, accept_data_loss, dry_run, &self.view, now_ms())?;
        if let Err(e) = self.apply(before, out).await {
            return Err(ApiError::NotRecorded {
                what: format!("the declaration of {node} as lost"),
                reason: e.to_string(),
            });
        }
        if !dry_run {
            warn!(%node, accept_data_loss, "node declared lost");
            self.publish().await;
            self.on_tick().await;
        }
        Ok(crate::api::LostReport { node: node.clone(), declared: !dry_run, accept_data_loss, effects })
    }

    /// `meshdrain partial accept|delete`.
    pub(super) async fn partial(
        &mut self,
        volume: &crate::decide::model::VolumeId,
        verdict: crate::decide::core::PartialVerdict,
    ) -> Result<String, ApiError> {
        let before = self.core.state.clone();
        let out = self.core.partial(volume, verdict)?;
        if let Err(e) = self.apply(before, out).await {
            return Err(ApiError::NotRecorded {
                what: format!("the verdict on volume {volume}"),
                reason: e.to_string(),
            });
        }
        self.publish().await;
        Ok(match verdict {
            crate::decide::core::PartialVerdict::Accept => {
                format!("volume {volume}: the partial copy here is the volume; missing regions read as zeros")
            }
            crate::decide::core::PartialVerdict::Delete => format!("volume {volume}: the partial copy here is deleted"),
        })
    }
}
