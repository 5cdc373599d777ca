//! The tree engine: one loaded forest behind Flotilla's [`Engine`] trait.
//!
//! Configuration (`parameters` in config.pbtxt, Triton FIL names where FIL has one):
//! - `output_margin` (`true`/`false`): `output__0` carries raw margins instead of predictions.
//! - `missing` (a number): inputs equal to it are missing, as NaN always is (XGBoost's `missing`).
//! - `threads`: most threads one large batch may use (default: every core). A batch
//!   takes only the cores no other tree batch holds at that moment ([`crate::cores`]).
//! - FIL's `output_class` + `predict_proba`: with `output_class: "true"` and
//!   `predict_proba: "false"`, `output__0` is the predicted class (as FP32); with
//!   `predict_proba: "true"` a binary model gives both class probabilities `[1-p, p]`.
//!
//! Outputs are matched by their configured datatype and name: an integer output is
//! the predicted class index; a float output named `*margin*` the margins; any other
//! float output the predictions.

use crate::forest::Forest;
use crate::objective::Classes;
use crate::predict::Predictor;
use flotilla_core::config::{input_datatype, output_datatype};
use flotilla_core::engine::{Engine, Phases};
use flotilla_core::{DataType, Error, ModelConfig, Result, Tensor};
use std::path::Path;

/// LightGBM's `kZeroThreshold`.
const ZERO_THRESHOLD: f32 = 1e-35;

/// What one configured output carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OutputKind {
    Predictions,
    Margins,
    Class,
}

pub struct TreeEngine {
    forest: Forest,
    predictor: Predictor,
    outputs: Vec<(String, DataType, OutputKind)>,
    input: String,
    output_margin: bool,
    class_labels_as_output: bool,
    predict_proba: bool,
    missing: Option<f32>,
    threads: usize,
}

fn param<'a>(config: &'a ModelConfig, key: &str) -> Option<&'a str> {
    config.parameters.get(key).map(|p| p.string_value.trim()).filter(|s| !s.is_empty())
}

fn flag(config: &ModelConfig, key: &str) -> Result<bool> {
    match param(config, key) {
        None => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(Error::invalid(format!("parameter '{key}' = {v:?}: expected true or false"))),
        },
    }
}

impl TreeEngine {
    pub fn new(config: &ModelConfig, forest: Forest, file: &Path) -> Result<Self> {
        let bad = |m: String| Error::invalid(format!("{}: {m}", file.display()));
        let [input] = config.input.as_slice() else {
            return Err(bad(format!(
                "a tree model takes exactly one input, the configuration has {}",
                config.input.len()
            )));
        };
        if input_datatype(input) != DataType::F32 {
            return Err(bad(format!("input '{}' must be TYPE_FP32", input.name)));
        }
        let features = input.dims.last().copied().unwrap_or(-1);
        if features >= 0 && features as usize != forest.num_features {
            return Err(bad(format!(
                "input '{}' has {features} features in the configuration but the model was trained on {}",
                input.name, forest.num_features
            )));
        }
        let missing = match param(config, "missing") {
            None => None,
            Some(v) => {
                let m: f32 = v.parse().map_err(|_| bad(format!("parameter 'missing' = {v:?} is not a number")))?;
                (!m.is_nan()).then_some(m)
            }
        };
        let threads = match param(config, "threads") {
            // Every core: concurrent batches share them through `cores::Lease`.
            None => crate::cores::available(),
            Some(v) => {
                v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| bad(format!("parameter 'threads' = {v:?}")))?
            }
        };
        let mut outputs = Vec::new();
        for o in &config.output {
            let dt = output_datatype(o);
            let kind = if dt.is_integer() {
                if forest.objective.classes == Classes::None {
                    return Err(bad(format!(
                        "output '{}' is an integer (class index) but objective '{}' defines no classes",
                        o.name, forest.objective.name
                    )));
                }
                OutputKind::Class
            } else if matches!(dt, DataType::F32 | DataType::F64) {
                if o.name.to_ascii_lowercase().contains("margin") {
                    OutputKind::Margins
                } else {
                    OutputKind::Predictions
                }
            } else {
                return Err(bad(format!("output '{}' must be TYPE_FP32, TYPE_FP64 or an integer type", o.name)));
            };
            outputs.push((o.name.clone(), dt, kind));
        }
        let predict_proba = flag(config, "predict_proba").map_err(|e| bad(e.message))?;
        let engine = Self {
            predictor: Predictor::new(&forest),
            forest,
            outputs,
            input: input.name.clone(),
            output_margin: flag(config, "output_margin").map_err(|e| bad(e.message))?,
            class_labels_as_output: flag(config, "output_class").map_err(|e| bad(e.message))? && !predict_proba,
            predict_proba,
            missing,
            threads,
        };
        for (name, _, kind) in &engine.outputs {
            let want = engine.width(*kind);
            let o = config.output.iter().find(|o| &o.name == name).map(|o| o.dims.as_slice()).unwrap_or_default();
            let declared: i64 = o.iter().product();
            if o.iter().all(|d| *d >= 0) && declared as usize != want {
                return Err(bad(format!(
                    "output '{name}' is declared with dims {o:?} but the model gives {want} values per row"
                )));
            }
        }
        tracing::info!(
            model = %config.name,
            library = engine.forest.library,
            objective = %engine.forest.objective.name,
            trees = engine.forest.trees.len(),
            features = engine.forest.num_features,
            layout = if engine.predictor.is_complete() { "complete" } else { "general" },
            "tree model loaded"
        );
        Ok(engine)
    }

    /// Values per row of an output.
    fn width(&self, kind: OutputKind) -> usize {
        let groups = self.forest.num_groups;
        match kind {
            OutputKind::Class => 1,
            OutputKind::Margins => groups,
            OutputKind::Predictions
                if self.class_labels_as_output && self.forest.objective.classes != Classes::None =>
            {
                1
            }
            OutputKind::Predictions if self.output_margin => groups,
            OutputKind::Predictions if self.predict_proba && self.forest.objective.classes == Classes::Binary => 2,
            OutputKind::Predictions => self.forest.objective.output_width(groups),
        }
    }

    /// Predictions (per the parameters) for one row's margins; `scratch` holds averaged margins.
    fn predictions(&self, margins: &[f64], scratch: &mut Vec<f64>, out: &mut Vec<f64>) {
        let objective = &self.forest.objective;
        if self.class_labels_as_output {
            if let Some(c) = objective.class(margins) {
                out.push(c as f64);
                return;
            }
        }
        if self.output_margin {
            out.extend_from_slice(margins);
            return;
        }
        let start = out.len();
        out.resize(start + objective.output_width(margins.len()), 0.0);
        match self.forest.average_over {
            Some(k) => {
                scratch.clear();
                scratch.extend(margins.iter().map(|m| m / k));
                objective.apply(scratch, &mut out[start..]);
            }
            None => objective.apply(margins, &mut out[start..]),
        }
        if self.predict_proba && objective.classes == Classes::Binary {
            let p = out[start];
            out.insert(start, 1.0 - p);
        }
    }

    /// Runs `rows` (row-major, `num_features` each) and returns the margins.
    pub fn margins(&self, rows: &[f32], threads: usize) -> Vec<f64> {
        let n = rows.len() / self.forest.num_features.max(1);
        let mut out = vec![0.0; n * self.forest.num_groups];
        self.predictor.margins(rows, &mut out, threads);
        out
    }

    pub fn forest(&self) -> &Forest {
        &self.forest
    }

    fn read_rows(&self, t: &Tensor) -> Result<(usize, Vec<f32>)> {
        let f = self.forest.num_features;
        let n_values = t.data.len() / 4;
        let rows = match t.shape.as_slice() {
            [n, w] if *w as usize == f => *n as usize,
            [w] if *w as usize == f => 1,
            shape => {
                return Err(Error::invalid(format!(
                    "input '{}': shape {shape:?} does not hold rows of {f} features (expected [batch, {f}])",
                    t.name
                )))
            }
        };
        if n_values != rows * f {
            return Err(Error::invalid(format!(
                "input '{}': {} values for {rows} rows of {f} features",
                t.name, n_values
            )));
        }
        let mut x: Vec<f32> = t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(m) = self.missing {
            // XGBoost's `missing`: that value is missing as NaN always is.
            x.iter_mut().filter(|v| **v == m).for_each(|v| *v = f32::NAN);
        }
        if self.forest.library == "lightgbm" {
            // LightGBM reads |x| <= 1e-35 as 0 before any split.
            x.iter_mut().filter(|v| v.abs() <= ZERO_THRESHOLD).for_each(|v| *v = 0.0);
        }
        Ok((rows, x))
    }
}

