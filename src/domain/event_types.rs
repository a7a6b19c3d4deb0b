//! The event types (`crate::events`), and the `type` filter of
//! `GET /api/v1/events`: pure rules. The stores' triggers write the types
//! (the migrations spell them); this list is what the API accepts and
//! documents.

use std::fmt;

/// Every event type, by group. `run.<state>` for each state a run enters
/// (`run.retried` when it goes back to the queue for another attempt),
/// `run.progress` for a new progress report; `webhook.disabled` when a
/// webhook is disabled by its receiver's answers (`crate::webhooks`);
/// `alert.<kind>` for each alert (`crate::alerts`); `batch.created`,
/// `batch.completed` (its data the batch's summary: status and counts) and
/// `batch.aborted` (`crate::batches`).
pub const EVENT_TYPES: &[&str] = &[
    "run.queued",
    "run.waiting",
    "run.running",
    "run.succeeded",
    "run.failed",
    "run.timed_out",
    "run.cancelled",
    "run.missed",
    "run.dead",
    "run.retried",
    "run.progress",
    "job.created",
    "job.updated",
    "job.paused",
    "job.resumed",
    "job.completed",
    "job.deleted",
    "service.paused",
    "service.resumed",
    "webhook.disabled",
    "alert.failing",
    "alert.recovered",
    "alert.missed",
    "alert.overrun",
    "alert.dead_man",
    "batch.created",
    "batch.completed",
    "batch.aborted",
];

/// The groups: what comes before the dot.
pub const EVENT_GROUPS: &[&str] = &["run", "job", "service", "webhook", "alert", "batch"];

/// Which types a reader wants: exact types and whole groups (`run.` or
/// `run.*`). Empty: every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeFilter {
    pub exact: Vec<String>,
    pub groups: Vec<String>,
}

/// A `type` filter naming no known type or group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not an event type; use a type ({types}) or a group followed by a dot ({groups})"
)]
pub struct UnknownType {
    pub value: String,
    types: String,
    groups: String,
}

impl TypeFilter {
    /// Parses a comma-separated list, e.g. `run.failed,run.timed_out` or
    /// `job.`; blanks between items are ignored.
    pub fn parse(list: &str) -> Result<TypeFilter, UnknownType> {
        let mut filter = TypeFilter::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let group = item.strip_suffix(".*").or_else(|| item.strip_suffix('.'));
            match group {
                Some(g) if EVENT_GROUPS.contains(&g) => push_new(&mut filter.groups, g),
                _ if EVENT_TYPES.contains(&item) => push_new(&mut filter.exact, item),
                _ => {
                    return Err(UnknownType {
                        value: item.chars().take(80).collect(),
                        types: EVENT_TYPES.join(", "),
                        groups: EVENT_GROUPS
                            .iter()
                            .map(|g| format!("{g}."))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
        Ok(filter)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.groups.is_empty()
    }

    /// Whether an event of `event_type` passes (what the stores' SQL does).
    pub fn matches(&self, event_type: &str) -> bool {
        self.is_empty()
            || self.exact.iter().any(|t| t == event_type)
            || self
                .groups
                .iter()
                .any(|g| event_type.split('.').next() == Some(g.as_str()))
    }
}

fn push_new(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|x| x == item) {
        list.push(item.to_string());
    }
}

impl fmt::Display for TypeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups = self.groups.iter().map(|g| format!("{g}."));
        let all: Vec<String> = self.exact.iter().cloned().chain(groups).collect();
        f.write_str(&all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_groups_are_parsed_and_matched() {
        let f = TypeFilter::parse("run.failed, run.timed_out,job.,service.*,run.failed").unwrap();
        assert_eq!(f.exact, vec!["run.failed", "run.timed_out"]);
        assert_eq!(f.groups, vec!["job", "service"]);
        assert!(f.matches("run.failed") && f.matches("job.deleted") && f.matches("service.paused"));
        assert!(!f.matches("run.succeeded"));
        assert_eq!(f.to_string(), "run.failed,run.timed_out,job.,service.");
        assert!(TypeFilter::parse("").unwrap().matches("run.queued"));
    }

    #[test]
    fn unknown_types_and_groups_are_refused_with_the_list() {
        for bad in ["run.exploded", "runs.", "run", "*", "alerts."] {
            let err = TypeFilter::parse(bad).unwrap_err();
            assert!(err.to_string().contains("run.failed"), "{err}");
            assert!(err.to_string().contains("job."), "{err}");
        }
    }

    #[test]
    fn every_type_is_in_a_group() {
        for t in EVENT_TYPES {
            let group = t.split('.').next().unwrap();
            assert!(EVENT_GROUPS.contains(&group), "{t}");
        }
    }
}
