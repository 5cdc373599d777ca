//! The aggregator: windows by count and by time (paused clock), hysteresis, overload, the
//! false-alarm rate of the default thresholds on stable data.

use super::config::DriftConfig;
use super::window::{Cell, Level, Window};
use super::{Folding, Monitor};
use crate::profile::{ColumnKind, Data, Profile, TensorColumns};
use flotilla_core::{DataType, Tensor};
use std::time::Duration;

/// Box–Muller normals from a 64-bit LCG: deterministic data without a rand dependency.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Reference: x ~ N(0, 1), y = 0.8 x + noise, output = x + y; inputs in one [batch, 2] FP32 tensor.
fn profile(rows: usize) -> Profile {
    let mut g = Normal(1);
    let x: Vec<f64> = (0..rows).map(|_| g.next()).collect();
    let y: Vec<f64> = x.iter().map(|x| 0.8 * x + 0.6 * g.next()).collect();
    let out: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let inputs = vec![TensorColumns { tensor: "input__0".into(), columns: vec!["x".into(), "y".into()] }];
    let outputs = vec![TensorColumns { tensor: "output".into(), columns: vec!["score".into()] }];
    Profile::build(
        "m",
        "generated",
        "2026-11-24T00:00:00Z",
        (inputs, &[("x".into(), Data::Numeric(x)), ("y".into(), Data::Numeric(y))]),
        (outputs, &[("score".into(), Data::Numeric(out))]),
    )
}

fn f32_tensor(name: &str, shape: Vec<i64>, values: &[f64]) -> Tensor {
    let data: Vec<u8> = values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    Tensor { name: name.into(), datatype: DataType::F32, shape, data: data.into(), parameters: Default::default() }
}

/// A request of `n` rows; `shift` moves x, `flip` turns the x–y correlation around.
fn request(g: &mut Normal, n: usize, shift: f64, flip: bool) -> (Vec<Tensor>, Vec<Tensor>) {
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..n {
        let x = g.next();
        let y = if flip { -0.8 * x } else { 0.8 * x } + 0.6 * g.next();
        inputs.extend([x + shift, y]);
        outputs.push(x + shift + y);
    }
    (vec![f32_tensor("input__0", vec![n as i64, 2], &inputs)], vec![f32_tensor("output", vec![n as i64, 1], &outputs)])
}

fn model_folder(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("m");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join(crate::profile::FILE_NAME), profile(20_000).to_json()).expect("profile");
    std::fs::write(folder.join(super::config::FILE_NAME), config).expect("config");
    dir
}

fn report(monitor: &Monitor) -> serde_json::Value {
    monitor.report("m").expect("monitored")
}

