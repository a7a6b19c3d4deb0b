//! Webhooks on PostgreSQL (migrations/postgres/0011): their definitions,
//! the feed cursor, and deliveries claimed under leases as runs are (a
//! `FOR UPDATE SKIP LOCKED` pick and the lease set in one statement; an
//! expired lease makes a delivery claimable again, by any replica).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::{conflict_on_unique, PgStore, StoreError, StoreResult};
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

fn webhook_from_row(row: &PgRow) -> Result<WebhookRow, sqlx::Error> {
    Ok(WebhookRow {
        id: row.try_get("id")?,
        spec: WebhookSpec {
            name: row.try_get("name")?,
            url: row.try_get("url")?,
            event_types: row.try_get("event_types")?,
            job_ids: row.try_get("job_ids")?,
            tags: row.try_get("tags")?,
            handler: row.try_get("handler")?,
            paused: row.try_get("paused")?,
        },
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_until: row.try_get("previous_until")?,
        disabled_at: row.try_get("disabled_at")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row.try_get("failing_since")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn state_of(row: &PgRow) -> Result<DeliveryState, sqlx::Error> {
    let text: String = row.try_get("state")?;
    DeliveryState::parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "state".into(),
        source: format!("unknown delivery state {text:?}").into(),
    })
}

fn delivery_from_row(row: &PgRow) -> Result<DeliveryRow, sqlx::Error> {
    Ok(DeliveryRow {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        message_id: row.try_get("message_id")?,
        event_type: row.try_get("event_type")?,
        event_id: row.try_get("event_id")?,
        payload: row
            .try_get::<sqlx::types::Json<serde_json::Value>, _>("payload")?
            .0,
        state: state_of(row)?,
        attempt: row.try_get("attempt")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status: row.try_get("last_status")?,
        created_at: row.try_get("created_at")?,
        attempts: Vec::new(),
    })
}

fn attempt_from_row(row: &PgRow) -> Result<(Uuid, AttemptRow), sqlx::Error> {
    Ok((
        row.try_get("delivery_id")?,
        AttemptRow {
            attempt: row.try_get("attempt")?,
            at: row.try_get("at")?,
            status: row.try_get("status")?,
            latency_ms: row.try_get("latency_ms")?,
            response: row.try_get("response")?,
            error: row.try_get("error")?,
        },
    ))
}

/// `(state, next_attempt_at)` a step leaves a delivery in.
fn step_state(step: &DeliveryStep) -> (DeliveryState, Option<DateTime<Utc>>) {
    match step {
        DeliveryStep::Delivered => (DeliveryState::Delivered, None),
        DeliveryStep::RetryAt(at) => (DeliveryState::Pending, Some(*at)),
        DeliveryStep::GiveUp | DeliveryStep::Disable(_) => (DeliveryState::Failed, None),
    }
}

impl PgStore {
    /// Stores a new webhook; `Conflict` when its name is taken.
    pub async fn webhook_insert(&self, webhook: &NewWebhook) -> StoreResult<WebhookRow> {
        let s = &webhook.spec;
        let row = sqlx::query(&format!(
            "INSERT INTO webhooks (id, name, url, event_types, job_ids, tags, handler, paused, secret) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(webhook.id)
        .bind(&s.name)
        .bind(&s.url)
        .bind(&s.event_types)
        .bind(&s.job_ids)
        .bind(&s.tags)
        .bind(&s.handler)
        .bind(s.paused)
        .bind(&webhook.secret)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_on_unique(e, duplicate_name(&s.name)))?;
        Ok(webhook_from_row(&row)?)
    }

    pub async fn webhook_list(&self) -> StoreResult<Vec<WebhookRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(webhook_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// The webhook whose id or name is `key`.
    pub async fn webhook_find(&self, key: &str) -> StoreResult<WebhookRow> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE name = $1 OR id::text = $1 \
             ORDER BY name = $1 DESC LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
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
        let row = sqlx::query(&format!(
            "UPDATE webhooks SET name = $2, url = $3, event_types = $4, job_ids = $5, tags = $6, \
               handler = $7, paused = $8, \
               disabled_at = CASE WHEN $9 THEN NULL ELSE disabled_at END, \
               disabled_reason = CASE WHEN $9 THEN NULL ELSE disabled_reason END, \
               failing_since = CASE WHEN $9 THEN NULL ELSE failing_since END, \
               updated_at = now() \
             WHERE id = $1 RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(id)
        .bind(&spec.name)
        .bind(&spec.url)
        .bind(&spec.event_types)
        .bind(&spec.job_ids)
        .bind(&spec.tags)
        .bind(&spec.handler)
        .bind(spec.paused)
        .bind(enable)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| conflict_on_unique(e, duplicate_name(&spec.name)))?
        .ok_or(StoreError::NotFound)?;
        Ok(webhook_from_row(&row)?)
    }

    pub async fn webhook_rotate(
        &self,
        id: Uuid,
        secret: &str,
        previous_until: DateTime<Utc>,
    ) -> StoreResult<WebhookRow> {
        let row = sqlx::query(&format!(
            "UPDATE webhooks SET previous_secret = secret, secret = $2, previous_until = $3, \
               updated_at = now() WHERE id = $1 RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(id)
        .bind(secret)
        .bind(previous_until)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(webhook_from_row(&row)?)
    }

    pub async fn webhook_delete(&self, id: Uuid) -> StoreResult<()> {
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn webhook_feed_position(&self) -> StoreResult<Option<EventPosition>> {
        let (tx, seq, ord): (Option<i64>, Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT tx, seq, ord FROM webhook_feed WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(match (tx, seq, ord) {
            (Some(tx), Some(seq), Some(ord)) => Some(EventPosition { tx, seq, ord }),
            _ => None,
        })
    }

    /// Moves the feed from `advance.from` to `advance.to` and queues its
    /// deliveries (those of webhooks deleted meanwhile are dropped), in one
    /// transaction; false, writing nothing, when the feed was not at
    /// `from` (another replica moved it first).
    pub async fn webhook_feed_advance(&self, advance: &FeedAdvance) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let (from_tx, from_seq, from_ord) = match advance.from {
            Some(p) => (Some(p.tx), Some(p.seq), Some(p.ord)),
            None => (None, None, None),
        };
        let moved = sqlx::query(
            "UPDATE webhook_feed SET tx = $1, seq = $2, ord = $3 WHERE id = 1 \
               AND tx IS NOT DISTINCT FROM $4 AND seq IS NOT DISTINCT FROM $5 \
               AND ord IS NOT DISTINCT FROM $6",
        )
        .bind(advance.to.tx)
        .bind(advance.to.seq)
        .bind(advance.to.ord)
        .bind(from_tx)
        .bind(from_seq)
        .bind(from_ord)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        if !advance.deliveries.is_empty() {
            let d = &advance.deliveries;
            let ids: Vec<Uuid> = d.iter().map(|d| d.id).collect();
            let hooks: Vec<Uuid> = d.iter().map(|d| d.webhook_id).collect();
            let messages: Vec<&str> = d.iter().map(|d| d.message_id.as_str()).collect();
            let types: Vec<&str> = d.iter().map(|d| d.event_type.as_str()).collect();
            let events: Vec<Option<&str>> = d.iter().map(|d| d.event_id.as_deref()).collect();
            let payloads: Vec<sqlx::types::Json<&serde_json::Value>> =
                d.iter().map(|d| sqlx::types::Json(&d.payload)).collect();
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, event_id, payload) \
                 SELECT x.* FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[]) \
                   AS x(id, webhook_id, message_id, event_type, event_id, payload) \
                 WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = x.webhook_id)",
            )
            .bind(&ids)
            .bind(&hooks)
            .bind(&messages)
            .bind(&types)
            .bind(&events)
            .bind(&payloads)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Queues one delivery (a test delivery) due now.
    pub async fn webhook_delivery_insert(&self, d: &NewDelivery) -> StoreResult<DeliveryRow> {
        let row = sqlx::query(&format!(
            "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, event_id, payload) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(d.id)
        .bind(d.webhook_id)
        .bind(&d.message_id)
        .bind(&d.event_type)
        .bind(&d.event_id)
        .bind(sqlx::types::Json(&d.payload))
        .fetch_one(&self.pool)
        .await?;
        Ok(delivery_from_row(&row)?)
    }

    /// Claims up to `limit` deliveries that are due (pending and due, or
    /// delivering under an expired lease) for `owner`, of active webhooks,
    /// soonest first: each one's attempt counts up and it is leased for
    /// `lease_ms`. One statement; concurrent claimers skip each other's rows.
    pub async fn webhook_deliveries_claim(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let token = Uuid::new_v4();
        let rows = sqlx::query(
            "WITH picked AS ( \
               SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
               WHERE ((d.state = 'pending' AND d.next_attempt_at <= now()) \
                   OR (d.state = 'delivering' AND d.lease_expires_at <= now())) \
                 AND NOT w.paused AND w.disabled_at IS NULL \
               ORDER BY d.next_attempt_at LIMIT $4 FOR UPDATE OF d SKIP LOCKED), \
             claimed AS ( \
               UPDATE webhook_deliveries d SET state = 'delivering', attempt = d.attempt + 1, \
                 lease_owner = $1, lease_token = $2, \
                 lease_expires_at = now() + $3 * interval '1 millisecond', updated_at = now() \
               FROM picked WHERE d.id = picked.id \
               RETURNING d.id, d.attempt, d.webhook_id, d.message_id, d.event_type, d.payload) \
             SELECT c.*, w.name, w.url, w.secret, w.failing_since, \
               CASE WHEN w.previous_until > now() THEN w.previous_secret END AS previous_secret \
             FROM claimed c JOIN webhooks w ON w.id = c.webhook_id",
        )
        .bind(owner)
        .bind(token)
        .bind(lease_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    claim: DeliveryClaim {
                        delivery_id: row.try_get("id")?,
                        token,
                        attempt: row.try_get("attempt")?,
                    },
                    webhook_id: row.try_get("webhook_id")?,
                    webhook_name: row.try_get("name")?,
                    url: row.try_get("url")?,
                    message_id: row.try_get("message_id")?,
                    event_type: row.try_get("event_type")?,
                    payload: row
                        .try_get::<sqlx::types::Json<serde_json::Value>, _>("payload")?
                        .0,
                    secret: row.try_get("secret")?,
                    previous_secret: row.try_get("previous_secret")?,
                    failing_since: row.try_get("failing_since")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Extends a held claim's lease; false when it is no longer held.
    pub async fn webhook_delivery_heartbeat(
        &self,
        claim: &DeliveryClaim,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let renewed = sqlx::query(
            "UPDATE webhook_deliveries SET lease_expires_at = now() + $4 * interval '1 millisecond' \
             WHERE id = $1 AND state = 'delivering' AND lease_token = $2 AND attempt = $3",
        )
        .bind(claim.delivery_id)
        .bind(claim.token)
        .bind(claim.attempt)
        .bind(lease_ms)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Records the end of a held attempt, in one transaction: the attempt
    /// in the log, the delivery's next state, the webhook's run of
    /// failures, and when the step disables the webhook, that and its
    /// `webhook.disabled` event. False, writing nothing, when the claim is
    /// no longer held (its lease expired and another attempt took it).
    pub async fn webhook_delivery_finish(
        &self,
        claim: &DeliveryClaim,
        end: &AttemptEnd,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let (state, next_at) = step_state(&end.step);
        let a = &end.attempt;
        let webhook: Option<Uuid> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET state = $4, \
               next_attempt_at = COALESCE($5, next_attempt_at), last_status = $6, \
               lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now() \
             WHERE id = $1 AND state = 'delivering' AND lease_token = $2 AND attempt = $3 \
             RETURNING webhook_id",
        )
        .bind(claim.delivery_id)
        .bind(claim.token)
        .bind(claim.attempt)
        .bind(state.as_str())
        .bind(next_at)
        .bind(a.status)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(webhook) = webhook else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, status, latency_ms, response, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(claim.delivery_id)
        .bind(a.attempt)
        .bind(a.at)
        .bind(a.status)
        .bind(a.latency_ms)
        .bind(&a.response)
        .bind(&a.error)
        .execute(&mut *tx)
        .await?;
        let delivered = matches!(end.step, DeliveryStep::Delivered);
        sqlx::query(
            "UPDATE webhooks SET failing_since = CASE WHEN $2 THEN NULL \
               ELSE COALESCE(failing_since, $3) END WHERE id = $1",
        )
        .bind(webhook)
        .bind(delivered)
        .bind(a.at)
        .execute(&mut *tx)
        .await?;
        if let DeliveryStep::Disable(reason) = &end.step {
            sqlx::query_scalar::<_, i64>(
                "WITH disabled AS (UPDATE webhooks SET disabled_at = now(), disabled_reason = $2, \
                   updated_at = now() WHERE id = $1 AND disabled_at IS NULL RETURNING id, name) \
                 SELECT count(*) FROM (SELECT events_write(jsonb_build_array(jsonb_build_object( \
                   't', 'webhook.disabled', 'at', now(), \
                   'w', format('webhook %s (%s) disabled: %s', name, id, $2::text)))) \
                 FROM disabled WHERE events_enabled()) written",
            )
            .bind(webhook)
            .bind(reason)
            .fetch_one(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The newest `limit` deliveries of a webhook, newest first, with
    /// their attempts.
    pub async fn webhook_deliveries_list(
        &self,
        webhook_id: Uuid,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(webhook_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut deliveries: Vec<DeliveryRow> = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<_, _>>()?;
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        let attempts = sqlx::query(
            "SELECT delivery_id, attempt, at, status, latency_ms, response, error \
             FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY at, attempt",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        for row in &attempts {
            let (id, attempt) = attempt_from_row(row)?;
            if let Some(d) = deliveries.iter_mut().find(|d| d.id == id) {
                d.attempts.push(attempt);
            }
        }
        Ok(deliveries)
    }

    /// Queues a delivery of `webhook_id` again, due now, with its attempts
    /// counted from 0 (the same `webhook-id`); `Conflict` while an attempt
    /// holds it, `NotFound` when there is none.
    pub async fn webhook_delivery_retry(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> StoreResult<DeliveryRow> {
        let row = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET state = 'pending', attempt = 0, next_attempt_at = now(), \
               updated_at = now() \
             WHERE id = $1 AND webhook_id = $2 AND state <> 'delivering' \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(delivery_id)
        .bind(webhook_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(delivery_from_row(&row)?),
            None => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2)",
                )
                .bind(delivery_id)
                .bind(webhook_id)
                .fetch_one(&self.pool)
                .await?;
                Err(if exists {
                    StoreError::Conflict("an attempt of this delivery is in flight".into())
                } else {
                    StoreError::NotFound
                })
            }
        }
    }

    /// Deletes up to `limit` finished deliveries (delivered or failed)
    /// last changed before `cutoff`.
    pub async fn webhook_deliveries_prune_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        let deleted = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
               WHERE state IN ('delivered', 'failed') AND updated_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }
}
