//! A model's `payload.toml`, beside its `config.pbtxt`:
//!
//! ```toml
//! sample = 0.1          # fraction of successful requests logged (0 to 1)
//! errors = true         # failed requests are always logged (default)
//! drop = ["ssn"]        # inputs left out of the log
//! hash = ["email"]      # inputs replaced by salted SHA-256 digests, one per element
//! ```

use crate::{PayloadError, Result};
use serde::Deserialize;
use std::path::Path;

pub const FILE_NAME: &str = "payload.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    sample: toml::Spanned<f64>,
    #[serde(default = "yes")]
    errors: bool,
    #[serde(default)]
    drop: Vec<toml::Spanned<String>>,
    #[serde(default)]
    hash: Vec<toml::Spanned<String>>,
}

fn yes() -> bool {
    true
}

/// How one model's requests are logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Fraction of successful requests logged.
    pub sample: f64,
    /// Whether failed requests are always logged.
    pub errors: bool,
    /// Inputs left out.
    pub drop: Vec<String>,
    /// Inputs whose elements are replaced by salted SHA-256 digests (hex).
    pub hash: Vec<String>,
}

impl Settings {
    /// Parses `text` (the contents of `path`); errors name the file and line. `inputs` are the
    /// model's input names, which `drop` and `hash` must name.
    pub fn parse(path: &Path, text: &str, inputs: &[&str]) -> Result<Self> {
        let file = path.display();
        let raw: Raw = toml::from_str(text)
            .map_err(|e| PayloadError::Settings(format!("{file}: {}", e.to_string().trim_end())))?;
        let at = |span: std::ops::Range<usize>, m: String| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            PayloadError::Settings(format!("{file}:{line}: {m}"))
        };
        let sample = *raw.sample.get_ref();
        if !(0.0..=1.0).contains(&sample) {
            return Err(at(raw.sample.span(), format!("sample: {sample} is not a fraction between 0 and 1")));
        }
        for (what, names) in [("drop", &raw.drop), ("hash", &raw.hash)] {
            for n in names {
                if !inputs.contains(&n.get_ref().as_str()) {
                    return Err(at(
                        n.span(),
                        format!(
                            "{what}: '{}' is not an input of the model (inputs: {})",
                            n.get_ref(),
                            inputs.join(", ")
                        ),
                    ));
                }
            }
        }
        if let Some(both) = raw.hash.iter().find(|h| raw.drop.iter().any(|d| d.get_ref() == h.get_ref())) {
            return Err(at(both.span(), format!("'{}' is both dropped and hashed", both.get_ref())));
        }
        Ok(Self {
            sample,
            errors: raw.errors,
            drop: raw.drop.into_iter().map(|s| s.into_inner()).collect(),
            hash: raw.hash.into_iter().map(|s| s.into_inner()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_file_and_line() {
        let p = Path::new("m/payload.toml");
        let s = Settings::parse(p, "sample = 0.25\ndrop = [\"ssn\"]\nhash = [\"email\"]\n", &["ssn", "email", "x"])
            .unwrap();
        assert_eq!(
            (s.sample, s.errors, s.drop.clone(), s.hash.clone()),
            (0.25, true, vec!["ssn".into()], vec!["email".into()])
        );
        let e = Settings::parse(p, "sample = 1.5\n", &["x"]).unwrap_err().to_string();
        assert_eq!(e, "m/payload.toml:1: sample: 1.5 is not a fraction between 0 and 1");
        let e = Settings::parse(p, "sample = 1\n\ndrop = [\"nope\"]\n", &["x"]).unwrap_err().to_string();
        assert_eq!(e, "m/payload.toml:3: drop: 'nope' is not an input of the model (inputs: x)");
        assert!(Settings::parse(p, "sample = 1\nhash = [\"x\"]\ndrop = [\"x\"]\n", &["x"]).is_err());
        assert!(Settings::parse(p, "rate = 1\n", &["x"]).unwrap_err().to_string().starts_with("m/payload.toml"));
    }
}
