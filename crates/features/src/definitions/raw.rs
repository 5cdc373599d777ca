//! The TOML shapes of a feature repository file, as written by users. Names keep their
//! position in the file so that errors found after parsing still name the line.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub entity: Vec<Entity>,
    #[serde(default)]
    pub feature_view: Vec<FeatureView>,
    #[serde(default)]
    pub feature_service: Vec<FeatureService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub name: Spanned<String>,
    /// Defaults to the entity's name, as in Feast.
    pub join_key: Option<Spanned<String>>,
    #[serde(default = "int64")]
    pub value_type: Spanned<String>,
    #[serde(default)]
    pub description: String,
}

fn int64() -> Spanned<String> {
    Spanned::new(0..0, "int64".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureView {
    pub name: Spanned<String>,
    #[serde(default)]
    pub entities: Vec<Spanned<String>>,
    pub ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub online: bool,
    pub push_source: Option<Spanned<String>>,
    pub source: Option<Source>,
    pub stream: Option<Spanned<BTreeMap<String, toml::Value>>>,
    pub features: Vec<Feature>,
    /// Makes the view an append view (an edge list): rows append items, the newest N are kept.
    pub max_items: Option<Spanned<i64>>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub path: Spanned<String>,
    #[serde(default = "event_timestamp")]
    pub timestamp_field: String,
    pub created_timestamp_column: Option<String>,
}

fn event_timestamp() -> String {
    "event_timestamp".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: Spanned<String>,
    pub dtype: Spanned<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureService {
    pub name: Spanned<String>,
    pub features: Vec<Spanned<String>>,
    #[serde(default)]
    pub description: String,
}
