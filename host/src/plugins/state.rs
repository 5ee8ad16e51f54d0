//! Plugin state in front of storage: what calls wrote and storage has not committed
//! yet, visible to later calls at once (a plugin reads its own writes), and forgotten
//! once the commit holding it is decided.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::StateSource;
use crate::storage::{StateWrite, Storage};

/// A plugin's state key.
type StateKey = (String, Vec<u8>);

/// Plugin state written by calls whose records are not yet durable, in front of
/// storage.
#[derive(Debug)]
pub(super) struct PendingState {
    pub(super) storage: Storage,
    pub(super) pending: Mutex<HashMap<StateKey, Option<Vec<u8>>>>,
}

impl PendingState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StateKey, Option<Vec<u8>>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn written(&self, writes: &[StateWrite]) {
        let mut pending = self.lock();
        for w in writes {
            pending.insert((w.plugin.clone(), w.key.clone()), w.value.clone());
        }
    }

    pub(super) fn settled(&self, writes: &[StateWrite]) {
        let mut pending = self.lock();
        for w in writes {
            let key = (w.plugin.clone(), w.key.clone());
            // Unless a later call wrote the key since: its value is still pending.
            if pending.get(&key) == Some(&w.value) {
                pending.remove(&key);
            }
        }
    }
}

impl StateSource for PendingState {
    fn get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if let Some(value) = self.lock().get(&(plugin.to_owned(), key.to_vec())) {
            return Ok(value.clone());
        }
        self.storage
            .state_get(plugin, key)
            .map_err(|e| e.to_string())
    }
}
