//! Objectives: how a model turns summed margins into predictions, and whether
//! it defines a predicted class.

/// The transform from margins to predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    Identity,
    /// `1 / (1 + exp(-scale·x))` per output.
    Sigmoid(f64),
    /// Softmax across the outputs of a row.
    Softmax,
    /// `exp(x)`.
    Exp,
    /// `sign(x)·x²` (LightGBM regression with `sqrt`).
    SignedSquare,
    /// `x > 0 ? 1 : 0` (XGBoost binary:hinge).
    Hinge,
    /// argmax as the prediction (XGBoost multi:softmax).
    ArgMax,
}

/// Turns a stored base_score into a margin.
pub type BaseToMargin = fn(f32) -> f32;

/// Whether (and how) the objective defines a predicted class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classes {
    /// Regression or ranking: no class.
    None,
    /// Binary: class 1 when the probability is above 0.5 (margin above 0).
    Binary,
    /// Multiclass: the argmax of the outputs.
    Multi,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    /// The name as the library wrote it (e.g. `binary:logistic`, `multiclass num_class:3`).
    pub name: String,
    pub transform: Transform,
    pub classes: Classes,
    /// Margins come from the library in this precision; transforms follow it.
    pub f32_math: bool,
}

impl Objective {
    /// XGBoost objective by name, and the function turning its stored base_score into a margin.
    /// (XGBoost does that arithmetic in f32.)
    pub fn xgboost(name: &str) -> Result<(Self, BaseToMargin), String> {
        use Transform::*;
        let logit = |p: f32| -(1.0f32 / p - 1.0).ln();
        let ident = |p: f32| p;
        let log = |p: f32| p.ln();
        let (transform, classes, base): (Transform, Classes, BaseToMargin) = match name {
            "reg:squarederror"
            | "reg:linear"
            | "reg:squaredlogerror"
            | "reg:pseudohubererror"
            | "reg:absoluteerror"
            | "reg:quantileerror" => (Identity, Classes::None, ident),
            "reg:logistic" => (Sigmoid(1.0), Classes::None, logit),
            "binary:logistic" => (Sigmoid(1.0), Classes::Binary, logit),
            // XGBoost stores logitraw's base_score as a margin already.
            "binary:logitraw" => (Identity, Classes::Binary, ident),
            "binary:hinge" => (Hinge, Classes::Binary, ident),
            "multi:softprob" => (Softmax, Classes::Multi, ident),
            "multi:softmax" => (ArgMax, Classes::Multi, ident),
            "count:poisson" | "reg:tweedie" | "reg:gamma" | "survival:cox" | "survival:aft" => {
                (Exp, Classes::None, log)
            }
            "rank:pairwise" | "rank:ndcg" | "rank:map" => (Identity, Classes::None, ident),
            other => {
                return Err(format!(
                    "unknown XGBoost objective '{other}' (supported: reg:squarederror, reg:logistic, \
                     reg:absoluteerror, reg:pseudohubererror, reg:quantileerror, reg:squaredlogerror, \
                     binary:logistic, binary:logitraw, binary:hinge, multi:softprob, multi:softmax, count:poisson, \
                     reg:tweedie, reg:gamma, survival:cox, survival:aft, rank:pairwise, rank:ndcg, rank:map)"
                ))
            }
        };
        Ok((Self { name: name.to_string(), transform, classes, f32_math: true }, base))
    }

    /// LightGBM objective from the model file's `objective=` line (name and `key:value` options).
    pub fn lightgbm(line: &str, num_class: usize) -> Result<Self, String> {
        use Transform::*;
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or("");
        let mut sigmoid = 1.0;
        let mut sqrt = false;
        for w in words {
            if let Some(v) = w.strip_prefix("sigmoid:") {
                sigmoid = v.parse().map_err(|_| format!("objective '{line}': bad sigmoid value '{v}'"))?;
            } else if w == "sqrt" {
                sqrt = true;
            }
        }
        let regression = if sqrt { SignedSquare } else { Identity };
        let (transform, classes) = match name {
            "regression"
            | "regression_l2"
            | "l2"
            | "mean_squared_error"
            | "mse"
            | "regression_l1"
            | "l1"
            | "mean_absolute_error"
            | "mae"
            | "huber"
            | "fair"
            | "quantile"
            | "mape" => (regression, Classes::None),
            "poisson" | "gamma" | "tweedie" => (Exp, Classes::None),
            "binary" => (Sigmoid(sigmoid), Classes::Binary),
            "cross_entropy" | "xentropy" => (Sigmoid(1.0), Classes::None),
            "multiclass" | "softmax" => (Softmax, Classes::Multi),
            "multiclassova" | "multiclass_ova" | "ova" | "ovr" => (Sigmoid(sigmoid), Classes::Multi),
            "lambdarank" | "rank_xendcg" | "custom" | "none" | "" => (Identity, Classes::None),
            other => {
                return Err(format!(
                "unknown LightGBM objective '{other}' (supported: regression, regression_l1, huber, fair, quantile, \
                     mape, poisson, gamma, tweedie, binary, cross_entropy, multiclass, multiclassova, lambdarank, \
                     rank_xendcg)"
            ))
            }
        };
        if matches!(classes, Classes::Multi) && num_class < 2 {
            return Err(format!("objective '{name}' needs num_class >= 2, the model says {num_class}"));
        }
        Ok(Self { name: line.to_string(), transform, classes, f32_math: false })
    }

