//! Exactness against the libraries' own predictions (fixtures made by
//! scripts/make_tree_fixtures.py with the real xgboost and lightgbm wheels),
//! and bad-model / bad-input handling.

use super::*;
use flotilla_core::engine::Phases;
use flotilla_core::Tensor;
use flotilla_proto::inference::{ModelOutput, ModelParameter};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/trees")
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn read_f64(path: &Path) -> Vec<f64> {
    std::fs::read(path).unwrap().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn set(config: &mut ModelConfig, key: &str, value: &str) {
    config.parameters.insert(key.into(), ModelParameter { string_value: value.into() });
}

fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 1e-6 * theirs.abs().max(1.0) || (ours.is_nan() && theirs.is_nan())
}

/// Builds an engine for a fixture with FP64 `output__0` (predictions) and `margin` outputs.
fn engine_for(dir: &Path, case: &serde_json::Value, threads: usize) -> TreeEngine {
    let file = dir.join(case["model_file"].as_str().unwrap());
    let mut config = ModelConfig { name: "t".into(), ..Default::default() };
    if let Some(m) = case["missing"].as_f64() {
        set(&mut config, "missing", &m.to_string());
    }
    set(&mut config, "threads", &threads.to_string());
    TreeBackend.autocomplete(&mut config, &file, &AutocompleteOptions::default()).unwrap();
    for o in &mut config.output {
        if o.name == "output__0" {
            o.data_type = DataType::F64.to_config() as i32;
        }
    }
    config.output.push(ModelOutput {
        name: "margin".into(),
        data_type: DataType::F64.to_config() as i32,
        dims: vec![-1],
        ..Default::default()
    });
    let forest = load_forest(&file, None).unwrap();
    TreeEngine::new(&config, forest, &file).unwrap()
}

