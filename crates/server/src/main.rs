//! `flotilla`: parse flags, start tracing, bind, serve, drain on SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use flotilla::config::{Cli, Command, LogFormat};
use flotilla::{run, Listeners};
use tracing_subscriber::EnvFilter;

fn init_tracing(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)
        .with_context(|| format!("--log-level {level:?} is not a level or filter directive"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while the server is still starting is not
/// fatal: the server drains and exits 0 once it is up.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (term, int) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
        async move {
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(unix)]
async fn wait(signal: Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            init_tracing(&config.log.log_level, config.log.log_format)?;
            let listeners = Listeners::bind(&config).await?;
            run(config, listeners, shutdown_signal()).await
        }
        Command::Route(config) => {
            init_tracing(&config.log.log_level, config.log.log_format)?;
            let listeners = Listeners::bind_on(&config.listen).await?;
            flotilla::route::route(config, listeners, shutdown_signal()).await
        }
        Command::Features(command) => {
            let filter = EnvFilter::try_from_env("FLOTILLA_LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new("info"));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            flotilla::features_cli::run(command, shutdown_signal()).await
        }
        Command::Profile(args) => {
            let filter = EnvFilter::try_from_env("FLOTILLA_LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new("warn"));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            flotilla::profile_cli::run(args).await
        }
    }
}
