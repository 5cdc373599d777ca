//! Replaying logged requests through a candidate model, and the report: how its outputs differ
//! from the logged ones (which requests changed), whether predicted classes agree, the latency of
//! both, metrics against labels joined by request id, and whether the candidate stays within a
//! canary's bounds. Running the models is the caller's (`flotilla replay` loads them in-process).

use crate::columns::{self, numbers};
use crate::{PayloadError, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::Array;
use flotilla_core::config::{input_datatype, output_datatype};
use flotilla_core::{ModelConfig, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub id: String,
    pub version: String,
    /// `ok` or the error kind.
    pub status: String,
    pub latency_us: i64,
    /// The inputs the model saw; `None` when one was dropped or hashed (it cannot be replayed).
    pub inputs: Option<Vec<Tensor>>,
    pub outputs: Option<Vec<Tensor>>,
}

/// The log files of `model` under `dir` (its `<model>/` folder, or `dir` itself), oldest first;
/// files still being written (`.partial`) are left out.
pub fn files(dir: &Path, model: &str) -> Result<Vec<PathBuf>> {
    let folder = if dir.join(model).is_dir() { dir.join(model) } else { dir.to_path_buf() };
    let listing = std::fs::read_dir(&folder).map_err(|e| PayloadError::Io(format!("{}: {e}", folder.display())))?;
    let mut out: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(PayloadError::Invalid(format!(
            "{}: no payload log files (*.parquet) of model '{model}'",
            folder.display()
        )));
    }
    Ok(out)
}

/// Every logged request of `model` in `paths`, with tensors typed as `config` declares them.
pub fn read(paths: &[PathBuf], model: &str, config: &ModelConfig) -> Result<Vec<Logged>> {
    let mut out = Vec::new();
    for path in paths {
        let what = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| PayloadError::Io(format!("{what}: {e}")))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| PayloadError::Invalid(format!("{what}: not a readable Parquet file: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| PayloadError::Invalid(format!("{what}: {e}")))?;
            columns::check(&batch, &what)?;
            let text = |name: &str, row: usize| -> Option<String> {
                let c = batch.column_by_name(name)?;
                let s = c.as_string_opt::<i32>()?;
                (!s.is_null(row)).then(|| s.value(row).to_string())
            };
            let latency = batch.column_by_name("latency_us").and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
            for row in 0..batch.num_rows() {
                if text("model", row).is_some_and(|m| m != model) {
                    continue;
                }
                // Hashed inputs are kept as digests (string items): they cannot be sent again.
                let hashed = |name: &str| {
                    batch.schema().field_with_name(name).is_ok_and(|f| {
                        matches!(f.data_type(), arrow_schema::DataType::List(item) if item.data_type() == &arrow_schema::DataType::Utf8)
                    })
                };
                let mut inputs = Some(Vec::new());
                for i in &config.input {
                    let name = format!("input.{}", i.name);
                    match columns::tensor_at(&batch, &name, row, input_datatype(i))? {
                        Some(t) if !hashed(&name) => {
                            if let Some(v) = inputs.as_mut() {
                                v.push(t)
                            }
                        }
                        _ => inputs = None,
                    }
                }
                let mut outputs = Some(Vec::new());
                for o in &config.output {
                    match columns::tensor_at(&batch, &format!("output.{}", o.name), row, output_datatype(o))? {
                        Some(t) => {
                            if let Some(v) = outputs.as_mut() {
                                v.push(t)
                            }
                        }
                        None => outputs = None,
                    }
                }
                out.push(Logged {
                    id: text("request_id", row).unwrap_or_default(),
                    version: text("version", row).unwrap_or_default(),
                    status: text("status", row).unwrap_or_default(),
                    latency_us: latency.as_ref().map_or(0, |l| l.value(row)),
                    inputs,
                    outputs,
                });
            }
        }
    }
    Ok(out)
}