fn run(engine: &TreeEngine, x: &[f32], rows: usize, features: usize) -> Vec<Tensor> {
    let data: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = Tensor::new("input__0", DataType::F32, vec![rows as i64, features as i64], data);
    engine.infer(&[t], &mut Phases::start()).unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn every_fixture_matches_its_library() {
    let mut cases: Vec<_> =
        std::fs::read_dir(fixtures()).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 30, "expected the committed fixtures, found {}", cases.len());
    let mut failures = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let case: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
        let rows = case["n_rows"].as_u64().unwrap() as usize;
        let features = case["n_features"].as_u64().unwrap() as usize;
        let x = read_f32(&dir.join("X.f32"));
        let want_pred = read_f64(&dir.join("predict.f64"));
        let want_margin = read_f64(&dir.join("margin.f64"));
        for threads in [1, 3] {
            let engine = engine_for(dir, &case, threads);
            // Whole batch, and row by row (batch 1 takes the other lane arrangement).
            let whole = run(&engine, &x, rows, features);
            let mut single_pred = Vec::new();
            let mut single_margin = Vec::new();
            for r in 0..rows.min(40) {
                let out = run(&engine, &x[r * features..(r + 1) * features], 1, features);
                single_pred.extend(f64s(&out[0]));
                single_margin.extend(f64s(out.last().unwrap()));
            }
            let checks = [
                ("predict", f64s(&whole[0]), &want_pred),
                ("margin", f64s(whole.last().unwrap()), &want_margin),
                ("predict(batch 1)", single_pred, &want_pred),
                ("margin(batch 1)", single_margin, &want_margin),
            ];
            for (what, ours, theirs) in checks {
                let bad = ours.iter().zip(theirs.iter()).enumerate().find(|(_, (o, t))| !close(**o, **t));
                if ours.len() > theirs.len() || (ours.len() != theirs.len() && !what.contains("batch 1")) {
                    failures.push(format!("{name} {what}: {} values, expected {}", ours.len(), theirs.len()));
                } else if let Some((i, (o, t))) = bad {
                    failures.push(format!("{name} {what} (threads {threads}): value {i}: ours {o} theirs {t}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn numeric_models_use_the_complete_layout() {
    let f = load_forest(&fixtures().join("xgb_binary_logistic/model.json"), None).unwrap();
    assert!(predict::Predictor::new(&f).is_complete());
    let f = load_forest(&fixtures().join("xgb_categorical_partition/model.json"), None).unwrap();
    assert!(!predict::Predictor::new(&f).is_complete());
}

/// Every fixture's margins are the same, bit for bit, from the complete layout (where the
/// model allows it), the lane walk and the row-by-row traversal, with and without NaNs, on
/// batches that fill several blocks and a last partial one.
#[test]
fn every_layout_gives_the_same_margins() {
    for dir in std::fs::read_dir(fixtures()).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let case: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
        let file = dir.join(case["model_file"].as_str().unwrap());
        let forest = load_forest(&file, None).unwrap();
        let f = forest.num_features;
        let x = read_f32(&dir.join("X.f32"));
        // 300 rows: the fixture's, repeated, every 7th value NaN in the second half.
        let mut rows: Vec<f32> = x.iter().copied().cycle().take(300 * f).collect();
        for v in rows[150 * f..].iter_mut().step_by(7) {
            *v = f32::NAN;
        }
        let run = |p: &predict::Predictor| {
            let mut out = vec![0.0; 300 * forest.num_groups];
            p.margins(&rows, &mut out, 1);
            out
        };
        let default = run(&predict::Predictor::new(&forest));
        let lanes = run(&predict::Predictor::general(&forest, true));
        let by_row = run(&predict::Predictor::general(&forest, false));
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same(&default, &by_row), "{name}: default layout differs from row-by-row");
        assert!(same(&lanes, &by_row), "{name}: lane walk differs from row-by-row");
    }
}

fn temp_model(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flotilla-trees-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_models_are_clear_load_errors() {
    let json = std::fs::read_to_string(fixtures().join("xgb_binary_logistic/model.json")).unwrap();
    let lgb = std::fs::read_to_string(fixtures().join("lgb_binary/model.txt")).unwrap();
    let ubj = std::fs::read(fixtures().join("xgb_binary_logistic_ubj/model.ubj")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated.json", json.as_bytes()[..json.len() / 2].to_vec(), "EOF"),
        ("objective.json", json.replace("binary:logistic", "binary:nonsense").into_bytes(), "binary:nonsense"),
        (
            "children.json",
            json.replacen("\"left_children\":[1,", "\"left_children\":[999,", 1).into_bytes(),
            "out of range",
        ),
        (
            "lengths.json",
            json.replacen("\"split_indices\":[", "\"split_indices\":[0,", 1).into_bytes(),
            "split_indices",
        ),
        (
            "feature.json",
            json.replacen("\"split_indices\":[", "\"split_indices\":[12345,", 1)
                .replacen("\"split_indices\":[12345,", "\"split_indices\":[", 0)
                .into_bytes(),
            "",
        ),
        ("truncated.txt", lgb.as_bytes()[..lgb.len() / 2].to_vec(), "truncated"),
        ("objective.txt", lgb.replace("objective=binary", "objective=astrology").into_bytes(), "astrology"),
        ("leaves.txt", lgb.replacen("num_leaves=", "num_leaves=9", 1).into_bytes(), "Tree=0"),
        // counts that would make the loader allocate gigabytes before reading a tree (found by
        // the lightgbm_text fuzz target: num_tree_per_iteration=292996553 asked for 2.3 GB)
        (
            "per_iteration.txt",
            lgb.replace("num_tree_per_iteration=1", "num_tree_per_iteration=292996553").into_bytes(),
            "more than num_class",
        ),
        ("classes.txt", lgb.replace("num_class=1", "num_class=292996553").into_bytes(), "at most 65536"),
        (
            "classes.json",
            json.replace("\"num_class\":\"0\"", "\"num_class\":\"292996553\"").into_bytes(),
            "at most 65536",
        ),
        ("truncated.ubj", ubj[..ubj.len() / 2].to_vec(), "end of data"),
        ("garbage.bin", vec![0xff, 0x00, 0x13], "not a recognised tree model"),
        ("empty.json", Vec::new(), "not a recognised"),
    ];
    for (name, bytes, needle) in cases {
        let p = temp_model(name, &bytes);
        match load_forest(&p, None) {
            Ok(_) if needle.is_empty() => {}
            Ok(_) => panic!("{name}: loaded a broken model"),
            Err(e) => assert!(e.message.contains(needle), "{name}: {e}"),
        }
    }
}

#[test]
fn wrong_feature_count_is_an_error_naming_the_count() {
    let dir = fixtures().join("xgb_binary_logistic");
    let case: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
    let engine = engine_for(&dir, &case, 1);
    let f = case["n_features"].as_u64().unwrap() as usize;
    let t = Tensor::new("input__0", DataType::F32, vec![1, (f - 1) as i64], vec![0u8; (f - 1) * 4]);
    let e = engine.infer(&[t], &mut Phases::start()).unwrap_err();
    assert!(e.message.contains(&format!("{f} features")), "{e}");
}

proptest::proptest! {
    /// Any f32 input (NaN, infinities, huge categories) predicts without panicking,
    /// in both layouts, and threads never change the answer.
    #[test]
    fn any_input_predicts(values in proptest::collection::vec(proptest::num::f32::ANY, 10..200)) {
        for case in ["xgb_categorical_partition", "lgb_categorical", "xgb_binary_logistic", "lgb_linear_tree"] {
            let dir = fixtures().join(case);
            let c: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
            let f = c["n_features"].as_u64().unwrap() as usize;
            let rows = values.len() / f;
            let x = &values[..rows * f];
            let a = run(&engine_for(&dir, &c, 1), x, rows, f);
            let b = run(&engine_for(&dir, &c, 4), x, rows, f);
            proptest::prop_assert_eq!(&a, &b);
        }
    }
}
