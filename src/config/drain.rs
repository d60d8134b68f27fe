//! `[drain]`: what the agent does when the machine shuts down (docs/drain-on-shutdown.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether the agent drains its own node before the machine goes down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Stop as on any SIGTERM: volumes stay here, their workloads stop with the machine.
    #[default]
    Off,
    /// Drain this node first (only when the machine is shutting down, not when only the
    /// agent restarts), within `shutdown_deadline`.
    #[serde(rename = "self")]
    SelfNode,
}

/// `[drain]`: off by default; left out of written configs when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// `"off"` or `"self"`.
    #[serde(default)]
    pub on_shutdown: OnShutdown,
    /// How long the drain on shutdown may take (a duration, default `"5m"`); the unit's
    /// `TimeoutStopSec=` must be above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_deadline: Option<String>,
}

/// The bound when `shutdown_deadline` is unset.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(300);

impl DrainConfig {
    /// Whether nothing is set (the section is then left out of written configs).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The bound (validation refuses what is not a positive duration).
    pub fn shutdown_deadline(&self) -> Option<Duration> {
        match &self.shutdown_deadline {
            None => Some(DEFAULT_SHUTDOWN_DEADLINE),
            Some(t) => humantime::parse_duration(t).ok().filter(|d| !d.is_zero()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_with_a_five_minute_bound_and_self_spelled_self() {
        let d = DrainConfig::default();
        assert_eq!((d.on_shutdown, d.shutdown_deadline()), (OnShutdown::Off, Some(Duration::from_secs(300))));
        let d: DrainConfig = toml::from_str("on_shutdown = \"self\"\nshutdown_deadline = \"90s\"\n").unwrap();
        assert_eq!((d.on_shutdown, d.shutdown_deadline()), (OnShutdown::SelfNode, Some(Duration::from_secs(90))));
        assert_eq!(toml::to_string(&d).unwrap(), "on_shutdown = \"self\"\nshutdown_deadline = \"90s\"\n");
        let zero = DrainConfig { shutdown_deadline: Some("0s".into()), ..d };
        assert_eq!(zero.shutdown_deadline(), None);
    }
}
