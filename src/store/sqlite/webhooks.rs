//! Webhooks on the embedded store (migrations/sqlite/0008): the same
//! contract as PostgreSQL's (src/store/postgres/webhooks.rs). One writer,
//! so a claim selects and updates in one `BEGIN IMMEDIATE` transaction;
//! foreign keys are off, so deleting a webhook deletes its deliveries and
//! their attempts itself.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::rows::{self, from_micros, micros, opt_micros, opt_time};
use super::{conflict_on_unique, now, SqliteStore, StoreError, StoreResult};
use crate::store::webhooks::{
    AttemptEnd, AttemptRow, ClaimedDelivery, DeliveryClaim, DeliveryRow, DeliveryState,
    DeliveryStep, FeedAdvance, NewDelivery, NewWebhook, WebhookRow, WebhookSpec,
};
use crate::store::EventPosition;

const WEBHOOK_COLUMNS: &str = "id, name, url, event_types, job_ids, tags, handler, paused, \
     secret, previous_secret, previous_until, disabled_at, disabled_reason, failing_since, \
     created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, webhook_id, message_id, event_type, event_id, payload, \
     state, attempt, next_attempt_at, last_status, created_at";

fn duplicate_name(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a webhook named {name:?} exists")
}

fn list_text(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

fn list(row: &SqliteRow, column: &str) -> Result<Vec<String>, sqlx::Error> {
    let value = rows::json(row, column)?;
    serde_json::from_value(value).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: e.into(),
    })
}

fn webhook_from_row(row: &SqliteRow) -> Result<WebhookRow, sqlx::Error> {
    Ok(WebhookRow {
        id: rows::uuid(row, "id")?,
        spec: WebhookSpec {
            name: row.try_get("name")?,
            url: row.try_get("url")?,
            event_types: list(row, "event_types")?,
            job_ids: list(row, "job_ids")?,
            tags: list(row, "tags")?,
            handler: row.try_get("handler")?,
            paused: row.try_get::<i64, _>("paused")? != 0,
        },
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_until: opt_time(row, "previous_until")?,
        disabled_at: opt_time(row, "disabled_at")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: opt_time(row, "failing_since")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn delivery_from_row(row: &SqliteRow) -> Result<DeliveryRow, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(DeliveryRow {
        id: rows::uuid(row, "id")?,
        webhook_id: rows::uuid(row, "webhook_id")?,
        message_id: row.try_get("message_id")?,
        event_type: row.try_get("event_type")?,
        event_id: row.try_get("event_id")?,
        payload: rows::json(row, "payload")?,
        state: DeliveryState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown delivery state {state:?}").into(),
        })?,
        attempt: row.try_get("attempt")?,
        next_attempt_at: from_micros(row.try_get("next_attempt_at")?),
        last_status: row.try_get("last_status")?,
        created_at: from_micros(row.try_get("created_at")?),
        attempts: Vec::new(),
    })
}

fn step_state(step: &DeliveryStep) -> (DeliveryState, Option<DateTime<Utc>>) {
    match step {
        DeliveryStep::Delivered => (DeliveryState::Delivered, None),
        DeliveryStep::RetryAt(at) => (DeliveryState::Pending, Some(*at)),
        DeliveryStep::GiveUp | DeliveryStep::Disable(_) => (DeliveryState::Failed, None),
    }
}

const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries \
     (id, webhook_id, message_id, event_type, event_id, payload, next_attempt_at, created_at, updated_at) \
     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?2)";

