//! Triton model configuration: parsed from `config.pbtxt` (text protobuf) or
//! JSON, rendered as JSON with Triton's field names, and checked for the
//! facts the service relies on.

use crate::datatype::DataType;
use crate::error::{Error, Result};
use flotilla_proto::inference::{model_version_policy, ModelConfig, ModelInput, ModelOutput};
use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};

const MODEL_CONFIG: &str = "inference.ModelConfig";

fn descriptor() -> prost_reflect::MessageDescriptor {
    flotilla_proto::descriptor_pool()
        .get_message_by_name(MODEL_CONFIG)
        .expect("inference.ModelConfig is in the compiled descriptor set")
}

/// Parses Triton's text-protobuf model configuration; `origin` names the file in errors.
pub fn parse_pbtxt(text: &str, origin: &str) -> Result<ModelConfig> {
    let text = colon_before_lists(text);
    let msg = DynamicMessage::parse_text_format(descriptor(), &text)
        .map_err(|e| Error::invalid(format!("{origin}: invalid model configuration: {e}")))?;
    msg.transcode_to::<ModelConfig>().map_err(|e| Error::invalid(format!("{origin}: invalid model configuration: {e}")))
}

/// Text format lets a repeated message field omit the colon before a list
/// (`input [ { ... } ]`, as every Triton config writes it); the parser we use
/// wants `input: [ ... ]`. Inserts the colon, leaving strings and comments alone.
fn colon_before_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let mut last_ident_end = false;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
                last_ident_end = false;
            }
            '#' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '[' if last_ident_end => {
                out.push_str(": [");
                last_ident_end = false;
            }
            c if c.is_whitespace() => out.push(c),
            c => {
                out.push(c);
                last_ident_end = c.is_ascii_alphanumeric() || c == '_';
            }
        }
    }
    out
}

/// Parses a model configuration in Triton's JSON form (as sent with a load request).
pub fn parse_json(text: &str, origin: &str) -> Result<ModelConfig> {
    let mut de = serde_json::Deserializer::from_str(text);
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    let msg = DynamicMessage::deserialize_with_options(descriptor(), &mut de, &opts)
        .map_err(|e| Error::invalid(format!("{origin}: invalid model configuration JSON: {e}")))?;
    msg.transcode_to::<ModelConfig>()
        .map_err(|e| Error::invalid(format!("{origin}: invalid model configuration JSON: {e}")))
}

/// Renders a configuration as Triton does on `GET /v2/models/{m}/config`:
/// proto field names, every field present, enums by name, 64-bit integers as strings.
pub fn to_json(config: &ModelConfig) -> serde_json::Value {
    let mut dynamic = DynamicMessage::new(descriptor());
    if dynamic.transcode_from(config).is_err() {
        return serde_json::Value::Null;
    }
    let opts = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    dynamic.serialize_with_options(serde_json::value::Serializer, &opts).unwrap_or(serde_json::Value::Null)
}

/// Checks the facts the service relies on and fills Triton's defaults.
pub fn validate(config: &mut ModelConfig, origin: &str) -> Result<()> {
    if config.max_batch_size < 0 {
        return Err(Error::invalid(format!("{origin}: max_batch_size must be >= 0, got {}", config.max_batch_size)));
    }
    check_model_filename(config, origin)?;
    let mut seen = std::collections::HashSet::new();
    for input in &config.input {
        check_io(&input.name, input.data_type, &input.dims, "input", origin)?;
        if !seen.insert(("input", input.name.as_str())) {
            return Err(Error::invalid(format!("{origin}: input '{}' is declared twice", input.name)));
        }
    }
    for output in &config.output {
        check_io(&output.name, output.data_type, &output.dims, "output", origin)?;
        if !seen.insert(("output", output.name.as_str())) {
            return Err(Error::invalid(format!("{origin}: output '{}' is declared twice", output.name)));
        }
    }
    if config.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref()).is_none() {
        config.version_policy = Some(flotilla_proto::inference::ModelVersionPolicy {
            policy_choice: Some(model_version_policy::PolicyChoice::Latest(model_version_policy::Latest {
                num_versions: 1,
            })),
        });
    }
    Ok(())
}

/// `default_model_filename` names a file of the version folder (a client's `config` override
/// names it too): a plain name, never a path that leaves the folder. Checked before the loader
/// touches the file.
pub fn check_model_filename(config: &ModelConfig, origin: &str) -> Result<()> {
    let file = &config.default_model_filename;
    let plain = file != "." && file != ".." && !file.contains(['/', '\\', '\0']);
    let inside = file.is_empty() || (plain && std::path::Path::new(file).is_relative());
    if !inside {
        return Err(Error::invalid(format!(
            "{origin}: default_model_filename must be a file name in the version folder, not {file:?}"
        )));
    }
    Ok(())
}

