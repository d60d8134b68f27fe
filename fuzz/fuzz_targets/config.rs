//! Agent config (src/config.rs): TOML text → `AgentConfig::parse` → `validate`.
//! Invariants: never panics; a config that validates re-serializes to TOML that parses
//! back to the same config (compared through Debug, which shows every field) and
//! validates to the same addresses.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use meshdrain::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/etc/meshdrain/fuzz.toml");
    let Ok(config) = AgentConfig::parse(path, text) else { return };
    let Ok(addrs) = config.validate(path) else { return };
    let again = toml::to_string(&config).unwrap_or_else(|e| panic!("valid config does not serialize: {e}"));
    let reparsed = AgentConfig::parse(path, &again)
        .unwrap_or_else(|e| panic!("re-serialized config does not parse: {e}\n{again}"));
    assert_eq!(format!("{reparsed:?}"), format!("{config:?}"), "config changed through TOML:\n{again}");
    let readdrs = reparsed.validate(path).unwrap_or_else(|e| panic!("re-serialized config does not validate: {e}"));
    assert_eq!(format!("{readdrs:?}"), format!("{addrs:?}"));
});
