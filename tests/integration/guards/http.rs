//! What the `http` handler may reach: a refused request fails its run at
//! once (fatal, not retried) with an error naming the rule, and the
//! refused server never sees a request.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{assert_refused, http_run, Recorder};
use crate::support::{listening_address, TestApp, TestDb};

#[tokio::test]
async fn a_denied_address_is_refused_and_never_reached() {
    let server = Recorder::start("127.0.0.1", "").await;
    let app = TestApp::start_with(&["--http-deny", "127.0.0.1/32"]).await;
    let run = http_run(&app, "denied", &server.url("/secret"), "failed").await;
    assert_refused(&run, "127.0.0.1 is in 127.0.0.1/32, denied by --http-deny");
    assert_eq!(server.hits(), 0);

    // The same server is reached without the flag (the test can fail).
    let open = TestApp::start().await;
    let run = http_run(&open, "open", &server.url("/secret"), "succeeded").await;
    assert_eq!(run["result"]["body"]["reached"], true);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_host_name_resolving_to_a_denied_address_is_refused() {
    let server = Recorder::start("127.0.0.1", "").await;
    let app = TestApp::start_with(&["--http-deny", "127.0.0.0/8,::1"]).await;
    let url = format!("http://localhost:{}/", server.address.port());
    let run = http_run(&app, "by-name", &url, "failed").await;
    assert_refused(&run, "localhost (");
    assert_refused(&run, "denied by --http-deny");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn a_redirect_to_a_denied_address_is_refused() {
    // 127.0.0.2 is loopback too: a second, denied, server on this host.
    let target = Recorder::start("127.0.0.2", "").await;
    let allowed = Recorder::start("127.0.0.1", &target.url("/secret")).await;
    let app = TestApp::start_with(&["--http-deny", "127.0.0.2"]).await;
    let run = http_run(&app, "hop", &allowed.url("/redirect"), "failed").await;
    assert_refused(&run, "127.0.0.2 is in 127.0.0.2/32, denied by --http-deny");
    assert_eq!(allowed.hits(), 1, "the first hop is allowed");
    assert_eq!(target.hits(), 0, "the redirect is not followed");

    // A redirect to a name that resolves to a denied address is refused too.
    let by_name = Recorder::start(
        "127.0.0.1",
        &format!("http://localhost:{}/secret", target.address.port()),
    )
    .await;
    let app = TestApp::start_with(&["--http-deny", "127.0.0.2,localhost"]).await;
    let run = http_run(&app, "hop-name", &by_name.url("/redirect"), "failed").await;
    assert_refused(
        &run,
        "host localhost matches localhost, denied by --http-deny",
    );
    assert_eq!(target.hits(), 0);
}

#[tokio::test]
async fn an_allow_list_admits_only_what_it_lists() {
    let listed = Recorder::start("127.0.0.2", "").await;
    let other = Recorder::start("127.0.0.1", "").await;
    let app = TestApp::start_with(&["--http-allow", "127.0.0.2"]).await;
    let run = http_run(&app, "listed", &listed.url("/"), "succeeded").await;
    assert_eq!(run["result"]["status"], 200);
    let run = http_run(&app, "other", &other.url("/"), "failed").await;
    assert_refused(&run, "127.0.0.1 is not in --http-allow (127.0.0.2/32)");
    assert_eq!((listed.hits(), other.hits()), (1, 0));

    // A listed server redirecting to an unlisted one is refused at the hop.
    let bouncer = Recorder::start("127.0.0.2", &other.url("/")).await;
    let run = http_run(&app, "bounce", &bouncer.url("/redirect"), "failed").await;
    assert_refused(&run, "not in --http-allow");
    assert_eq!((bouncer.hits(), other.hits()), (1, 0));
}

#[tokio::test]
async fn cloud_metadata_is_refused_by_default_without_network_traffic() {
    let app = TestApp::start().await;
    let started = Instant::now();
    let run = http_run(
        &app,
        "metadata",
        "http://169.254.169.254/latest/meta-data/",
        "failed",
    )
    .await;
    assert_refused(
        &run,
        "169.254.169.254 is link-local (cloud metadata), denied by default",
    );
    // Refused before any connection: no connect timeout was waited for
    // (the request's timeout is 5 s, and the address is unroutable here).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        !error.contains("timed out") && !error.contains("connect"),
        "{error}"
    );

    let run = http_run(&app, "v6-metadata", "http://[fd00:ec2::254]/", "failed").await;
    assert_refused(&run, "AWS's IPv6 metadata address");
    let run = http_run(&app, "unspecified", "http://0.0.0.0:1/", "failed").await;
    assert_refused(&run, "unspecified");
}

#[tokio::test]
async fn ipv4_mapped_ipv6_forms_are_refused_like_their_ipv4() {
    let app = TestApp::start().await;
    let run = http_run(&app, "mapped", "http://[::ffff:169.254.169.254]/", "failed").await;
    assert_refused(&run, "IPv4-mapped 169.254.169.254) is link-local");

    let server = Recorder::start("127.0.0.1", "").await;
    let denied = TestApp::start_with(&["--http-deny", "127.0.0.1"]).await;
    let url = format!("http://[::ffff:127.0.0.1]:{}/", server.address.port());
    let run = http_run(&denied, "mapped-loopback", &url, "failed").await;
    assert_refused(&run, "IPv4-mapped 127.0.0.1) is in 127.0.0.1/32");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn proxy_variables_from_the_environment_are_ignored() {
    let proxy = Recorder::start("127.0.0.1", "").await;
    let target = Recorder::start("127.0.0.2", "").await;
    let db = TestDb::new();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"))
        .args(["--database-url", &db.url, "--bind", "127.0.0.1:0"])
        .args([
            "--default-jobs-dir",
            "/nonexistent",
            "--poll-interval",
            "1s",
        ])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HTTP_PROXY", proxy.url(""))
        .env("http_proxy", proxy.url(""))
        .env("ALL_PROXY", proxy.url(""))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("jobsd starts");
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = listening_address(&mut log, "jobsd").await;
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{address}");
    let created = client
        .post(format!("{base}/api/v1/jobs"))
        .json(&serde_json::json!({
            "job_id": "direct", "handler": "http", "kwargs": {"url": target.url("/")},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let run: Value = crate::support::wait_for("the run ends", Duration::from_secs(20), || async {
        let body: Value = client
            .get(format!("{base}/api/v1/jobs/direct/runs"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let run = body["runs"][0].clone();
        matches!(run["state"].as_str(), Some("succeeded" | "failed")).then_some(run)
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(target.hits(), 1, "the request went straight to the target");
    assert_eq!(
        proxy.hits(),
        0,
        "the proxy from the environment got nothing"
    );
    let _ = child.kill().await;
}

#[tokio::test]
async fn an_explicit_proxy_is_used_and_literal_addresses_are_still_checked() {
    let proxy = Recorder::start("127.0.0.1", "").await;
    let target = Recorder::start("127.0.0.2", "").await;
    let app = TestApp::start_with(&["--http-proxy", &proxy.url("")]).await;
    let run = http_run(&app, "proxied", &target.url("/"), "succeeded").await;
    assert_eq!(run["result"]["body"]["reached"], true);
    assert_eq!((proxy.hits(), target.hits()), (1, 0));
    let run = http_run(&app, "metadata", "http://169.254.169.254/", "failed").await;
    assert_refused(&run, "link-local (cloud metadata)");
    assert_eq!(
        proxy.hits(),
        1,
        "a refused request does not reach the proxy"
    );
}
