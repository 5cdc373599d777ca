//! `flotilla replay`: a model's logged requests (its payload log) run again, in-process and
//! batched, through a candidate version — and through the logged primary version when the
//! repository still has it, so that both latencies are measured alike — and a report in markdown
//! and JSON (`flotilla_payload::replay`).

use crate::config::{Cli, Command, ReplayArgs};
use anyhow::{bail, Context};
use clap::Parser;
use flotilla_core::{InferRequest, Service, Tensor};
use flotilla_payload::replay::{self, Answer, Bounds, Logged, Replay};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let model_dir = args.model_repository.join(&args.model);
    let config_path = model_dir.join("config.pbtxt");
    let candidate_dir = candidate_folder(&args, &model_dir)?;
    let tmp = tempfile::tempdir().context("a temporary model repository")?;
    let candidate_label = args.candidate.clone();
    let source = LogSource::of(&args)?;
    stage(tmp.path(), "candidate", &config_path, &candidate_dir)?;
    let service = load(tmp.path(), &["candidate"]).await.context("the candidate did not load")?;
    let candidate = service.repository.get("candidate", "").context("the candidate did not load")?;
    let config = candidate.config.clone();
    let logged = source.read(&args.model, &config).await?;
    // The logged primary version, when the repository still has it.
    let primary_version = logged.iter().find(|l| l.status == "ok").map(|l| l.version.clone()).unwrap_or_default();
    let primary_dir = model_dir.join(&primary_version);
    let primary = if !primary_version.is_empty() && primary_dir.is_dir() && primary_dir != candidate_dir {
        stage(tmp.path(), "primary", &config_path, &primary_dir)?;
        match load(tmp.path(), &["candidate", "primary"]).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("primary version {primary_version} not loaded ({e:#}): its latency is the logged one only");
                None
            }
        }
    } else {
        None
    };
    let service = primary.clone().unwrap_or(service);
    let replayed: Vec<usize> =
        (0..logged.len()).filter(|i| logged[*i].status == "ok" && logged[*i].inputs.is_some()).collect();
    let bar = if args.no_progress { ProgressBar::hidden() } else { ProgressBar::new(replayed.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {human_pos}/{human_len} requests {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("replay {}", args.model));
    let batching = config.max_batch_size > 0;
    let mut candidate_answers = Vec::with_capacity(replayed.len());
    let mut primary_answers = primary.as_ref().map(|_| Vec::with_capacity(replayed.len()));
    let rows = if batching { args.batch.min(config.max_batch_size as usize).max(1) } else { 1 };
    for group in batches(&logged, &replayed, rows) {
        let requests: Vec<&Logged> = group.iter().map(|i| &logged[*i]).collect();
        candidate_answers.extend(run_batch(&service, "candidate", &requests).await);
        if let Some(p) = primary_answers.as_mut() {
            p.extend(run_batch(&service, "primary", &requests).await);
        }
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    let labels = match &args.labels {
        Some(path) => Some(replay::labels(path, &args.label_column)?),
        None => None,
    };
    let bounds = bounds(&args)?;
    let report = replay::report(&Replay {
        model: &args.model,
        candidate: &candidate_label,
        logged: &logged,
        replayed: &replayed,
        candidate_answers: &candidate_answers,
        primary_answers: primary_answers.as_deref(),
        labels: labels.as_ref(),
        bounds,
        tolerance: args.tolerance,
        output: args.output.as_deref(),
    });
    let markdown = replay::markdown(&report);
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("replay-{}", args.model)));
    let (md, json) = (out.with_extension("md"), out.with_extension("json"));
    std::fs::write(&md, &markdown).with_context(|| format!("{}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("{}", json.display()))?;
    println!("{markdown}");
    println!("report: {} and {}", md.display(), json.display());
    Ok(())
}

/// Where the log is: files (`serve --payload-log DIR`) or a Kafka topic (`kafka://B/T`).
enum LogSource {
    Files(Vec<PathBuf>),
    Kafka { brokers: String, topic: String },
}

/// How long reading a topic to its end may take.
const KAFKA_READ: std::time::Duration = std::time::Duration::from_secs(120);

impl LogSource {
    fn of(args: &ReplayArgs) -> anyhow::Result<Self> {
        let text = args.log.to_string_lossy();
        let Some(parsed) = crate::kafka_target(&text, "--log") else {
            return Ok(Self::Files(replay::files(&args.log, &args.model)?));
        };
        let (brokers, topic) = parsed?;
        Ok(Self::Kafka { brokers: brokers.to_string(), topic: topic.to_string() })
    }

    async fn read(&self, model: &str, config: &flotilla_core::ModelConfig) -> anyhow::Result<Vec<Logged>> {
        match self {
            Self::Files(files) => Ok(replay::read(files, model, config)?),
            Self::Kafka { brokers, topic } => {
                let (b, t) = (brokers.clone(), topic.clone());
                let payloads =
                    tokio::task::spawn_blocking(move || flotilla_features::streams::read_topic(&b, &t, KAFKA_READ))
                        .await?
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("--log kafka://{brokers}/{topic}"))?;
                let logged = replay::messages(&payloads, model, config, &format!("kafka://{brokers}/{topic}"))?;
                if logged.is_empty() {
                    bail!(
                        "kafka://{brokers}/{topic}: no logged request of model '{model}' ({} messages)",
                        payloads.len()
                    );
                }
                Ok(logged)
            }
        }
    }
}

/// The version folder the candidate is: a version number of the model, a model folder (its
/// newest version) or a version folder.
fn candidate_folder(args: &ReplayArgs, model_dir: &Path) -> anyhow::Result<PathBuf> {
    if !model_dir.join("config.pbtxt").is_file() {
        bail!("no model '{}' in {} (its config.pbtxt is missing)", args.model, args.model_repository.display());
    }
    let c = &args.candidate;
    if !c.is_empty() && c.chars().all(|x| x.is_ascii_digit()) {
        let dir = model_dir.join(c);
        if !dir.is_dir() {
            bail!("--candidate {c}: model '{}' has no version {c} ({})", args.model, dir.display());
        }
        return Ok(dir);
    }
    let path = PathBuf::from(c);
    if path.join("config.pbtxt").is_file() {
        let newest = std::fs::read_dir(&path)?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse::<u64>().ok()?, e.path())))
            .filter(|(_, p)| p.is_dir())
            .max_by_key(|(v, _)| *v)
            .map(|(_, p)| p);
        return newest.with_context(|| format!("--candidate {c}: a model folder without version folders"));
    }
    if path.is_dir() && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.parse::<u64>().is_ok()) {
        return Ok(path);
    }
    bail!("--candidate {c}: give a version number of '{}', a model folder or a version folder", args.model)
}

