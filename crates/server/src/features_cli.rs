//! `flotilla features ...`: batch ingestion, stream consumption, lookups and training sets.

use crate::config::{CdcCommand, FeatureStoreArgs, FeaturesCommand};
use anyhow::{bail, Context};
use flotilla_features::definitions::Registry;
use flotilla_features::ingest::{ingest, Sink, Window};
use flotilla_features::training::TrainingSet;
use flotilla_features::value::parse_timestamp;
use flotilla_features::FeatureStore;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;

async fn open(args: &FeatureStoreArgs) -> anyhow::Result<FeatureStore> {
    let registry = prometheus::Registry::new();
    FeatureStore::open(&args.feature_repo, &args.online_store, &registry)
        .await
        .with_context(|| format!("feature store ({}, {})", args.feature_repo.display(), args.online_store))
}

/// Runs one `features` subcommand; `shutdown` ends `consume`.
pub async fn run(command: FeaturesCommand, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let progress = std::io::stderr().is_terminal();
    match command {
        FeaturesCommand::Ingest { store, views, path, server } => {
            if path.is_some() && views.len() != 1 {
                bail!("--path reads one file: name its feature view with exactly one --view");
            }
            batch(&store, &views, path.as_deref(), None, server, progress).await?;
        }
        FeaturesCommand::Materialize { store, start, end, views, server } => {
            let window = Window {
                start: parse_timestamp(&start).map_err(|m| anyhow::anyhow!("--start: {m}"))?,
                end: parse_timestamp(&end).map_err(|m| anyhow::anyhow!("--end: {m}"))?,
            };
            if window.start > window.end {
                bail!("--start {start} is after --end {end}");
            }
            batch(&store, &views, None, Some(window), server, progress).await?;
        }
        FeaturesCommand::Consume { store } => {
            let fs = Arc::new(open(&store).await?);
            if !fs.registry.views.iter().any(|v| v.stream.is_some()) {
                bail!("no feature view in {} declares a stream", store.feature_repo.display());
            }
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut tasks = flotilla_features::streams::spawn_all(fs.clone(), stop_rx, None, None);
            shutdown.await;
            tracing::info!("stopping stream consumers");
            let _ = stop_tx.send(true);
            while tasks.join_next().await.is_some() {}
        }
        FeaturesCommand::Cdc { command } => cdc(command).await?,
        FeaturesCommand::Get { store, features, feature_service, entities, full_feature_names } => {
            let fs = open(&store).await?;
            let entities: serde_json::Value =
                serde_json::from_str(&entities).context("--entities must be JSON like '{\"card_id\": [1, 2]}'")?;
            let mut body = match feature_service {
                Some(s) => serde_json::json!({ "feature_service": s, "entities": entities }),
                None => serde_json::json!({ "features": features, "entities": entities }),
            };
            body["full_feature_names"] = full_feature_names.into();
            let request = fs.parse_online_request(&body)?;
            let response = fs.get_online_features(&request).await?;
            println!("{}", serde_json::to_string_pretty(&response.to_json())?);
        }
        FeaturesCommand::TrainingSet {
            feature_repo,
            entities,
            features,
            feature_service,
            out,
            timestamp_field,
            full_feature_names,
            memory_limit,
            spill_dir,
            threads,
        } => {
            let registry = Registry::load(&feature_repo)?;
            let refs = match feature_service {
                Some(s) => registry.service(&s)?.features.clone(),
                None => registry.resolve(&features)?,
            };
            let memory_limit = memory_limit.or_else(flotilla_features::training::default_memory_limit);
            let set = TrainingSet {
                registry: &registry,
                features: refs,
                timestamp_field,
                full_feature_names,
                progress,
                memory_limit,
                spill_dir,
                threads,
            };
            let report = tokio::task::block_in_place(|| set.build(&entities, &out))?;
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            println!(
                "{}: {} entity rows joined against {} feature rows in {:.2} s ({:.0} entity rows/s), {} values found",
                out.display(),
                report.entity_rows,
                report.feature_rows,
                secs,
                report.entity_rows as f64 / secs,
                report.matched
            );
            let p = &report.phases;
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            let how = match (&report.spill, memory_limit) {
                (Some(s), Some(limit)) => format!(
                    "spilled: index estimate {:.0} MiB over the {} limit, {} partitions, {:.0} MiB written to disk",
                    mib(report.memory_estimate),
                    match limit {
                        l if l >= 1 << 20 => format!("{:.0} MiB", mib(l)),
                        l if l >= 1 << 10 => format!("{:.0} KiB", l as f64 / 1024.0),
                        l => format!("{l} B"),
                    },
                    s.partitions,
                    mib(s.bytes)
                ),
                _ => format!("in memory: index estimate {:.0} MiB", mib(report.memory_estimate)),
            };
            println!(
                "  read {:.2} s, index {:.2} s, join {:.2} s, write {:.2} s (beside the join); {how}",
                p.read.as_secs_f64(),
                p.index.as_secs_f64(),
                p.join.as_secs_f64(),
                p.write.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// `features cdc status|drop`.
async fn cdc(command: CdcCommand) -> anyhow::Result<()> {
    use flotilla_features::streams::postgres;
    match command {
        CdcCommand::Status { store } => {
            let fs = open(&store).await?;
            let positions = postgres::positions(&fs).await.map_err(anyhow::Error::msg)?;
            if positions.is_empty() {
                println!("no PostgreSQL source has a position in {}", store.online_store);
            }
            for p in positions {
                let held = postgres::retained_bytes(&p).await;
                println!(
                    "{}: slot {} on {} (publication {}), applied up to {}, {} changes applied, {}",
                    p.view,
                    p.slot,
                    p.url,
                    p.publication,
                    postgres::format_lsn(p.applied_end),
                    p.changes,
                    match held {
                        Ok(Some(b)) => format!("the slot holds back {b} bytes of WAL"),
                        Ok(None) => "the slot does not exist".to_string(),
                        Err(e) => format!("slot state unknown: {e}"),
                    }
                );
            }
        }
        CdcCommand::Drop { store, views, all } => {
            let fs = open(&store).await?;
            let positions = postgres::positions(&fs).await.map_err(anyhow::Error::msg)?;
            for name in &views {
                if !positions.iter().any(|p| &p.view == name) {
                    bail!("feature view '{name}' has no PostgreSQL position in {}", store.online_store);
                }
            }
            for p in positions.iter().filter(|p| all || views.contains(&p.view)) {
                postgres::drop_position(&fs, p).await.map_err(anyhow::Error::msg)?;
                println!("{}: dropped replication slot {} on {}", p.view, p.slot, p.url);
            }
        }
    }
    Ok(())
}

/// Ingests the views' files into the online store, or through a server's `POST /push`.
async fn batch(
    store: &FeatureStoreArgs,
    views: &[String],
    path: Option<&std::path::Path>,
    window: Option<Window>,
    server: Option<String>,
    progress: bool,
) -> anyhow::Result<()> {
    if let Some(url) = server {
        let registry = Registry::load(&store.feature_repo)?;
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        let sink = Sink::Server { client, url };
        for view in selected(&registry, views)? {
            println!("{}", ingest(&sink, &registry.views[view], path, window, progress).await?);
        }
        return Ok(());
    }
    let fs = open(store).await?;
    let sink = Sink::Store(&fs);
    for view in selected(&fs.registry, views)? {
        println!("{}", ingest(&sink, &fs.registry.views[view], path, window, progress).await?);
    }
    Ok(())
}

/// The views named (all with a batch source when none is).
fn selected(registry: &Registry, names: &[String]) -> anyhow::Result<Vec<usize>> {
    if names.is_empty() {
        let all: Vec<usize> = registry.views.iter().filter(|v| v.source.is_some()).map(|v| v.index).collect();
        if all.is_empty() {
            bail!("no feature view declares a batch source");
        }
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            registry.view(n).map(|v| v.index).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown feature view '{n}'; declared views are {}",
                    registry.views.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}
