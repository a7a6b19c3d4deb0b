//! The alert feed, on every replica: [`Evaluator::step`] reads the events
//! after the feed's cursor, applies what each tells of its job to the job's
//! [`AlertState`] ([`rules::observe`]), checks the clock-driven alerts when
//! their time has come (dead man, `max_duration`), and writes the new
//! states, the alerts (as events) and the cursor in one transaction, only
//! if no other replica advanced the feed since it read it
//! (`Store::alert_feed_advance`). Replicas race for each step and one
//! wins; the others read again. So every alert is raised once, whichever
//! replicas run, die or restart.
//!
//! Cheap while nothing fails: a success or a change of a job that holds no
//! alert state needs neither its settings nor a write, and while no job
//! holds one, no look at the states either; steps come at most every
//! [`STEP_EVERY`], so under load a drain of successful runs costs a read of
//! its events and a cursor write per page of [`PAGE`] events.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::rules::{self, AlertSettings, AlertState, Observation};
use super::settings::{AlertDefaults, JobAlerts};
use crate::domain::event_types::TypeFilter;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::store::{AlertAdvance, EventQuery, NewAlert, Store, StoreResult};

/// The event types that tell something of a job's alerts
/// ([`rules::observation_of`]).
pub const WATCHED_TYPES: &str = "run.failed,run.timed_out,run.succeeded,run.missed,run.waiting,\
     job.created,job.updated,job.paused,job.resumed,job.deleted";

/// Events read per step, at most.
pub const PAGE: i64 = 5000;
/// Shortest time between steps that found events: alerts wait at most this
/// long for their events to gather into pages, and a busy store gets a
/// few steps a second, not one per commit.
pub const STEP_EVERY: Duration = Duration::from_millis(250);

/// The evaluator; cheap to clone.
#[derive(Clone)]
pub struct Evaluator {
    store: Store,
    hub: EventHub,
    metrics: Metrics,
    defaults: AlertDefaults,
    /// How often the clock-driven alerts are checked.
    check_interval: Duration,
}

/// One observation of a job, in feed order.
struct Seen {
    job_id: String,
    run_id: Option<Uuid>,
    observation: Observation,
    at: DateTime<Utc>,
    deleted: bool,
}

impl Evaluator {
    pub fn new(
        store: Store,
        hub: EventHub,
        metrics: Metrics,
        defaults: AlertDefaults,
        check_interval: Duration,
    ) -> Evaluator {
        Evaluator {
            store,
            hub,
            metrics,
            defaults,
            check_interval: check_interval.max(Duration::from_millis(100)),
        }
    }