/// Makes `<repo>/<name>/`: the model's config (renamed) and its other files, with `version` as
/// its only version folder (linked, not copied).
fn stage(repo: &Path, name: &str, config: &Path, version: &Path) -> anyhow::Result<PathBuf> {
    let dir = repo.join(name);
    std::fs::create_dir_all(&dir)?;
    let text = std::fs::read_to_string(config).with_context(|| format!("{}", config.display()))?;
    // Renamed, and without a version policy: the staged folder holds the one version to run.
    let mut renamed = format!("name: \"{name}\"\n");
    let mut depth = 0i64;
    for line in without_block(&text, "version_policy").lines() {
        // Only the model's own name (at the top level), not its inputs' and outputs'.
        if !(depth == 0 && line.trim_start().starts_with("name:")) {
            renamed += line;
            renamed.push('\n');
        }
        depth += line.matches(['{', '[']).count() as i64 - line.matches(['}', ']']).count() as i64;
    }
    std::fs::write(dir.join("config.pbtxt"), renamed)?;
    // Files beside config.pbtxt (labels) come along; enrichment and graph plans do not: the log
    // holds the inputs after enrichment.
    let source = config.parent().unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(source)?.filter_map(|e| e.ok()) {
        let p = entry.path();
        let skip = ["config.pbtxt", "features.toml", "graph.toml", "payload.toml", "drift_profile.json"];
        if p.is_file() && !skip.iter().any(|s| p.file_name().is_some_and(|n| n == *s)) {
            std::fs::copy(&p, dir.join(entry.file_name()))?;
        }
    }
    let folder = version.file_name().context("a version folder without a name")?;
    let link = dir.join(folder);
    if !link.exists() {
        std::os::unix::fs::symlink(std::fs::canonicalize(version)?, &link)?;
    }
    Ok(dir)
}

