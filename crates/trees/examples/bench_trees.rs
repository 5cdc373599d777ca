//! In-process timing of the tree engine, for bench/trees: loads a model, reads
//! f32 rows, and times `Engine::infer` (tensor in → tensor out, the whole engine
//! call) at the given batch sizes on the given thread counts.
//!
//! Usage: bench_trees MODEL ROWS.f32 FEATURES SECONDS BATCH[,BATCH..] THREADS[,THREADS..]
//! Prints one JSON object per (batch, threads) with the median and mean µs per call,
//! and writes the predictions of the first 1024 rows to MODEL.flotilla.f64 for the
//! parity check.

use flotilla_core::engine::{AutocompleteOptions, Backend, Engine, Phases};
use flotilla_core::{DataType, ModelConfig, Tensor};
use flotilla_proto::inference::ModelParameter;
use flotilla_trees::{load_forest, TreeBackend, TreeEngine};
use std::path::Path;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, rows, features, seconds, batches, threads] = args.as_slice() else {
        return Err("usage: bench_trees MODEL ROWS.f32 FEATURES SECONDS BATCHES THREADS".into());
    };
    let model = Path::new(model);
    let features: usize = features.parse()?;
    let seconds: f64 = seconds.parse()?;
    let x: Vec<f32> =
        std::fs::read(rows)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let total_rows = x.len() / features;
    for threads in threads.split(',') {
        let mut config = ModelConfig { name: "bench".into(), ..Default::default() };
        config.parameters.insert("threads".into(), ModelParameter { string_value: threads.to_string() });
        TreeBackend.autocomplete(&mut config, model, &AutocompleteOptions::default())?;
        config.output.truncate(1);
        let engine = TreeEngine::new(&config, load_forest(model, None)?, model)?;
        if threads == "1" {
            let n = total_rows.min(1024);
            let out = engine.infer(&[tensor(&x[..n * features], n, features)], &mut Phases::start())?;
            let preds: Vec<u8> = out[0]
                .data
                .chunks_exact(4)
                .flat_map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
                .collect();
            std::fs::write(model.with_extension("flotilla.f64"), preds)?;
        }
        for batch in batches.split(',') {
            let batch: usize = batch.parse()?;
            // Pre-built request tensors cycling through the rows, as a server would receive them.
            let inputs: Vec<Tensor> = (0..64)
                .map(|i| {
                    let start = (i * batch) % (total_rows - batch + 1);
                    tensor(&x[start * features..(start + batch) * features], batch, features)
                })
                .collect();
            let mut times = Vec::new();
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let mut i = 0;
            while Instant::now() < deadline || times.len() < 10 {
                let t = &inputs[i % inputs.len()];
                let start = Instant::now();
                let out = engine.infer(std::slice::from_ref(t), &mut Phases::start())?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(out);
                i += 1;
            }
            let warm = times.len() / 10;
            let mut t = times[warm..].to_vec();
            t.sort_by(f64::total_cmp);
            let mean = t.iter().sum::<f64>() / t.len() as f64;
            println!(
                "{{\"batch\": {batch}, \"threads\": {threads}, \"median_us\": {:.3}, \"mean_us\": {mean:.3}, \"calls\": {}}}",
                t[t.len() / 2],
                t.len()
            );
        }
    }
    Ok(())
}

fn tensor(x: &[f32], rows: usize, features: usize) -> Tensor {
    let data: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new("input__0", DataType::F32, vec![rows as i64, features as i64], data)
}
