//! `flotilla profile`: a model's drift reference profile from its training data. Reads the
//! feature columns (Parquet or CSV), runs the model on them in batches (the outputs are
//! profiled too, for prediction drift), and writes `drift_profile.json` into the model folder.

use crate::config::{Cli, Command, ProfileArgs};
use anyhow::{bail, Context};
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::Array;
use clap::Parser;
use flotilla_core::{DataType, InferRequest, Tensor};
use flotilla_drift::profile::{Data, Profile, TensorColumns, FILE_NAME};
use flotilla_features::files;
use flotilla_features::value::ValueType;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// Rows per inference request while profiling the outputs.
const BATCH: usize = 1024;

pub async fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let folder = args.model_repository.join(&args.model);
    if !folder.is_dir() {
        bail!("no model '{}' in {}", args.model, args.model_repository.display());
    }
    let service = load_model(&args).await?;
    let mv = service.repository.get(&args.model, "").context("the model did not load")?;
    let inputs = input_columns(&args, &folder, &mv.config)?;
    let types = input_types(&inputs, &mv.config)?;
    let wanted: Vec<(&str, DataType)> =
        inputs.iter().zip(&types).flat_map(|(t, dt)| t.columns.iter().map(move |c| (c.as_str(), *dt))).collect();
    for c in &args.categorical {
        if !wanted.iter().any(|(w, _)| w == c) {
            bail!("--categorical {c}: not one of the profiled columns ({})", names(&wanted));
        }
    }
    let mut columns: Vec<Values> = wanted
        .iter()
        .map(|(_, dt)| if *dt == DataType::Bytes { Values::Text(Vec::new()) } else { Values::Numbers(Vec::new()) })
        .collect();
    let file = files::open(&args.data).map_err(|e| anyhow::anyhow!("{e}"))?;
    let total = file.rows.map(|r| args.max_rows.map_or(r, |m| r.min(m as u64)));
    let bar = ProgressBar::new(total.unwrap_or(0) * 2);
    bar.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} rows ({per_sec})")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    bar.set_message("reading");
    let what = args.data.display().to_string();
    let mut first = 0u64;
    for batch in file.batches {
        let batch = batch.map_err(|e| anyhow::anyhow!("{e}"))?;
        let take = args.max_rows.map_or(batch.num_rows(), |m| batch.num_rows().min(m.saturating_sub(first as usize)));
        if take == 0 {
            break;
        }
        for (out, (name, _)) in columns.iter_mut().zip(&wanted) {
            let bad = |e: flotilla_features::FeatureError| anyhow::anyhow!("{e}");
            match out {
                Values::Numbers(v) => {
                    let col = files::column(&batch, name, ValueType::Float64, &what, first).map_err(bad)?;
                    let col = col.as_primitive::<Float64Type>();
                    v.extend((0..take).map(|i| if col.is_null(i) { f64::NAN } else { col.value(i) }));
                }
                Values::Text(v) => {
                    let col = files::column(&batch, name, ValueType::String, &what, first).map_err(bad)?;
                    let col = col.as_string::<i32>();
                    v.extend((0..take).map(|i| (!col.is_null(i)).then(|| col.value(i).to_string())));
                }
            }
        }
        first += take as u64;
        bar.inc(take as u64);
    }
    let rows = first as usize;
    if rows == 0 {
        bail!("{}: no rows", args.data.display());
    }
    bar.set_length(rows as u64 * 2);
    bar.set_message("model");
    let outputs = run_model(&service, &args.model, (&inputs, &types), &columns, rows, &bar).await?;
    bar.finish_and_clear();
    let features: Vec<(String, Data)> = wanted
        .iter()
        .zip(columns)
        .map(|((name, dt), values)| {
            let data = match values {
                Values::Text(v) => Data::Categorical(v),
                // the category the monitor will see: the value as the tensor carries it
                Values::Numbers(v) if args.categorical.iter().any(|c| c == name) => {
                    Data::Categorical(v.iter().map(|x| category(as_sent(*dt, *x))).collect())
                }
                Values::Numbers(v) => Data::Numeric(v),
            };
            (name.to_string(), data)
        })
        .collect();
    let (output_tensors, output_data): (Vec<TensorColumns>, Vec<(String, Data)>) = outputs;
    let created = flotilla_drift::monitor::window::rfc3339(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
    );
    let profile = Profile::build(
        &args.model,
        &args.data.display().to_string(),
        &created,
        (inputs, &features),
        (output_tensors, &output_data),
    );
    let out = args.out.clone().unwrap_or_else(|| folder.join(FILE_NAME));
    let json = profile.to_json();
    std::fs::write(&out, &json).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: {} rows, {} features, {} outputs{} -> {} ({} KiB)",
        args.model,
        rows,
        profile.features.len(),
        profile.outputs.len(),
        profile
            .multivariate
            .as_ref()
            .map(|m| format!(", PCA {} components", m.pca.components.len()))
            .unwrap_or_default(),
        out.display(),
        json.len() / 1024
    );
    Ok(())
}

