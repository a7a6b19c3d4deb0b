//! Remote completion: `http` runs whose work goes on in the service they
//! call, which reports back (issue #14 §4).
//!
//! - A job whose `http` kwargs say `"callback": true` needs `--public-url`
//!   (refused at create, replace, patch and in default-job files without
//!   it). Each attempt gets a fresh random token ([`token`]); only its
//!   SHA-256 is stored (`callback_tokens`: hash → run, attempt), the secret
//!   goes out once, in `X-Jobsd-Callback-Token`, beside
//!   `X-Jobsd-Callback-Url: {public_url}/api/v1/runs/{run_id}`, and is
//!   scrubbed from everything the run shows or logs.
//! - A 2xx answer means "accepted": the worker records the attempt as
//!   waiting for its callback (`callback_attempt`, `callback_deadline`)
//!   and clears its lease. From then no handler task holds the run; the
//!   database does. The lease-expiry rescue passes it by (it has no
//!   lease), so the replica that sent the request may die without making
//!   it `dead`; the maintenance loop of any replica ends it `timed_out`
//!   (with retries as usual) once its deadline passes ([`rules`]).
//! - The service calls `POST /api/v1/runs/{id}/progress`, `/heartbeat` and
//!   `/complete` (`src/api/callbacks.rs`) with `Authorization: Bearer
//!   <token>`. Every call is fenced by run and attempt ([`rules::fence`]):
//!   an unknown or malformed token is 401; an earlier attempt's token, or
//!   a call after the run ended (a second complete), is 409; neither
//!   changes anything. A completion is written by the same store calls as
//!   a worker's outcome (`run_finish` / `run_retry`), so history, failure
//!   records, retries, waiting runs, one-shot completion and run counters
//!   follow as for any run.

pub mod rules;
pub mod sweep;
pub mod token;

use std::time::Duration;

use clap::Args;

use crate::domain::RunState;
use crate::store::CallbackRun;
use crate::worker::outcome::Write;

/// Remote completion settings (`serve` and `validate`).
#[derive(Debug, Clone, Args, Default)]
pub struct CallbackArgs {
    /// The base URL at which other services reach this jobsd (e.g.
    /// https://jobsd.internal:8080). Needed by `http` jobs with
    /// `"callback": true`: their requests carry
    /// `X-Jobsd-Callback-Url: <public-url>/api/v1/runs/<run_id>`.
    #[arg(long, env = "JOBSD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// How long a callback run without a `timeout` may take, end to end
    /// (from its start to its complete).
    #[arg(long, env = "JOBSD_CALLBACK_TIMEOUT", default_value = "1h", value_parser = crate::config::parse_flag_duration)]
    pub callback_timeout: Duration,
}

impl CallbackArgs {
    /// The settings, `--public-url` checked (an absolute http(s) URL
    /// without query or fragment; a trailing `/` is dropped).
    pub fn settings(&self) -> Result<CallbackSettings, String> {
        let public_url = match self.public_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(check_public_url(raw)?),
        };
        if self.callback_timeout.is_zero() {
            return Err("--callback-timeout must be longer than 0".into());
        }
        Ok(CallbackSettings {
            public_url,
            timeout: self.callback_timeout,
        })
    }
}

fn check_public_url(raw: &str) -> Result<String, String> {
    let url =
        reqwest::Url::parse(raw).map_err(|e| format!("--public-url {raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "--public-url {raw:?} must be an http:// or https:// URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "--public-url {raw:?} must not have a query or a fragment"
        ));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// Checked remote completion settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackSettings {
    /// Without it, callback jobs are refused.
    pub public_url: Option<String>,
    /// The deadline of a callback run without a `timeout`.
    pub timeout: Duration,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            public_url: None,
            timeout: Duration::from_secs(3600),
        }
    }
}

impl CallbackSettings {
    /// `X-Jobsd-Callback-Url` of a run: the base of its three endpoints.
    pub fn url_of(&self, run_id: uuid::Uuid) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|base| format!("{base}/api/v1/runs/{run_id}"))
    }
}

