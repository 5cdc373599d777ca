//! Every target over its seed corpus and its regressions: what CI runs of the fuzzing (the
//! coverage-guided runs are in `bench/fuzz/run.sh`).

use super::*;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files under `dir`, recursively (large ones skipped: a seed is a starting point, and the
/// fuzzer caps its inputs too).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            files(&path, out);
        } else if e.metadata().is_ok_and(|m| m.len() <= 4 << 20) {
            out.push(path);
        }
    }
}

fn inputs(t: &Target) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for seed in t.seeds {
        files(&root().join(seed), &mut out);
    }
    files(&root().join("fuzz/regressions").join(t.name), &mut out);
    out.sort();
    out
}

#[test]
fn every_target_takes_its_seeds_and_regressions_without_panicking() {
    for t in TARGETS {
        let inputs = inputs(t);
        assert!(!inputs.is_empty(), "target {}: no seed files", t.name);
        for path in &inputs {
            let data = std::fs::read(path).expect("a seed file");
            (t.run)(&data);
            // and the usual mutations of a fuzzer's first rounds: truncated, and bytes flipped
            for cut in [0, 1, data.len() / 2, data.len().saturating_sub(1)] {
                (t.run)(&data[..cut.min(data.len())]);
            }
            let mut flipped = data.clone();
            for i in (0..flipped.len()).step_by(97) {
                flipped[i] ^= 0xff;
            }
            (t.run)(&flipped);
        }
    }
}

#[test]
fn every_target_has_a_libfuzzer_entry() {
    for t in TARGETS {
        let path = root().join("fuzz/fuzz_targets").join(format!("{}.rs", t.name));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing", path.display()));
        assert!(text.contains(&format!("\"{}\"", t.name)), "{} runs another target", path.display());
    }
    assert!(target("rest_json").is_some() && target("nope").is_none());
}
