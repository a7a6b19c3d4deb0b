//! The `instances` table on the embedded store (one replica, but the same
//! API), and held lock keys.

use super::{InstanceRow, LockRow, SqliteStore, StoreResult};

impl SqliteStore {
    pub async fn instance_heartbeat(
        &self,
        _name: &str,
        _version: &str,
        _address: Option<&str>,
        _prune_after_ms: i64,
    ) -> StoreResult<()> {
        unimplemented!()
    }
    pub async fn instance_remove(&self, _name: &str) -> StoreResult<()> {
        unimplemented!()
    }
    pub async fn instance_list(&self, _alive_ms: i64) -> StoreResult<Vec<InstanceRow>> {
        unimplemented!()
    }
    pub async fn lock_list(&self) -> StoreResult<Vec<LockRow>> {
        unimplemented!()
    }
}
