//! Start-up and shutdown of `jobsd serve`: connect (creating the database),
//! migrate, then serve the API until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{DatabaseConfig, ServeConfig};
use crate::handlers::HandlerRegistry;
use crate::store::Store;

/// Connects to the database named in `config` and applies migrations.
pub async fn open_store(config: &DatabaseConfig) -> anyhow::Result<Store> {
    let store = Store::connect(
        &config.database_url,
        config.db_max_connections,
        config.db_connect_timeout,
    )
    .await?;
    store
        .migrate()
        .await
        .context("applying database migrations")?;
    Ok(store)
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
    let instance = config.instance_name();
    let store = open_store(&config.database).await?;
    let registry = Arc::new(registry);
    crate::default_jobs::start(&store, &registry, &config, &shutdown).await;
    let state = AppState::new(store.clone(), registry, instance.clone());
    let app = api::router(state, config.max_body_bytes);

    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%address, %instance, "jobsd listening; Swagger UI at http://{address}/api/v1/ui");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
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
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}
