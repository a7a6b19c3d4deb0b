//! What to do with a due job: which runs to queue, which times to record as
//! missed, and where `next_run_at` goes. Pure: `now` is a parameter.
//!
//! Rules (SPEC §5):
//! - Every scheduled time from the stored `next_run_at` up to `now` is due.
//! - A due time later than `misfire_grace_time` (none = no limit) is missed:
//!   recorded as a `missed` run, never silently dropped, never run.
//! - `coalesce` (the default) collapses the due times that are still within
//!   the grace into one run, for the newest of them (its reason says how
//!   many it stands for), and the missed ones into one `missed` run carrying
//!   their count.
//! - Without `coalesce` each due time gets its own run or `missed` record,
//!   up to [`MAX_RUNS_PER_FIRING`] of each per firing: the newest times
//!   within the grace run; older ones beyond that bound are counted in one
//!   `missed` record, and so are the missed ones when there are more than
//!   the bound.
//! - A job never has more than `max_instances` runs queued or executing: a
//!   due time that finds every slot taken is recorded as `missed` (skipped),
//!   so a job slower than its interval does not pile up a queue. When the
//!   slots are held by running runs, one due time is stored `waiting`
//!   instead, since a running run's handler may have returned already with
//!   its outcome not yet written: the store decides it when that run ends
//!   (queued if the handler had returned by the waiting run's time, skipped
//!   otherwise), so a fast job is never skipped for a write in flight.
//! - `next_run_at` moves to the first time after `now`, keeping the phase.
//! - Every due time is counted, never dropped: interval times by
//!   arithmetic, however long the downtime; cron times by enumeration, at
//!   most [`MAX_CRON_COUNT`] per count (a firing makes at most two: the
//!   missed times and those within the grace), past which the count reads
//!   `100000+` (`more_not_counted`). The newest time is found without
//!   walking the range (`Schedule::latest_at_or_before`), so a per-second
//!   cron after weeks of downtime stays cheap.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::domain::rules::SKIPPED_PREFIX;
use crate::domain::{RunState, Trigger};
use crate::schedule::{Schedule, TimesIn};
use crate::store::{FiredRun, JobAdvance};

/// Runs (or individual `missed` records) one firing of a job creates at
/// most when it does not coalesce; the rest are counted in one record.
pub const MAX_RUNS_PER_FIRING: usize = 1000;

/// Cron times enumerated per count (see the module docs).
pub const MAX_CRON_COUNT: u64 = 100_000;

/// The due job's policy.
#[derive(Debug, Clone)]
pub struct DuePolicy {
    pub misfire_grace: Option<Duration>,
    pub coalesce: bool,
    /// Runs that may still be queued now: `max_instances` minus the runs
    /// already queued, running or waiting.
    pub free_slots: usize,
    /// Whether a due time that finds no free slot may wait for one: some
    /// slot is held by a running run, and no run waits already.
    pub may_wait: bool,
}

/// The runs and the advance for one due job.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub runs: Vec<FiredRun>,
    pub advance: JobAdvance,
}

const NANO: Duration = Duration::nanoseconds(1);

/// The due times of one part of the range (missed, or within the grace):
/// `due` itself when it belongs to the part, and the schedule's times after it.
fn due_times(
    schedule: &Schedule,
    due: DateTime<Utc>,
    part: (DateTime<Utc>, DateTime<Utc>),
    keep: usize,
) -> TimesIn {
    let (from, to) = part;
    if !(from..=to).contains(&due) {
        return schedule.times_in(from.max(due), to, keep, MAX_CRON_COUNT);
    }
    // `due` is due even when it is not on the schedule (it is what the
    // store holds); the schedule's times follow it.
    let mut times = match due.checked_add_signed(NANO) {
        Some(after) => schedule.times_in(after, to, keep, MAX_CRON_COUNT - 1),
        None => TimesIn::default(),
    };
    times.count += 1;
    times.first = Some(due);
    if times.newest.len() < keep {
        times.newest.insert(0, due);
    }
    times
}

/// `n` with a `+` when it is only a lower bound.
fn count_text(n: u64, more: bool) -> String {
    format!("{n}{}", if more { "+" } else { "" })
}