/// What a callback run's handler sends: where to report and the attempt's
/// secret. The token never appears in `Debug` output.
#[derive(Clone)]
pub struct CallbackGrant {
    /// `X-Jobsd-Callback-Url`.
    pub url: String,
    /// `X-Jobsd-Callback-Token` (secret).
    pub token: String,
}

impl std::fmt::Debug for CallbackGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackGrant")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Writes what [`crate::worker::outcome::decide`] made of a callback run's
/// attempt (an end, or a retry), and counts it in `metrics` once written,
/// as a worker's outcome is. The state written (`queued` for a retry), or
/// `None` when the attempt changed meanwhile (or there is nothing to write).
pub async fn write_decision(
    store: &crate::store::Store,
    metrics: &crate::metrics::Metrics,
    run: &CallbackRun,
    write: &Write,
) -> crate::store::StoreResult<Option<RunState>> {
    let claim = run.claim();
    let written = match write {
        Write::Finish(outcome) => store
            .run_finish(&claim, outcome)
            .await?
            .then_some(outcome.state),
        Write::Retry(retry) => store
            .run_retry(&claim, retry)
            .await?
            .then_some(RunState::Queued),
        // Not made of a report, a timeout or a cancel.
        Write::HandBack | Write::Nothing | Write::AwaitCallback { .. } => None,
    };
    match written {
        Some(RunState::Queued) => metrics.retried(),
        Some(state) => metrics.run_ended(&run.run.handler, state),
        None => {}
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>) -> CallbackArgs {
        CallbackArgs {
            public_url: url.map(str::to_string),
            callback_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_public_url_is_an_http_base_and_names_each_runs_endpoints() {
        let s = args(Some("https://jobsd.example:8443/"))
            .settings()
            .unwrap();
        assert_eq!(s.public_url.as_deref(), Some("https://jobsd.example:8443"));
        let run = uuid::Uuid::nil();
        assert_eq!(
            s.url_of(run).unwrap(),
            format!("https://jobsd.example:8443/api/v1/runs/{run}")
        );
        assert_eq!(args(None).settings().unwrap().public_url, None);
        assert_eq!(args(Some(" ")).settings().unwrap().public_url, None);
        for bad in ["ftp://x", "jobsd.example", "http://x/?a=1", "http://x/#f"] {
            let err = args(Some(bad)).settings().unwrap_err();
            assert!(err.contains("--public-url"), "{bad}: {err}");
        }
    }

    fn registry(callbacks_enabled: bool) -> crate::handlers::HandlerRegistry {
        crate::handlers::HandlerRegistry::with_builtins(crate::handlers::BuiltinConfig {
            callbacks_enabled,
            ..crate::handlers::BuiltinConfig::default()
        })
    }

    #[test]
    fn callback_jobs_need_a_public_url_in_the_api_and_in_default_job_files() {
        let kwargs = serde_json::json!({"url": "https://svc.example/start", "callback": true});
        let problems = registry(false)
            .validate_kwargs("http", &kwargs)
            .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("kwargs/callback: "), "{problems:?}");
        assert!(problems[0].contains("--public-url"), "{problems:?}");
        assert!(registry(true).validate_kwargs("http", &kwargs).is_ok());
        let plain = serde_json::json!({"url": "https://svc.example/start", "callback": false});
        assert!(registry(false).validate_kwargs("http", &plain).is_ok());

        // A default-job file with it is refused, naming the field.
        let dir = std::env::temp_dir().join(format!("jobsd-callbacks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("remote.yaml"),
            "job_id: remote\nhandler: http\nurl: https://svc.example/start\ncallback: true\n",
        )
        .unwrap();
        let scan = crate::default_jobs::scan_dir(
            &dir,
            &registry(false),
            chrono::Utc::now(),
            crate::default_jobs::MAX_FILE_BYTES,
        )
        .unwrap();
        let problems = scan.problems();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "kwargs/callback");
        assert!(
            problems[0].to_string().contains("--public-url"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn the_grant_never_shows_its_token() {
        let grant = CallbackGrant {
            url: "http://x".into(),
            token: "jobsdcb_secret".into(),
        };
        assert!(!format!("{grant:?}").contains("secret"));
    }
}
