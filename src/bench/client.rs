//! The benchmark's HTTP client of a `jobsd` under test: create jobs (in
//! bulk when the service offers it, else one request per job), count and
//! read runs, wait for them. Every unexpected answer becomes an error
//! naming the request. Also the bodies of the `log` jobs the scenarios
//! create.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest page of `GET /api/v1/runs`.
const PAGE: usize = 1000;
/// How often the waits look.
const POLL: Duration = Duration::from_millis(200);

/// A `jobsd` reached over HTTP.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

/// One entry of a run's `history`.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub to: String,
}

/// The parts of a run the benchmark reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    pub run_id: String,
    pub job_id: String,
    pub state: String,
    pub scheduled_for: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub instance: Option<String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

impl Run {
    /// `started_at − scheduled_for` in µs (none before the run started).
    pub fn start_lag_us(&self) -> Option<i64> {
        self.started_at
            .and_then(|started| (started - self.scheduled_for).num_microseconds())
    }
}

/// Which runs [`Api::runs_all`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunsFilter<'a> {
    pub state: Option<&'a str>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
}

impl<'a> RunsFilter<'a> {
    pub fn in_state(state: &'a str) -> Self {
        RunsFilter {
            state: Some(state),
            ..RunsFilter::default()
        }
    }

    fn query(&self) -> String {
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut query = String::new();
        if let Some(state) = self.state {
            query += &format!("&state={state}");
        }
        if let Some(since) = self.since {
            query += &format!("&since={}", at(since));
        }
        if let Some(until) = self.until {
            query += &format!("&until={}", at(until));
        }
        query
    }
}

/// Bodies of `count` `log` jobs `<prefix><i>` (the message is the prefix)
/// whose first due times are spread evenly over `spread` from `first_due`:
/// job i at `first_due + spread·i/count` (to the µs). With `every` they
/// repeat at that interval (whole milliseconds), keeping their phases.
#[derive(Debug, Clone)]
pub struct LogJobs<'a> {
    pub prefix: &'a str,
    pub count: usize,
    pub first_due: DateTime<Utc>,
    /// Zero: all due at `first_due`.
    pub spread: Duration,
    pub every: Option<Duration>,
}

impl LogJobs<'_> {
    /// Job i's first due time.
    pub fn due(&self, i: usize) -> DateTime<Utc> {
        let offset_us = self.spread.as_micros() * i as u128 / self.count.max(1) as u128;
        self.first_due + chrono::Duration::microseconds(offset_us.min(i64::MAX as u128) as i64)
    }

    pub fn bodies(&self) -> Vec<Value> {
        (0..self.count)
            .map(|i| {
                let mut body = json!({
                    "job_id": format!("{}{i}", self.prefix),
                    "handler": "log",
                    "kwargs": {"message": self.prefix},
                    "when": self.due(i).to_rfc3339_opts(SecondsFormat::Micros, true),
                });
                if let Some(every) = self.every {
                    body["periodically"] = json!(format!("{}ms", every.as_millis()));
                }
                body
            })
            .collect()
    }
}

/// How jobs were created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatePath {
    /// `POST /api/v1/jobs/bulk`, this many jobs per request.
    Bulk(usize),
    /// Concurrent `POST /api/v1/jobs`, this many at once.
    Single(usize),
}

impl std::fmt::Display for CreatePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreatePath::Bulk(n) => write!(f, "bulk, {n} per request"),
            CreatePath::Single(c) => write!(f, "single POSTs, {c} concurrent"),
        }
    }
}

impl CreatePath {
    /// A lead from the start of creating `count` jobs to the first due
    /// time that leaves creation time to finish first: 2 s plus 0.3 ms per
    /// job in bulk (a release build creates ~25,000 jobs/s), 1 ms per job
    /// singly.
    pub fn lead(self, count: usize) -> Duration {
        let per_job_us = match self {
            CreatePath::Bulk(_) => 300,
            CreatePath::Single(_) => 1000,
        };
        Duration::from_secs(2) + Duration::from_micros(per_job_us * count as u64)
    }
}

/// What creating a batch of jobs took.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub path: CreatePath,
    pub count: usize,
    pub elapsed: Duration,
    /// When the last creation was answered (the benchmark's clock).
    pub finished_at: DateTime<Utc>,
}

impl Created {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// How long creation went on past `due`, if it did.
    pub fn overran(&self, due: DateTime<Utc>) -> Option<chrono::Duration> {
        let over = self.finished_at - due;
        (over >= chrono::Duration::zero()).then_some(over)
    }
}

/// Notices a polled count that stopped moving.
struct Stall {
    value: u64,
    since: Instant,
    limit: Duration,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Stall {
            value: u64::MAX,
            since: Instant::now(),
            limit,
        }
    }

    /// Whether `value` is the same as `limit` ago.
    fn stuck(&mut self, value: u64) -> bool {
        if value != self.value {
            (self.value, self.since) = (value, Instant::now());
        }
        self.since.elapsed() > self.limit
    }
}

