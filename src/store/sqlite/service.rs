//! The `service_state` table on the embedded store.

use super::{SqliteStore, StoreResult};

impl SqliteStore {
    pub async fn service_paused(&self) -> StoreResult<bool> {
        unimplemented!()
    }
    pub async fn service_set_paused(&self, _paused: bool) -> StoreResult<()> {
        unimplemented!()
    }
}
