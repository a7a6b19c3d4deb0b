//! `jobsd token create|list|revoke`: token management with only the
//! database (no running service needed; on the embedded store, also while
//! a `jobsd serve` serves the file, which sees the change within seconds).

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};

use super::manage::{self, TokenError, TokenState};
use super::Scope;
use crate::config::DatabaseConfig;
use crate::store::TokenRow;

/// `jobsd token ...`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it on stdout, this once (only its hash is
    /// stored). Under `--auth auto`, the first token turns auth on.
    Create(CreateArgs),
    /// List the tokens: id, prefix, name, scope, state and times (never a
    /// secret or a hash).
    List(ListArgs),
    /// Revoke a token, by id or prefix (`jobsd_xxxxxxxx`); every replica
    /// refuses it within a few seconds. The last live admin token cannot
    /// be revoked: create another first.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Who or what uses it, e.g. `ci`.
    #[arg(long)]
    pub name: String,
    /// `read` (every GET), `write` (plus jobs, runs and batches) or
    /// `admin` (plus tokens, webhooks, service state, run overrides).
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// Lifetime, e.g. `90d` or `12h`; no expiry when left out.
    #[arg(long)]
    pub expires: Option<String>,
    #[command(flatten)]
    pub database: DatabaseConfig,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's id, or its prefix as listed (`jobsd_xxxxxxxx`).
    pub token: String,
    #[command(flatten)]
    pub database: DatabaseConfig,
}

/// Runs a `jobsd token` command.
pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    match args.command {
        TokenCommand::Create(create) => {
            let expires_at = create
                .expires
                .as_deref()
                .map(|e| manage::expiry(e, now))
                .transpose()?;
            // Checked before the database is opened, so a typo creates nothing.
            manage::check_name(&create.name)?;
            let store = crate::app::open_store(&create.database).await?;
            let issued = manage::issue(&store, &create.name, create.scope, now, expires_at)
                .await
                .map_err(explain)?;
            crate::logging::print_stdout(&format!("{}\n", issued.secret));
            crate::logging::print_stderr(&format!(
                "jobsd: created token {} ({}, {} scope, {}); it is shown only this once: \
                 store it now. Send it as `Authorization: Bearer <token>`.",
                issued.token.prefix,
                issued.token.name,
                issued.token.scope,
                issued
                    .token
                    .expires_at
                    .map_or("no expiry".to_string(), |at| format!(
                        "expires {}",
                        time(at)
                    )),
            ));
        }
        TokenCommand::List(list) => {
            let store = crate::app::open_store(&list.database).await?;
            let tokens = store.token_list().await?;
            crate::logging::print_stdout(&table(&tokens, now));
        }
        TokenCommand::Revoke(revoke) => {
            let store = crate::app::open_store(&revoke.database).await?;
            let token = manage::revoke(&store, &revoke.token, now)
                .await
                .map_err(explain)?;
            crate::logging::print_stderr(&format!(
                "jobsd: revoked token {} ({}); every replica refuses it within a few seconds",
                token.prefix, token.name
            ));
        }
    }
    Ok(())
}

fn explain(e: TokenError) -> anyhow::Error {
    match e {
        TokenError::NotFound(what) => {
            anyhow::anyhow!("no token {what}; `jobsd token list` shows the tokens")
        }
        other => other.into(),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The tokens as an aligned table, with a header line.
pub fn table(tokens: &[TokenRow], now: DateTime<Utc>) -> String {
    let opt = |t: Option<DateTime<Utc>>| t.map_or("-".to_string(), time);
    let mut rows = vec![[
        "ID".to_string(),
        "PREFIX".into(),
        "NAME".into(),
        "SCOPE".into(),
        "STATE".into(),
        "CREATED".into(),
        "EXPIRES".into(),
        "LAST USED".into(),
    ]];
    rows.extend(tokens.iter().map(|t| {
        [
            t.id.to_string(),
            t.prefix.clone(),
            t.name.clone(),
            t.scope.to_string(),
            TokenState::of(t, now).as_str().to_string(),
            time(t.created_at),
            opt(t.expires_at),
            opt(t.last_used_at),
        ]
    }));
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
