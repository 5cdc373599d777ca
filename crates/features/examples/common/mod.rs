//! What the bench examples share.

/// Latency percentiles (µs) of `ns` (nanoseconds per call), as JSON, also printed to stderr.
pub fn percentiles(name: &str, mut ns: Vec<u64>) -> serde_json::Value {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    let v = serde_json::json!({
        "calls": ns.len(), "mean_us": mean, "p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99),
        "p999_us": at(0.999), "max_us": ns.last().copied().unwrap_or(0) as f64 / 1000.0,
    });
    eprintln!("{name}: {v}");
    v
}
