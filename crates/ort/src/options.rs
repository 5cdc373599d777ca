//! Session options from a model configuration, with the parameter names of
//! Triton's ONNX Runtime backend.

use flotilla_core::{Error, ModelConfig, Result};
use flotilla_proto::inference::model_config::SchedulingChoice;
use flotilla_proto::inference::model_instance_group::Kind;

/// How the sessions of one model version are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// One session per engine instance.
    pub sessions: usize,
    /// Threads inside one operator (`intra_op_thread_count`; default: cores / instances, at least 1).
    pub intra_op_threads: usize,
    /// Threads across independent operators (`inter_op_thread_count`; used in parallel execution mode).
    pub inter_op_threads: Option<usize>,
    /// `execution_mode: "1"`: run independent operators in parallel.
    pub parallel_execution: bool,
    /// The CUDA device for `instance_group [{ kind: KIND_GPU }]` (first of `gpus`, else 0).
    pub gpu_device: Option<i32>,
    /// Whether idle intra-op threads spin before they sleep (`allow_spinning`). Spinning saves a
    /// wake-up per operator, which pays for batch-1 requests. Under dynamic batching with the
    /// sessions' threads on every core, the operators are long and a spinning thread holds a
    /// core the HTTP/gRPC side needs to gather the next batch: on the serving bench's
    /// compute-bound MLP (1 session, 2 threads, 2 cores, c=32) spinning off gave +15-30% req/s
    /// over three rounds, while without batching it cost 10-14%. Default: spin, except there.
    pub spinning: bool,
}

fn parameter<'a>(config: &'a ModelConfig, key: &str) -> Option<&'a str> {
    config.parameters.get(key).map(|p| p.string_value.trim())
}

fn count_parameter(config: &ModelConfig, key: &str) -> Result<Option<usize>> {
    let Some(text) = parameter(config, key) else { return Ok(None) };
    match text.parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(Error::invalid(format!(
            "{}/config.pbtxt: parameter {key} must be a whole number of threads, got {text:?}",
            config.name
        ))),
    }
}

// === impl Options ===

impl Options {
    /// `default_instances` is the server's instance count for configs without instance_group.
    pub fn from_config(config: &ModelConfig, default_instances: usize) -> Result<Self> {
        let configured: i32 = config.instance_group.iter().map(|g| g.count.max(1)).sum();
        let sessions = if configured > 0 { configured as usize } else { default_instances.max(1) };
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let intra_op_threads = count_parameter(config, "intra_op_thread_count")?.unwrap_or((cores / sessions).max(1));
        let inter_op_threads = count_parameter(config, "inter_op_thread_count")?;
        let parallel_execution = match parameter(config, "execution_mode") {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{}/config.pbtxt: parameter execution_mode must be \"0\" (sequential) or \"1\" (parallel), got {other:?}",
                    config.name
                )))
            }
        };
        let spinning = match parameter(config, "allow_spinning") {
            None => {
                let batching = matches!(config.scheduling_choice, Some(SchedulingChoice::DynamicBatching(_)));
                !batching || sessions * intra_op_threads < cores
            }
            Some("1" | "true") => true,
            Some("0" | "false") => false,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{}/config.pbtxt: parameter allow_spinning must be \"true\" or \"false\", got {other:?}",
                    config.name
                )))
            }
        };
        let gpu_device = config
            .instance_group
            .iter()
            .find(|g| g.kind == Kind::Gpu as i32)
            .map(|g| g.gpus.first().copied().unwrap_or(0));
        Ok(Self { sessions, intra_op_threads, inter_op_threads, parallel_execution, gpu_device, spinning })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::config::parse_pbtxt;

    #[test]
    fn defaults_split_cores_between_instances() {
        let c = parse_pbtxt(r#"name: "m""#, "m").unwrap();
        let o = Options::from_config(&c, 2).unwrap();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(o.sessions, 2);
        assert_eq!(o.intra_op_threads, (cores / 2).max(1));
        assert_eq!((o.inter_op_threads, o.parallel_execution, o.gpu_device), (None, false, None));
        assert!(o.spinning, "ONNX Runtime's default without dynamic batching");
        // dynamic batching with the sessions' threads on every core: no spinning
        let batched = |threads: usize| {
            let text = format!(
                r#"name: "m" max_batch_size: 8 dynamic_batching {{ }} instance_group [{{ count: 1 }}]
                   parameters {{ key: "intra_op_thread_count" value {{ string_value: "{threads}" }} }}"#
            );
            Options::from_config(&parse_pbtxt(&text, "m").unwrap(), 1).unwrap().spinning
        };
        assert!(!batched(cores));
        assert_eq!(batched(1), cores > 1);
    }

    #[test]
    fn triton_parameters_and_gpu_groups() {
        let c = parse_pbtxt(
            r#"name: "m"
               instance_group [ { kind: KIND_GPU count: 3 gpus: [ 1 ] } ]
               parameters { key: "intra_op_thread_count" value { string_value: "2" } }
               parameters { key: "inter_op_thread_count" value { string_value: "4" } }
               parameters { key: "execution_mode" value { string_value: "1" } }
               parameters { key: "allow_spinning" value { string_value: "true" } }"#,
            "m",
        )
        .unwrap();
        let o = Options::from_config(&c, 1).unwrap();
        assert_eq!(
            o,
            Options {
                sessions: 3,
                intra_op_threads: 2,
                inter_op_threads: Some(4),
                parallel_execution: true,
                gpu_device: Some(1),
                spinning: true,
            }
        );
    }

    #[test]
    fn bad_parameters_are_load_errors() {
        let c =
            parse_pbtxt(r#"name: "m" parameters { key: "intra_op_thread_count" value { string_value: "two" } }"#, "m")
                .unwrap();
        let e = Options::from_config(&c, 1).unwrap_err();
        assert!(e.message.contains("intra_op_thread_count"), "{e}");
        let c = parse_pbtxt(r#"name: "m" parameters { key: "allow_spinning" value { string_value: "yes" } }"#, "m")
            .unwrap();
        let e = Options::from_config(&c, 1).unwrap_err();
        assert!(e.message.contains("allow_spinning") && e.message.contains("\"yes\""), "{e}");
    }
}