/// Every logged request of `model` among payload log messages (the JSON that
/// `serve --payload-log kafka://...` sends, see [`crate::log`]), with tensors typed as `config`
/// declares them; errors name `what` (the topic) and the message.
pub fn messages(payloads: &[Vec<u8>], model: &str, config: &ModelConfig, what: &str) -> Result<Vec<Logged>> {
    use serde_json::Value as J;
    let mut out = Vec::new();
    for (n, payload) in payloads.iter().enumerate() {
        let bad = |m: String| PayloadError::Invalid(format!("{what} message {}: {m}", n + 1));
        let m: J = serde_json::from_slice(payload).map_err(|e| bad(format!("not JSON: {e}")))?;
        let text = |k: &str| m.get(k).and_then(J::as_str).map(str::to_string);
        let (Some(id), Some(status)) = (text("request_id"), text("status")) else {
            return Err(bad("not a Flotilla payload log message (no request_id or status)".into()));
        };
        if text("model").is_some_and(|x| x != model) {
            continue;
        }
        // A side is `None` when a tensor is missing (dropped, a failed request's outputs) or
        // hashed: it cannot be sent again.
        let side = |key: &str, names: Vec<(&str, flotilla_core::DataType)>| -> Result<Option<Vec<Tensor>>> {
            let Some(map) = m.get(key).and_then(J::as_object) else { return Ok(None) };
            let mut tensors = Vec::with_capacity(names.len());
            for (name, datatype) in names {
                let Some(t) = map.get(name) else { return Ok(None) };
                if t.get("hashed").and_then(J::as_bool) == Some(true) {
                    return Ok(None);
                }
                tensors.push(json_tensor(name, t, datatype).map_err(|e| bad(format!("{key}.{name}: {e}")))?);
            }
            Ok(Some(tensors))
        };
        out.push(Logged {
            id,
            version: text("version").unwrap_or_default(),
            status,
            latency_us: m.get("latency_us").and_then(J::as_i64).unwrap_or(0),
            inputs: side("inputs", config.input.iter().map(|i| (i.name.as_str(), input_datatype(i))).collect())?,
            outputs: side("outputs", config.output.iter().map(|o| (o.name.as_str(), output_datatype(o))).collect())?,
        });
    }
    Ok(out)
}

/// A tensor of a message (`{"datatype", "shape", "data"}`, as KServe v2 writes one) as `datatype`.
fn json_tensor(name: &str, t: &serde_json::Value, datatype: flotilla_core::DataType) -> Result<Tensor, String> {
    use columns::Elements;
    use serde_json::Value as J;
    let shape: Vec<i64> = t
        .get("shape")
        .and_then(J::as_array)
        .and_then(|a| a.iter().map(J::as_i64).collect())
        .ok_or("no shape (a list of integers)")?;
    let data = t.get("data").and_then(J::as_array).ok_or("no data (a list)")?;
    let elements = if datatype == flotilla_core::DataType::Bytes {
        Elements::Bytes(
            data.iter()
                .map(|x| x.as_str().map(|s| s.as_bytes().to_vec()))
                .collect::<Option<_>>()
                .ok_or("BYTES items are strings")?,
        )
    } else if let Some(v) = data.iter().map(J::as_i64).collect::<Option<Vec<i64>>>() {
        Elements::I64(v)
    } else if let Some(v) = data.iter().map(J::as_u64).collect::<Option<Vec<u64>>>() {
        Elements::U64(v)
    } else {
        let number = |x: &J| x.as_f64().or_else(|| x.as_bool().map(|b| f64::from(u8::from(b))));
        Elements::F64(data.iter().map(number).collect::<Option<_>>().ok_or("items are numbers")?)
    };
    let bytes = columns::encode(elements, datatype)?;
    Ok(Tensor::new(name, datatype, shape, bytes))
}

/// Labels by request id, from a Parquet or CSV-free Parquet file with `request_id` and `label`.
pub fn labels(path: &Path, column: &str) -> Result<HashMap<String, f64>> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| PayloadError::Io(format!("{what}: {e}")))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| PayloadError::Invalid(format!("{what}: not a readable Parquet file: {e}")))?;
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| PayloadError::Invalid(format!("{what}: {e}")))?;
        let ids = batch.column_by_name("request_id").ok_or_else(|| {
            PayloadError::Invalid(format!("{what}: no 'request_id' column (labels are joined by request id)"))
        })?;
        let ids =
            arrow_cast::cast(ids, &arrow_schema::DataType::Utf8).map_err(|e| PayloadError::Invalid(e.to_string()))?;
        let values = batch
            .column_by_name(column)
            .ok_or_else(|| PayloadError::Invalid(format!("{what}: no '{column}' column")))?;
        let values = arrow_cast::cast(values, &arrow_schema::DataType::Float64)
            .map_err(|e| PayloadError::Invalid(format!("{what}: column '{column}' is not numeric: {e}")))?;
        let (ids, values) = (ids.as_string::<i32>(), values.as_primitive::<arrow_array::types::Float64Type>());
        for i in 0..batch.num_rows() {
            if ids.is_valid(i) && values.is_valid(i) {
                out.insert(ids.value(i).to_string(), values.value(i));
            }
        }
    }
    Ok(out)
}