/// Lets the aggregator take and fold what was queued (the paused clock jumps to its next drain).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn windows_close_by_count_and_alerts_need_consecutive_windows() {
    let dir = model_folder("[window]\nrows = 500\nseconds = 0\n[alerts]\nconsecutive = 2\n");
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(dir.path().to_path_buf(), None, &registry, Folding::BlockingPool);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(monitor.clone().run(stop, None));
    let mut g = Normal(99);
    for _ in 0..10 {
        let (i, o) = request(&mut g, 100, 0.0, false);
        monitor.observe_tensors("m", "1", i, o);
    }
    settle().await;
    let r = report(&monitor);
    let v = &r["versions"][0];
    assert_eq!(v["windows"].as_array().expect("windows").len(), 2, "{v}");
    assert!(v["alerts"].as_object().expect("alerts").values().all(|s| s == "ok"), "{v}");
    // One shifted window: seen, but not yet an alert (hysteresis).
    for _ in 0..5 {
        let (i, o) = request(&mut g, 100, 2.0, false);
        monitor.observe_tensors("m", "1", i, o);
    }
    settle().await;
    let r = report(&monitor);
    let last = &r["versions"][0]["windows"][0];
    assert_eq!(last["features"][0]["level"], "significant", "{last}");
    assert_eq!(r["versions"][0]["alerts"]["x"], "ok");
    for _ in 0..5 {
        let (i, o) = request(&mut g, 100, 2.0, false);
        monitor.observe_tensors("m", "1", i, o);
    }
    settle().await;
    let r = report(&monitor);
    assert_eq!(r["versions"][0]["alerts"]["x"], "significant", "{r}");
    assert_eq!(r["versions"][0]["alerts"]["score"], "significant", "prediction drift too");
    assert_eq!(r["versions"][0]["alerts"]["y"], "ok", "y did not move");
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
    assert!(text.contains(r#"flotilla_drift_alert{feature="x",model="m",version="1"} 2"#), "{text}");
    assert!(text.contains(r#"flotilla_drift_score{feature="x",metric="psi",model="m",version="1"}"#));
    stop_tx.send(true).expect("stop");
    task.await.expect("aggregator");
}

#[tokio::test(start_paused = true)]
async fn windows_close_by_time_and_a_correlated_shift_is_caught() {
    let dir = model_folder("[window]\nrows = 1000000\nseconds = 10\n[alerts]\nconsecutive = 1\n");
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(dir.path().to_path_buf(), None, &registry, Folding::BlockingPool);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(monitor.clone().run(stop, None));
    let mut g = Normal(5);
    let (i, o) = request(&mut g, 2000, 0.0, true);
    monitor.observe_tensors("m", "1", i, o);
    settle().await;
    assert_eq!(report(&monitor)["versions"][0]["windows"].as_array().expect("w").len(), 0);
    tokio::time::advance(Duration::from_secs(11)).await;
    settle().await;
    let r = report(&monitor);
    let w = &r["versions"][0]["windows"][0];
    assert_eq!(w["rows"], 2000);
    assert_eq!(w["multivariate"]["level"], "significant", "{w}");
    assert_eq!(r["versions"][0]["alerts"]["multivariate"], "significant");
    // the marginals barely moved
    for f in 0..2 {
        assert!(w["features"][f]["scores"]["ks"].as_f64().expect("ks") < 0.1, "{w}");
    }
}

#[test]
fn requests_unlike_the_profile_are_skipped_and_counted_not_panicking() {
    let dir = model_folder("");
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(dir.path().to_path_buf(), None, &registry, Folding::BlockingPool);
    let state = monitor.model("m").expect("profile");
    let bad = [
        vec![f32_tensor("input__0", vec![2, 3], &[0.0; 6])],
        vec![f32_tensor("other", vec![1, 2], &[0.0; 2])],
        vec![Tensor {
            name: "input__0".into(),
            datatype: DataType::F32,
            shape: vec![1, 2],
            data: vec![0u8; 5].into(),
            parameters: Default::default(),
        }],
        vec![Tensor {
            name: "input__0".into(),
            datatype: DataType::Bytes,
            shape: vec![1, 2],
            data: vec![9u8, 0, 0].into(),
            parameters: Default::default(),
        }],
    ];
    for inputs in bad {
        let o = super::Observation {
            model: state.clone(),
            version: "1".into(),
            inputs,
            outputs: vec![f32_tensor("output", vec![1, 1], &[0.0])],
        };
        monitor.fold(&o, tokio::time::Instant::now());
    }
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
    assert!(text.contains(r#"flotilla_drift_skipped_requests_total{model="m",reason="shape"} 4"#), "{text}");
}

#[test]
fn overload_skips_and_counts_instead_of_waiting() {
    let dir = model_folder("");
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(dir.path().to_path_buf(), None, &registry, Folding::BlockingPool);
    let mut g = Normal(3);
    // no aggregator running: the queue fills, then requests are skipped
    for _ in 0..super::CHANNEL_CAPACITY + 10 {
        let (i, o) = request(&mut g, 1, 0.0, false);
        monitor.observe_tensors("m", "1", i, o);
    }
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
    assert!(text.contains(r#"flotilla_drift_skipped_requests_total{model="m",reason="overload"} 10"#), "{text}");
}

#[test]
fn a_thousand_stable_windows_of_500_rows_raise_no_alert() {
    let p = profile(20_000);
    let config = DriftConfig::default();
    let mut g = Normal(2024);
    let pca_columns = vec![Some(0), Some(1)];
    let (mut noisy_windows, mut streak, mut alerts) = (0, 0, 0);
    let mut scratch = Vec::new();
    for index in 0..1000 {
        let mut w = Window::new(&p, index, 0);
        // 500-row windows: noisier than the default 1,000, so a harder test of the thresholds
        for _ in 0..500 {
            let x = g.next();
            let y = 0.8 * x + 0.6 * g.next();
            w.add_row(&p, &pca_columns, &[Cell::Number(x), Cell::Number(y)], &[Cell::Number(x + y)], &mut scratch);
        }
        let r = w.report(&p, &config, 0);
        let worst = r.features.iter().chain(&r.outputs).map(|c| c.level).chain(r.multivariate.map(|m| m.level)).max();
        if worst > Some(Level::Ok) {
            noisy_windows += 1;
            streak += 1;
            if streak == config.consecutive {
                alerts += 1;
            }
        } else {
            streak = 0;
        }
    }
    eprintln!("stable data: {noisy_windows} of 1000 windows over a moderate threshold, {alerts} alerts");
    assert_eq!(alerts, 0, "{noisy_windows} noisy windows");
    assert!(noisy_windows <= 10, "false-alarm rate per window {noisy_windows}/1000");
}

/// The fleet view: two workers' windows merged score like one window of all their rows.
#[test]
fn merged_windows_of_two_workers_score_like_one_window_of_both() {
    let p = profile(20_000);
    let config = DriftConfig::default();
    let pca_columns = vec![Some(0), Some(1)];
    let mut g = Normal(99);
    let (mut a, mut b, mut all) = (Window::new(&p, 0, 10), Window::new(&p, 0, 5), Window::new(&p, 0, 5));
    let mut scratch = Vec::new();
    for i in 0..3000 {
        // worker b sees shifted rows: the merged window is a mixture, not either one
        let shift = if i % 3 == 0 { 0.7 } else { 0.0 };
        let x = g.next() + shift;
        let y = if i % 7 == 0 { f64::NAN } else { 0.8 * x + 0.6 * g.next() };
        let row = [Cell::Number(x), Cell::Number(y)];
        let out = [Cell::Number(x + y)];
        let w = if shift > 0.0 { &mut b } else { &mut a };
        w.add_row(&p, &pca_columns, &row, &out, &mut scratch);
        all.add_row(&p, &pca_columns, &row, &out, &mut scratch);
    }
    a.merge(&b).expect("same profile");
    assert_eq!((a.rows, a.opened_ms), (3000, 5));
    let (merged, whole) = (a.report(&p, &config, 0), all.report(&p, &config, 0));
    for (m, w) in merged.features.iter().chain(&merged.outputs).zip(whole.features.iter().chain(&whole.outputs)) {
        let (ms, ws) = (&m.scores, &w.scores);
        let near = |what: &str, x: Option<f64>, y: Option<f64>, tol: f64| {
            let (x, y) = (x.expect(what), y.expect(what));
            assert!((x - y).abs() <= tol, "{} {what}: merged {x} vs one window {y}", m.name);
        };
        // counted exactly: bins, missing, range
        near("psi", ms.psi, ws.psi, 1e-12);
        near("jensen_shannon", ms.jensen_shannon, ws.jensen_shannon, 1e-12);
        near("missing", Some(ms.missing_rate_change), Some(ws.missing_rate_change), 1e-12);
        near("out_of_range", ms.out_of_range_rate, ws.out_of_range_rate, 1e-12);
        // sketched: within the sketch's error
        near("ks", ms.ks, ws.ks, 0.01);
        near("wasserstein", ms.wasserstein, ws.wasserstein, 0.02);
        assert_eq!(m.window.count, w.window.count);
        assert!((m.window.mean.unwrap_or(0.0) - w.window.mean.unwrap_or(0.0)).abs() < 1e-9);
    }
    let (mm, wm) = (merged.multivariate.expect("pca"), whole.multivariate.expect("pca"));
    assert!((mm.pca_error_ratio - wm.pca_error_ratio).abs() < 1e-9);
    let other = Window::new(&profile_with_three_columns(), 0, 0);
    assert!(a.merge(&other).unwrap_err().contains("different profiles"));
}

fn profile_with_three_columns() -> Profile {
    let inputs = vec![TensorColumns { tensor: "t".into(), columns: vec!["a".into(), "b".into(), "c".into()] }];
    let col = |n: &str| (n.to_string(), Data::Numeric(vec![1.0, 2.0, 3.0]));
    Profile::build("m", "generated", "now", (inputs, &[col("a"), col("b"), col("c")]), (vec![], &[]))
}

#[test]
fn sampling_keeps_the_worker_within_its_cpu_budget_without_flapping() {
    use super::keep_one_in;
    // 10% busy observing everything, budget 2%: observe about one in 6.25 → 7
    assert_eq!(keep_one_in(1, 0.10, 0.02), 7);
    // then 1.4% busy at one in 7: inside [budget/2, budget], unchanged
    assert_eq!(keep_one_in(7, 0.014, 0.02), 7);
    // traffic fell: 0.2% busy at one in 7 → about one in 0.9 → everything
    assert_eq!(keep_one_in(7, 0.002, 0.02), 1);
    // still over budget at one in 7 (3%): sparser
    assert_eq!(keep_one_in(7, 0.03, 0.02), 14);
    // idle, and bounded at both ends
    assert_eq!(keep_one_in(1, 0.0, 0.02), 1);
    assert_eq!(keep_one_in(4000, 1.0, 0.0001), super::MAX_KEEP_ONE_IN);
}

/// Under a tiny budget the monitor samples: most requests are left out and counted, the rest
/// still fill windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exceeded_cpu_budget_samples_requests_and_counts_them() {
    let dir = model_folder("[window]\nrows = 500\nseconds = 0\n");
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(dir.path().to_path_buf(), None, &registry, Folding::IdleThread);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(monitor.clone().run(stop, Some(1e-6)));
    let mut g = Normal(5);
    let started = std::time::Instant::now();
    let (mut observed, mut sent) = (0u64, 0u64);
    // until the first budget period has passed and sampling has set in (at most 10 s)
    while started.elapsed() < Duration::from_secs(10) {
        let (i, o) = request(&mut g, 8, 0.0, false);
        sent += 1;
        if monitor.admits("m") {
            observed += 1;
            monitor.observe_tensors("m", "1", i, o);
        }
        if sent % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if report(&monitor)["settings"]["keep_one_in"].as_u64() > Some(1) {
                break;
            }
        }
    }
    // sampling on: a thousand more requests, most of them left out
    for _ in 0..1000 {
        let (i, o) = request(&mut g, 8, 0.0, false);
        sent += 1;
        if monitor.admits("m") {
            observed += 1;
            monitor.observe_tensors("m", "1", i, o);
        }
    }
    let keep = report(&monitor)["settings"]["keep_one_in"].as_u64().expect("keep_one_in");
    assert!(keep > 1, "sampling set in: one in {keep} after {sent} requests");
    assert!(observed < sent);
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
    let left_out =
        format!(r#"flotilla_drift_skipped_requests_total{{model="m",reason="sampled"}} {}"#, sent - observed);
    assert!(text.contains(&left_out), "{left_out} in\n{text}");
    stop_tx.send(true).expect("stop");
    task.await.expect("aggregator");
}

#[test]
fn drift_toml_errors_are_clear() {
    assert!(DriftConfig::parse("[window]\nrows = 0").unwrap_err().contains("window.rows must be > 0"));
    assert!(DriftConfig::parse("[thresholds.psy]\nmoderate = 1\nsignificant = 2")
        .unwrap_err()
        .contains("unknown metric 'psy'"));
    assert!(DriftConfig::parse("[thresholds.psi]\nmoderate = 3\nsignificant = 2")
        .unwrap_err()
        .contains("moderate must be <="));
    assert!(DriftConfig::parse("[windw]\n").unwrap_err().contains("unknown field"));
    let c = DriftConfig::parse("[window]\nrows = 10\nseconds = 0\n[thresholds.ks]\nmoderate = 0.3\nsignificant = 0.5")
        .expect("ok");
    assert_eq!((c.window_rows, c.window_time), (10, None));
    assert_eq!(c.thresholds["ks"].moderate, 0.3);
}

#[tokio::test(start_paused = true)]
async fn windows_and_alert_states_survive_a_restart() {
    let dir = model_folder("[window]\nrows = 500\nseconds = 0\n[alerts]\nconsecutive = 1\n");
    let state = tempfile::tempdir().expect("state dir");
    let mut g = Normal(11);
    {
        let monitor = Monitor::new(
            dir.path().to_path_buf(),
            Some(state.path().to_path_buf()),
            &prometheus::Registry::new(),
            Folding::BlockingPool,
        );
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(monitor.clone().run(stop, None));
        for _ in 0..7 {
            let (i, o) = request(&mut g, 100, 3.0, false);
            monitor.observe_tensors("m", "1", i, o);
        }
        settle().await;
        stop_tx.send(true).expect("stop");
        task.await.expect("aggregator");
    }
    assert!(state.path().join("m.json").exists());
    let registry = prometheus::Registry::new();
    let monitor =
        Monitor::new(dir.path().to_path_buf(), Some(state.path().to_path_buf()), &registry, Folding::BlockingPool);
    let r = report(&monitor);
    let v = &r["versions"][0];
    assert_eq!(v["windows"].as_array().expect("windows").len(), 1, "{v}");
    assert_eq!(v["current_window"]["rows"], 200, "the open window goes on");
    assert_eq!(v["current_window"]["index"], 1);
    assert_eq!(v["alerts"]["x"], "significant");
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
    assert!(text.contains(r#"flotilla_drift_alert{feature="x",model="m",version="1"} 2"#), "{text}");
    // a snapshot made against another profile is not taken up
    let other = state.path().join("m.json");
    let text = std::fs::read_to_string(&other).expect("snapshot");
    std::fs::write(&other, text.replace("2026-11-24T00:00:00Z", "2020-01-01T00:00:00Z")).expect("write");
    let fresh = Monitor::new(
        dir.path().to_path_buf(),
        Some(state.path().to_path_buf()),
        &prometheus::Registry::new(),
        Folding::BlockingPool,
    );
    assert_eq!(report(&fresh)["versions"].as_array().expect("versions").len(), 0);
}

/// A window's report carries its histogram on the reference's bins: numeric counts per decile
/// bin (shifted data piles into the top one), categorical counts per category shown, the
/// categories beyond the most frequent ones counted together.
#[test]
fn window_reports_carry_histograms_on_the_reference_bins() {
    let p = profile(20_000);
    let config = DriftConfig::default();
    let mut g = Normal(7);
    let mut w = Window::new(&p, 0, 0);
    let mut scratch = Vec::new();
    for _ in 0..1000 {
        let x = g.next() + 3.0;
        w.add_row(&p, &[Some(0), Some(1)], &[Cell::Number(x), Cell::Number(0.0)], &[Cell::Number(x)], &mut scratch);
    }
    let r = w.report(&p, &config, 0);
    let x = &r.features[0].window;
    let ColumnKind::Numeric(reference) = &p.features[0].kind else { panic!("x is numeric") };
    assert_eq!(x.bins.len(), reference.bin_edges.len() + 1);
    assert_eq!(x.bins.iter().sum::<u64>(), 1000);
    assert!(x.bins[x.bins.len() - 1] > 800, "{:?}", x.bins);
    let json = serde_json::to_value(&r).unwrap_or_default();
    assert_eq!(json["features"][0]["window"]["bins"].as_array().map(Vec::len), Some(x.bins.len()));

    // categorical: 30 categories in the reference, 25 + 2 new ones in the window
    let names: Vec<Option<String>> = (0..3000).map(|i| Some(format!("c{:02}", i % 30))).collect();
    let p = Profile::build(
        "m",
        "generated",
        "2026-11-24T00:00:00Z",
        (
            vec![TensorColumns { tensor: "t".into(), columns: vec!["c".into()] }],
            &[("c".into(), Data::Categorical(names))],
        ),
        (vec![], &[]),
    );
    let mut w = Window::new(&p, 0, 0);
    for i in 0..270 {
        let name = if i < 250 { format!("c{:02}", i % 25) } else { format!("new{}", i % 2) };
        w.add_row(&p, &[], &[Cell::Text(Some(&name))], &[], &mut scratch);
    }
    let c = &w.report(&p, &config, 0).features[0].window;
    assert_eq!(c.count, 270);
    assert_eq!(c.categories.values().sum::<u64>() + c.other_categories, 270);
    assert!(c.categories.len() <= 2 * super::window::SHOWN_CATEGORIES);
    // the reference's 20 most frequent (c00..c19, ties by name) are all shown
    assert!((0..20).all(|i| c.categories.contains_key(&format!("c{i:02}"))), "{:?}", c.categories);
    assert_eq!(c.categories.get("c00"), Some(&10));
}
