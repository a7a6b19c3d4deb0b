//! What to do with a due job: which runs to queue, which times to record as
//! missed, and where `next_run_at` goes. Pure: `now` is a parameter.
//!
//! Rules (SPEC §5):
//! - Every scheduled time from the stored `next_run_at` up to `now` is due.
//! - A due time later than `misfire_grace_time` (none = no limit) is missed:
//!   recorded as a `missed` run, never silently dropped, never run.
//! - `coalesce` (the default) collapses the due times that are still within
//!   the grace into one run (for the newest of them), and the missed ones
//!   into one `missed` run carrying their count; without it each time gets
//!   its own run.
//! - A job never has more than `max_instances` runs queued or executing: a
//!   due time that finds every slot taken is recorded as `missed` (skipped),
//!   so a job slower than its interval does not pile up a queue. When the
//!   slots are held by running runs, one due time is stored `waiting`
//!   instead, since a running run's handler may have returned already with
//!   its outcome not yet written: the store decides it when that run ends
//!   (queued if the handler had returned by the waiting run's time, skipped
//!   otherwise), so a fast job is never skipped for a write in flight.
//! - `next_run_at` moves to the first time after `now`, keeping the phase.
//! - At most [`MAX_BACKLOG`] past times are looked at; beyond that (a tiny
//!   interval after a long outage) the rest count as missed in one record.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::schedule::Schedule;
use crate::store::{FiredRun, JobAdvance};

/// Past times examined per job and claim.
pub const MAX_BACKLOG: usize = 1000;

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

