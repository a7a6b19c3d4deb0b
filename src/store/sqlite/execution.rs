//! The workers' writes on the embedded store: claim, heartbeat, outcomes,
//! retries, hand-back and rescue.

use serde_json::Value;
use uuid::Uuid;

use super::{
    ClaimSlots, HeartbeatAck, RunClaim, RunOutcome, RunRetry, RunRow, SqliteStore, StoreResult,
};

impl SqliteStore {
    pub async fn run_claim(&self, _slots: &ClaimSlots) -> StoreResult<Vec<RunRow>> {
        unimplemented!()
    }
    pub async fn run_next_queued_in(&self) -> StoreResult<Option<std::time::Duration>> {
        unimplemented!()
    }
    pub async fn run_heartbeat(
        &self,
        _instance: &str,
        _lease_ms: i64,
        _runs: &[(RunClaim, Option<Value>)],
    ) -> StoreResult<Vec<HeartbeatAck>> {
        unimplemented!()
    }
    pub async fn run_finish(&self, claim: &RunClaim, outcome: &RunOutcome) -> StoreResult<bool> {
        let written = self
            .run_finish_many(&[(claim.clone(), outcome.clone())])
            .await?;
        Ok(written.contains(&claim.run_id))
    }
    pub async fn run_finish_many(
        &self,
        _finished: &[(RunClaim, RunOutcome)],
    ) -> StoreResult<Vec<Uuid>> {
        unimplemented!()
    }
    pub async fn run_retry(&self, _claim: &RunClaim, _retry: &RunRetry) -> StoreResult<bool> {
        unimplemented!()
    }
    pub async fn run_hand_back(&self, _claims: &[RunClaim], _reason: &str) -> StoreResult<u64> {
        unimplemented!()
    }
    pub async fn run_rescue_expired(
        &self,
        _limit: i64,
        _rescuer: &str,
    ) -> StoreResult<Vec<RunRow>> {
        unimplemented!()
    }
    pub async fn run_settle_waiting(
        &self,
        _among: Option<&[String]>,
        _limit: i64,
    ) -> StoreResult<u64> {
        unimplemented!()
    }
}
