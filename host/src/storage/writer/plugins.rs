//! Staging plugin writes: a plugin's record and component (in parts), its removal
//! (with the components no other plugin uses; its state is purged after, in steps, by
//! `cleanup.rs`), and the state writes of a call, in the commit of the records it
//! produced (unless the plugin was removed since).

use super::{CommitGroup, Writer};
use crate::storage::keys;
use crate::storage::{PluginRecord, StateWrite, StorageError};

impl Writer {
    /// Stages a plugin's record and, if given, its current component in parts.
    pub(super) fn stage_put_plugin(
        &self,
        group: &mut CommitGroup,
        record: &PluginRecord,
        wasm: Option<&[u8]>,
    ) {
        if let (Some(wasm), Some(version)) = (wasm, record.current()) {
            for (part, bytes) in (0u32..).zip(wasm.chunks(self.part_bytes)) {
                group
                    .batch
                    .insert(&keys::wasm_part(&version.sha256, part)[..], bytes);
            }
            group.components.insert(version.sha256);
        }
        // Invariant: a PluginRecord holds only strings, integers and byte arrays, which
        // postcard always encodes.
        let encoded = postcard::to_allocvec(record).expect("plugin records always encode");
        group.batch.insert(keys::plugin(&record.name), encoded);
        group.plugins.insert(record.name.clone(), true);
    }

    /// Removes a plugin's record, and each of its components that no other plugin
    /// uses. Its state stays, behind a purge marker, for [`Writer::purge_state`] to
    /// remove in steps: all of it in this commit would hold memory in proportion to
    /// it. The marker is written whether or not state is stored: this commit may
    /// write some of its calls' state too, and later commits write none
    /// ([`Writer::stage_state`]).
    pub(super) fn stage_remove_plugin(
        &self,
        group: &mut CommitGroup,
        name: &str,
    ) -> Result<(), StorageError> {
        let Some(value) = self.tree.get(keys::plugin(name))? else {
            return Ok(());
        };
        let record: PluginRecord = postcard::from_bytes(&value)
            .map_err(|e| StorageError::corrupt(format!("plugin record `{name}`: {e}")))?;
        let mut in_use = group.components.clone();
        for other in self.tree.scan_prefix([keys::PLUGIN]).values() {
            let other: PluginRecord = postcard::from_bytes(&other?)
                .map_err(|e| StorageError::corrupt(format!("plugin record: {e}")))?;
            if other.name != name {
                in_use.extend(other.versions.iter().map(|v| v.sha256));
            }
        }
        for version in &record.versions {
            if !in_use.contains(&version.sha256) {
                for part in self.tree.scan_prefix(keys::wasm(&version.sha256)).keys() {
                    group.batch.remove(part?);
                }
            }
        }
        group.batch.insert(keys::state_purge(name), &[][..]);
        group.batch.remove(keys::plugin(name));
        group.plugins.insert(name.to_owned(), false);
        Ok(())
    }

    /// Stages the state writes of plugin calls, but not those of a plugin removed
    /// since the call ran: they would outlive its state's purge, and a plugin deployed
    /// again under the name would find them.
    pub(super) fn stage_state(&self, group: &mut CommitGroup, state: Vec<StateWrite>) {
        for write in state {
            let deployed = match group.plugins.get(&write.plugin) {
                Some(&deployed) => deployed,
                None => {
                    // A read that fails keeps the write, as before this check: storage
                    // is failing anyway, and the commit will say so.
                    let key = keys::plugin(&write.plugin);
                    let deployed = self.tree.contains_key(key).unwrap_or(true);
                    group.plugins.insert(write.plugin.clone(), deployed);
                    deployed
                }
            };
            if deployed {
                group.put(keys::state(&write.plugin, &write.key), write.value);
            }
        }
    }
}