/// The model loaded alone: no feature store, no monitoring.
async fn load_model(args: &ProfileArgs) -> anyhow::Result<std::sync::Arc<flotilla_core::Service>> {
    let repo = args.model_repository.display().to_string();
    let cli = Cli::try_parse_from([
        "flotilla",
        "serve",
        "--model-repository",
        repo.as_str(),
        "--model-control-mode",
        "explicit",
        "--load-model",
        args.model.as_str(),
        "--feature-repo",
        "none",
        "--drift-monitoring",
        "false",
    ])?;
    let Command::Serve(config) = cli.command else { bail!("internal: not a serve configuration") };
    Ok(crate::build_service(&config).await?.service)
}

/// Which data columns feed which input: `--columns` / `--input`, else features.txt, else features.toml.
fn input_columns(
    args: &ProfileArgs,
    folder: &Path,
    config: &flotilla_core::ModelConfig,
) -> anyhow::Result<Vec<TensorColumns>> {
    if !args.inputs.is_empty() {
        return args
            .inputs
            .iter()
            .map(|spec| {
                let (name, cols) =
                    spec.split_once('=').with_context(|| format!("--input {spec}: expected NAME=col1,col2,..."))?;
                if !config.input.iter().any(|i| i.name == name) {
                    bail!("--input {spec}: the model has no input '{name}'");
                }
                Ok(TensorColumns { tensor: name.into(), columns: cols.split(',').map(str::to_string).collect() })
            })
            .collect();
    }
    let [input] = config.input.as_slice() else {
        bail!(
            "model '{}' has {} inputs: say which columns feed each with --input NAME=col1,col2,...",
            args.model,
            config.input.len()
        );
    };
    let columns = if !args.columns.is_empty() {
        args.columns.clone()
    } else if let Ok(text) = std::fs::read_to_string(folder.join("features.txt")) {
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
    } else if let Ok(text) = std::fs::read_to_string(folder.join(flotilla_features::enrich::FILE_NAME)) {
        feature_names_of_plan(&text, &input.name)?
    } else {
        bail!(
            "say which data columns make input '{}' with --columns a,b,... (or put features.txt in the model folder)",
            input.name
        );
    };
    let width = input.dims.last().copied().unwrap_or(1);
    if width > 0 && columns.len() as i64 != width {
        bail!("input '{}' has {width} columns; {} names given ({})", input.name, columns.len(), columns.join(", "));
    }
    Ok(vec![TensorColumns { tensor: input.name.clone(), columns }])
}

/// Feature names of `input` in a features.toml (`view:feature` gives `feature`).
fn feature_names_of_plan(text: &str, input: &str) -> anyhow::Result<Vec<String>> {
    let doc: toml::Table = text.parse().context("features.toml")?;
    let inputs = doc.get("input").and_then(|v| v.as_array()).context("features.toml has no [[input]]")?;
    let plan = inputs
        .iter()
        .find(|i| i.get("name").and_then(|n| n.as_str()) == Some(input))
        .and_then(|i| i.get("features"))
        .and_then(|f| f.as_array())
        .with_context(|| format!("features.toml lists no features for input '{input}'; use --columns"))?;
    Ok(plan.iter().filter_map(|f| f.as_str()).map(|f| f.rsplit(':').next().unwrap_or(f).to_string()).collect())
}

type Outputs = (Vec<TensorColumns>, Vec<(String, Data)>);

