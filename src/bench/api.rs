//! api: requests per second and latency of the API under concurrent load,
//! and what auth costs of it.
//!
//! A closed loop (see `load.rs`) of `--concurrency` keep-alive connections,
//! each load after a short warm-up: `GET /api/v1/jobs/{id}` of one existing
//! job, with a token (`--auth on`) and with auth off (`--auth off`), then
//! `POST /api/v1/jobs` of paused jobs with unique ids (so the scheduler
//! never fires them), with the token. The GETs are measured in [`ROUNDS`]
//! rounds, each on a replica of its own (started on the same database),
//! alternating which mode goes first (off-on, on-off, ...), so that a
//! drift of the machine over the run (other work on it) falls on both
//! modes alike; each mode gets `--duration` in all. The cost of auth is
//! the drop of the GET rate from auth off to on; beside it, the replica's
//! CPU time per GET in each mode (from `/proc`, warm-ups included), which
//! other work on the machine disturbs far less than a rate. The load
//! generator runs on the same machine and shares its CPUs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::client::Api;
use super::load::{run_load, Load, LoadResult, RequestFn};
use super::proc::{cpu_seconds, cpu_ticks};
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "api";
const TARGET_GET_PER_SECOND: f64 = 10_000.0;
/// The most auth may cost of the GET rate, in percent.
const TARGET_AUTH_COST_PERCENT: f64 = 5.0;
const JOB_ID: &str = "bench-get";
/// Rounds of GETs, each measuring both modes.
const ROUNDS: u32 = 6;

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let duration = ctx.args.duration;
    let load = |expect_status, duration: Duration| Load {
        concurrency: ctx.args.concurrency.max(1),
        warmup: (ctx.args.duration / 5).min(Duration::from_secs(1)),
        duration,
        expect_status,
    };
    // With auth off, the job and the token are created without one.
    let mut service = ctx.spawn("bench-api-setup", &["--auth", "off"]).await?;
    let api = Api::new(&service.base)?;
    api.post(
        "/api/v1/jobs",
        &json!({"job_id": JOB_ID, "handler": "log", "kwargs": {"message": "api"},
                "periodically": "1 day", "state": "paused"}),
        201,
    )
    .await?;
    let created = api
        .post(
            "/api/v1/tokens",
            &json!({"name": "bench", "scope": "write"}),
            201,
        )
        .await?;
    let token: Arc<str> = created["secret"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("POST /api/v1/tokens answered no secret: {created}"))?
        .into();
    service.kill().await?;

    let round_duration = duration / ROUNDS;
    say(
        SCENARIO,
        format_args!(
            "GET a job for {duration:?} with a token and {duration:?} with auth off, \
             in {ROUNDS} rounds alternating which goes first"
        ),
    );
    let mut with_token = LoadResult::empty();
    let mut auth_off = LoadResult::empty();
    // The replicas' CPU ticks while loaded, with a token and with auth off.
    let (mut ticks_with_token, mut ticks_auth_off) = (0, 0);
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for authenticated in order {
            let (mode, instance) = if authenticated {
                ("on", "bench-api-auth")
            } else {
                ("off", "bench-api-open")
            };
            let mut service = ctx.spawn(instance, &["--auth", mode]).await?;
            let url = format!("{}/api/v1/jobs/{JOB_ID}", service.base);
            let bearer = token.clone();
            let get: Arc<RequestFn> = Arc::new(move |client, _, _| {
                let request = client.get(url.as_str());
                if authenticated {
                    request.bearer_auth(&bearer)
                } else {
                    request
                }
            });
            let before = cpu_ticks(service.pid())?;
            let got = run_load(&load(200, round_duration), get).await?;
            let ticks = cpu_ticks(service.pid())?.saturating_sub(before);
            service.kill().await?;
            if authenticated {
                with_token.merge(got);
                ticks_with_token += ticks;
            } else {
                auth_off.merge(got);
                ticks_auth_off += ticks;
            }
        }
    }

    say(
        SCENARIO,
        format_args!("POST jobs for {duration:?}, with a token"),
    );
    let mut service = ctx.spawn("bench-api", &["--auth", "on"]).await?;
    let url = format!("{}/api/v1/jobs", service.base);
    let post: Arc<RequestFn> = Arc::new(move |client, task, seq| {
        client.post(url.as_str()).bearer_auth(&token).json(&json!({
            "job_id": format!("api-{task}-{seq}"), "handler": "log",
            "kwargs": {"message": "api"}, "periodically": "1 day", "state": "paused"}))
    });
    let posted = run_load(&load(201, duration), post).await?;
    service.kill().await?;

    let mut figures = figures_of(
        "GET /api/v1/jobs/{id}",
        ctx,
        &with_token,
        Some(TARGET_GET_PER_SECOND),
    );
    figures.extend(figures_of(
        "GET /api/v1/jobs/{id}, auth off",
        ctx,
        &auth_off,
        None,
    ));
    figures.push(
        Figure::new(
            SCENARIO,
            "auth cost on the GET rate",
            auth_cost_percent(&with_token, &auth_off),
            "%",
        )
        .target(Cmp::AtMost, TARGET_AUTH_COST_PERCENT)
        .note(format!(
            "{:.0} req/s with a bearer token, {:.0} req/s with auth off; {ROUNDS} rounds of both",
            with_token.per_second(),
            auth_off.per_second()
        )),
    );
    let cpu_per_get =
        |ticks: u64, load: &LoadResult| cpu_seconds(ticks) * 1e6 / load.completed.max(1) as f64;
    let (cpu_with_token, cpu_auth_off) = (
        cpu_per_get(ticks_with_token, &with_token),
        cpu_per_get(ticks_auth_off, &auth_off),
    );
    let cpu_note = |ticks: u64, load: &LoadResult| {
        format!(
            "{:.2} s of CPU for {} GETs, warm-ups included",
            cpu_seconds(ticks),
            load.completed
        )
    };
    figures.extend([
        Figure::new(
            SCENARIO,
            "jobsd CPU per GET, with a token",
            cpu_with_token,
            "µs",
        )
        .note(cpu_note(ticks_with_token, &with_token)),
        Figure::new(SCENARIO, "jobsd CPU per GET, auth off", cpu_auth_off, "µs")
            .note(cpu_note(ticks_auth_off, &auth_off)),
        Figure::new(
            SCENARIO,
            "auth cost in jobsd CPU per GET",
            (cpu_with_token / cpu_auth_off.max(1e-9) - 1.0) * 100.0,
            "%",
        ),
    ]);
    figures.extend(figures_of("POST /api/v1/jobs", ctx, &posted, None));
    Ok(figures)
}

/// How much lower the rate with a token is than with auth off, in percent
/// of the latter (negative when it came out higher).
fn auth_cost_percent(with_token: &LoadResult, auth_off: &LoadResult) -> f64 {
    (1.0 - with_token.per_second() / auth_off.per_second().max(1e-9)) * 100.0
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
