//! Start-up and shutdown of `jobsd serve`: connect (creating the database
//! or the embedded store's file), on the embedded store take the lock that
//! keeps a second `jobsd serve` off the file, migrate, then run the API,
//! the scheduler, the workers and the supervisor until SIGTERM/SIGINT. On
//! shutdown the workers drain while the HTTP server keeps serving
//! (readiness answering 503), and the server stops last.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{DatabaseConfig, ServeConfig};
use crate::handlers::HandlerRegistry;
use crate::metrics::Metrics;
use crate::retention::{Maintenance, Retention, RetentionConfig};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::store::{ServeLock, SqliteOptions, Store, StoreOptions};
use crate::worker::{Supervisor, SupervisorConfig, WorkerConfig, WorkerPool};

/// Connects to the database named in `config` and applies migrations.
pub async fn open_store(config: &DatabaseConfig) -> anyhow::Result<Store> {
    let store = connect_store(config).await?;
    migrate_store(&store).await?;
    Ok(store)
}

/// Opens the store named in `config` (creating the database or the file
/// when missing), without applying migrations.
pub async fn connect_store(config: &DatabaseConfig) -> anyhow::Result<Store> {
    Ok(Store::connect_with(
        &config.database_url,
        config.db_max_connections,
        config.db_connect_timeout,
        &StoreOptions {
            sqlite: SqliteOptions {
                synchronous: config.sqlite_synchronous,
            },
            events: !config.no_events,
        },
    )
    .await?)
}

/// Applies the store's migrations (idempotent).
pub async fn migrate_store(store: &Store) -> anyhow::Result<()> {
    store
        .migrate()
        .await
        .context("applying database migrations")
}

/// On the embedded store, takes the lock that only a serving process holds
/// (so a second `jobsd serve` on the same file refuses to start, with the
/// lock's one-line reason) and logs the line that says which store this
/// is. `None` on PostgreSQL, where any number of replicas serve.
fn take_serve_lock(store: &Store) -> anyhow::Result<Option<ServeLock>> {
    let Some(sqlite) = store.as_sqlite() else {
        return Ok(None);
    };
    let lock = sqlite.lock_for_serving().map_err(anyhow::Error::msg)?;
    tracing::info!(
        "using the embedded store (SQLite, a single replica) at {}; to run replicas, \
         switch to PostgreSQL with --database-url postgres://user:password@host:5432/jobsd \
         (or DATABASE_URL)",
        sqlite.path().display()
    );
    Ok(Some(lock))
}

/// A started service: its address and the task that serves until shutdown.
pub struct Running {
    pub address: SocketAddr,
    pub instance: String,
    pub store: Store,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the service has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the service task failed")?
    }
}

/// Starts the service and returns once it listens; it runs until `shutdown`
/// is cancelled. A library user passes a registry holding their own
/// handlers beside the built-ins.
pub async fn start(
    config: ServeConfig,
    registry: HandlerRegistry,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_with_listeners(config, registry, Vec::new(), shutdown).await
}

