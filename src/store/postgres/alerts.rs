//! Alerts on PostgreSQL: the feed's row, jobs' states, alerts written as
//! events (`events_write`, in the advance's transaction), and the reads of
//! the clock checks.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::types::Json;
use uuid::Uuid;

use super::{PgStore, StoreResult};
use crate::alerts::rules::AlertState;
use crate::alerts::settings::JobAlerts;
use crate::handlers::ERROR_HANDLER;
use crate::store::alerts::{AlertAdvance, AlertFeed, RunningRun, WatchedJob};
use crate::store::EventPosition;

impl PgStore {
    pub async fn alert_feed(&self) -> StoreResult<AlertFeed> {
        type Row = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            i64,
            Option<DateTime<Utc>>,
            bool,
            DateTime<Utc>,
        );
        let (tx, seq, ord, version, checked_at, any_state, now): Row = sqlx::query_as(
            "SELECT tx, seq, ord, version, checked_at, EXISTS (SELECT 1 FROM job_alerts), now() \
             FROM alert_feed WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        let position = match (tx, seq, ord) {
            (Some(tx), Some(seq), Some(ord)) => Some(EventPosition { tx, seq, ord }),
            _ => None,
        };
        Ok(AlertFeed {
            position,
            version,
            checked_at,
            any_state,
            now,
        })
    }

    pub async fn alert_states(
        &self,
        job_ids: &[String],
    ) -> StoreResult<HashMap<String, AlertState>> {
        if job_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Json<AlertState>)> =
            sqlx::query_as("SELECT job_id, state FROM job_alerts WHERE job_id = ANY($1)")
                .bind(job_ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, s)| (id, s.0)).collect())
    }

    pub async fn alert_feed_advance(&self, advance: &AlertAdvance) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let to = advance.to;
        let moved = sqlx::query(
            "UPDATE alert_feed SET tx = COALESCE($1, tx), seq = COALESCE($2, seq), \
               ord = COALESCE($3, ord), checked_at = COALESCE($4, checked_at), \
               version = version + 1 WHERE id = 1 AND version = $5",
        )
        .bind(to.map(|p| p.tx))
        .bind(to.map(|p| p.seq))
        .bind(to.map(|p| p.ord))
        .bind(advance.checked_at)
        .bind(advance.from_version)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        let (kept, gone): (Vec<_>, Vec<_>) = advance.states.iter().partition(|(_, s)| s.is_some());
        if !kept.is_empty() {
            let ids: Vec<&str> = kept.iter().map(|(id, _)| id.as_str()).collect();
            let states: Vec<Json<&AlertState>> = kept
                .iter()
                .filter_map(|(_, s)| s.as_ref().map(Json))
                .collect();
            sqlx::query(
                "INSERT INTO job_alerts (job_id, state) \
                 SELECT x.job_id, x.state FROM unnest($1::text[], $2::jsonb[]) AS x(job_id, state) \
                 ON CONFLICT (job_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
            )
            .bind(&ids)
            .bind(&states)
            .execute(&mut *tx)
            .await?;
        }
        if !gone.is_empty() {
            let ids: Vec<&str> = gone.iter().map(|(id, _)| id.as_str()).collect();
            sqlx::query("DELETE FROM job_alerts WHERE job_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        if !advance.alerts.is_empty() {
            let entries: Vec<Value> = advance
                .alerts
                .iter()
                .map(|a| {
                    json!({
                        "t": a.kind.event_type(),
                        "at": a.at,
                        "j": a.job_id,
                        "r": a.run_id,
                        "w": a.reason,
                    })
                })
                .collect();
            sqlx::query("SELECT events_write($1::jsonb) WHERE events_enabled()")
                .bind(Json(Value::Array(entries)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn alert_watched_jobs(&self, every: bool) -> StoreResult<Vec<WatchedJob>> {
        type Row = (
            String,
            Json<JobAlerts>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        );
        // Without `every`, only the jobs with settings of their own (an index).
        let own = if every {
            ""
        } else {
            " AND j.alerts <> '{}' AND coalesce((j.alerts ->> 'expect_success_within_ms')::int8, 0) > 0"
        };
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT j.job_id, j.alerts, j.updated_at, \
               (SELECT r.finished_at FROM runs r WHERE r.job_id = j.job_id AND r.state = 'succeeded' \
                ORDER BY r.created_at DESC LIMIT 1) \
             FROM jobs j WHERE j.state = 'running' AND j.handler <> $1{own}"
        ))
        .bind(ERROR_HANDLER)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job_id, alerts, changed_at, last_success)| WatchedJob {
                job_id,
                alerts: alerts.0,
                changed_at,
                last_success,
            })
            .collect())
    }

    pub async fn alert_running_runs(&self, every: bool) -> StoreResult<Vec<RunningRun>> {
        type Row = (Uuid, String, DateTime<Utc>, Json<JobAlerts>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT r.run_id, r.job_id, r.started_at, j.alerts FROM runs r \
             JOIN jobs j ON j.job_id = r.job_id \
             WHERE r.state = 'running' AND r.started_at IS NOT NULL \
               AND ($1 OR coalesce((j.alerts ->> 'max_duration_ms')::int8, 0) > 0)",
        )
        .bind(every)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, job_id, started_at, alerts)| RunningRun {
                run_id,
                job_id,
                started_at,
                alerts: alerts.0,
            })
            .collect())
    }
}