impl Engine for TreeEngine {
    fn infer(&self, inputs: &[Tensor], phases: &mut Phases) -> Result<Vec<Tensor>> {
        let t = inputs
            .iter()
            .find(|t| t.name == self.input)
            .ok_or_else(|| Error::invalid(format!("missing input '{}'", self.input)))?;
        let (n, x) = self.read_rows(t)?;
        phases.input_done();
        let margins = self.margins(&x, self.threads);
        phases.infer_done();
        let groups = self.forest.num_groups;
        let batched = t.shape.len() == 2;
        let mut out = Vec::with_capacity(self.outputs.len());
        let mut scratch = Vec::with_capacity(groups);
        for (name, dt, kind) in &self.outputs {
            let width = self.width(*kind);
            let mut values: Vec<f64> = Vec::with_capacity(n * width);
            for m in margins.chunks_exact(groups) {
                match kind {
                    OutputKind::Margins => values.extend_from_slice(m),
                    OutputKind::Class => values.push(self.forest.objective.class(m).unwrap_or(0) as f64),
                    OutputKind::Predictions => self.predictions(m, &mut scratch, &mut values),
                }
            }
            let shape = if batched { vec![n as i64, width as i64] } else { vec![width as i64] };
            out.push(encode(name, *dt, shape, &values)?);
        }
        Ok(out)
    }
}

fn encode(name: &str, dt: DataType, shape: Vec<i64>, values: &[f64]) -> Result<Tensor> {
    let mut data = Vec::with_capacity(values.len() * dt.size().unwrap_or(8));
    for v in values {
        match dt {
            DataType::F32 => data.extend_from_slice(&(*v as f32).to_le_bytes()),
            DataType::F64 => data.extend_from_slice(&v.to_le_bytes()),
            DataType::I64 => data.extend_from_slice(&(*v as i64).to_le_bytes()),
            DataType::I32 => data.extend_from_slice(&(*v as i32).to_le_bytes()),
            DataType::I16 => data.extend_from_slice(&(*v as i16).to_le_bytes()),
            DataType::I8 => data.extend_from_slice(&(*v as i8).to_le_bytes()),
            DataType::U64 => data.extend_from_slice(&(*v as u64).to_le_bytes()),
            DataType::U32 => data.extend_from_slice(&(*v as u32).to_le_bytes()),
            DataType::U16 => data.extend_from_slice(&(*v as u16).to_le_bytes()),
            DataType::U8 => data.push(*v as u8),
            other => return Err(Error::internal(format!("output '{name}': cannot write {other:?}"))),
        }
    }
    Ok(Tensor::new(name, dt, shape, data))
}