/// [`start`], with in-process event listeners: each gets every event
/// committed from now on, from every replica (`crate::events::listener`).
pub async fn start_with_listeners(
    config: ServeConfig,
    registry: HandlerRegistry,
    listeners: Vec<Arc<dyn crate::events::EventListener>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    crate::worker::check_lease_settings(config.lease, config.cancel_grace)
        .map_err(anyhow::Error::msg)?;
    let callbacks = config
        .guards
        .callbacks
        .settings()
        .map_err(anyhow::Error::msg)?;
    let instance = config.instance_name();
    let store = connect_store(&config.database).await?;
    // Held by the service task below until the service has stopped.
    let serve_lock = take_serve_lock(&store)?;
    migrate_store(&store).await?;
    // Before anything starts: refuses an exposed address without auth.
    let auth = crate::auth::Auth::start(&store, &config.auth, config.bind).await?;
    let registry = Arc::new(registry);
    crate::default_jobs::start(&store, &registry, &config, &shutdown).await;
    let metrics = Metrics::new();
    // Every registered handler's series exist from 0, before its first run.
    for handler in registry.iter() {
        metrics.handler(handler.name());
    }
    let workers = WorkerPool::new(
        store.clone(),
        registry.clone(),
        WorkerConfig {
            instance: instance.clone(),
            concurrency: config.workers.max(1),
            lease: config.lease,
            poll_interval: config.poll_interval,
            cancel_grace: config.cancel_grace,
            shutdown_grace: config.shutdown_grace,
            max_result_bytes: 64 * 1024,
            callbacks: callbacks.clone(),
        },
    )
    .with_metrics(metrics.clone());
    let events = crate::events::EventHub::new(store.clone(), shutdown.clone());
    let webhook_policy = crate::guard::AddressPolicy::from_flags(
        &config.guards.http_deny,
        &config.guards.http_allow,
    )
    .map_err(anyhow::Error::msg)?;
    let deliverer = crate::webhooks::Deliverer::new(
        store.clone(),
        registry.clone(),
        events.clone(),
        crate::webhooks::send::Sender::new(
            Arc::new(webhook_policy),
            config.webhooks.webhook_timeout,
        ),
        metrics.clone(),
        crate::webhooks::DelivererConfig {
            instance: instance.clone(),
            lease: config.lease,
            retry_delays: config.webhooks.webhook_retry_delays.clone(),
            concurrency: crate::webhooks::deliverer::CONCURRENCY,
            poll: std::time::Duration::from_millis(500),
        },
    );
    let state = AppState::new(
        store.clone(),
        registry.clone(),
        instance.clone(),
        config.lease,
        workers.clone(),
        shutdown.clone(),
        auth.clone(),
        metrics.clone(),
        events.clone(),
    )
    .with_callbacks(callbacks.clone())
    .with_webhooks(deliverer.clone())
    .with_batch_limits(api::BatchLimits {
        max_json_bytes: config.max_body_bytes,
        max_ndjson_bytes: config.max_batch_bytes,
    });
    let app = api::router(state, config.max_body_bytes);

    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%address, %instance, "jobsd listening; Swagger UI at http://{address}/api/v1/ui");
    let mut background = spawn_background(
        &config, address, &store, workers, &metrics, &instance, &shutdown,
    );
    background.push(tokio::spawn(auth.run(shutdown.clone())));
    background.push(tokio::spawn(deliverer.run(shutdown.clone())));
    let alerts = crate::alerts::Evaluator::new(
        store.clone(),
        events.clone(),
        metrics.clone(),
        config.alerts.defaults(),
        config.alerts.alert_check_interval,
    );
    background.push(tokio::spawn(alerts.run(shutdown.clone())));
    // The listeners start from the newest event before the server serves
    // its first request (`axum::serve` below), so they miss none of them.
    let listeners_after = if listeners.is_empty() {
        None
    } else {
        events
            .newest()
            .await
            .context("reading the newest event for the in-process event listeners")?
    };
    for listener in listeners {
        background.push(tokio::spawn(crate::events::listener::run(
            events.clone(),
            listener,
            listeners_after,
            shutdown.clone(),
        )));
    }
    let (deregister, deregister_name) = (store.clone(), instance.clone());
    // The HTTP server outlives the drain. Its graceful shutdown (stop
    // accepting, finish the requests in flight) begins only once the
    // workers have drained and the instance is deregistered, not when
    // `shutdown` fires: so during the drain a load balancer's probes get
    // readiness 503 ("draining") instead of connection refused (which some
    // treat as a network fault rather than as "take me out"), liveness
    // stays 200, and the API still answers (runs created meanwhile are
    // queued for other replicas, as these workers reserve no more slots).
    let http_stop = CancellationToken::new();
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future(),
    );
    let task = tokio::spawn(async move {
        let _serve_lock = serve_lock;
        let failed_early = tokio::select! {
            _ = shutdown.cancelled() => None,
            served = &mut server => Some(served),
        };
        if failed_early.is_some() {
            // The server stopped by itself: stop the rest too.
            shutdown.cancel();
        }
        tracing::info!("draining: readiness answers 503 until exit");
        for task in background {
            let _ = task.await;
        }
        // Deregister only once the workers have drained.
        if let Err(e) = deregister.instance_remove(&deregister_name).await {
            tracing::warn!(error = %e, "could not deregister this instance");
        }
        http_stop.cancel();
        let served = match failed_early {
            Some(served) => served,
            None => server.await,
        };
        served
            .context("the HTTP server task failed")?
            .context("serving HTTP")?;
        tracing::info!("jobsd stopped");
        Ok(())
    });
    Ok(Running {
        address,
        instance,
        store,
        task,
    })
}

/// Starts the scheduler, the worker pool, the supervisor and the history
/// maintenance; each stops
/// (workers after draining) when `shutdown` is cancelled.
fn spawn_background(
    config: &ServeConfig,
    address: SocketAddr,
    store: &Store,
    workers: WorkerPool,
    metrics: &Metrics,
    instance: &str,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let scheduler = Scheduler::new(
        store.clone(),
        SchedulerConfig {
            instance: instance.to_string(),
            batch_size: 500,
            poll_interval: config.poll_interval,
        },
    )
    .with_local_workers(workers.clone())
    .with_metrics(metrics.clone());
    let supervisor = Supervisor::new(
        store.clone(),
        SupervisorConfig {
            instance: instance.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: Some(address.to_string()),
            every: (config.lease / 4).max(std::time::Duration::from_millis(100)),
            prune_after: (config.lease * 10).max(std::time::Duration::from_secs(300)),
            callbacks: config.guards.callbacks.settings().unwrap_or_default(),
        },
    )
    .with_metrics(metrics.clone());
    let maintenance = Maintenance::new(
        store.clone(),
        RetentionConfig {
            retention: config.history.retention,
            failure_retention: config
                .history
                .failure_retention
                .unwrap_or(Retention::KeepAll),
            every: config
                .history
                .retention_interval
                .max(std::time::Duration::from_millis(100)),
            batch: crate::retention::BATCH,
        },
    );
    vec![
        tokio::spawn(scheduler.run(shutdown.clone())),
        tokio::spawn(workers.run(shutdown.clone())),
        tokio::spawn(supervisor.run(shutdown.clone())),
        tokio::spawn(maintenance.run(shutdown.clone())),
    ]
}

/// Runs the service until `shutdown` is cancelled.
pub async fn serve(
    config: ServeConfig,
    registry: HandlerRegistry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, registry, shutdown).await?.wait().await
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        trigger.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        // Shutdown first: it must never depend on a log line being written.
        trigger.cancel();
        tracing::info!("shutdown requested");
    });
    token
}