/// `text` without the `key { ... }` (or `key: { ... }`) entry of a config.
fn without_block(text: &str, key: &str) -> String {
    let Some(start) = text.find(key) else { return text.to_string() };
    let Some(open) = text[start..].find('{').map(|i| start + i) else { return text.to_string() };
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}{}", &text[..start], &text[open + i + 1..]);
                }
            }
            _ => {}
        }
    }
    text.to_string()
}

/// The staged models loaded alone: no feature store, no monitoring.
async fn load(repo: &Path, models: &[&str]) -> anyhow::Result<Arc<Service>> {
    let repo = repo.display().to_string();
    let mut argv = vec!["flotilla", "serve", "--model-repository", repo.as_str(), "--model-control-mode", "explicit"];
    for m in models {
        argv.extend(["--load-model", m]);
    }
    argv.extend(["--feature-repo", "none", "--drift-monitoring", "false"]);
    let cli = Cli::try_parse_from(argv)?;
    let Command::Serve(config) = cli.command else { bail!("internal: not a serve configuration") };
    let service = crate::build_service(&config).await?.service;
    for m in models {
        service.repository.get(m, "").with_context(|| format!("model '{m}' did not load"))?;
    }
    Ok(service)
}

/// Consecutive replayed requests whose inputs can be joined on the first dimension, at most
/// `rows` rows per group.
fn batches(logged: &[Logged], replayed: &[usize], rows: usize) -> Vec<Vec<usize>> {
    let signature = |i: usize| -> Option<Vec<(String, Vec<i64>)>> {
        let inputs = logged[i].inputs.as_ref()?;
        Some(inputs.iter().map(|t| (t.name.clone(), t.shape.iter().skip(1).copied().collect())).collect())
    };
    let first = |i: usize| logged[i].inputs.as_ref().and_then(|v| v.first()).and_then(|t| t.shape.first().copied());
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut size = 0i64;
    for &i in replayed {
        let n = first(i).unwrap_or(1).max(1);
        let joins = out.last().is_some_and(|g| {
            let last = g[g.len() - 1];
            rows > 1 && size + n <= rows as i64 && signature(last) == signature(i)
        });
        if joins {
            if let Some(g) = out.last_mut() {
                g.push(i);
            }
            size += n;
        } else {
            out.push(vec![i]);
            size = n;
        }
    }
    out
}

/// Runs requests as one batch (their inputs joined on the first dimension) and splits the
/// outputs back; each request is charged its share of the time by rows.
async fn run_batch(service: &Service, model: &str, requests: &[&Logged]) -> Vec<Answer> {
    let rows: Vec<i64> = requests
        .iter()
        .map(|r| r.inputs.as_ref().and_then(|v| v.first()).and_then(|t| t.shape.first().copied()).unwrap_or(1))
        .collect();
    let total: i64 = rows.iter().sum();
    let inputs: Vec<Tensor> = if requests.len() == 1 {
        requests[0].inputs.clone().unwrap_or_default()
    } else {
        let first = requests[0].inputs.as_deref().unwrap_or_default();
        first
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let mut data = Vec::new();
                for r in requests {
                    if let Some(x) = r.inputs.as_ref().and_then(|v| v.get(k)) {
                        data.extend_from_slice(&x.data);
                    }
                }
                let mut shape = t.shape.clone();
                if let Some(d) = shape.first_mut() {
                    *d = total;
                }
                Tensor::new(t.name.clone(), t.datatype, shape, data)
            })
            .collect()
    };
    let request = InferRequest {
        model: model.to_string(),
        version: String::new(),
        id: String::new(),
        parameters: Default::default(),
        inputs,
        outputs: Vec::new(),
    };
    let started = Instant::now();
    let answer = service.infer(request).await;
    let micros = started.elapsed().as_secs_f64() * 1e6;
    let share = |n: i64| micros * n as f64 / total.max(1) as f64;
    match answer {
        Err(e) => rows.iter().map(|n| Answer { outputs: Err(e.message.clone()), micros: share(*n) }).collect(),
        Ok(response) if requests.len() == 1 => vec![Answer { outputs: Ok(response.outputs), micros }],
        Ok(response) => {
            let mut out = Vec::with_capacity(requests.len());
            let mut at = 0i64;
            for n in &rows {
                let outputs: Result<Vec<Tensor>, String> =
                    response.outputs.iter().map(|t| slice(t, at, *n, total)).collect();
                out.push(Answer { outputs, micros: share(*n) });
                at += n;
            }
            out
        }
    }
}

