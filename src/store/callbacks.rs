//! What remote completion (`crate::callbacks`) asks of the store: callback
//! tokens, the waiting mark of an accepted attempt, progress, heartbeats
//! and the runs whose deadline passed.

use chrono::{DateTime, Utc};

use super::{RunClaim, RunRow};
use crate::domain::RunState;

/// A run with its callback facts.
#[derive(Debug, Clone)]
pub struct CallbackRun {
    pub run: RunRow,
    /// The attempt that was accepted by its service and waits for its
    /// callback (a stale value names an earlier attempt).
    pub callback_attempt: Option<i32>,
    pub callback_deadline: Option<DateTime<Utc>>,
}

impl CallbackRun {
    /// The deadline, while the run's current attempt waits for its callback.
    pub fn waiting_until(&self) -> Option<DateTime<Utc>> {
        let waiting =
            self.run.state == RunState::Running && self.callback_attempt == Some(self.run.attempt);
        self.callback_deadline.filter(|_| waiting)
    }

    /// The fence of a write ending or re-queuing the current attempt: the
    /// claim of the replica that sent its request (whichever replica
    /// writes it).
    pub fn claim(&self) -> RunClaim {
        RunClaim {
            run_id: self.run.run_id,
            attempt: self.run.attempt,
            instance: self.run.instance.clone().unwrap_or_default(),
        }
    }
}
