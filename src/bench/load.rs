//! A closed-loop HTTP load generator and percentile math.
//!
//! Closed loop: `concurrency` tasks, each with its own keep-alive client
//! (one connection), send a request, wait for the whole answer, and send the
//! next, until the time is up. A warm-up at the start is not measured; of
//! the rest, requests that complete inside the measured window count, and
//! their latencies (send to last body byte) are kept in full and sorted, so
//! percentiles are exact (nearest rank), not estimated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Builds request number `seq` of task `task` on that task's client.
pub type RequestFn = dyn Fn(&reqwest::Client, usize, u64) -> reqwest::RequestBuilder + Send + Sync;

/// A load to apply.
pub struct Load {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The status every answer should have.
    pub expect_status: u16,
}

/// What a load measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Answers with the expected status inside the measured window.
    pub ok: u64,
    /// Other answers and transport errors inside the window.
    pub errors: u64,
    /// The first error seen, to explain `errors`.
    pub first_error: Option<String>,
    /// Every answer or error, in the warm-up and the window: what the
    /// service served while the load ran (to divide its CPU time by).
    pub completed: u64,
    pub window: Duration,
    /// Latencies of the `ok` answers, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl LoadResult {
    /// Nothing measured yet, to [`LoadResult::merge`] loads into.
    pub fn empty() -> LoadResult {
        LoadResult {
            ok: 0,
            errors: 0,
            first_error: None,
            completed: 0,
            window: Duration::ZERO,
            latencies_us: Vec::new(),
        }
    }

    /// Adds another load of the same requests (measured apart): the
    /// answers, the windows and the latencies add up.
    pub fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.completed += other.completed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.window += other.window;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
    }

    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// A latency percentile in milliseconds (0 if nothing was measured).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p).map_or(0.0, |us| us as f64 / 1000.0)
    }
}

struct TaskTally {
    ok: u64,
    errors: u64,
    completed: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
}

/// Applies `load` with requests from `request`.
pub async fn run_load(load: &Load, request: Arc<RequestFn>) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let until = measure_from + load.duration;
    let mut tasks = Vec::with_capacity(load.concurrency);
    for task in 0..load.concurrency.max(1) {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .context("building an HTTP client")?;
        let request = request.clone();
        let expect = load.expect_status;
        tasks.push(tokio::spawn(async move {
            let mut tally = TaskTally {
                ok: 0,
                errors: 0,
                completed: 0,
                first_error: None,
                latencies_us: Vec::new(),
            };
            let mut seq = 0u64;
            while Instant::now() < until {
                let sent = Instant::now();
                let outcome = match request(&client, task, seq).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.bytes().await {
                            Ok(_) if status == expect => Ok(()),
                            Ok(body) => Err(format!(
                                "status {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            )),
                            Err(e) => Err(format!("reading the answer: {e}")),
                        }
                    }
                    Err(e) => Err(format!("sending: {e}")),
                };
                seq += 1;
                tally.completed += 1;
                let done = Instant::now();
                if done < measure_from || done > until {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        tally.ok += 1;
                        tally.latencies_us.push((done - sent).as_micros() as u64);
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
            tally
        }));
    }
    let mut result = LoadResult {
        ok: 0,
        errors: 0,
        first_error: None,
        completed: 0,
        window: load.duration,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let tally = task.await.context("a load task failed")?;
        result.ok += tally.ok;
        result.errors += tally.errors;
        result.completed += tally.completed;
        if result.first_error.is_none() {
            result.first_error = tally.first_error;
        }
        result.latencies_us.extend(tally.latencies_us);
    }
    result.latencies_us.sort_unstable();
    Ok(result)
}

/// The nearest-rank percentile `p` (0–100) of sorted values: the smallest
/// value with at least p % of the values at or below it.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::{percentile, LoadResult};
    use std::time::Duration;

    #[test]
    fn merged_loads_add_answers_windows_and_latencies() {
        let load = |ok, secs, latencies: &[u64]| LoadResult {
            ok,
            errors: 0,
            first_error: None,
            completed: ok,
            window: Duration::from_secs(secs),
            latencies_us: latencies.to_vec(),
        };
        let mut all = LoadResult::empty();
        all.merge(load(300, 3, &[5, 1]));
        all.merge(load(100, 1, &[3]));
        assert_eq!(all.per_second(), 100.0);
        assert_eq!(all.latencies_us, [1, 3, 5]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7u64], 99.0), Some(7));
        assert_eq!(percentile::<u64>(&[], 50.0), None);
        let few = [1, 2, 3, 1000];
        assert_eq!(percentile(&few, 99.0), Some(1000));
        assert_eq!(percentile(&few, 50.0), Some(2));
    }
}
