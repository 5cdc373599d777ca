//! `flotilla`: parse flags, start tracing, bind, serve, drain on SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use flotilla::config::{Cli, Command, LogFormat, ServeConfig};
use flotilla::{run, Listeners};
use tracing_subscriber::EnvFilter;

fn init_tracing(config: &ServeConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("--log-level {:?} is not a level or filter directive", config.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            init_tracing(&config)?;
            let listeners = Listeners::bind(&config).await?;
            run(config, listeners, shutdown_signal()).await
        }
    }
}
