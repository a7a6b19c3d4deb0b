//! What follows a delivery attempt (pure rules, given `now` and a jitter
//! draw): delivered, retried on the Standard Webhooks schedule (or later,
//! when the receiver says `Retry-After`), given up, or the webhook disabled
//! (a 410 Gone answer, or a webhook failing for 5 days in a row).

use std::time::Duration;

use chrono::{DateTime, Utc};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;

/// The waits before the 2nd to 8th attempts; after the 8th, it gives up.
pub const RETRY_DELAYS: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * MINUTE),
    Duration::from_secs(30 * MINUTE),
    Duration::from_secs(2 * HOUR),
    Duration::from_secs(5 * HOUR),
    Duration::from_secs(10 * HOUR),
    Duration::from_secs(10 * HOUR),
];

/// Each wait is moved by up to this fraction either way, so that the
/// deliveries failed by one outage do not all come back at once.
const JITTER: f64 = 0.1;

/// A receiver's `Retry-After` is honoured up to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * HOUR);

/// A webhook whose deliveries have failed for this long without one
/// success is disabled.
pub const DISABLE_AFTER_FAILING: chrono::Duration = chrono::Duration::days(5);

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Another answer (`status`), or none (a timeout, a refused
    /// connection, an address the SSRF rules deny).
    Failed {
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
}

/// What the deliverer does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// The last attempt failed: the delivery stays failed (a person can
    /// redeliver it).
    GiveUp,
    /// The delivery fails and the webhook is disabled, with the reason.
    Disable(&'static str),
}

/// The step after attempt number `attempt` (1 for the first) of a delivery
/// ended as `result`, on the schedule `delays` (the waits before the 2nd,
/// 3rd, ... attempts: [`RETRY_DELAYS`] unless configured). `failing_since` is when the webhook's current run of
/// failures began (None when its last delivery succeeded); `jitter` is a
/// draw in `[0, 1)`.
pub fn next_step(
    delays: &[Duration],
    attempt: u32,
    result: &Attempt,
    failing_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    jitter: f64,
) -> NextStep {
    let Attempt::Failed {
        status,
        retry_after,
    } = result
    else {
        return NextStep::Delivered;
    };
    if *status == Some(410) {
        return NextStep::Disable("the receiver answered 410 Gone");
    }
    if now - failing_since.unwrap_or(now) >= DISABLE_AFTER_FAILING {
        return NextStep::Disable("its deliveries failed for 5 days in a row");
    }
    let Some(scheduled) = attempt.checked_sub(1).and_then(|i| delays.get(i as usize)) else {
        return NextStep::GiveUp;
    };
    let jittered = scheduled.mul_f64(1.0 + JITTER * (2.0 * jitter.clamp(0.0, 1.0) - 1.0));
    let wait = match retry_after {
        Some(asked) => jittered.max((*asked).min(MAX_RETRY_AFTER)),
        None => jittered,
    };
    let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    NextStep::RetryAt(
        now.checked_add_signed(wait)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// A `Retry-After` value: seconds, or an HTTP date (a date in the past is
/// no wait). None for anything else.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    fn failed(status: u16) -> Attempt {
        Attempt::Failed {
            status: Some(status),
            retry_after: None,
        }
    }

    fn wait_of(step: NextStep) -> Duration {
        match step {
            NextStep::RetryAt(at) => (at - now()).to_std().unwrap(),
            other => panic!("not a retry: {other:?}"),
        }
    }

    #[test]
    fn failures_are_retried_on_the_schedule_then_given_up() {
        let expected = [5, 300, 1800, 7200, 18000, 36000, 36000];
        for (i, seconds) in expected.iter().enumerate() {
            let step = next_step(
                &RETRY_DELAYS,
                i as u32 + 1,
                &failed(500),
                Some(now()),
                now(),
                0.5,
            );
            assert_eq!(
                wait_of(step),
                Duration::from_secs(*seconds),
                "attempt {}",
                i + 1
            );
        }
        assert_eq!(
            next_step(&RETRY_DELAYS, 8, &failed(500), Some(now()), now(), 0.5),
            NextStep::GiveUp
        );
        assert_eq!(
            next_step(
                &RETRY_DELAYS,
                1,
                &Attempt::Delivered,
                Some(now()),
                now(),
                0.5
            ),
            NextStep::Delivered
        );
    }

    #[test]
    fn jitter_moves_a_wait_by_at_most_a_tenth() {
        let low = wait_of(next_step(&RETRY_DELAYS, 2, &failed(503), None, now(), 0.0));
        let high = wait_of(next_step(
            &RETRY_DELAYS,
            2,
            &failed(503),
            None,
            now(),
            0.999_999,
        ));
        assert_eq!(low, Duration::from_secs(270));
        assert!(high > Duration::from_secs(329) && high <= Duration::from_secs(330));
    }

    #[test]
    fn retry_after_lengthens_a_wait_never_shortens_it_and_is_capped() {
        let asked = |seconds| Attempt::Failed {
            status: Some(429),
            retry_after: Some(Duration::from_secs(seconds)),
        };
        assert_eq!(
            wait_of(next_step(&RETRY_DELAYS, 1, &asked(60), None, now(), 0.5)),
            Duration::from_secs(60)
        );
        assert_eq!(
            wait_of(next_step(&RETRY_DELAYS, 2, &asked(60), None, now(), 0.5)),
            Duration::from_secs(300)
        );
        assert_eq!(
            wait_of(next_step(
                &RETRY_DELAYS,
                1,
                &asked(10 * 86_400),
                None,
                now(),
                0.5
            )),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn gone_or_five_days_of_failures_disable_the_webhook() {
        assert!(matches!(
            next_step(&RETRY_DELAYS, 1, &failed(410), None, now(), 0.5),
            NextStep::Disable(_)
        ));
        let since = now() - chrono::Duration::days(5);
        assert!(matches!(
            next_step(&RETRY_DELAYS, 3, &failed(500), Some(since), now(), 0.5),
            NextStep::Disable(_)
        ));
        let since = now() - chrono::Duration::days(4);
        assert!(matches!(
            next_step(&RETRY_DELAYS, 3, &failed(500), Some(since), now(), 0.5),
            NextStep::RetryAt(_)
        ));
        // Delivered ends the run of failures whatever its length.
        assert_eq!(
            next_step(
                &RETRY_DELAYS,
                1,
                &Attempt::Delivered,
                Some(since),
                now(),
                0.5
            ),
            NextStep::Delivered
        );
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(
            parse_retry_after(" 120 ", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 12:01:30 GMT", now()),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 11:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        for bad in ["", "-5", "soon", "1.5"] {
            assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
        }
    }
}
