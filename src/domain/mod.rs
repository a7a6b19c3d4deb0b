//! The scheduler's vocabulary and rules, independent of any storage engine:
//! the states and kinds every backend stores ([`states`]), and the rules
//! both backends would otherwise each write in their own SQL ([`rules`]),
//! as pure functions taking `now`; and the event types ([`event_types`]).

pub mod event_types;
pub mod rules;
pub mod states;

pub use states::{JobState, RunState, ScheduleKind, Trigger, UnknownName};