/// Rows `at..at + n` of an output whose first dimension is `total` (BYTES outputs are split at
/// their elements' length prefixes).
fn slice(t: &Tensor, at: i64, n: i64, total: i64) -> Result<Tensor, String> {
    if t.shape.first() != Some(&total) {
        return Err(format!("output '{}' has shape {:?} for {total} rows", t.name, t.shape));
    }
    let mut shape = t.shape.clone();
    shape[0] = n;
    let (from, to) = (at as usize, (at + n) as usize);
    let Some(size) = t.datatype.size() else {
        let what = format!("output '{}'", t.name);
        let elements = flotilla_core::tensor::split_bytes_elements(&t.data, &what).map_err(|e| e.message)?;
        let per_row = elements.len() / total.max(1) as usize;
        if per_row * total as usize != elements.len() {
            return Err(format!("{what} has {} elements for {total} rows", elements.len()));
        }
        let rows = flotilla_core::tensor::join_bytes_elements(elements[from * per_row..to * per_row].iter().copied());
        return Ok(Tensor::new(t.name.clone(), t.datatype, shape, rows));
    };
    let per_row = t.data.len() / total.max(1) as usize;
    debug_assert_eq!(per_row % size, 0);
    Ok(Tensor::new(t.name.clone(), t.datatype, shape, t.data.slice(from * per_row..to * per_row)))
}

/// The canary's bounds: flags, else `[models.M.canary]` of `--fleet`, else the defaults.
fn bounds(args: &ReplayArgs) -> anyhow::Result<Bounds> {
    let mut b = Bounds::default();
    if let Some(path) = &args.fleet {
        let state = flotilla_fleet::desired::load(path)?;
        match state.models.get(&args.model).and_then(|m| m.policy.as_ref()) {
            Some(flotilla_fleet::desired::Policy::Canary(c)) => {
                b.max_error_rate_increase = c.max_error_rate_increase;
                b.max_p99_ratio = c.max_p99_ratio;
            }
            _ => bail!("{}: no [models.{}.canary] to take the bounds from", path.display(), args.model),
        }
    }
    if let Some(x) = args.max_error_rate_increase {
        b.max_error_rate_increase = x;
    }
    if let Some(x) = args.max_p99_ratio {
        b.max_p99_ratio = x;
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::slice;
    use flotilla_core::tensor::{join_bytes_elements, split_bytes_elements};
    use flotilla_core::{DataType, Tensor};

    #[test]
    fn batched_outputs_split_back_by_rows_bytes_too() {
        let words: Vec<&[u8]> = vec![b"a", b"", b"ccc", b"dd", b"e", b"ffff"];
        let t = Tensor::new("label", DataType::Bytes, vec![3, 2], join_bytes_elements(words.iter().copied()));
        let middle = slice(&t, 1, 2, 3).unwrap();
        assert_eq!(middle.shape, vec![2, 2]);
        assert_eq!(split_bytes_elements(&middle.data, "x").unwrap(), &words[2..6]);
        let first = slice(&t, 0, 1, 3).unwrap();
        assert_eq!(split_bytes_elements(&first.data, "x").unwrap(), &words[0..2]);
        let numbers = Tensor::new("p", DataType::F32, vec![3, 1], [1f32, 2.0, 3.0].map(f32::to_le_bytes).concat());
        assert_eq!(&slice(&numbers, 2, 1, 3).unwrap().data[..], &3f32.to_le_bytes());
        assert!(slice(&numbers, 0, 1, 4).unwrap_err().contains("shape [3, 1] for 4 rows"));
        let uneven = Tensor::new("u", DataType::Bytes, vec![2], join_bytes_elements(words[..3].iter().copied()));
        assert!(slice(&uneven, 0, 1, 2).unwrap_err().contains("3 elements for 2 rows"));
        let truncated = Tensor::new("t", DataType::Bytes, vec![1], vec![9u8, 0, 0, 0, b'x']);
        assert!(slice(&truncated, 0, 1, 1).unwrap_err().contains("declares 9 bytes"));
    }
}