/// Runs the model over the rows in batches; returns each numeric output's columns.
async fn run_model(
    service: &flotilla_core::Service,
    model: &str,
    (inputs, types): (&[TensorColumns], &[DataType]),
    columns: &[Values],
    rows: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Outputs> {
    let mut specs: Vec<TensorColumns> = Vec::new();
    let mut data: Vec<Vec<f64>> = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = BATCH.min(rows - start);
        let mut offset = 0;
        let mut tensors = Vec::new();
        for (t, dt) in inputs.iter().zip(types) {
            let width = t.columns.len();
            let cols = &columns[offset..offset + width];
            offset += width;
            tensors.push(Tensor {
                name: t.tensor.clone(),
                datatype: *dt,
                shape: vec![n as i64, width as i64],
                data: encode(*dt, cols, start..start + n, &t.columns)?.into(),
                parameters: Default::default(),
            });
        }
        let request = InferRequest { model: model.into(), inputs: tensors, ..Default::default() };
        let response = service.infer(request).await.map_err(|e| anyhow::anyhow!("running the model: {}", e.message))?;
        if specs.is_empty() {
            for o in &response.outputs {
                let width = if o.shape.len() >= 2 { o.shape[1..].iter().product::<i64>().max(1) as usize } else { 1 };
                if o.datatype == DataType::Bytes {
                    continue;
                }
                let columns = if width == 1 {
                    vec![o.name.clone()]
                } else {
                    (0..width).map(|j| format!("{}[{j}]", o.name)).collect()
                };
                data.extend((0..width).map(|_| Vec::with_capacity(rows)));
                specs.push(TensorColumns { tensor: o.name.clone(), columns });
            }
        }
        let mut col = 0;
        for spec in &specs {
            let o = response.outputs.iter().find(|o| o.name == spec.tensor).context("an output went missing")?;
            let values = flotilla_core::tensor::to_f64(o.datatype, &o.data)
                .map_err(|e| anyhow::anyhow!("output '{}': {}", o.name, e.message))?;
            let width = spec.columns.len();
            if values.len() != n * width {
                bail!("output '{}' has {} values for {n} rows of {width}", o.name, values.len());
            }
            for (j, d) in data[col..col + width].iter_mut().enumerate() {
                d.extend((0..n).map(|r| values[r * width + j]));
            }
            col += width;
        }
        start += n;
        bar.inc(n as u64);
    }
    let names: Vec<String> = specs.iter().flat_map(|s| s.columns.clone()).collect();
    Ok((specs, names.into_iter().zip(data).map(|(n, d)| (n, Data::Numeric(d))).collect()))
}

/// One data column as read.
enum Values {
    Numbers(Vec<f64>),
    Text(Vec<Option<String>>),
}

fn names(wanted: &[(&str, DataType)]) -> String {
    wanted.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// The datatype of each profiled input, from the model's configuration; `flotilla profile`
/// feeds FP32, FP64, INT32, INT64 and BYTES inputs.
fn input_types(inputs: &[TensorColumns], config: &flotilla_core::ModelConfig) -> anyhow::Result<Vec<DataType>> {
    inputs
        .iter()
        .map(|t| {
            let input = config.input.iter().find(|i| i.name == t.tensor).context("an input went missing")?;
            let dt = flotilla_core::config::input_datatype(input);
            match dt {
                DataType::F32 | DataType::F64 | DataType::I32 | DataType::I64 | DataType::Bytes => Ok(dt),
                other => bail!(
                    "input '{}' is {}: flotilla profile feeds FP32, FP64, INT32, INT64 and BYTES inputs",
                    t.tensor,
                    other.as_str()
                ),
            }
        })
        .collect()
}

/// A value as the input tensor carries it (an FP32 input rounds to f32, an integer input truncates).
fn as_sent(dt: DataType, x: f64) -> f64 {
    match dt {
        DataType::F32 => f64::from(x as f32),
        DataType::I32 if x.is_finite() => f64::from(x as i32),
        DataType::I64 if x.is_finite() => x as i64 as f64,
        _ => x,
    }
}

/// A numeric category as the monitor names it (NaN: missing).
fn category(x: f64) -> Option<String> {
    (!x.is_nan()).then(|| format!("{x}"))
}

/// Rows `rows` of `columns` as one `[rows, columns]` tensor of `dt`, row-major.
fn encode(dt: DataType, columns: &[Values], rows: std::ops::Range<usize>, names: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rows.len() * columns.len() * 8);
    for r in rows {
        for (c, name) in columns.iter().zip(names) {
            match (c, dt) {
                (Values::Text(v), DataType::Bytes) => {
                    let s = v[r].as_deref().unwrap_or("");
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                (Values::Numbers(v), DataType::F32) => out.extend_from_slice(&(v[r] as f32).to_le_bytes()),
                (Values::Numbers(v), DataType::F64) => out.extend_from_slice(&v[r].to_le_bytes()),
                (Values::Numbers(v), DataType::I32 | DataType::I64) => {
                    let x = v[r];
                    if !x.is_finite() {
                        bail!(
                            "column '{name}', row {r}: no value, and input type {} has no missing value",
                            dt.as_str()
                        );
                    }
                    if dt == DataType::I32 {
                        out.extend_from_slice(&(x as i32).to_le_bytes());
                    } else {
                        out.extend_from_slice(&(x as i64).to_le_bytes());
                    }
                }
                _ => bail!("column '{name}' cannot feed a {} input", dt.as_str()),
            }
        }
    }
    Ok(out)
}
