//! Fuzz targets: each decoder that takes client or operator data, wrapped as a function of raw
//! bytes that must return (an `Err` is fine) and never panic, hang or allocate without bound.
//!
//! - [`TARGETS`]: every target by name, with the fixture folders its seed corpus comes from.
//! - `fuzz/fuzz_targets/<name>.rs`: the same functions under libFuzzer (`cargo fuzz run <name>`,
//!   nightly); `bench/fuzz/run.sh` runs each for a set time and writes `bench/results/fuzz.md`.
//! - the tests below run every target over its seeds and over `fuzz/regressions/<name>/` (each
//!   crash a fuzzer found, kept as a regression), on stable, in CI.
#![forbid(unsafe_code)]

use bytes::Bytes;
use std::sync::OnceLock;

/// A fuzz target: a name, the function, and the repository folders whose files seed its corpus.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: &'static [&'static str],
}

/// Every target (one per line: bench/fuzz/run.sh reads the seed folders from here).
#[rustfmt::skip]
pub const TARGETS: &[Target] = &[
    Target { name: "rest_json", run: rest_json, seeds: &["fuzz/seeds/rest_json"] },
    Target { name: "rest_binary", run: rest_binary, seeds: &["fuzz/seeds/rest_binary"] },
    Target { name: "grpc_infer", run: grpc_infer, seeds: &["fuzz/seeds/grpc_infer"] },
    Target { name: "config_pbtxt", run: config_pbtxt, seeds: &["fuzz/seeds/config_pbtxt"] },
    Target { name: "xgboost_json", run: xgboost, seeds: &["tests/fixtures/trees"] },
    Target { name: "xgboost_ubjson", run: xgboost, seeds: &["tests/fixtures/trees/xgb_binary_logistic_ubj"] },
    Target { name: "lightgbm_text", run: lightgbm_text, seeds: &["tests/fixtures/trees"] },
    Target { name: "feature_repo_toml", run: feature_repo_toml, seeds: &["examples/features", "examples/cdc", "tests/fixtures/features"] },
    Target { name: "stream_message", run: stream_message, seeds: &["fuzz/seeds/stream_message"] },
    Target { name: "pgoutput", run: pgoutput, seeds: &["fuzz/seeds/pgoutput"] },
    Target { name: "drift_profile", run: drift_profile, seeds: &["fuzz/seeds/drift_profile"] },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A KServe v2 JSON infer request body (no binary extension).
pub fn rest_json(data: &[u8]) {
    let _ = flotilla_http::json::decode_request("m", "", Bytes::copy_from_slice(data), None);
}

/// A body with the binary tensor extension: the first two bytes choose where the JSON header ends
/// (`Inference-Header-Content-Length`), the rest is the body.
pub fn rest_binary(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let body = &data[2..];
    let header = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let header = if body.is_empty() { 0 } else { header % (body.len() + 1) };
    let _ = flotilla_http::json::decode_request("m", "", Bytes::copy_from_slice(body), Some(header));
}

/// A gRPC `ModelInferRequest` (protobuf bytes) converted to the core request.
pub fn grpc_infer(data: &[u8]) {
    use prost::Message;
    if let Ok(request) = flotilla_proto::inference::ModelInferRequest::decode(data) {
        let _ = flotilla_grpc::convert::request_from_proto(request);
    }
}

/// `config.pbtxt` parsed and validated as a model load does.
pub fn config_pbtxt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(mut config) = flotilla_core::config::parse_pbtxt(text, "config.pbtxt") {
        let _ = flotilla_core::config::validate(&mut config, "config.pbtxt");
        let _ = flotilla_core::config::to_json(&config);
    }
}

/// XGBoost's JSON and UBJSON model formats (told apart by the first byte, as the loader does).
pub fn xgboost(data: &[u8]) {
    let _ = flotilla_trees::xgboost::parse(data);
}

/// LightGBM's text model format.
pub fn lightgbm_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = flotilla_trees::lightgbm::parse(text);
    }
}

/// One feature repository file (entities, views, services) with the example entities beside it.
pub fn feature_repo_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let entities = "[[entity]]\nname = \"card\"\njoin_keys = [\"card_id\"]\n".to_string();
    let sources = [("entities.toml".into(), entities), ("fuzz.toml".into(), text.to_string())];
    let _ = flotilla_features::definitions::Registry::from_sources(std::path::Path::new("."), &sources);
}

/// The example feature store (embedded, in a temporary folder), opened once.
fn store() -> &'static flotilla_features::FeatureStore {
    static STORE: OnceLock<flotilla_features::FeatureStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/features");
        let dir = std::env::temp_dir().join(format!("flotilla-fuzz-{}", std::process::id()));
        let location = flotilla_features::store::StoreLocation::Embedded(dir.join("online.redb"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime
            .block_on(flotilla_features::FeatureStore::open(&root, &location, &Default::default()))
            .expect("the example feature store opens")
    })
}

/// A stream message as the consumers decode it: a JSON row or a Debezium change event, for
/// every view of the example feature repository.
pub fn stream_message(data: &[u8]) {
    let store = store();
    for view in &store.registry.views {
        let _ = flotilla_features::streams::decode(store, view, &[data]);
    }
}

/// A replication frame from PostgreSQL, and the pgoutput message inside.
pub fn pgoutput(data: &[u8]) {
    use flotilla_features::streams::postgres::pgoutput;
    let bytes = Bytes::copy_from_slice(data);
    let _ = pgoutput::frame(bytes.clone());
    let _ = pgoutput::message(bytes);
}

/// A drift reference profile (`drift_profile.json`) and a `drift.toml`.
pub fn drift_profile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = flotilla_drift::profile::Profile::from_json(text);
    let _ = flotilla_drift::monitor::config::DriftConfig::parse(text);
}

#[cfg(test)]
mod tests;
