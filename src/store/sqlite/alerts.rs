//! Alerts on the embedded store: the same contract as PostgreSQL's
//! (src/store/postgres/alerts.rs), with alerts written as event rows.

use std::collections::HashMap;

use sqlx::Row;

use super::rows::{from_micros, json_as, micros, opt_micros, opt_time, time, uuid};
use super::{now, SqliteStore, StoreResult};
use crate::alerts::rules::AlertState;
use crate::handlers::ERROR_HANDLER;
use crate::store::alerts::{AlertAdvance, AlertFeed, RunningRun, WatchedJob};
use crate::store::EventPosition;

fn to_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

impl SqliteStore {
    pub async fn alert_feed(&self) -> StoreResult<AlertFeed> {
        let (seq, version, checked_at, any_state): (Option<i64>, i64, Option<i64>, bool) =
            sqlx::query_as(
                "SELECT seq, version, checked_at, EXISTS (SELECT 1 FROM job_alerts) \
                 FROM alert_feed WHERE id = 1",
            )
            .fetch_one(&self.readers)
            .await?;
        Ok(AlertFeed {
            position: seq.map(|seq| EventPosition { tx: 0, seq, ord: 0 }),
            version,
            checked_at: checked_at.map(from_micros),
            any_state,
            now: now(),
        })
    }

    pub async fn alert_states(
        &self,
        job_ids: &[String],
    ) -> StoreResult<HashMap<String, AlertState>> {
        let mut states = HashMap::new();
        if job_ids.is_empty() {
            return Ok(states);
        }
        let ids = serde_json::Value::from(job_ids.to_vec()).to_string();
        let rows = sqlx::query(
            "SELECT job_id, state FROM job_alerts WHERE job_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(ids)
        .fetch_all(&self.readers)
        .await?;
        for row in rows {
            states.insert(
                row.try_get("job_id")?,
                json_as::<AlertState>(&row, "state")?,
            );
        }
        Ok(states)
    }

    pub async fn alert_feed_advance(&self, advance: &AlertAdvance) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let moved = sqlx::query(
            "UPDATE alert_feed SET seq = COALESCE(?1, seq), checked_at = COALESCE(?2, checked_at), \
               version = version + 1 WHERE id = 1 AND version = ?3",
        )
        .bind(advance.to.map(|p| p.seq))
        .bind(opt_micros(advance.checked_at))
        .bind(advance.from_version)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        let at = micros(now());
        for (job_id, state) in &advance.states {
            match state {
                Some(state) => {
                    sqlx::query(
                        "INSERT INTO job_alerts (job_id, state, updated_at) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, \
                           updated_at = excluded.updated_at",
                    )
                    .bind(job_id)
                    .bind(to_text(state))
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM job_alerts WHERE job_id = ?1")
                        .bind(job_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for alert in &advance.alerts {
            sqlx::query(
                "INSERT INTO events (type, at, job_id, run_id, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(alert.kind.event_type())
            .bind(micros(alert.at))
            .bind(&alert.job_id)
            .bind(alert.run_id.map(|r| r.to_string()))
            .bind(&alert.reason)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn alert_watched_jobs(&self, every: bool) -> StoreResult<Vec<WatchedJob>> {
        // Without `every`, only the jobs with settings of their own (an index).
        let own = if every {
            ""
        } else {
            " AND j.alerts <> '{}' \
              AND coalesce(json_extract(j.alerts, '$.expect_success_within_ms'), 0) > 0"
        };
        let rows = sqlx::query(&format!(
            "SELECT j.job_id, j.alerts, j.updated_at, \
               (SELECT r.finished_at FROM runs r WHERE r.job_id = j.job_id AND r.state = 'succeeded' \
                ORDER BY r.created_at DESC LIMIT 1) AS last_success \
             FROM jobs j WHERE j.state = 'running' AND j.handler <> ?1{own}"
        ))
        .bind(ERROR_HANDLER)
        .fetch_all(&self.readers)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            jobs.push(WatchedJob {
                job_id: row.try_get("job_id")?,
                alerts: json_as(&row, "alerts")?,
                changed_at: time(&row, "updated_at")?,
                last_success: opt_time(&row, "last_success")?,
            });
        }
        Ok(jobs)
    }

    pub async fn alert_running_runs(&self, every: bool) -> StoreResult<Vec<RunningRun>> {
        let rows = sqlx::query(
            "SELECT r.run_id, r.job_id, r.started_at, j.alerts FROM runs r \
             JOIN jobs j ON j.job_id = r.job_id \
             WHERE r.state = 'running' AND r.started_at IS NOT NULL \
               AND (?1 OR coalesce(json_extract(j.alerts, '$.max_duration_ms'), 0) > 0)",
        )
        .bind(every)
        .fetch_all(&self.readers)
        .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            runs.push(RunningRun {
                run_id: uuid(&row, "run_id")?,
                job_id: row.try_get("job_id")?,
                started_at: time(&row, "started_at")?,
                alerts: json_as(&row, "alerts")?,
            });
        }
        Ok(runs)
    }
}