impl SqliteStore {
    pub async fn webhook_insert(&self, webhook: &NewWebhook) -> StoreResult<WebhookRow> {
        let s = &webhook.spec;
        let at = micros(now());
        let mut tx = self.write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO webhooks (id, name, url, event_types, job_ids, tags, handler, paused, \
               secret, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10) RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(webhook.id.to_string())
        .bind(&s.name)
        .bind(&s.url)
        .bind(list_text(&s.event_types))
        .bind(list_text(&s.job_ids))
        .bind(list_text(&s.tags))
        .bind(&s.handler)
        .bind(s.paused as i64)
        .bind(&webhook.secret)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, duplicate_name(&s.name)))?;
        let webhook = webhook_from_row(&row)?;
        tx.commit().await?;
        Ok(webhook)
    }

    pub async fn webhook_list(&self) -> StoreResult<Vec<WebhookRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
        ))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .iter()
            .map(webhook_from_row)
            .collect::<Result<_, _>>()?)
    }

    pub async fn webhook_find(&self, key: &str) -> StoreResult<WebhookRow> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE name = ?1 OR id = ?1 \
             ORDER BY name = ?1 DESC LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&self.readers)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(webhook_from_row(&row)?)
    }

    pub async fn webhook_update(
        &self,
        id: Uuid,
        spec: &WebhookSpec,
        enable: bool,
    ) -> StoreResult<WebhookRow> {
        let mut tx = self.write().await?;
        let row = sqlx::query(&format!(
            "UPDATE webhooks SET name = ?2, url = ?3, event_types = ?4, job_ids = ?5, tags = ?6, \
               handler = ?7, paused = ?8, \
               disabled_at = CASE WHEN ?9 THEN NULL ELSE disabled_at END, \
               disabled_reason = CASE WHEN ?9 THEN NULL ELSE disabled_reason END, \
               failing_since = CASE WHEN ?9 THEN NULL ELSE failing_since END, \
               updated_at = ?10 \
             WHERE id = ?1 RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(&spec.name)
        .bind(&spec.url)
        .bind(list_text(&spec.event_types))
        .bind(list_text(&spec.job_ids))
        .bind(list_text(&spec.tags))
        .bind(&spec.handler)
        .bind(spec.paused as i64)
        .bind(enable as i64)
        .bind(micros(now()))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, duplicate_name(&spec.name)))?
        .ok_or(StoreError::NotFound)?;
        let webhook = webhook_from_row(&row)?;
        tx.commit().await?;
        Ok(webhook)
    }

    pub async fn webhook_rotate(
        &self,
        id: Uuid,
        secret: &str,
        previous_until: DateTime<Utc>,
    ) -> StoreResult<WebhookRow> {
        let mut tx = self.write().await?;
        let row = sqlx::query(&format!(
            "UPDATE webhooks SET previous_secret = secret, secret = ?2, previous_until = ?3, \
               updated_at = ?4 WHERE id = ?1 RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(secret)
        .bind(micros(previous_until))
        .bind(micros(now()))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let webhook = webhook_from_row(&row)?;
        tx.commit().await?;
        Ok(webhook)
    }

    /// Deletes a webhook with its deliveries and their attempts.
    pub async fn webhook_delete(&self, id: Uuid) -> StoreResult<()> {
        let id = id.to_string();
        let mut tx = self.write().await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN \
               (SELECT id FROM webhook_deliveries WHERE webhook_id = ?1)",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = ?1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = ?1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn webhook_feed_position(&self) -> StoreResult<Option<EventPosition>> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM webhook_feed WHERE id = 1")
            .fetch_one(&self.readers)
            .await?;
        Ok(seq.map(|seq| EventPosition { tx: 0, seq, ord: 0 }))
    }

    pub async fn webhook_feed_advance(&self, advance: &FeedAdvance) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let moved = sqlx::query("UPDATE webhook_feed SET seq = ?1 WHERE id = 1 AND seq IS ?2")
            .bind(advance.to.seq)
            .bind(advance.from.map(|p| p.seq))
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        let at = micros(now());
        for d in &advance.deliveries {
            sqlx::query(INSERT_DELIVERY)
                .bind(d.id.to_string())
                .bind(d.webhook_id.to_string())
                .bind(&d.message_id)
                .bind(&d.event_type)
                .bind(&d.event_id)
                .bind(rows::json_text(&d.payload))
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn webhook_delivery_insert(&self, d: &NewDelivery) -> StoreResult<DeliveryRow> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(INSERT_DELIVERY)
            .bind(d.id.to_string())
            .bind(d.webhook_id.to_string())
            .bind(&d.message_id)
            .bind(&d.event_type)
            .bind(&d.event_id)
            .bind(rows::json_text(&d.payload))
            .bind(micros(now()))
            .execute(&mut *tx)
            .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?1"
        ))
        .bind(d.id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let delivery = delivery_from_row(&row)?;
        tx.commit().await?;
        Ok(delivery)
    }

    pub async fn webhook_deliveries_claim(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let token = Uuid::new_v4();
        let at = micros(now());
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'delivering', attempt = attempt + 1, \
               lease_owner = ?1, lease_token = ?2, lease_expires_at = ?3 + ?4 * 1000, updated_at = ?3 \
             WHERE id IN (SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
               WHERE ((d.state = 'pending' AND d.next_attempt_at <= ?3) \
                   OR (d.state = 'delivering' AND d.lease_expires_at <= ?3)) \
                 AND w.paused = 0 AND w.disabled_at IS NULL \
               ORDER BY d.next_attempt_at LIMIT ?5) \
             RETURNING id, attempt, webhook_id, message_id, event_type, payload",
        )
        .bind(owner)
        .bind(token.to_string())
        .bind(at)
        .bind(lease_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let webhook_id = rows::uuid(row, "webhook_id")?;
            let hook = sqlx::query(
                "SELECT name, url, secret, failing_since, \
                   CASE WHEN previous_until > ?2 THEN previous_secret END AS previous_secret \
                 FROM webhooks WHERE id = ?1",
            )
            .bind(webhook_id.to_string())
            .bind(at)
            .fetch_one(&mut *tx)
            .await?;
            claimed.push(ClaimedDelivery {
                claim: DeliveryClaim {
                    delivery_id: rows::uuid(row, "id")?,
                    token,
                    attempt: row.try_get("attempt")?,
                },
                webhook_id,
                webhook_name: hook.try_get("name")?,
                url: hook.try_get("url")?,
                message_id: row.try_get("message_id")?,
                event_type: row.try_get("event_type")?,
                payload: rows::json(row, "payload")?,
                secret: hook.try_get("secret")?,
                previous_secret: hook.try_get("previous_secret")?,
                failing_since: opt_time(&hook, "failing_since")?,
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    pub async fn webhook_delivery_heartbeat(
        &self,
        claim: &DeliveryClaim,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let renewed = sqlx::query(
            "UPDATE webhook_deliveries SET lease_expires_at = ?4 + ?5 * 1000 \
             WHERE id = ?1 AND state = 'delivering' AND lease_token = ?2 AND attempt = ?3",
        )
        .bind(claim.delivery_id.to_string())
        .bind(claim.token.to_string())
        .bind(claim.attempt)
        .bind(micros(now()))
        .bind(lease_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(renewed.rows_affected() == 1)
    }

    pub async fn webhook_delivery_finish(
        &self,
        claim: &DeliveryClaim,
        end: &AttemptEnd,
    ) -> StoreResult<bool> {
        let (state, next_at) = step_state(&end.step);
        let a = &end.attempt;
        let at = micros(now());
        let mut tx = self.write().await?;
        let webhook: Option<String> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET state = ?4, \
               next_attempt_at = COALESCE(?5, next_attempt_at), last_status = ?6, \
               lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = ?7 \
             WHERE id = ?1 AND state = 'delivering' AND lease_token = ?2 AND attempt = ?3 \
             RETURNING webhook_id",
        )
        .bind(claim.delivery_id.to_string())
        .bind(claim.token.to_string())
        .bind(claim.attempt)
        .bind(state.as_str())
        .bind(opt_micros(next_at))
        .bind(a.status)
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(webhook) = webhook else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, status, latency_ms, response, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(claim.delivery_id.to_string())
        .bind(a.attempt)
        .bind(micros(a.at))
        .bind(a.status)
        .bind(a.latency_ms)
        .bind(&a.response)
        .bind(&a.error)
        .execute(&mut *tx)
        .await?;
        let delivered = matches!(end.step, DeliveryStep::Delivered);
        sqlx::query(
            "UPDATE webhooks SET failing_since = CASE WHEN ?2 THEN NULL \
               ELSE COALESCE(failing_since, ?3) END WHERE id = ?1",
        )
        .bind(&webhook)
        .bind(delivered as i64)
        .bind(micros(a.at))
        .execute(&mut *tx)
        .await?;
        if let DeliveryStep::Disable(reason) = &end.step {
            let name: Option<String> = sqlx::query_scalar(
                "UPDATE webhooks SET disabled_at = ?2, disabled_reason = ?3, updated_at = ?2 \
                 WHERE id = ?1 AND disabled_at IS NULL RETURNING name",
            )
            .bind(&webhook)
            .bind(at)
            .bind(reason)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(name) = name {
                sqlx::query(
                    "INSERT INTO events (type, at, reason) VALUES ('webhook.disabled', ?1, ?2)",
                )
                .bind(at)
                .bind(format!("webhook {name} ({webhook}) disabled: {reason}"))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn webhook_deliveries_list(
        &self,
        webhook_id: Uuid,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = ?1 \
             ORDER BY created_at DESC, id DESC LIMIT ?2"
        ))
        .bind(webhook_id.to_string())
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        let mut deliveries: Vec<DeliveryRow> = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<_, _>>()?;
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.to_string()).collect();
        let attempts = sqlx::query(
            "SELECT delivery_id, attempt, at, status, latency_ms, response, error \
             FROM webhook_attempts WHERE delivery_id IN (SELECT value FROM json_each(?1)) \
             ORDER BY at, attempt",
        )
        .bind(list_text(&ids))
        .fetch_all(&self.readers)
        .await?;
        for row in &attempts {
            let id = rows::uuid(row, "delivery_id")?;
            let attempt = AttemptRow {
                attempt: row.try_get("attempt")?,
                at: from_micros(row.try_get("at")?),
                status: row.try_get("status")?,
                latency_ms: row.try_get("latency_ms")?,
                response: row.try_get("response")?,
                error: row.try_get("error")?,
            };
            if let Some(d) = deliveries.iter_mut().find(|d| d.id == id) {
                d.attempts.push(attempt);
            }
        }
        Ok(deliveries)
    }

    pub async fn webhook_delivery_retry(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> StoreResult<DeliveryRow> {
        let mut tx = self.write().await?;
        let row = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET state = 'pending', attempt = 0, next_attempt_at = ?3, \
               updated_at = ?3 \
             WHERE id = ?1 AND webhook_id = ?2 AND state <> 'delivering' \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(delivery_id.to_string())
        .bind(webhook_id.to_string())
        .bind(micros(now()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = ?1 AND webhook_id = ?2)",
            )
            .bind(delivery_id.to_string())
            .bind(webhook_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
            return Err(if exists {
                StoreError::Conflict("an attempt of this delivery is in flight".into())
            } else {
                StoreError::NotFound
            });
        };
        let delivery = delivery_from_row(&row)?;
        tx.commit().await?;
        Ok(delivery)
    }

    pub async fn webhook_deliveries_prune_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let ids = "SELECT id FROM webhook_deliveries \
             WHERE state IN ('delivered', 'failed') AND updated_at < ?1 ORDER BY id LIMIT ?2";
        sqlx::query(&format!(
            "DELETE FROM webhook_attempts WHERE delivery_id IN ({ids})"
        ))
        .bind(micros(cutoff))
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query(&format!(
            "DELETE FROM webhook_deliveries WHERE id IN ({ids})"
        ))
        .bind(micros(cutoff))
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }
}