    /// Number of values `output__0` carries per row for `groups` margins.
    pub fn output_width(&self, groups: usize) -> usize {
        match self.transform {
            Transform::ArgMax => 1,
            _ => groups,
        }
    }

    /// Turns one row's margins into predictions (`out.len() == output_width`).
    pub fn apply(&self, margins: &[f64], out: &mut [f64]) {
        if self.f32_math {
            self.apply_f32(margins, out)
        } else {
            self.apply_f64(margins, out)
        }
    }

    fn apply_f64(&self, m: &[f64], out: &mut [f64]) {
        match self.transform {
            Transform::Identity => out.copy_from_slice(m),
            Transform::Sigmoid(s) => out.iter_mut().zip(m).for_each(|(o, x)| *o = 1.0 / (1.0 + (-s * x).exp())),
            Transform::Exp => out.iter_mut().zip(m).for_each(|(o, x)| *o = x.exp()),
            Transform::SignedSquare => out.iter_mut().zip(m).for_each(|(o, x)| *o = x.signum() * x * x),
            Transform::Hinge => out.iter_mut().zip(m).for_each(|(o, x)| *o = if *x > 0.0 { 1.0 } else { 0.0 }),
            Transform::Softmax => {
                let max = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for (o, x) in out.iter_mut().zip(m) {
                    *o = (x - max).exp();
                    sum += *o;
                }
                out.iter_mut().for_each(|o| *o /= sum);
            }
            Transform::ArgMax => out[0] = argmax(m) as f64,
        }
    }

    /// XGBoost computes its transforms in f32.
    fn apply_f32(&self, m: &[f64], out: &mut [f64]) {
        let f = |x: &f64| *x as f32;
        match self.transform {
            Transform::Sigmoid(s) => {
                out.iter_mut().zip(m).for_each(|(o, x)| *o = f64::from(1.0f32 / (1.0f32 + (-(s as f32) * f(x)).exp())))
            }
            Transform::Exp => out.iter_mut().zip(m).for_each(|(o, x)| *o = f64::from(f(x).exp())),
            Transform::Softmax => {
                let max = m.iter().map(f).fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for (o, x) in out.iter_mut().zip(m) {
                    let e = (f(x) - max).exp();
                    *o = f64::from(e);
                    sum += e;
                }
                out.iter_mut().for_each(|o| *o = f64::from(*o as f32 / sum));
            }
            _ => self.apply_f64(m, out),
        }
    }

    /// The predicted class of one row from its margins, where the objective defines one.
    pub fn class(&self, margins: &[f64]) -> Option<i64> {
        match self.classes {
            Classes::None => None,
            Classes::Binary => Some(i64::from(margins[0] > 0.0)),
            Classes::Multi => Some(argmax(margins) as i64),
        }
    }
}

/// Index of the first largest value (NaN never wins).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_argmax_picks_first_max() {
        let (o, _) = Objective::xgboost("multi:softprob").unwrap();
        let mut out = [0.0; 3];
        o.apply(&[1.0, 3.0, 3.0], &mut out);
        assert!((out.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        assert_eq!(o.class(&[1.0, 3.0, 3.0]), Some(1));
    }

    #[test]
    fn logistic_base_score_is_a_logit() {
        let (_, base) = Objective::xgboost("binary:logistic").unwrap();
        assert!((base(0.5)).abs() < 1e-7);
        let (_, base) = Objective::xgboost("count:poisson").unwrap();
        assert!((base(1.0)).abs() < 1e-7);
    }

    #[test]
    fn unknown_objectives_are_named() {
        let e = Objective::xgboost("reg:nonsense").unwrap_err();
        assert!(e.contains("reg:nonsense"), "{e}");
        let e = Objective::lightgbm("weird_loss", 1).unwrap_err();
        assert!(e.contains("weird_loss"), "{e}");
        assert!(Objective::lightgbm("multiclass num_class:1", 1).is_err());
    }

    #[test]
    fn lightgbm_sigmoid_option() {
        let o = Objective::lightgbm("binary sigmoid:0.5", 1).unwrap();
        assert_eq!(o.transform, Transform::Sigmoid(0.5));
    }
}