/// Sleeps until `at` (the benchmark's clock); returns at once if it has passed.
pub async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("building an HTTP client")?;
        Ok(Api {
            base: base.to_string(),
            http,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let what = || format!("{method} {path}");
        let response = request.send().await.with_context(what)?;
        let status = response.status().as_u16();
        let text = response.text().await.with_context(what)?;
        if status != expect {
            let shown = &text[..text.len().min(500)];
            bail!("{} answered {status} (expected {expect}): {shown}", what());
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{}: answer is not JSON", what()))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let value = self.send(reqwest::Method::GET, path, None, 200).await?;
        serde_json::from_value(value).with_context(|| format!("GET {path}: unexpected answer"))
    }

    /// POSTs an NDJSON body; the answer's JSON.
    pub async fn post_ndjson(
        &self,
        path: &str,
        body: String,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let what = || format!("POST {path}");
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .with_context(what)?;
        let status = response.status().as_u16();
        let text = response.text().await.with_context(what)?;
        if status != expect {
            let shown = &text[..text.len().min(500)];
            bail!("{} answered {status} (expected {expect}): {shown}", what());
        }
        serde_json::from_str(&text).with_context(|| format!("{}: answer is not JSON", what()))
    }

    pub async fn post(&self, path: &str, body: &Value, expect: u16) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body), expect)
            .await
    }

    /// A `PUT` without a body (the state changes take query parameters).
    pub async fn put(&self, path: &str, expect: u16) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PUT, path, None, expect).await
    }

    /// Creates `specs` (job bodies as for `POST /api/v1/jobs`) the `path`
    /// way: bulk requests sent one after another, or concurrent single ones.
    pub async fn create_jobs(
        &self,
        specs: Vec<Value>,
        path: CreatePath,
    ) -> anyhow::Result<Created> {
        let count = specs.len();
        let start = Instant::now();
        match path {
            CreatePath::Bulk(size) => {
                for chunk in specs.chunks(size.clamp(1, 10_000)) {
                    let answer = self
                        .post("/api/v1/jobs/bulk", &json!({ "jobs": chunk }), 201)
                        .await?;
                    let created = answer["created"].as_u64().unwrap_or(0);
                    if created != chunk.len() as u64 {
                        bail!("bulk create made {created} jobs of {}", chunk.len());
                    }
                }
            }
            CreatePath::Single(concurrency) => {
                futures::stream::iter(specs)
                    .map(|spec| async move { self.post("/api/v1/jobs", &spec, 201).await })
                    .buffer_unordered(concurrency.max(1))
                    .try_for_each(|_| async { Ok(()) })
                    .await?;
            }
        }
        Ok(Created {
            path,
            count,
            elapsed: start.elapsed(),
            finished_at: Utc::now(),
        })
    }

    /// How many runs are in `state`.
    pub async fn runs_count(&self, state: &str) -> anyhow::Result<u64> {
        let page: Value = self
            .get(&format!("/api/v1/runs?state={state}&limit=1"))
            .await?;
        page["runs_count"]
            .as_u64()
            .ok_or_else(|| anyhow!("GET /api/v1/runs: no runs_count"))
    }

    /// Every run `filter` selects, newest first, page by page.
    pub async fn runs_all(&self, filter: &RunsFilter<'_>) -> anyhow::Result<Vec<Run>> {
        #[derive(Deserialize)]
        struct Page {
            runs: Vec<Run>,
            runs_count: usize,
        }
        let filter = filter.query();
        let mut runs = Vec::new();
        loop {
            let page: Page = self
                .get(&format!(
                    "/api/v1/runs?limit={PAGE}&offset={}{filter}",
                    runs.len()
                ))
                .await?;
            let last = page.runs.len() < PAGE || runs.len() + page.runs.len() >= page.runs_count;
            runs.extend(page.runs);
            if last {
                return Ok(runs);
            }
        }
    }

    /// Every run created from `since` until before `until`, read in slices
    /// of `slice` of creation time, so that no page needs a large offset.
    pub async fn runs_created_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        slice: chrono::Duration,
    ) -> anyhow::Result<Vec<Run>> {
        let slice = slice.max(chrono::Duration::milliseconds(1));
        let mut runs = Vec::new();
        let mut from = since;
        while from < until {
            let to = (from + slice).min(until);
            let filter = RunsFilter {
                since: Some(from),
                until: Some(to),
                ..RunsFilter::default()
            };
            runs.extend(self.runs_all(&filter).await?);
            from = to;
        }
        Ok(runs)
    }

    pub async fn run(&self, run_id: &str) -> anyhow::Result<Run> {
        let envelope: Value = self.get(&format!("/api/v1/runs/{run_id}")).await?;
        serde_json::from_value(envelope["run"].clone())
            .with_context(|| format!("GET /api/v1/runs/{run_id}: unexpected answer"))
    }

    /// Polls until `count` runs have succeeded. Fails (saying how many
    /// failed) when no more succeeded for `stall`.
    pub async fn wait_succeeded(&self, count: u64, stall: Duration) -> anyhow::Result<()> {
        let mut stalled = Stall::new(stall);
        loop {
            let done = self.runs_count("succeeded").await?;
            if done >= count {
                return Ok(());
            }
            if stalled.stuck(done) {
                let failed = self.runs_count("failed").await?;
                bail!("only {done} of {count} runs succeeded ({failed} failed); none more in {stall:?}");
            }
            // The figures come from the runs' own timestamps, so polling
            // more often would only add load to the system measured.
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until no run is queued or running. Fails when their number
    /// has not changed for `stall`.
    pub async fn wait_settled(&self, stall: Duration) -> anyhow::Result<()> {
        let mut stalled = Stall::new(stall);
        loop {
            let queued = self.runs_count("queued").await?;
            let running = self.runs_count("running").await?;
            if queued + running == 0 {
                return Ok(());
            }
            if stalled.stuck(queued + running) {
                bail!("{queued} runs still queued and {running} running; no change in {stall:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Seconds between two database instants.
pub fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}
