//! States, triggers and schedule kinds: enums, each stored and shown by
//! its name. The names below are the only place a state is spelled out
//! (besides the SQL of each store, which matches on them).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

/// A name that is none of an enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what}; use one of: {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// Defines a fieldless enum stored and serialized as one of its names, with
/// `as_str`, `FromStr`, `Display`, serde, an OpenAPI schema, and a text
/// column type for every sqlx database.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        value: s.to_string(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<DB: Database> Type<DB> for $name
        where
            str: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $name
        where
            &'q str: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                let name: &'q str = self.as_str();
                <&'q str as Encode<'q, DB>>::encode_by_ref(&name, buf)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $name
        where
            &'r str: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&'r str as Decode<'r, DB>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    };
}

named_enum! {
    /// Where a run is in its life.
    RunState, "run state" {
        /// Ready to be claimed once `run_after` comes.
        Queued = "queued",
        /// Due while every `max_instances` slot was held by a running run.
        Waiting = "waiting",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
        TimedOut = "timed_out",
        /// Recorded, never run (late, or skipped for `max_instances`).
        Missed = "missed",
        /// Its instance stopped heartbeating (a step in the history only).
        Dead = "dead",
    }
}

impl RunState {
    /// Waiting to start or executing: the run holds one of its job's slots.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Queued | RunState::Waiting | RunState::Running
        )
    }

    /// The state of an attempt that ran and ended (not missed or cancelled
    /// before it started).
    pub const fn is_executed_end(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::TimedOut | RunState::Cancelled
        )
    }

    /// Ends that leave a failure record.
    pub const fn leaves_failure_record(self) -> bool {
        matches!(self, RunState::Failed | RunState::TimedOut)
    }
}

named_enum! {
    /// Whether a job fires.
    JobState, "job state" {
        Running = "running",
        Paused = "paused",
        /// A one-shot job whose run has ended.
        Completed = "completed",
    }
}

impl JobState {
    /// A state a client may ask a job to be in, in any case: `running`
    /// (alias `active`, the original service's word) or `paused`.
    pub fn requested(name: &str) -> Option<JobState> {
        match name.to_ascii_lowercase().as_str() {
            "active" => Some(JobState::Running),
            other => other.parse().ok().filter(|s| *s != JobState::Completed),
        }
    }
}

named_enum! {
    /// Why a run exists.
    Trigger, "trigger" {
        Schedule = "schedule",
        Manual = "manual",
        Retry = "retry",
        /// A time that came while the service was down, run late.
        CatchUp = "catch-up",
    }
}

named_enum! {
    /// How a job's times are computed.
    ScheduleKind, "schedule kind" {
        Once = "once",
        Interval = "interval",
        Cron = "cron",
        /// Failure records: stored, never fired.
        Never = "never",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(*state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!("catch-up".parse::<Trigger>(), Ok(Trigger::CatchUp));
        let err = "done".parse::<JobState>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"done\" is not a job state; use one of: running, paused, completed"
        );
    }
}
