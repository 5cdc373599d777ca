//! Raw engine timing for the serving benchmark (`bench/serving/run.sh`): loads one model folder
//! through the server's own backends (the same list `flotilla serve` builds) and calls
//! `Engine::infer` in a loop, with no queue, thread hand-off or protocol in between.
//!
//! Usage: `bench_raw MODEL_DIR [--seconds S] [--batch N] [--callers K] [--onnxruntime-lib PATH]`
//! (FP32 inputs, the first input's configured dims, random rows). Prints one JSON object per
//! timed setting: batch 1 with one caller, and batch N with one caller and with K callers.

use anyhow::{bail, Context};
use flotilla::config::ServeConfig;
use flotilla_core::engine::{Engine, Phases};
use flotilla_core::{config, DataType, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    model_dir: PathBuf,
    seconds: f64,
    batch: usize,
    callers: usize,
    onnxruntime_lib: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { model_dir: PathBuf::new(), seconds: 3.0, batch: 64, callers: 2, onnxruntime_lib: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--callers" => args.callers = value()?.parse()?,
            "--onnxruntime-lib" => args.onnxruntime_lib = Some(value()?.into()),
            _ if a.starts_with('-') => bail!("unknown flag {a}"),
            _ => args.model_dir = a.into(),
        }
    }
    if args.model_dir.as_os_str().is_empty() {
        bail!("usage: bench_raw MODEL_DIR [--seconds S] [--batch N] [--callers K] [--onnxruntime-lib PATH]");
    }
    Ok(args)
}

/// Loads the latest version of `dir` as the server would (config.pbtxt, backend choice, model file).
fn load(dir: &Path, onnxruntime_lib: Option<PathBuf>) -> anyhow::Result<(Arc<dyn Engine>, Vec<i64>, String)> {
    let mut serve = ServeConfig::with_repository(dir.parent().unwrap_or(Path::new(".")));
    serve.onnxruntime_lib = onnxruntime_lib;
    let instances = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    let backends = flotilla::backends(&serve, instances)?;
    let name = dir.file_name().context("model folder has no name")?.to_string_lossy().to_string();
    let text = std::fs::read_to_string(dir.join("config.pbtxt")).context("config.pbtxt")?;
    let mut cfg = config::parse_pbtxt(&text, &format!("{name}/config.pbtxt"))?;
    cfg.name = name.clone();
    config::validate(&mut cfg, &name)?;
    let backend = backends.iter().find(|b| b.serves(&cfg)).context("no backend serves this config")?;
    let version = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u64>().ok())
        .max()
        .context("no version folder")?;
    let vdir = dir.join(version.to_string());
    let file = match cfg.default_model_filename.as_str() {
        "" => backend.default_filenames().iter().map(|f| vdir.join(f)).find(|p| p.is_file()),
        f => Some(vdir.join(f)),
    }
    .context("no model file")?;
    let engine = backend.load(&cfg, &file)?;
    let input = cfg.input.first().context("config has no input")?;
    Ok((engine, input.dims.clone(), input.name.clone()))
}

fn rows(input: &str, dims: &[i64], batch: usize) -> Tensor {
    let per_row: i64 = dims.iter().product();
    let mut state = 0x9e37_79b9_u32;
    let data: Vec<u8> = (0..batch as i64 * per_row)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32 * 2.0 - 1.0).to_le_bytes()
        })
        .collect();
    let mut shape = vec![batch as i64];
    shape.extend_from_slice(dims);
    Tensor::new(input, DataType::F32, shape, data)
}

/// Calls `infer` for `seconds` from `callers` threads; returns every call's duration.
fn time(
    engine: &Arc<dyn Engine>,
    input: &Tensor,
    seconds: f64,
    callers: usize,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let inputs = [input.clone()];
    for _ in 0..50 {
        engine.infer(&inputs, &mut Phases::start())?; // warm-up
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let results: Vec<anyhow::Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let inputs = inputs.clone();
                s.spawn(move || {
                    let mut out = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        engine.infer(&inputs, &mut Phases::start())?;
                        out.push(t.elapsed());
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("caller thread panicked")).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort();
    Ok((all, elapsed))
}

fn report(label: &str, batch: usize, callers: usize, (durations, elapsed): (Vec<Duration>, f64)) {
    let pct = |p: f64| durations[((durations.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
    let calls = durations.len() as f64 / elapsed;
    println!(
        "{}",
        serde_json::json!({
            "setting": label, "batch": batch, "callers": callers, "calls": durations.len(),
            "calls_per_s": calls, "rows_per_s": calls * batch as f64,
            "p50_us": pct(0.50), "p99_us": pct(0.99),
        })
    );
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let (engine, dims, input) = load(&args.model_dir, args.onnxruntime_lib.clone())?;
    let one = rows(&input, &dims, 1);
    let many = rows(&input, &dims, args.batch);
    report("batch1", 1, 1, time(&engine, &one, args.seconds, 1)?);
    report("batched", args.batch, 1, time(&engine, &many, args.seconds, 1)?);
    if args.callers > 1 {
        report("batched_parallel", args.batch, args.callers, time(&engine, &many, args.seconds, args.callers)?);
    }
    Ok(())
}
