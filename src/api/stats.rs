//! `GET /api/v1/stats`: jobs and runs by state and the queue, for
//! dashboards and alerts. Cheap at any history size: runs are read from
//! the per-job run counters, never counted (see `crate::store::stats`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::error::ApiResult;
use super::AppState;
use crate::domain::{JobState, RunState};
use crate::store::stats::{queue_wait, totals_by_state};

#[derive(OpenApi)]
#[openapi(paths(get_stats), components(schemas(Stats, QueueStats)))]
pub struct StatsApi;

pub fn router() -> Router<AppState> {
    Router::new().route("/stats", get(get_stats))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Jobs by state; every state is named (0 when none).
    #[schema(example = json!({"running": 12, "paused": 1, "completed": 3}))]
    pub jobs: BTreeMap<String, i64>,
    /// Stored runs by state (runs pruned by retention are not counted);
    /// every state is named (0 when none).
    #[schema(example = json!({"queued": 4, "waiting": 0, "running": 2, "succeeded": 1200,
        "failed": 3, "cancelled": 0, "timed_out": 0, "missed": 1, "dead": 0}))]
    pub runs: BTreeMap<String, i64>,
    pub queue: QueueStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStats {
    /// Queued runs, due or not yet (a retry waiting out its backoff).
    #[schema(example = 4)]
    pub depth: i64,
    /// How long the queued run due longest has waited to be claimed, in
    /// milliseconds; `null` when no queued run is due. Alert on it: it
    /// grows when workers cannot keep up.
    #[schema(example = 120)]
    pub oldest_due_wait_ms: Option<i64>,
}

/// Jobs and runs by state, queue depth and wait
///
/// Runs come from per-job counters kept with every write of a run, so
/// this costs the same whatever the history's size.
#[utoipa::path(get, path = "/api/v1/stats", tag = "service",
    responses((status = 200, body = Stats)))]
async fn get_stats(State(app): State<AppState>) -> ApiResult<Json<Stats>> {
    let row = app.store.stats().await?;
    let runs = totals_by_state(RunState::ALL, &row.runs);
    let depth = runs
        .iter()
        .find(|(s, _)| *s == RunState::Queued)
        .map_or(0, |(_, n)| *n);
    Ok(Json(Stats {
        jobs: named(totals_by_state(JobState::ALL, &row.jobs)),
        runs: named(runs),
        queue: QueueStats {
            depth,
            oldest_due_wait_ms: queue_wait(row.oldest_due_run_after, row.now)
                .map(|wait| wait.num_milliseconds()),
        },
    }))
}

fn named<S: std::fmt::Display>(totals: Vec<(S, i64)>) -> BTreeMap<String, i64> {
    totals
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect()
}
