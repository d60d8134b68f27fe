//! Operator-facing agent settings: how the agent logs (`[log]`) and how long a handed-off
//! copy is kept (`[gc]`). README.md, "Configuration"; docs/operations.md, "Retention and gc".

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How log lines are written to stderr (journald keeps them as they are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human line per event (colour only when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// `[log]`: the agent's log format (`--log-format` on the command line wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (default) or `"json"`.
    #[serde(default)]
    pub format: LogFormat,
}

/// `[gc]`: when a handed-off copy on the source is deleted without `meshdrain gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// How long a handed-off copy is kept (a duration: `"24h"`, `"90m"`, `"0s"` deletes at
    /// once after `done`).
    #[serde(default = "default_retention")]
    pub retention: String,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self { retention: default_retention() }
    }
}

fn default_retention() -> String {
    "24h".to_owned()
}

impl GcConfig {
    /// The retention window; `None` if the text is not a duration (validation refuses it).
    pub fn retention(&self) -> Option<Duration> {
        humantime::parse_duration(&self.retention).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<crate::config::AgentConfig, crate::config::ConfigError> {
        let p = std::path::Path::new("/etc/meshdrain/agent.toml");
        let text = format!(
            "name = \"node1\"\nstate_dir = \"/var/lib/meshdrain\"\n[gossip]\nlisten = \"127.0.0.1:7946\"\n{extra}"
        );
        let c = crate::config::AgentConfig::parse(p, &text)?;
        c.validate(p)?;
        Ok(c)
    }

    #[test]
    fn log_and_gc_sections_parse_and_a_bad_retention_names_its_key() {
        let c = load("[log]\nformat = \"json\"\n[gc]\nretention = \"90m\"\n").unwrap();
        assert_eq!((c.log.format, c.gc.retention()), (LogFormat::Json, Some(Duration::from_secs(5400))));
        let c = load("").unwrap();
        assert_eq!((c.log.format, c.gc.retention()), (LogFormat::Text, Some(Duration::from_secs(86_400))));
        let err = load("[gc]\nretention = \"a day\"\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "config /etc/meshdrain/agent.toml: key `gc.retention`: \"a day\" is not a duration \
             (fix: write a duration such as \"24h\", \"90m\" or \"0s\")"
        );
        let err = load("[log]\nformat = \"yaml\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown variant `yaml`, expected `text` or `json`"), "{err}");
    }

    #[test]
    fn retention_defaults_to_a_day_and_parses_durations() {
        assert_eq!(GcConfig::default().retention(), Some(Duration::from_secs(24 * 3600)));
        assert_eq!(GcConfig { retention: "90m".into() }.retention(), Some(Duration::from_secs(5400)));
        assert_eq!(GcConfig { retention: "soon".into() }.retention(), None);
    }
}