fn check_io(name: &str, data_type: i32, dims: &[i64], what: &str, origin: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{origin}: an {what} has no name")));
    }
    DataType::from_config(data_type).map_err(|e| Error::invalid(format!("{origin}: {what} '{name}': {e}")))?;
    if let Some(d) = dims.iter().find(|d| **d < -1) {
        return Err(Error::invalid(format!("{origin}: {what} '{name}' has dimension {d}; use -1 for variable")));
    }
    Ok(())
}

/// Protocol datatype of a configured input.
pub fn input_datatype(input: &ModelInput) -> DataType {
    DataType::from_config(input.data_type).unwrap_or(DataType::F32)
}

/// Protocol datatype of a configured output.
pub fn output_datatype(output: &ModelOutput) -> DataType {
    DataType::from_config(output.data_type).unwrap_or(DataType::F32)
}

/// Full shape as clients see it: `-1` batch dimension first when the model batches.
pub fn full_shape(config: &ModelConfig, dims: &[i64]) -> Vec<i64> {
    let mut shape = Vec::with_capacity(dims.len() + 1);
    if config.max_batch_size > 0 {
        shape.push(-1);
    }
    shape.extend_from_slice(dims);
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = r#"
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
version_policy: { specific: { versions: [1, 3] } }
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
parameters { key: "output_margin" value { string_value: "true" } }
"#;

    #[test]
    fn the_model_file_stays_in_its_version_folder() {
        for bad in ["../../etc/passwd", "/etc/passwd", "..", ".", "a/b", "a\\b", "x\0y"] {
            let mut c = ModelConfig { default_model_filename: bad.into(), ..ModelConfig::default() };
            let e = validate(&mut c, "m/config.pbtxt").unwrap_err();
            assert!(e.message.contains("default_model_filename must be a file name"), "{bad}: {e}");
        }
        for good in ["", "model.onnx", "xgb.ubj", "..model"] {
            let c = ModelConfig { default_model_filename: good.into(), ..ModelConfig::default() };
            check_model_filename(&c, "m").unwrap();
        }
    }

    #[test]
    fn parses_triton_pbtxt() {
        let mut c = parse_pbtxt(SIMPLE, "config.pbtxt").unwrap();
        validate(&mut c, "config.pbtxt").unwrap();
        assert_eq!(c.name, "simple");
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input.len(), 2);
        assert_eq!(c.input[1].dims, vec![16]);
        assert_eq!(input_datatype(&c.input[0]), DataType::I32);
        assert_eq!(c.instance_group[0].count, 2);
        assert_eq!(c.parameters["output_margin"].string_value, "true");
        assert_eq!(full_shape(&c, &c.input[0].dims), vec![-1, 16]);
    }

    #[test]
    fn list_syntax_with_and_without_colons() {
        let a = parse_pbtxt("input [ { name: \"a[0]\" dims: [ 1 ] } ] # c [x\noutput: [ { name: 'b' } ]", "c").unwrap();
        assert_eq!(a.input[0].name, "a[0]");
        assert_eq!(a.input[0].dims, vec![1]);
        assert_eq!(a.output[0].name, "b");
    }

    #[test]
    fn json_matches_triton_field_names_and_round_trips() {
        let c = parse_pbtxt(SIMPLE, "config.pbtxt").unwrap();
        let json = to_json(&c);
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["data_type"], "TYPE_INT32");
        assert_eq!(json["input"][0]["dims"][0], "16");
        assert_eq!(json["dynamic_batching"]["max_queue_delay_microseconds"], "100");
        let back = parse_json(&json.to_string(), "json").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = parse_pbtxt("name: \"x\" max_batch_size: \"eight\"", "m/config.pbtxt").unwrap_err();
        assert!(e.message.contains("m/config.pbtxt"), "{e}");
        let e = parse_pbtxt("nmae: \"x\"", "c").unwrap_err();
        assert!(e.message.contains("nmae"), "{e}");
        let mut c = parse_pbtxt("input [{ name: \"a\" data_type: TYPE_FP32 dims: [-2] }]", "c").unwrap();
        assert!(validate(&mut c, "c").unwrap_err().message.contains("-2"));
        let mut c = parse_pbtxt("input [{ name: \"a\" dims: [1] }]", "c").unwrap();
        assert!(validate(&mut c, "c").unwrap_err().message.contains("TYPE_INVALID"));
    }
}