/// Plans the firing of `job_id`, due at `due` (its stored `next_run_at`).
pub fn plan_firing(
    job_id: &str,
    schedule: &Schedule,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: &DuePolicy,
) -> Plan {
    // Due times split at `now - grace`: earlier ones are missed. Each part
    // is examined up to MAX_BACKLOG times; past that, the missed part jumps
    // to the grace window and the on-time part to the first time after now.
    let cutoff = policy.misfire_grace.map(|g| now - g);
    let mut cursor = Some(due);
    let mut missed = Vec::new();
    let mut truncated = false;
    if let Some(cutoff) = cutoff {
        while let Some(t) = cursor.filter(|t| *t < cutoff && *t <= now) {
            if missed.len() >= MAX_BACKLOG {
                truncated = true;
                cursor = schedule.first_at_or_after(cutoff);
                break;
            }
            missed.push(t);
            cursor = schedule.next_after(t);
        }
    }
    let mut on_time = Vec::new();
    while let Some(t) = cursor.filter(|t| *t <= now) {
        if on_time.len() >= MAX_BACKLOG {
            cursor = schedule.next_after(now);
            break;
        }
        on_time.push(t);
        cursor = schedule.next_after(t);
    }
    let next = cursor;
    let trigger = if missed.len() + on_time.len() > 1 {
        "catch-up"
    } else {
        "schedule"
    };

    let mut runs = Vec::new();
    let grace_text = policy
        .misfire_grace
        .map(crate::schedule::format_duration)
        .unwrap_or_default();
    let missed_run = |scheduled_for: DateTime<Utc>, count: usize, first: DateTime<Utc>| FiredRun {
        job_id: job_id.to_string(),
        scheduled_for,
        trigger: trigger.to_string(),
        state: "missed".to_string(),
        reason: if count == 1 && !truncated {
            format!("missed: {scheduled_for} was more than misfire_grace_time ({grace_text}) ago")
        } else {
            format!(
                "missed {count}{} scheduled times from {first} to {scheduled_for} (misfire_grace_time {grace_text})",
                if truncated { "+" } else { "" }
            )
        },
        result: Some(json!({
            "missed_count": count,
            "more_not_counted": truncated,
            "first_missed": first,
            "last_missed": scheduled_for,
        })),
    };
    if policy.coalesce {
        if let (Some(first), Some(last)) = (missed.first(), missed.last()) {
            runs.push(missed_run(*last, missed.len(), *first));
        }
    } else {
        runs.extend(missed.iter().map(|t| missed_run(*t, 1, *t)));
    }
    let queued = |t: DateTime<Utc>, reason: String| FiredRun {
        job_id: job_id.to_string(),
        scheduled_for: t,
        trigger: trigger.to_string(),
        state: "queued".to_string(),
        reason,
        result: None,
    };
    let skipped = |t: DateTime<Utc>| FiredRun {
        job_id: job_id.to_string(),
        scheduled_for: t,
        trigger: trigger.to_string(),
        state: "missed".to_string(),
        reason: "skipped: max_instances runs of this job are already queued or running".to_string(),
        result: Some(json!({"skipped": "max_instances"})),
    };
    let waiting = |t: DateTime<Utc>| FiredRun {
        job_id: job_id.to_string(),
        scheduled_for: t,
        trigger: trigger.to_string(),
        state: "waiting".to_string(),
        reason: "waiting: every max_instances slot is held by a running run".to_string(),
        result: None,
    };
    let to_run: Vec<(DateTime<Utc>, String)> = if policy.coalesce {
        match on_time.last() {
            Some(last) if on_time.len() > 1 => vec![(
                *last,
                format!(
                    "due; {} scheduled times coalesced into one run",
                    on_time.len()
                ),
            )],
            Some(last) => vec![(*last, "due".to_string())],
            None => Vec::new(),
        }
    } else {
        on_time.iter().map(|t| (*t, "due".to_string())).collect()
    };
    let queued_any = !to_run.is_empty() && (policy.free_slots > 0 || policy.may_wait);
    for (i, (t, reason)) in to_run.into_iter().enumerate() {
        if i < policy.free_slots {
            runs.push(queued(t, reason));
        } else if i == policy.free_slots && policy.may_wait {
            runs.push(waiting(t));
        } else {
            runs.push(skipped(t));
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

    fn states(plan: &Plan) -> Vec<(&str, DateTime<Utc>)> {
        plan.runs
            .iter()
            .map(|r| (r.state.as_str(), r.scheduled_for))
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
        assert_eq!(states(&plan), vec![("queued", t("2030-01-01T00:05:00Z"))]);
        assert_eq!(plan.runs[0].trigger, "schedule");
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
        assert_eq!(states(&plan), vec![("missed", t("2030-01-01T00:09:00Z"))]);
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
                ("missed", t("2030-01-01T00:07:00Z")),
                ("queued", t("2030-01-01T00:09:00Z"))
            ]
        );
        assert_eq!(plan.runs[0].result.as_ref().unwrap()["missed_count"], 3);
        assert!(plan.runs.iter().all(|r| r.trigger == "catch-up"));
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
                ("missed", t("2030-01-01T00:05:00Z")),
                ("missed", t("2030-01-01T00:06:00Z")),
                ("missed", t("2030-01-01T00:07:00Z")),
                ("queued", t("2030-01-01T00:08:00Z")),
                ("queued", t("2030-01-01T00:09:00Z")),
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
        assert_eq!(plan.runs.len(), 1);
        assert_eq!(plan.runs[0].state, "queued");
        // Backlog capped: one run, and the next time is after now.
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-03T00:01:00Z")));
    }

    #[test]
    fn huge_backlog_is_capped_and_counted_as_more() {
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
        assert_eq!(plan.runs.len(), 1);
        let result = plan.runs[0].result.as_ref().unwrap();
        assert_eq!(result["missed_count"], MAX_BACKLOG);
        assert_eq!(result["more_not_counted"], true);
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
        assert_eq!(
            states(&plan),
            vec![
                ("missed", t("2030-01-01T00:16:39Z")),
                ("queued", t("2030-01-01T01:00:00Z"))
            ]
        );
        assert_eq!(plan.advance.next_run_at, Some(t("2030-01-01T01:00:01Z")));
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
        assert_eq!(states(&plan), vec![("missed", t("2030-01-01T00:05:00Z"))]);
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
                ("queued", t("2030-01-01T00:05:00Z")),
                ("missed", t("2030-01-01T00:06:00Z"))
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
        assert_eq!(states(&plan), vec![("queued", t("2030-01-01T00:00:00Z"))]);
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
        assert_eq!(states(&plan), vec![("missed", t("2030-01-01T00:00:00Z"))]);
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
        assert_eq!(states(&plan), vec![("waiting", at)]);
        // A run waits already (or the slot is held by a queued run): skipped.
        let plan = plan_firing("j", &every_minute(), at, now, &full(false));
        assert_eq!(states(&plan), vec![("missed", at)]);
        assert_eq!(
            plan.runs[0].result.as_ref().unwrap()["skipped"],
            "max_instances"
        );
        // Several due times without coalescing: the first waits, the rest skip.
        let later = t("2030-01-01T00:07:00.100Z");
        let plan = plan_firing("j", &every_minute(), at, later, &full(true));
        assert_eq!(
            plan.runs
                .iter()
                .map(|r| r.state.as_str())
                .collect::<Vec<_>>(),
            vec!["waiting", "missed", "missed"]
        );
    }
}
