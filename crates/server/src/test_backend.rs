//! A test-only backend with a fixed execution cost, as Triton's test backends have (identity
//! with `execute_delay_ms`): `backend: "delay"` copies its first input to its first output after
//! sleeping `execute_delay_ms` per execution (one batch), on its engine thread. The fleet's tests
//! and benchmark use it to give workers real, known capacities (instances / delay) without
//! burning the CPU the rest of the rig needs.
//!
//! `fail_above` (a config parameter, or a file of that name in a version folder holding a
//! number) makes it fail every request whose first input's first element is greater: a faulty
//! model version that errors on some inputs, for canary tests.
//!
//! Registered only when `FLOTILLA_TEST_BACKENDS` names it (`delay`); absent from the default
//! build's list of backends a user sees.

use flotilla_core::engine::{AutocompleteOptions, Backend, Engine, Phases};
use flotilla_core::{Error, ModelConfig, Result, Tensor};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Whether `FLOTILLA_TEST_BACKENDS` asks for the delay backend.
pub fn enabled() -> bool {
    std::env::var("FLOTILLA_TEST_BACKENDS").is_ok_and(|v| v.split(',').any(|b| b.trim() == "delay"))
}

pub struct DelayBackend;

struct DelayEngine {
    delay: Duration,
    output: String,
    fail_above: Option<f64>,
}

impl Engine for DelayEngine {
    fn infer(&self, inputs: &[Tensor], phases: &mut Phases) -> Result<Vec<Tensor>> {
        phases.input_done();
        std::thread::sleep(self.delay);
        phases.infer_done();
        let first = inputs.first().ok_or_else(|| Error::invalid("the delay backend needs one input"))?;
        if let Some(limit) = self.fail_above {
            let values = flotilla_core::tensor::to_f64(first.datatype, &first.data)?;
            if values.first().is_some_and(|v| *v > limit) {
                return Err(Error::internal(format!("injected fault: input {} > fail_above {limit}", values[0])));
            }
        }
        let mut out = first.clone();
        out.name = self.output.clone();
        out.parameters.clear();
        Ok(vec![out])
    }
}

impl Backend for DelayBackend {
    fn name(&self) -> &'static str {
        "delay"
    }
    fn platform(&self) -> &'static str {
        "delay"
    }
    fn serves(&self, config: &ModelConfig) -> bool {
        config.backend == "delay"
    }
    fn default_filenames(&self) -> &'static [&'static str] {
        &[]
    }
    fn recognises(&self, _: &Path) -> bool {
        false
    }
    fn autocomplete(&self, config: &mut ModelConfig, _: &Path, _: &AutocompleteOptions) -> Result<()> {
        if config.input.is_empty() || config.output.is_empty() {
            return Err(Error::invalid(format!(
                "model '{}': the delay backend needs one input and one output in config.pbtxt",
                config.name
            )));
        }
        Ok(())
    }
    fn load(&self, config: &ModelConfig, model_file: &Path) -> Result<Arc<dyn Engine>> {
        let ms = match config.parameters.get("execute_delay_ms") {
            None => 0.0,
            Some(p) => {
                p.string_value.trim().parse::<f64>().ok().filter(|ms| (0.0..=60_000.0).contains(ms)).ok_or_else(
                    || {
                        Error::invalid(format!(
                            "model '{}': execute_delay_ms {:?} is not a number of milliseconds from 0 to 60000",
                            config.name, p.string_value
                        ))
                    },
                )?
            }
        };
        let output = config.output.first().map(|o| o.name.clone()).ok_or_else(|| Error::invalid("no output"))?;
        let in_version = model_file.parent().and_then(|d| std::fs::read_to_string(d.join("fail_above")).ok());
        let fail_above =
            match in_version.or_else(|| config.parameters.get("fail_above").map(|p| p.string_value.clone())) {
                None => None,
                Some(text) => Some(text.trim().parse::<f64>().map_err(|_| {
                    Error::invalid(format!("model '{}': fail_above {text:?} is not a number", config.name))
                })?),
            };
        Ok(Arc::new(DelayEngine { delay: Duration::from_secs_f64(ms / 1000.0), output, fail_above }))
    }
}
