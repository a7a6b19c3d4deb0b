//! api: requests per second and latency of the API under concurrent load.
//!
//! A closed loop (see `load.rs`) of `--concurrency` keep-alive connections
//! for `--duration` each, after a short warm-up: first `GET
//! /api/v1/jobs/{id}` of one existing job, then `POST /api/v1/jobs` of
//! paused jobs with unique ids (so the scheduler never fires them). The
//! load generator runs on the same machine and shares its CPUs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::client::Api;
use super::load::{run_load, Load, LoadResult, RequestFn};
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "api";
const TARGET_GET_PER_SECOND: f64 = 10_000.0;
const JOB_ID: &str = "bench-get";

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let mut service = ctx.spawn("bench-api", &[]).await?;
    let api = Api::new(&service.base)?;
    api.post(
        "/api/v1/jobs",
        &json!({"job_id": JOB_ID, "handler": "log", "kwargs": {"message": "api"},
                "periodically": "1 day", "state": "paused"}),
        201,
    )
    .await?;
    let duration = ctx.args.duration;
    let load = |expect_status| Load {
        concurrency: ctx.args.concurrency.max(1),
        warmup: (duration / 5).min(Duration::from_secs(1)),
        duration,
        expect_status,
    };

    say(SCENARIO, format_args!("GET a job for {duration:?}"));
    let url = format!("{}/api/v1/jobs/{JOB_ID}", service.base);
    let get: Arc<RequestFn> = Arc::new(move |client, _, _| client.get(url.as_str()));
    let got = run_load(&load(200), get).await?;

    say(SCENARIO, format_args!("POST jobs for {duration:?}"));
    let url = format!("{}/api/v1/jobs", service.base);
    let post: Arc<RequestFn> = Arc::new(move |client, task, seq| {
        client.post(url.as_str()).json(&json!({
            "job_id": format!("api-{task}-{seq}"), "handler": "log",
            "kwargs": {"message": "api"}, "periodically": "1 day", "state": "paused"}))
    });
    let posted = run_load(&load(201), post).await?;
    service.kill().await?;

    let mut figures = figures_of(
        "GET /api/v1/jobs/{id}",
        ctx,
        &got,
        Some(TARGET_GET_PER_SECOND),
    );
    figures.extend(figures_of("POST /api/v1/jobs", ctx, &posted, None));
    Ok(figures)
}

/// Rate (with its target, if any), p50 and p99 of one load.
fn figures_of(
    endpoint: &str,
    ctx: &Ctx<'_>,
    result: &LoadResult,
    target_per_second: Option<f64>,
) -> Vec<Figure> {
    let mut note = format!(
        "{} connections, {:.0} s, {} answers",
        ctx.args.concurrency,
        result.window.as_secs_f64(),
        result.ok
    );
    if result.errors > 0 {
        note += &format!(
            "; {} errors, first: {}",
            result.errors,
            result.first_error.as_deref().unwrap_or("?")
        );
    }
    let rate = Figure::new(
        SCENARIO,
        format!("{endpoint} rate"),
        result.per_second(),
        "req/s",
    )
    .note(note.clone());
    let rate = match target_per_second {
        Some(target) => rate.target(Cmp::AtLeast, target),
        None => rate,
    };
    vec![
        rate,
        Figure::new(
            SCENARIO,
            format!("{endpoint} p50"),
            result.percentile_ms(50.0),
            "ms",
        )
        .note(note.clone()),
        Figure::new(
            SCENARIO,
            format!("{endpoint} p99"),
            result.percentile_ms(99.0),
            "ms",
        )
        .note(note),
    ]
}