/// Plans the firing of `job_id`, due at `due` (its stored `next_run_at`).
pub fn plan_firing(
    job_id: &str,
    schedule: &Schedule,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: &DuePolicy,
) -> Plan {
    if due > now {
        return Plan {
            runs: Vec::new(),
            advance: JobAdvance {
                job_id: job_id.to_string(),
                next_run_at: Some(due),
                complete: false,
            },
        };
    }
    // Due times split at `now - grace`: earlier ones are missed.
    let keep = if policy.coalesce {
        1
    } else {
        MAX_RUNS_PER_FIRING
    };
    let cutoff = policy
        .misfire_grace
        .and_then(|g| now.checked_sub_signed(g))
        .filter(|cutoff| due < *cutoff);
    // `cutoff > due`, so a nanosecond before it is still at or after `due`.
    let missed = cutoff
        .map(|cutoff| due_times(schedule, due, (due, (cutoff - NANO).min(now)), keep))
        .filter(|m| m.count > 0);
    let on_time = due_times(schedule, due, (cutoff.unwrap_or(due), now), keep);
    let next = schedule.next_after(now);
    let total = missed.as_ref().map_or(0, |m| m.count) + on_time.count;
    let trigger = if total > 1 {
        Trigger::CatchUp
    } else {
        Trigger::Schedule
    };

    let grace_text = policy
        .misfire_grace
        .map(crate::schedule::format_duration)
        .unwrap_or_default();
    let fired = |scheduled_for: DateTime<Utc>, state: RunState, reason: String| FiredRun {
        job_id: job_id.to_string(),
        scheduled_for,
        trigger,
        state,
        reason,
        result: None,
    };
    // One `missed` record standing for `count` times from `first` to
    // `last`; `why` says why they were not run, as (one time, several).
    let counted = |first: DateTime<Utc>,
                   last: DateTime<Utc>,
                   count: u64,
                   more: bool,
                   why: &(String, String)| {
        let mut run = fired(last, RunState::Missed, String::new());
        run.reason = if count == 1 && !more {
            format!("missed: {last} {}", why.0)
        } else {
            format!(
                "missed {} scheduled times from {first} to {last}: {}",
                count_text(count, more),
                why.1
            )
        };
        run.result = Some(json!({
            "missed_count": count,
            "more_not_counted": more,
            "first_missed": first,
            "last_missed": last,
        }));
        run
    };
    let late = (
        format!("was more than misfire_grace_time ({grace_text}) ago"),
        format!("more than misfire_grace_time ({grace_text}) ago"),
    );

    let mut runs = Vec::new();
    if let Some(m) = &missed {
        let whole = !m.more && m.newest.len() as u64 == m.count;
        if !policy.coalesce && whole {
            runs.extend(m.newest.iter().map(|t| counted(*t, *t, 1, false, &late)));
        } else if let (Some(first), Some(last)) = (m.first, m.last()) {
            runs.push(counted(first, last, m.count, m.more, &late));
        }
    }
    let to_run: Vec<(DateTime<Utc>, String)> = if policy.coalesce {
        match on_time.last() {
            Some(last) if on_time.count > 1 || on_time.more => vec![(
                last,
                format!(
                    "due; {} scheduled times coalesced into one run",
                    count_text(on_time.count, on_time.more)
                ),
            )],
            Some(last) => vec![(last, "due".to_string())],
            None => Vec::new(),
        }
    } else {
        // The times within the grace beyond the newest MAX_RUNS_PER_FIRING.
        let beyond = on_time.count - on_time.newest.len() as u64;
        let oldest_run = on_time.newest.first().copied();
        if let (true, Some(first), Some(oldest_run)) =
            (beyond > 0 || on_time.more, on_time.first, oldest_run)
        {
            // The newest time before the oldest run (`due` itself when it
            // is off the schedule and the only one).
            let last = oldest_run
                .checked_sub_signed(NANO)
                .and_then(|t| schedule.latest_at_or_before(t))
                .filter(|t| *t >= first)
                .unwrap_or(first);
            let cap = format!(
                "one firing queues at most {MAX_RUNS_PER_FIRING} runs of a job \
                 (coalesce is false), the newest ones"
            );
            let why = (format!("was not run: {cap}"), format!("not run: {cap}"));
            let mut run = counted(first, last, beyond, on_time.more, &why);
            if let Some(result) = run.result.as_mut() {
                result["skipped"] = json!("max_runs_per_firing");
            }
            runs.push(run);
        }
        on_time
            .newest
            .iter()
            .map(|t| (*t, "due".to_string()))
            .collect()
    };
    let queued_any = !to_run.is_empty() && (policy.free_slots > 0 || policy.may_wait);
    for (i, (t, reason)) in to_run.into_iter().enumerate() {
        if i < policy.free_slots {
            runs.push(fired(t, RunState::Queued, reason));
        } else if i == policy.free_slots && policy.may_wait {
            runs.push(fired(
                t,
                RunState::Waiting,
                "waiting: every max_instances slot is held by a running run".to_string(),
            ));
        } else {
            let mut skipped = fired(
                t,
                RunState::Missed,
                format!("{SKIPPED_PREFIX} runs of this job are already queued or running"),
            );
            skipped.result = Some(json!({"skipped": "max_instances"}));
            runs.push(skipped);
        }
    }

    let complete = next.is_none() && !queued_any;
    Plan {
        runs,
        advance: JobAdvance {
            job_id: job_id.to_string(),
            next_run_at: next,
            complete,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn every_minute() -> Schedule {
        Schedule::Interval {
            anchor: t("2030-01-01T00:00:00Z"),
            every: Duration::minutes(1),
        }
    }

    fn states(plan: &Plan) -> Vec<(RunState, DateTime<Utc>)> {
        plan.runs
            .iter()
            .map(|r| (r.state, r.scheduled_for))
            .collect()
    }

    #[test]
    fn on_time_run_is_queued_and_next_keeps_phase() {
        let policy = DuePolicy {
            misfire_grace: Some(Duration::seconds(10)),
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:05:00Z"),
            t("2030-01-01T00:05:00.300Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![(RunState::Queued, t("2030-01-01T00:05:00Z"))]
        );
        assert_eq!(plan.runs[0].trigger, Trigger::Schedule);
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-01T00:06:00Z")));
        assert!(!plan.advance.complete);
    }

    #[test]
    fn downtime_beyond_grace_records_missed_and_runs_nothing() {
        let policy = DuePolicy {
            misfire_grace: Some(Duration::seconds(10)),
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        // Down from 00:05 to 00:09:30: 00:05..00:09 all missed.
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:05:00Z"),
            t("2030-01-01T00:09:30Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![(RunState::Missed, t("2030-01-01T00:09:00Z"))]
        );
        assert_eq!(plan.runs[0].result.as_ref().unwrap()["missed_count"], 5);
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-01T00:10:00Z")));
    }

    #[test]
    fn coalesce_runs_once_within_grace() {
        let policy = DuePolicy {
            misfire_grace: Some(Duration::minutes(2)),
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:05:00Z"),
            t("2030-01-01T00:09:30Z"),
            &policy,
        );
        // 00:05, 00:06, 00:07 are beyond 2 min; 00:08, 00:09 within.
        assert_eq!(
            states(&plan),
            vec![
                (RunState::Missed, t("2030-01-01T00:07:00Z")),
                (RunState::Queued, t("2030-01-01T00:09:00Z"))
            ]
        );
        assert_eq!(plan.runs[0].result.as_ref().unwrap()["missed_count"], 3);
        assert!(plan.runs.iter().all(|r| r.trigger == Trigger::CatchUp));
    }

    #[test]
    fn without_coalesce_each_time_runs_or_is_missed() {
        let policy = DuePolicy {
            misfire_grace: Some(Duration::minutes(2)),
            coalesce: false,
            free_slots: 5,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:05:00Z"),
            t("2030-01-01T00:09:30Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![
                (RunState::Missed, t("2030-01-01T00:05:00Z")),
                (RunState::Missed, t("2030-01-01T00:06:00Z")),
                (RunState::Missed, t("2030-01-01T00:07:00Z")),
                (RunState::Queued, t("2030-01-01T00:08:00Z")),
                (RunState::Queued, t("2030-01-01T00:09:00Z")),
            ]
        );
    }

    #[test]
    fn no_grace_means_no_limit() {
        let policy = DuePolicy {
            misfire_grace: None,
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:05:00Z"),
            t("2030-01-03T00:00:00Z"),
            &policy,
        );
        // 2,876 due times (more than one firing runs one by one): one run,
        // for the newest of them, and the next time is after now.
        assert_eq!(
            states(&plan),
            vec![(RunState::Queued, t("2030-01-03T00:00:00Z"))]
        );
        assert!(
            plan.runs[0]
                .reason
                .contains("2876 scheduled times coalesced"),
            "{}",
            plan.runs[0].reason
        );
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-03T00:01:00Z")));
    }

    #[test]
    fn a_month_of_missed_minutes_is_counted_exactly() {
        let policy = DuePolicy {
            misfire_grace: Some(Duration::seconds(1)),
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:00:00Z"),
            t("2030-02-01T00:00:30Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![(RunState::Missed, t("2030-02-01T00:00:00Z"))]
        );
        let result = plan.runs[0].result.as_ref().unwrap();
        assert_eq!(result["missed_count"], 31 * 24 * 60 + 1);
        assert_eq!(result["more_not_counted"], false);
        assert_eq!(result["first_missed"], json!(t("2030-01-01T00:00:00Z")));
        assert_eq!(plan.advance.next_run_at, Some(t("2030-02-01T00:01:00Z")));
    }

    #[test]
    fn long_outage_with_tiny_interval_still_runs_the_on_time_tail() {
        let every_second = Schedule::Interval {
            anchor: t("2030-01-01T00:00:00Z"),
            every: Duration::seconds(1),
        };
        let policy = DuePolicy {
            misfire_grace: Some(Duration::seconds(10)),
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_second,
            t("2030-01-01T00:00:00Z"),
            t("2030-01-01T01:00:00.5Z"),
            &policy,
        );
        // 00:00:00 to 00:59:50 are more than 10 s late; 00:59:51 to 01:00:00 are not.
        assert_eq!(
            states(&plan),
            vec![
                (RunState::Missed, t("2030-01-01T00:59:50Z")),
                (RunState::Queued, t("2030-01-01T01:00:00Z"))
            ]
        );
        assert_eq!(plan.runs[0].result.as_ref().unwrap()["missed_count"], 3591);
        assert!(plan.runs[1].reason.contains("10 scheduled times coalesced"));
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-01T01:00:01Z")));
    }

    fn every_second() -> Schedule {
        Schedule::Interval {
            anchor: t("2030-01-01T00:00:00Z"),
            every: Duration::seconds(1),
        }
    }

    #[test]
    fn an_interval_down_for_a_year_is_counted_exactly_and_cheaply() {
        let year = 365 * 86_400;
        let now = t("2031-01-01T00:00:00.5Z");
        // With a grace: every time but the last 10 s is missed, each counted.
        let policy = DuePolicy {
            misfire_grace: Some(Duration::seconds(10)),
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let started = std::time::Instant::now();
        let plan = plan_firing(
            "j",
            &every_second(),
            t("2030-01-01T00:00:00Z"),
            now,
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![
                (RunState::Missed, t("2030-12-31T23:59:50Z")),
                (RunState::Queued, t("2031-01-01T00:00:00Z"))
            ]
        );
        let result = plan.runs[0].result.as_ref().unwrap();
        assert_eq!(result["missed_count"], year - 9);
        assert_eq!(result["more_not_counted"], false);
        assert!(plan.runs[0]
            .reason
            .contains(&format!("missed {} scheduled", year - 9)));
        assert!(plan.runs[1].reason.contains("10 scheduled times coalesced"));
        assert_eq!(plan.advance.next_run_at, Some(t("2031-01-01T00:00:01Z")));
        // Without a grace: one run, for the newest time, counting them all.
        let policy = DuePolicy {
            misfire_grace: None,
            ..policy
        };
        let plan = plan_firing(
            "j",
            &every_second(),
            t("2030-01-01T00:00:00Z"),
            now,
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![(RunState::Queued, t("2031-01-01T00:00:00Z"))]
        );
        assert!(
            plan.runs[0]
                .reason
                .contains(&format!("{} scheduled times coalesced", year + 1)),
            "{}",
            plan.runs[0].reason
        );
        // Arithmetic, not a walk over 31 million times.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    fn per_second_cron() -> Schedule {
        Schedule::Cron {
            expr: crate::schedule::CronExpr::parse("* * * * * *", "UTC").unwrap(),
            not_before: t("2030-01-01T00:00:00Z"),
        }
    }

    #[test]
    fn a_per_second_cron_down_for_three_weeks_counts_to_the_cap() {
        let due = t("2030-01-01T00:00:00Z");
        let now = t("2030-01-22T00:00:00.25Z");
        let started = std::time::Instant::now();
        // No grace: one coalesced run, for the newest time.
        let policy = DuePolicy {
            misfire_grace: None,
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing("j", &per_second_cron(), due, now, &policy);
        assert_eq!(
            states(&plan),
            vec![(RunState::Queued, t("2030-01-22T00:00:00Z"))]
        );
        assert!(
            plan.runs[0]
                .reason
                .contains("100000+ scheduled times coalesced"),
            "{}",
            plan.runs[0].reason
        );
        assert_eq!(plan.runs[0].trigger, Trigger::CatchUp);
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-22T00:00:01Z")));
        // A grace of a minute: the missed times are counted up to the cap
        // and recorded with their true first and last; the last minute runs.
        let policy = DuePolicy {
            misfire_grace: Some(Duration::minutes(1)),
            ..policy
        };
        let plan = plan_firing("j", &per_second_cron(), due, now, &policy);
        assert_eq!(
            states(&plan),
            vec![
                (RunState::Missed, t("2030-01-21T23:59:00Z")),
                (RunState::Queued, t("2030-01-22T00:00:00Z"))
            ]
        );
        let result = plan.runs[0].result.as_ref().unwrap();
        assert_eq!(result["missed_count"], MAX_CRON_COUNT);
        assert_eq!(result["more_not_counted"], true);
        assert_eq!(result["first_missed"], json!(due));
        assert!(plan.runs[0]
            .reason
            .contains("missed 100000+ scheduled times"));
        assert!(plan.runs[1].reason.contains("60 scheduled times coalesced"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "bounded work: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn without_coalesce_runs_beyond_the_cap_are_counted_as_missed() {
        let due = t("2030-01-01T00:00:00Z");
        let now = t("2030-01-01T01:00:00Z");
        let policy = DuePolicy {
            misfire_grace: None,
            coalesce: false,
            free_slots: MAX_RUNS_PER_FIRING,
            may_wait: false,
        };
        for schedule in [every_second(), per_second_cron()] {
            let plan = plan_firing("j", &schedule, due, now, &policy);
            // 3,601 due times: the newest 1,000 run, the 2,601 before them
            // are one missed record.
            assert_eq!(plan.runs.len(), 1 + MAX_RUNS_PER_FIRING);
            let missed = &plan.runs[0];
            assert_eq!(missed.state, RunState::Missed);
            assert_eq!(missed.scheduled_for, t("2030-01-01T00:43:20Z"));
            let result = missed.result.as_ref().unwrap();
            assert_eq!(result["missed_count"], 2601);
            assert_eq!(result["more_not_counted"], false);
            assert_eq!(result["first_missed"], json!(due));
            assert!(
                missed.reason.contains("at most 1000 runs"),
                "{}",
                missed.reason
            );
            let queued: Vec<DateTime<Utc>> =
                plan.runs[1..].iter().map(|r| r.scheduled_for).collect();
            assert!(plan.runs[1..].iter().all(|r| r.state == RunState::Queued));
            assert_eq!(queued.first(), Some(&t("2030-01-01T00:43:21Z")));
            assert_eq!(queued.last(), Some(&now));
            assert!(queued
                .windows(2)
                .all(|w| w[1] - w[0] == Duration::seconds(1)));
            assert_eq!(plan.advance.next_run_at, Some(t("2030-01-01T01:00:01Z")));
        }
        // A year of them: still one record and 1,000 runs, counted exactly.
        let plan = plan_firing(
            "j",
            &every_second(),
            due,
            t("2031-01-01T00:00:00Z"),
            &policy,
        );
        assert_eq!(plan.runs.len(), 1 + MAX_RUNS_PER_FIRING);
        assert_eq!(
            plan.runs[0].result.as_ref().unwrap()["missed_count"],
            365 * 86_400 + 1 - 1000
        );
    }

    #[test]
    fn without_coalesce_a_long_missed_backlog_is_one_record() {
        let policy = DuePolicy {
            misfire_grace: Some(Duration::seconds(10)),
            coalesce: false,
            free_slots: 20,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_second(),
            t("2030-01-01T00:00:00Z"),
            t("2030-01-01T01:00:00Z"),
            &policy,
        );
        // 3,590 times beyond the grace: more than a firing records one by one.
        assert_eq!(plan.runs[0].state, RunState::Missed);
        assert_eq!(plan.runs[0].scheduled_for, t("2030-01-01T00:59:49Z"));
        assert_eq!(plan.runs[0].result.as_ref().unwrap()["missed_count"], 3590);
        let queued: Vec<_> = plan.runs[1..].iter().map(|r| r.state).collect();
        assert_eq!(queued, vec![RunState::Queued; 11]);
    }

    #[test]
    fn a_job_at_max_instances_skips_instead_of_queueing() {
        let policy = DuePolicy {
            misfire_grace: None,
            coalesce: true,
            free_slots: 0,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:05:00Z"),
            t("2030-01-01T00:05:00Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![(RunState::Missed, t("2030-01-01T00:05:00Z"))]
        );
        assert!(plan.runs[0].reason.contains("max_instances"));
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-01T00:06:00Z")));

        let policy = DuePolicy {
            misfire_grace: None,
            coalesce: false,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &every_minute(),
            t("2030-01-01T00:05:00Z"),
            t("2030-01-01T00:06:00Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![
                (RunState::Queued, t("2030-01-01T00:05:00Z")),
                (RunState::Missed, t("2030-01-01T00:06:00Z"))
            ]
        );
    }

    #[test]
    fn one_shot_runs_then_has_no_next() {
        let once = Schedule::Once {
            at: t("2030-01-01T00:00:00Z"),
        };
        let policy = DuePolicy {
            misfire_grace: None,
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &once,
            t("2030-01-01T00:00:00Z"),
            t("2030-01-01T00:00:01Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![(RunState::Queued, t("2030-01-01T00:00:00Z"))]
        );
        assert_eq!(plan.advance.next_run_at, None);
        assert!(!plan.advance.complete, "completed once its run ends");
    }

    #[test]
    fn missed_one_shot_completes_at_once() {
        let once = Schedule::Once {
            at: t("2030-01-01T00:00:00Z"),
        };
        let policy = DuePolicy {
            misfire_grace: Some(Duration::seconds(5)),
            coalesce: true,
            free_slots: 1,
            may_wait: false,
        };
        let plan = plan_firing(
            "j",
            &once,
            t("2030-01-01T00:00:00Z"),
            t("2030-01-01T01:00:00Z"),
            &policy,
        );
        assert_eq!(
            states(&plan),
            vec![(RunState::Missed, t("2030-01-01T00:00:00Z"))]
        );
        assert!(plan.advance.complete);
    }

    #[test]
    fn a_full_job_waits_once_for_a_running_slot_then_skips() {
        let at = t("2030-01-01T00:05:00Z");
        let now = t("2030-01-01T00:05:00.100Z");
        let full = |may_wait| DuePolicy {
            misfire_grace: None,
            coalesce: false,
            free_slots: 0,
            may_wait,
        };
        // A running run holds the slot: the time waits for it.
        let plan = plan_firing("j", &every_minute(), at, now, &full(true));
        assert_eq!(states(&plan), vec![(RunState::Waiting, at)]);
        // A run waits already (or the slot is held by a queued run): skipped.
        let plan = plan_firing("j", &every_minute(), at, now, &full(false));
        assert_eq!(states(&plan), vec![(RunState::Missed, at)]);
        assert_eq!(
            plan.runs[0].result.as_ref().unwrap()["skipped"],
            "max_instances"
        );
        // Several due times without coalescing: the first waits, the rest skip.
        let later = t("2030-01-01T00:07:00.100Z");
        let plan = plan_firing("j", &every_minute(), at, later, &full(true));
        assert_eq!(
            plan.runs.iter().map(|r| r.state).collect::<Vec<_>>(),
            vec![RunState::Waiting, RunState::Missed, RunState::Missed]
        );
    }
}
