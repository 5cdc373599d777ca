//! In-process benchmark of a graph model's inputs (bench/graph/run.sh runs it): the fetch
//! (edge lists of every hop, sampled) and the gather (node features, tensors) of requests for
//! `--targets` nodes, each request timed alone, against the store `--online-store` names.
//! Ingests the repository's batch sources first with `--ingest`. Prints `BENCHJSON {...}` with
//! percentiles in µs.
//!
//! Usage: bench_graph --feature-repo DIR --graph graph.toml --online-store LOCATION
//!        [--ingest] [--targets 1] [--requests 5000] [--warmup 500]

use flotilla_core::DataType;
use flotilla_features::graph::{self, GraphPlan};
use flotilla_features::ingest::{ingest, Sink};
use flotilla_features::store::StoreLocation;
use flotilla_features::value::Value;
use flotilla_features::FeatureStore;
use std::path::PathBuf;
use std::time::Instant;

mod common;
use common::percentiles;

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn number(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number"))).unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let repo = PathBuf::from(arg(&args, "--feature-repo").unwrap_or("examples/graph/features"));
    let plan_path = PathBuf::from(arg(&args, "--graph").unwrap_or("examples/graph/repository/fraud_sage/graph.toml"));
    let location: StoreLocation = arg(&args, "--online-store")
        .unwrap_or("embedded:/tmp/flotilla-bench-graph.redb")
        .parse()
        .map_err(anyhow::Error::msg)?;
    let targets = number(&args, "--targets", 1);
    let requests = number(&args, "--requests", 5000);
    let warmup = number(&args, "--warmup", 500);
    let store = FeatureStore::open(&repo, &location, &prometheus::Registry::new()).await?;
    if args.iter().any(|a| a == "--ingest") {
        for view in &store.registry.views {
            if view.source.is_some() {
                let report = ingest(&Sink::Store(&store), view, None, None, false).await?;
                eprintln!("{report}");
            }
        }
    }
    let plan = GraphPlan::parse(&plan_path, &std::fs::read_to_string(&plan_path)?, &store.registry)?;
    let nodes = 3000u64;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % nodes + 1) as i64
    };
    let (mut fetch, mut gather, mut both) = (Vec::new(), Vec::new(), Vec::new());
    let mut slots = 0usize;
    for i in 0..warmup + requests {
        let batch: Vec<Value> = (0..targets).map(|_| Value::Int64(next())).collect();
        let started = Instant::now();
        let (tensors, t) = graph::build(&store, &plan, &batch, DataType::F32).await?;
        let total = started.elapsed();
        slots += tensors.len();
        if i >= warmup {
            fetch.push(t.fetch.as_nanos() as u64);
            gather.push(t.gather.as_nanos() as u64);
            both.push(total.as_nanos() as u64);
        }
    }
    let out = serde_json::json!({
        "store": store.store.kind(), "targets": targets, "hops": plan.hops, "tensors_per_request": slots / (warmup + requests),
        "fetch": percentiles("fetch", fetch), "gather": percentiles("gather", gather),
        "fetch_gather": percentiles("fetch + gather", both),
    });
    println!("BENCHJSON {out}");
    Ok(())
}
