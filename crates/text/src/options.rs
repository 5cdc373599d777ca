//! The text backend's settings, read from the config's `parameters`:
//!
//! | key | values | default |
//! | --- | --- | --- |
//! | `max_length` | tokens per row, special tokens included | `tokenizer.json`'s truncation length, else 512 |
//! | `pooling` | `mean`, `cls`, `none` (the encoder's output as is, e.g. logits) | `mean` |
//! | `normalize` | `true` / `false`: L2-normalise pooled embeddings | `false` |
//! | `encoder_output` | which ONNX output to read | see [`crate::encoder`] |

use flotilla_core::{Error, ModelConfig, Result};

/// Tokens per row when neither the config nor `tokenizer.json` says (BERT's position limit).
pub const DEFAULT_MAX_LENGTH: usize = 512;

/// How one row of token states becomes one output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the token states the attention mask keeps (sentence-transformers' default).
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
    /// No pooling: the encoder's output per row as it is (classification logits).
    None,
}

/// Settings of one text model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    /// Tokens per row after truncation; `None` = from `tokenizer.json`, else [`DEFAULT_MAX_LENGTH`].
    pub max_length: Option<usize>,
    pub pooling: Pooling,
    pub normalize: bool,
    /// The encoder output to read; `None` picks one by name and rank.
    pub encoder_output: Option<String>,
}

// === impl Pooling ===

impl Pooling {
    /// The output name a completed configuration gets.
    pub fn output_name(self) -> &'static str {
        match self {
            Pooling::Mean | Pooling::Cls => "embedding",
            Pooling::None => "logits",
        }
    }
}

// === impl TextOptions ===

impl TextOptions {
    /// Reads the text parameters of `config`; unknown values are errors naming the key.
    pub fn from_config(config: &ModelConfig) -> Result<Self> {
        let origin = format!("{}/config.pbtxt", config.name);
        let get = |key: &str| config.parameters.get(key).map(|p| p.string_value.trim());
        let max_length = match get("max_length") {
            None | Some("") => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(Error::invalid(format!(
                        "{origin}: parameter max_length must be a whole number >= 1, got '{v}'"
                    )))
                }
            },
        };
        let pooling = match get("pooling").map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("mean") => Pooling::Mean,
            Some("cls") => Pooling::Cls,
            Some("none") => Pooling::None,
            Some(v) => {
                return Err(Error::invalid(format!("{origin}: parameter pooling must be mean, cls or none, got '{v}'")))
            }
        };
        let normalize = match get("normalize").map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(Error::invalid(format!("{origin}: parameter normalize must be true or false, got '{v}'")))
            }
        };
        let encoder_output = get("encoder_output").filter(|v| !v.is_empty()).map(str::to_string);
        Ok(Self { max_length, pooling, normalize, encoder_output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::inference::ModelParameter;

    fn config(params: &[(&str, &str)]) -> ModelConfig {
        let mut c = ModelConfig { name: "m".into(), ..Default::default() };
        for (k, v) in params {
            c.parameters.insert(k.to_string(), ModelParameter { string_value: v.to_string() });
        }
        c
    }

    #[test]
    fn defaults() {
        let o = TextOptions::from_config(&config(&[])).unwrap();
        assert_eq!(o, TextOptions { max_length: None, pooling: Pooling::Mean, normalize: false, encoder_output: None });
    }

    #[test]
    fn parses_every_parameter() {
        let c = config(&[("max_length", "128"), ("pooling", "CLS"), ("normalize", "true"), ("encoder_output", "h")]);
        let o = TextOptions::from_config(&c).unwrap();
        assert_eq!(o.max_length, Some(128));
        assert_eq!(o.pooling, Pooling::Cls);
        assert!(o.normalize);
        assert_eq!(o.encoder_output.as_deref(), Some("h"));
        assert_eq!(TextOptions::from_config(&config(&[("pooling", "none")])).unwrap().pooling, Pooling::None);
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        for (k, v) in [("max_length", "0"), ("max_length", "-3"), ("max_length", "x"), ("pooling", "max")] {
            let e = TextOptions::from_config(&config(&[(k, v)])).unwrap_err();
            assert!(e.message.contains(k) && e.message.contains(v), "{e}");
        }
        let e = TextOptions::from_config(&config(&[("normalize", "yes")])).unwrap_err();
        assert!(e.message.contains("normalize"), "{e}");
    }
}