/// What one model answered to one replayed request, and how long it took (µs, its share of the
/// batch it ran in).
#[derive(Debug, Clone)]
pub struct Answer {
    pub outputs: std::result::Result<Vec<Tensor>, String>,
    pub micros: f64,
}

/// A canary's bounds (`[models.M.canary]` of fleet.toml).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bounds {
    pub max_error_rate_increase: f64,
    pub max_p99_ratio: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { max_error_rate_increase: 0.01, max_p99_ratio: 1.5 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputDiff {
    pub output: String,
    pub compared: usize,
    pub mean_abs: f64,
    pub p50_abs: f64,
    pub p90_abs: f64,
    pub p99_abs: f64,
    pub max_abs: f64,
    /// Requests where some element differs by more than the tolerance.
    pub changed: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub labelled: usize,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub rmse: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub primary: String,
    pub candidate: String,
    pub logged: usize,
    pub logged_errors: usize,
    /// Logged successes whose inputs are all in the log (dropped or hashed inputs cannot be replayed).
    pub replayed: usize,
    pub not_replayable: usize,
    pub candidate_errors: usize,
    pub tolerance: f64,
    pub outputs: Vec<OutputDiff>,
    /// Requests whose candidate outputs differ from the logged ones beyond the tolerance.
    pub changed_requests: Vec<String>,
    /// The output whose classes are compared, and how often they agree.
    pub class_output: Option<String>,
    pub class_agreement: Option<f64>,
    /// The primary as logged (server time, arrival to answer).
    pub primary_logged_latency: Latency,
    /// Both models run here on the same batches (time per request).
    pub primary_latency: Option<Latency>,
    pub candidate_latency: Latency,
    pub primary_metrics: Option<Metrics>,
    pub candidate_metrics: Option<Metrics>,
    pub bounds: Bounds,
    pub error_rate_increase: f64,
    pub p99_ratio: Option<f64>,
    pub passes_canary: bool,
    pub verdict: String,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    Latency { p50_us: quantile(&v, 0.5), p99_us: quantile(&v, 0.99), mean_us: mean }
}

/// The per-row class of an output: argmax over its last dimension, or score ≥ 0.5 for one value.
fn classes(t: &Tensor) -> Option<Vec<usize>> {
    let x = numbers(t)?;
    let width = match t.shape.as_slice() {
        [] => 1,
        s => (*s.last().unwrap_or(&1)).max(1) as usize,
    };
    Some(
        x.chunks(width)
            .map(|r| {
                if width == 1 {
                    usize::from(r[0] >= 0.5)
                } else {
                    r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
                }
            })
            .collect(),
    )
}

/// The score a label is compared with: the first value of the output (a probability or a
/// regression value; for several classes, the probability of class 1).
fn score(t: &Tensor) -> Option<f64> {
    let x = numbers(t)?;
    let width = t.shape.last().copied().unwrap_or(1).max(1) as usize;
    if width >= 2 {
        x.get(1).copied()
    } else {
        x.first().copied()
    }
}

/// AUC (labels 0/1), log-loss (scores in [0, 1]), accuracy and RMSE of `scores` against `labels`.
pub fn metrics(pairs: &[(f64, f64)]) -> Metrics {
    let n = pairs.len();
    if n == 0 {
        return Metrics { labelled: 0, auc: None, log_loss: None, accuracy: None, rmse: None };
    }
    let binary = pairs.iter().all(|(_, y)| *y == 0.0 || *y == 1.0);
    let probabilities = pairs.iter().all(|(s, _)| (0.0..=1.0).contains(s));
    let rmse = (pairs.iter().map(|(s, y)| (s - y).powi(2)).sum::<f64>() / n as f64).sqrt();
    let (mut auc, mut log_loss, mut accuracy) = (None, None, None);
    if binary {
        let pos = pairs.iter().filter(|(_, y)| *y == 1.0).count();
        if pos > 0 && pos < n {
            // Mann–Whitney U with average ranks for ties.
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|a, b| pairs[*a].0.total_cmp(&pairs[*b].0));
            let mut ranks = vec![0.0; n];
            let mut i = 0;
            while i < n {
                let mut j = i;
                while j + 1 < n && pairs[order[j + 1]].0 == pairs[order[i]].0 {
                    j += 1;
                }
                for k in i..=j {
                    ranks[order[k]] = (i + j) as f64 / 2.0 + 1.0;
                }
                i = j + 1;
            }
            let sum: f64 = (0..n).filter(|k| pairs[*k].1 == 1.0).map(|k| ranks[k]).sum();
            let p = pos as f64;
            auc = Some((sum - p * (p + 1.0) / 2.0) / (p * (n as f64 - p)));
        }
        if probabilities {
            let eps = 1e-15;
            let ll = pairs
                .iter()
                .map(|(s, y)| {
                    let s = s.clamp(eps, 1.0 - eps);
                    -(y * s.ln() + (1.0 - y) * (1.0 - s).ln())
                })
                .sum::<f64>();
            log_loss = Some(ll / n as f64);
            accuracy = Some(pairs.iter().filter(|(s, y)| (*s >= 0.5) == (*y == 1.0)).count() as f64 / n as f64);
        }
    }
    Metrics { labelled: n, auc, log_loss, accuracy, rmse: Some(rmse) }
}

