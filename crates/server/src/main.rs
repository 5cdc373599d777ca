//! `flotilla`: parse flags, start logs and traces, bind, serve, drain on SIGTERM/SIGINT.

use clap::Parser;
use flotilla::config::{Cli, Command};
use flotilla::{run, telemetry, Listeners};

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs and the OTLP exporter are set up before the runtime starts, and flushed after it ends.
    let telemetry = match &cli.command {
        Command::Serve(config) => telemetry::init(&config.log, "flotilla")?,
        Command::Route(config) => telemetry::init(&config.log, "flotilla-router")?,
        Command::Features(_) => telemetry::init_cli("info"),
        Command::Profile(_) | Command::Replay(_) => telemetry::init_cli("warn"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(command(cli.command));
    drop(runtime);
    telemetry.shutdown();
    result
}

async fn command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => {
            let listeners = Listeners::bind(&config).await?;
            run(config, listeners, shutdown_signal()).await
        }
        Command::Route(config) => {
            let listeners = Listeners::bind_on(&config.listen).await?;
            flotilla::route::route(config, listeners, shutdown_signal()).await
        }
        Command::Features(command) => flotilla::features_cli::run(command, shutdown_signal()).await,
        Command::Profile(args) => flotilla::profile_cli::run(args).await,
        Command::Replay(args) => flotilla::replay_cli::run(args).await,
    }
}