    /// Steps until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            let stepped = tokio::select! {
                _ = shutdown.cancelled() => return,
                stepped = self.step(Duration::from_secs(30)) => stepped,
            };
            // A step that returned at once found work: let the next page
            // fill (one that waited for its events needs no pause).
            let pause = STEP_EVERY.saturating_sub(started.elapsed());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if let Err(e) = stepped {
                tracing::warn!(error = %e, "alerts: a step of the feed failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// One step: the next page of events (waiting up to `wait` for some,
    /// or until the clock check is due), and the clock check if due.
    /// Returns the alerts it raised (none too when another replica took
    /// the step).
    pub async fn step(&self, wait: Duration) -> StoreResult<Vec<NewAlert>> {
        let feed = self.store.alert_feed().await?;
        let read_at = tokio::time::Instant::now();
        let now = feed.now;
        let next_check = feed
            .checked_at
            .map(|c| c + chrono::Duration::from_std(self.check_interval).unwrap_or_default());
        let until_check = next_check
            .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::ZERO);
        let types = TypeFilter::parse(WATCHED_TYPES).unwrap_or_default();
        let mut reader = self
            .hub
            .reader(EventQuery {
                types,
                after: feed.position,
                limit: PAGE,
                ..EventQuery::default()
            })
            .await;
        let events = reader.next(wait.min(until_check)).await?;
        let to = reader.position().filter(|to| Some(*to) != feed.position);
        // The time after the wait (the store's clock, moved on by the
        // wait): what this step's alerts and throttles go by.
        let now = feed.now + chrono::Duration::from_std(read_at.elapsed()).unwrap_or_default();
        let check_clock = next_check.is_none_or(|at| now >= at);

        let seen: Vec<Seen> = events
            .iter()
            .filter_map(|e| {
                let job_id = e.job_id.clone()?;
                let observation = rules::observation_of(&e.event_type, e.reason.as_deref())?;
                Some(Seen {
                    job_id,
                    run_id: e.run_id,
                    observation,
                    at: e.at,
                    deleted: e.event_type == "job.deleted",
                })
            })
            .collect();

        let mut step = Step::new(&self.defaults, now);
        let mut ids: Vec<String> = seen.iter().map(|s| s.job_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        if feed.any_state
            || seen
                .iter()
                .any(|s| !matches!(s.observation, Observation::Success | Observation::Changed))
        {
            step.load_states(&self.store, &ids).await?;
        }
        // Settings are read only for the jobs that may change: those with a
        // state, and those a failure, miss or overrun was seen of.
        let needed: HashSet<&str> = seen
            .iter()
            .filter(|s| {
                !matches!(s.observation, Observation::Success | Observation::Changed)
                    || step.stored.contains_key(&s.job_id)
            })
            .map(|s| s.job_id.as_str())
            .collect();
        let needed: Vec<String> = needed.into_iter().map(str::to_string).collect();
        if !needed.is_empty() {
            for job in self.store.job_get_many(&needed).await? {
                step.settings.insert(job.job_id.clone(), job.alerts);
            }
        }
        for s in &seen {
            if s.deleted {
                step.forget(&s.job_id);
                continue;
            }
            let Some(alerts) = step.settings.get(&s.job_id).copied() else {
                // A job not needed (nothing to remember), or one gone.
                if needed.contains(&s.job_id) {
                    step.forget(&s.job_id);
                }
                continue;
            };
            step.observe(&s.job_id, &alerts, s.run_id, s.observation, s.at);
        }

        if check_clock {
            self.check_clock(&mut step, feed.checked_at).await?;
        }

        if to.is_none() && !check_clock && step.is_empty() {
            return Ok(Vec::new());
        }
        let (states, alerts) = step.finish();
        let advance = AlertAdvance {
            from_version: feed.version,
            to,
            checked_at: check_clock.then_some(now),
            states,
            alerts,
        };
        if self.store.alert_feed_advance(&advance).await? {
            for a in &advance.alerts {
                self.metrics.alert_raised(a.kind);
                tracing::info!(job_id = %a.job_id, alert = a.kind.event_type(), reason = %a.reason, "alert raised");
            }
            Ok(advance.alerts)
        } else {
            Ok(Vec::new())
        }
    }

    /// The dead man's windows and runs past `max_duration`, at `step.now`.
    async fn check_clock(
        &self,
        step: &mut Step<'_>,
        checked_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let watched = self
            .store
            .alert_watched_jobs(self.defaults.expect_success_within.is_some())
            .await?;
        let running = self
            .store
            .alert_running_runs(self.defaults.max_duration.is_some())
            .await?;
        let mut ids: Vec<String> = watched
            .iter()
            .map(|w| w.job_id.clone())
            .chain(running.iter().map(|r| r.job_id.clone()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        step.load_states(&self.store, &ids).await?;
        let now = step.now;
        for w in watched {
            let settings = w.alerts.resolve(&self.defaults);
            let since = w.last_success.map_or(w.changed_at, |s| s.max(w.changed_at));
            let state = step.state(&w.job_id);
            if rules::dead_man_due(state, &settings, since, now) {
                step.observe(&w.job_id, &w.alerts, None, Observation::NoSuccess, now);
            }
        }
        for r in running {
            let settings = r.alerts.resolve(&self.defaults);
            if rules::ran_too_long(&settings, r.started_at, checked_at, now) {
                step.observe(
                    &r.job_id,
                    &r.alerts,
                    Some(r.run_id),
                    Observation::RanTooLong,
                    now,
                );
            }
        }
        Ok(())
    }
}

/// What one step works on: the jobs' states as stored and as they become,
/// and the alerts raised.
struct Step<'a> {
    defaults: &'a AlertDefaults,
    now: DateTime<Utc>,
    /// States as stored (jobs without one are absent).
    stored: HashMap<String, AlertState>,
    /// States as they are now, of the jobs this step observed.
    working: HashMap<String, (AlertState, AlertSettings)>,
    /// Jobs whose state goes (deleted).
    forgotten: HashSet<String>,
    settings: HashMap<String, JobAlerts>,
    alerts: Vec<NewAlert>,
    /// For jobs with no stored state.
    blank: AlertState,
}

impl<'a> Step<'a> {
    fn new(defaults: &'a AlertDefaults, now: DateTime<Utc>) -> Step<'a> {
        Step {
            defaults,
            now,
            stored: HashMap::new(),
            working: HashMap::new(),
            forgotten: HashSet::new(),
            settings: HashMap::new(),
            alerts: Vec::new(),
            blank: AlertState::default(),
        }
    }

    /// Loads the stored states of `ids` not loaded yet.
    async fn load_states(&mut self, store: &Store, ids: &[String]) -> StoreResult<()> {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !self.stored.contains_key(*id) && !self.working.contains_key(*id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            self.stored.extend(store.alert_states(&missing).await?);
        }
        Ok(())
    }

    /// A job's state as it is now.
    fn state(&self, job_id: &str) -> &AlertState {
        self.working
            .get(job_id)
            .map(|(s, _)| s)
            .or_else(|| self.stored.get(job_id))
            .unwrap_or(&self.blank)
    }

    fn observe(
        &mut self,
        job_id: &str,
        alerts: &JobAlerts,
        run_id: Option<Uuid>,
        observation: Observation,
        at: DateTime<Utc>,
    ) {
        self.forgotten.remove(job_id);
        let settings = alerts.resolve(self.defaults);
        let stored = self.stored.get(job_id).cloned().unwrap_or_default();
        let (state, _) = self
            .working
            .entry(job_id.to_string())
            .or_insert_with(|| (stored, settings.clone()));
        if let Some(raised) = rules::observe(state, &settings, observation, at) {
            self.alerts.push(NewAlert {
                kind: raised.kind,
                job_id: job_id.to_string(),
                run_id,
                reason: raised.reason,
                at: self.now,
            });
        }
    }

    fn forget(&mut self, job_id: &str) {
        self.working.remove(job_id);
        if self.stored.contains_key(job_id) {
            self.forgotten.insert(job_id.to_string());
        }
    }

    fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.forgotten.is_empty() && self.working.is_empty()
    }

    /// The states to write (only those that changed) and the alerts.
    #[allow(clippy::type_complexity)]
    fn finish(self) -> (Vec<(String, Option<AlertState>)>, Vec<NewAlert>) {
        let mut states: Vec<(String, Option<AlertState>)> =
            self.forgotten.into_iter().map(|id| (id, None)).collect();
        for (job_id, (state, settings)) in self.working {
            let kept = state.kept(&settings, self.now);
            if kept.as_ref() != self.stored.get(&job_id) {
                states.push((job_id, kept));
            }
        }
        states.sort_by(|a, b| a.0.cmp(&b.0));
        (states, self.alerts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_types_are_event_types_each_telling_something() {
        let filter = TypeFilter::parse(WATCHED_TYPES).expect("known types");
        assert!(filter.groups.is_empty());
        for t in &filter.exact {
            let reason = None;
            assert!(
                rules::observation_of(t, reason).is_some(),
                "{t} tells nothing of alerts"
            );
        }
        assert_eq!(filter.exact.len(), WATCHED_TYPES.split(',').count());
    }
}