/// Everything `report` compares.
pub struct Replay<'a> {
    pub model: &'a str,
    pub candidate: &'a str,
    pub logged: &'a [Logged],
    /// Answers of the replayed requests (`logged` entries with status ok and all inputs), in order.
    pub replayed: &'a [usize],
    pub candidate_answers: &'a [Answer],
    /// The primary run here on the same batches, when it could be loaded.
    pub primary_answers: Option<&'a [Answer]>,
    pub labels: Option<&'a HashMap<String, f64>>,
    pub bounds: Bounds,
    pub tolerance: f64,
    /// The output classes and labels are judged on (default: the first).
    pub output: Option<&'a str>,
}

pub fn report(r: &Replay) -> Report {
    let logged_errors = r.logged.iter().filter(|l| l.status != "ok").count();
    let not_replayable = r.logged.iter().filter(|l| l.status == "ok" && l.inputs.is_none()).count();
    let mut diffs: HashMap<String, (Vec<f64>, usize)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut changed = Vec::new();
    let mut agree = (0usize, 0usize);
    let mut class_output = None;
    let mut candidate_errors = 0;
    let (mut primary_pairs, mut candidate_pairs) = (Vec::new(), Vec::new());
    for (k, &i) in r.replayed.iter().enumerate() {
        let logged = &r.logged[i];
        let Some(answer) = r.candidate_answers.get(k) else { continue };
        let Ok(outs) = &answer.outputs else {
            candidate_errors += 1;
            continue;
        };
        let Some(before) = &logged.outputs else { continue };
        let mut differs = false;
        for b in before {
            let Some(a) = outs.iter().find(|t| t.name == b.name) else { continue };
            let (Some(x), Some(y)) = (numbers(b), numbers(a)) else {
                if a.data != b.data {
                    differs = true;
                }
                continue;
            };
            let d = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(if x.len() == y.len() { 0.0 } else { f64::INFINITY }, f64::max);
            let entry = diffs.entry(b.name.clone()).or_insert_with(|| {
                order.push(b.name.clone());
                (Vec::new(), 0)
            });
            entry.0.push(d);
            if d > r.tolerance {
                entry.1 += 1;
                differs = true;
            }
        }
        if differs {
            changed.push(logged.id.clone());
        }
        let judged = r.output.map(str::to_string).or_else(|| before.first().map(|t| t.name.clone()));
        if let Some(name) = judged {
            let (b, a) = (before.iter().find(|t| t.name == name), outs.iter().find(|t| t.name == name));
            if let (Some(b), Some(a)) = (b, a) {
                class_output = Some(name.clone());
                if let (Some(cb), Some(ca)) = (classes(b), classes(a)) {
                    agree.1 += cb.len();
                    agree.0 += cb.iter().zip(&ca).filter(|(p, q)| p == q).count();
                }
                if let Some(y) = r.labels.and_then(|l| l.get(&logged.id)) {
                    if let (Some(sb), Some(sa)) = (score(b), score(a)) {
                        primary_pairs.push((sb, *y));
                        candidate_pairs.push((sa, *y));
                    }
                }
            }
        }
    }
    let outputs = order
        .iter()
        .map(|name| {
            let (mut d, changed) = diffs.remove(name).unwrap_or_default();
            d.sort_by(f64::total_cmp);
            OutputDiff {
                output: name.clone(),
                compared: d.len(),
                mean_abs: if d.is_empty() { 0.0 } else { d.iter().sum::<f64>() / d.len() as f64 },
                p50_abs: quantile(&d, 0.5),
                p90_abs: quantile(&d, 0.9),
                p99_abs: quantile(&d, 0.99),
                max_abs: d.last().copied().unwrap_or(0.0),
                changed,
            }
        })
        .collect();
    let replayed = r.replayed.len();
    let candidate_latency = latency(r.candidate_answers.iter().map(|a| a.micros).collect());
    let primary_latency = r.primary_answers.map(|p| latency(p.iter().map(|a| a.micros).collect()));
    let primary_logged_latency = latency(r.replayed.iter().map(|i| r.logged[*i].latency_us as f64).collect());
    let primary_errors = r.primary_answers.map_or(0, |p| p.iter().filter(|a| a.outputs.is_err()).count());
    let rate = |n: usize| if replayed == 0 { 0.0 } else { n as f64 / replayed as f64 };
    let error_rate_increase = rate(candidate_errors) - rate(primary_errors);
    // p99s are compared only when both ran here: the logged latency includes the network and queue.
    let p99_ratio = primary_latency.as_ref().filter(|p| p.p99_us > 0.0).map(|p| candidate_latency.p99_us / p.p99_us);
    let mut why = Vec::new();
    if error_rate_increase > r.bounds.max_error_rate_increase {
        why.push(format!(
            "error rate +{:.2}% > +{:.2}%",
            100.0 * error_rate_increase,
            100.0 * r.bounds.max_error_rate_increase
        ));
    }
    if let Some(ratio) = p99_ratio.filter(|x| *x > r.bounds.max_p99_ratio) {
        why.push(format!("p99 ×{ratio:.2} > ×{:.2}", r.bounds.max_p99_ratio));
    }
    if replayed == 0 {
        why.push("no request could be replayed".into());
    }
    let passes = why.is_empty();
    let verdict = if passes {
        format!(
            "within the canary's bounds (error rate +{:.2}% ≤ +{:.2}%{})",
            100.0 * error_rate_increase,
            100.0 * r.bounds.max_error_rate_increase,
            p99_ratio.map(|x| format!(", p99 ×{x:.2} ≤ ×{:.2}", r.bounds.max_p99_ratio)).unwrap_or_default()
        )
    } else {
        format!("would fail the canary: {}", why.join("; "))
    };
    let primary = r.logged.iter().find(|l| l.status == "ok").map(|l| l.version.clone()).unwrap_or_default();
    Report {
        model: r.model.to_string(),
        primary,
        candidate: r.candidate.to_string(),
        logged: r.logged.len(),
        logged_errors,
        replayed,
        not_replayable,
        candidate_errors,
        tolerance: r.tolerance,
        outputs,
        changed_requests: changed,
        class_output,
        class_agreement: (agree.1 > 0).then(|| agree.0 as f64 / agree.1 as f64),
        primary_logged_latency,
        primary_latency,
        candidate_latency,
        primary_metrics: r.labels.map(|_| metrics(&primary_pairs)),
        candidate_metrics: r.labels.map(|_| metrics(&candidate_pairs)),
        bounds: r.bounds,
        error_rate_increase,
        p99_ratio,
        passes_canary: passes,
        verdict,
    }
}

