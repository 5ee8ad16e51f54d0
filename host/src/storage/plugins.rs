//! What storage keeps for plugins: deployed versions, their components, and each
//! plugin's key-value state.

use serde::{Deserialize, Serialize};

/// A deployed plugin and its versions (`P` + name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// The plugin's name.
    pub name: String,
    /// Every version deployed, oldest first; the last one runs.
    pub versions: Vec<PluginVersion>,
}

impl PluginRecord {
    /// The version that runs.
    pub fn current(&self) -> Option<&PluginVersion> {
        self.versions.last()
    }
}

/// One deployed version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// Its label.
    pub version: String,
    /// The sha256 of its component; the component is stored under it (`W` + sha256).
    pub sha256: [u8; 32],
    /// The component's size in bytes.
    pub size: u64,
    /// When it was deployed (ms since the Unix epoch).
    pub deployed_ms: u64,
}

/// A change to a plugin's state, made durable with the records of the same call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The plugin's name.
    pub plugin: String,
    /// The state key.
    pub key: Vec<u8>,
    /// The new value; `None` removes the key.
    pub value: Option<Vec<u8>>,
}