/// The report as markdown.
pub fn markdown(r: &Report) -> String {
    let f = |x: Option<f64>| x.map_or("—".to_string(), |x| format!("{x:.4}"));
    let mut s = format!(
        "# Replay of `{}`: version {} (logged) vs candidate {}\n\n\
         {} logged requests: {} replayed, {} failed when logged (not replayed), {} not replayable (dropped or hashed inputs); \
         the candidate failed {}.\n\n**Verdict:** {}.\n\n## Outputs (candidate vs logged, absolute difference)\n\n\
         | output | compared | mean | p50 | p90 | p99 | max | requests changed (> {}) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        r.model, r.primary, r.candidate, r.logged, r.replayed, r.logged_errors, r.not_replayable, r.candidate_errors,
        r.verdict, r.tolerance
    );
    for o in &r.outputs {
        s += &format!(
            "| {} | {} | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {} |\n",
            o.output, o.compared, o.mean_abs, o.p50_abs, o.p90_abs, o.p99_abs, o.max_abs, o.changed
        );
    }
    if let (Some(name), Some(a)) = (&r.class_output, r.class_agreement) {
        s += &format!("\nPredicted classes of `{name}` agree on {:.2}% of rows.\n", 100.0 * a);
    }
    if !r.changed_requests.is_empty() {
        let shown: Vec<&str> = r.changed_requests.iter().take(20).map(String::as_str).collect();
        s += &format!(
            "\nChanged requests ({}; all of them in the JSON report): {}{}\n",
            r.changed_requests.len(),
            shown.join(", "),
            if r.changed_requests.len() > 20 { ", ..." } else { "" }
        );
    }
    s += "\n## Latency per request (µs)\n\n| | p50 | p99 | mean |\n|---|---:|---:|---:|\n";
    let row = |name: &str, l: &Latency| format!("| {name} | {:.0} | {:.0} | {:.1} |\n", l.p50_us, l.p99_us, l.mean_us);
    s += &row("primary, as logged (server: arrival to answer)", &r.primary_logged_latency);
    if let Some(p) = &r.primary_latency {
        s += &row("primary, replayed here", p);
    }
    s += &row("candidate, replayed here", &r.candidate_latency);
    if let (Some(p), Some(c)) = (&r.primary_metrics, &r.candidate_metrics) {
        s += &format!(
            "\n## Against labels ({} labelled requests)\n\n| | AUC | log-loss | accuracy | RMSE |\n|---|---:|---:|---:|---:|\n\
             | primary | {} | {} | {} | {} |\n| candidate | {} | {} | {} | {} |\n",
            c.labelled, f(p.auc), f(p.log_loss), f(p.accuracy), f(p.rmse), f(c.auc), f(c.log_loss), f(c.accuracy), f(c.rmse)
        );
    }
    s += &format!(
        "\n## Canary bounds\n\nerror rate increase {:+.2}% (bound +{:.2}%); p99 ratio {} (bound ×{:.2}): {}.\n",
        100.0 * r.error_rate_increase,
        100.0 * r.bounds.max_error_rate_increase,
        r.p99_ratio.map_or("— (primary not run here)".into(), |x| format!("×{x:.2}")),
        r.bounds.max_p99_ratio,
        if r.passes_canary { "passes" } else { "fails" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let m = metrics(&[(0.9, 1.0), (0.8, 0.0), (0.3, 1.0), (0.1, 0.0)]);
        assert_eq!(m.auc, Some(0.75));
        assert_eq!(m.accuracy, Some(0.5));
        let ll = -((0.9f64).ln() + (0.2f64).ln() + (0.3f64).ln() + (0.9f64).ln()) / 4.0;
        assert!((m.log_loss.unwrap() - ll).abs() < 1e-12);
        let rmse = ((0.01 + 0.64 + 0.49 + 0.01) / 4.0f64).sqrt();
        assert!((m.rmse.unwrap() - rmse).abs() < 1e-12);
        let ties = metrics(&[(0.5, 1.0), (0.5, 0.0)]);
        assert_eq!(ties.auc, Some(0.5));
        let regression = metrics(&[(3.0, 2.5), (1.0, 1.0)]);
        assert_eq!((regression.auc, regression.log_loss), (None, None));
    }
}
