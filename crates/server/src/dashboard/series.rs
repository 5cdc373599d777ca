//! The dashboard's sampler: every [`EVERY`] it reads the in-process Prometheus registry
//! (`Registry::gather`, the protobuf `MetricFamily` structs — no text parsing) and turns the
//! counters, gauges and histograms into derived series (rates from counter deltas, p50/p95/p99
//! from histogram bucket deltas) kept in a ring of [`KEEP`] samples (10 minutes).
//!
//! Layout: [`Spec`] says how one chart is derived; [`SERVING`] and [`FEATURES`] are the pages'
//! charts; [`Sampler`] holds the ring and answers `/dashboard/api/series` ([`Sampler::page`]).

use prometheus::proto::{MetricFamily, MetricType};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the registry is sampled.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 10 minutes at [`EVERY`].
pub const KEEP: usize = 300;

/// How a chart's series come out of one metric family.
#[derive(Clone, Copy)]
pub enum Derive {
    /// Per-second rate of a counter.
    Rate,
    /// A gauge's value.
    Gauge,
    /// p50, p95 and p99 of a histogram's observations since the last sample.
    Quantiles,
    /// Mean of a histogram's observations since the last sample.
    Mean,
    /// Seconds from a gauge holding an epoch time to the sample (a view's freshness).
    Age,
    /// A histogram's observations per bucket over the ring's span (10 minutes, or since the
    /// process started when it is younger): a distribution, not a series over time.
    Distribution,
}

/// One chart: the metric family, how to derive it, which labels name a series (the others are
/// summed), and which label values to leave out (`label`, `values`).
pub struct Spec {
    pub chart: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub family: &'static str,
    pub derive: Derive,
    pub by: &'static [&'static str],
    pub exclude: Option<(&'static str, &'static [&'static str])>,
}

const MV: &[&str] = &["model", "version"];

/// The Serving page.
pub const SERVING: &[Spec] = &[
    Spec {
        chart: "request_rate",
        title: "Requests per second",
        unit: "req/s",
        family: "flotilla_inference_requests_total",
        derive: Derive::Rate,
        by: MV,
        exclude: None,
    },
    Spec {
        chart: "failure_rate",
        title: "Failed inferences per second",
        unit: "req/s",
        family: "flotilla_inference_requests_total",
        derive: Derive::Rate,
        by: MV,
        exclude: Some(("outcome", &["success"])),
    },
    Spec {
        chart: "errors_by_status",
        title: "Error responses per second, by protocol and status",
        unit: "resp/s",
        family: "flotilla_responses_total",
        derive: Derive::Rate,
        by: &["protocol", "code"],
        exclude: Some(("code", &["200", "201", "204", "OK"])),
    },
    Spec {
        chart: "latency",
        title: "Request latency (p50, p95, p99)",
        unit: "s",
        family: "flotilla_inference_request_duration_seconds",
        derive: Derive::Quantiles,
        by: MV,
        exclude: None,
    },
    Spec {
        chart: "queue_depth",
        title: "Queue depth",
        unit: "requests",
        family: "flotilla_inference_queue_depth",
        derive: Derive::Gauge,
        by: MV,
        exclude: None,
    },
    Spec {
        chart: "batch_size",
        title: "Mean batch size (rows per engine execution)",
        unit: "rows",
        family: "flotilla_inference_batch_size",
        derive: Derive::Mean,
        by: MV,
        exclude: None,
    },
    Spec {
        chart: "batch_size_distribution",
        title: "Batch-size distribution (engine executions per batch size, last 10 minutes)",
        unit: "executions",
        family: "flotilla_inference_batch_size",
        derive: Derive::Distribution,
        by: MV,
        exclude: None,
    },
    Spec {
        chart: "rejected",
        title: "Rejected (429) per second",
        unit: "req/s",
        family: "flotilla_inference_rejected_total",
        derive: Derive::Rate,
        by: MV,
        exclude: None,
    },
    Spec {
        chart: "timeouts",
        title: "Queue timeouts (504) per second",
        unit: "req/s",
        family: "flotilla_inference_timeouts_total",
        derive: Derive::Rate,
        by: MV,
        exclude: None,
    },
];

const SRC: &[&str] = &["source"];

/// The Feature store page.
pub const FEATURES: &[Spec] = &[
    Spec {
        chart: "messages",
        title: "Stream messages per second, by source and outcome",
        unit: "msg/s",
        family: "flotilla_feature_stream_messages_total",
        derive: Derive::Rate,
        by: &["source", "outcome"],
        exclude: None,
    },
    Spec {
        chart: "lag_messages",
        title: "Stream lag (messages)",
        unit: "messages",
        family: "flotilla_feature_stream_lag_messages",
        derive: Derive::Gauge,
        by: SRC,
        exclude: None,
    },
    Spec {
        chart: "lag_seconds",
        title: "Stream lag (seconds)",
        unit: "s",
        family: "flotilla_feature_stream_lag_seconds",
        derive: Derive::Gauge,
        by: SRC,
        exclude: None,
    },
    Spec {
        chart: "dead_letters",
        title: "Dead letters per second",
        unit: "msg/s",
        family: "flotilla_feature_stream_messages_total",
        derive: Derive::Rate,
        by: SRC,
        exclude: Some(("outcome", &["ok", "skipped"])),
    },
    Spec {
        chart: "cdc_lag_seconds",
        title: "CDC lag (seconds)",
        unit: "s",
        family: "flotilla_feature_cdc_lag_seconds",
        derive: Derive::Gauge,
        by: SRC,
        exclude: None,
    },
    Spec {
        chart: "cdc_slot_retained",
        title: "Replication slot retention (bytes)",
        unit: "bytes",
        family: "flotilla_feature_cdc_slot_retained_bytes",
        derive: Derive::Gauge,
        by: &["source", "slot"],
        exclude: None,
    },
    Spec {
        chart: "read_latency",
        title: "Online read latency (p50, p95, p99)",
        unit: "s",
        family: "flotilla_feature_read_duration_seconds",
        derive: Derive::Quantiles,
        by: &["store"],
        exclude: None,
    },
    Spec {
        chart: "freshness",
        title: "View freshness (age of the newest event)",
        unit: "s",
        family: "flotilla_feature_view_newest_event_timestamp_seconds",
        derive: Derive::Age,
        by: &["view"],
        exclude: None,
    },
    Spec {
        chart: "rows_written",
        title: "Rows written per second, by view (freshness of the online store)",
        unit: "rows/s",
        family: "flotilla_feature_rows_written_total",
        derive: Derive::Rate,
        by: &["view"],
        exclude: None,
    },
];

/// One family's value per series name: a number (counter, gauge) or cumulative histogram
/// buckets (upper bounds with counts, then the sum and the count).
#[derive(Clone, Default)]
struct Reading {
    value: f64,
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// A chart's readings at one sample: series name → reading.
type Readings = BTreeMap<String, Reading>;

fn read(families: &[MetricFamily], spec: &Spec) -> Readings {
    let mut out = Readings::new();
    let Some(family) = families.iter().find(|f| f.name() == spec.family) else { return out };
    for m in family.get_metric() {
        let labels: HashMap<&str, &str> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
        if let Some((label, values)) = spec.exclude {
            if values.contains(&labels.get(label).copied().unwrap_or_default()) {
                continue;
            }
        }
        let name = spec.by.iter().map(|b| labels.get(b).copied().unwrap_or_default()).collect::<Vec<_>>().join(":");
        let r = out.entry(name).or_default();
        match family.get_field_type() {
            MetricType::COUNTER => r.value += m.get_counter().get_value(),
            MetricType::GAUGE => r.value += m.get_gauge().get_value(),
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                for (i, b) in h.get_bucket().iter().enumerate() {
                    match r.buckets.get_mut(i) {
                        Some(slot) => slot.1 += b.cumulative_count() as f64,
                        None => r.buckets.push((b.upper_bound(), b.cumulative_count() as f64)),
                    }
                }
                r.sum += h.get_sample_sum();
                r.count += h.get_sample_count() as f64;
            }
            _ => {}
        }
    }
    out
}

/// The `q` quantile of the observations between two cumulative bucket lists (linear within a
/// bucket, as Prometheus' `histogram_quantile`); None without observations.
pub fn quantile(q: f64, now: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> =
        now.iter().enumerate().map(|(i, (le, c))| (*le, c - before.get(i).map(|b| b.1).unwrap_or(0.0))).collect();
    let total = delta.iter().map(|d| d.1).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, c) in delta {
        if c >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = if c > lower.1 { (rank - lower.1) / (c - lower.1) } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, c);
    }
    Some(lower.0)
}

/// A chart's series over the ring, each aligned with the sample times (null: no value).
#[derive(Default)]
struct Chart {
    series: BTreeMap<String, VecDeque<Option<f64>>>,
}

struct Ring {
    times: VecDeque<f64>,
    /// Distribution charts: their readings at each sample in the ring, oldest first.
    readings: HashMap<(&'static str, &'static str), VecDeque<Readings>>,
    /// The previous sample's readings per (page, chart), for deltas.
    last: HashMap<(&'static str, &'static str), (f64, Readings)>,
    charts: HashMap<(&'static str, &'static str), Chart>,
}

/// The ring of derived series for the dashboard's pages.
pub struct Sampler {
    registry: prometheus::Registry,
    ring: Mutex<Ring>,
}

/// The pages the sampler keeps, with their charts.
pub const PAGES: &[(&str, &[Spec])] = &[("serving", SERVING), ("features", FEATURES)];

impl Sampler {
    pub fn new(registry: prometheus::Registry) -> Sampler {
        Sampler {
            registry,
            ring: Mutex::new(Ring {
                times: VecDeque::new(),
                readings: HashMap::new(),
                last: HashMap::new(),
                charts: HashMap::new(),
            }),
        }
    }

    /// The registry sampled.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Takes one sample now.
    pub fn sample(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let families = self.registry.gather();
        let mut guard = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let ring = &mut *guard;
        let n = ring.times.len();
        for (page, specs) in PAGES {
            for spec in specs.iter() {
                let key = (*page, spec.chart);
                let readings = read(&families, spec);
                if let Derive::Distribution = spec.derive {
                    let kept = ring.readings.entry(key).or_default();
                    kept.push_back(readings);
                    if kept.len() > KEEP {
                        kept.pop_front();
                    }
                    continue;
                }
                let previous = ring.last.get(&key);
                let values = derive(spec, now, &readings, previous.map(|(t, r)| (now - t, r)));
                let chart = ring.charts.entry(key).or_default();
                for (name, value) in values {
                    chart.series.entry(name).or_insert_with(|| std::iter::repeat_n(None, n).collect()).push_back(value);
                }
                for s in chart.series.values_mut() {
                    if s.len() < n + 1 {
                        s.push_back(None);
                    }
                    if s.len() > KEEP {
                        s.pop_front();
                    }
                }
                chart.series.retain(|_, s| s.iter().any(Option::is_some));
                ring.last.insert(key, (now, readings));
            }
        }
        ring.times.push_back(now);
        if ring.times.len() > KEEP {
            ring.times.pop_front();
        }
    }

    /// Samples every [`EVERY`] until `stop` turns true.
    pub async fn run(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// A page's charts as JSON: `{"t": [epoch seconds], "charts": [{"id", "title", "unit",
    /// "series": {"name": [values or null]}}]}`; None for an unknown page.
    pub fn page(&self, page: &str) -> Option<Value> {
        let (page, specs) = *PAGES.iter().find(|(p, _)| *p == page)?;
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let charts: Vec<Value> = specs
            .iter()
            .map(|s| {
                if let Derive::Distribution = s.derive {
                    let kept = ring.readings.get(&(page, s.chart));
                    let (bins, series) = distribution(kept.map(|k| (k.front(), k.back(), k.len() >= KEEP)));
                    return json!({"id": s.chart, "title": s.title, "unit": s.unit, "kind": "distribution",
                                  "bins": bins, "series": series});
                }
                let series = ring.charts.get(&(page, s.chart)).map(|c| &c.series);
                json!({"id": s.chart, "title": s.title, "unit": s.unit, "series": series.cloned().unwrap_or_default()})
            })
            .collect();
        Some(json!({"page": page, "every_seconds": EVERY.as_secs_f64(), "t": ring.times, "charts": charts}))
    }
}

/// Bucket labels and each series' observations per bucket between the oldest and newest
/// readings kept (from zero while the ring is not yet full: everything since the start). Buckets
/// after the last one anybody reached are left out. Integer bounds read as integer ranges
/// (`3–4`), the others as `(a, b]`.
fn distribution(
    kept: Option<(Option<&Readings>, Option<&Readings>, bool)>,
) -> (Vec<String>, BTreeMap<String, Vec<f64>>) {
    let Some((Some(oldest), Some(newest), full)) = kept else { return (Vec::new(), BTreeMap::new()) };
    let mut series = BTreeMap::new();
    let mut bounds: Vec<f64> = Vec::new();
    for (name, r) in newest {
        let before = oldest.get(name).filter(|_| full);
        let mut previous = 0.0;
        let mut counts = Vec::with_capacity(r.buckets.len());
        for (i, (le, cumulative)) in r.buckets.iter().enumerate() {
            let then = before.and_then(|b| b.buckets.get(i)).map(|b| b.1).unwrap_or(0.0);
            let c = (cumulative - then).max(0.0);
            counts.push((c - previous).max(0.0));
            previous = c;
            if bounds.len() <= i {
                bounds.push(*le);
            }
        }
        if counts.iter().any(|c| *c > 0.0) {
            series.insert(name.clone(), counts);
        }
    }
    let used = series.values().filter_map(|c| c.iter().rposition(|x| *x > 0.0)).max().map_or(0, |i| i + 1);
    for counts in series.values_mut() {
        counts.truncate(used);
    }
    let label = |i: usize| {
        let le = bounds[i];
        let lo = if i == 0 { None } else { Some(bounds[i - 1]) };
        let int = |x: f64| x.fract() == 0.0 && x.abs() < 1e15;
        match lo {
            _ if le.is_infinite() => format!("> {}", lo.unwrap_or(0.0)),
            None => format!("≤ {le}"),
            Some(lo) if int(lo) && int(le) && le == lo + 1.0 => format!("{le}"),
            Some(lo) if int(lo) && int(le) => format!("{}–{le}", lo + 1.0),
            Some(lo) => format!("({lo}, {le}]"),
        }
    };
    ((0..used).map(label).collect(), series)
}

/// A chart's values at this sample (taken at epoch seconds `at`), per series; `previous` is the
/// time since the last sample and its readings (rates and histogram deltas need one).
fn derive(spec: &Spec, at: f64, now: &Readings, previous: Option<(f64, &Readings)>) -> Vec<(String, Option<f64>)> {
    let mut out = Vec::new();
    for (name, r) in now {
        let before = previous.and_then(|(dt, p)| p.get(name).map(|b| (dt, b)));
        match spec.derive {
            Derive::Gauge => out.push((name.clone(), Some(r.value))),
            Derive::Age => out.push((name.clone(), (r.value > 0.0).then(|| (at - r.value).max(0.0)))),
            Derive::Rate => {
                let rate = match before {
                    Some((dt, b)) if dt > 0.0 => Some(((r.value - b.value).max(0.0)) / dt),
                    // A series that appeared since the last sample counted from zero.
                    None if previous.is_some_and(|(dt, _)| dt > 0.0) => previous.map(|(dt, _)| r.value / dt),
                    _ => None,
                };
                out.push((name.clone(), rate));
            }
            Derive::Mean => {
                let (sum, count) = match before {
                    Some((_, b)) => (r.sum - b.sum, r.count - b.count),
                    None => (r.sum, r.count),
                };
                out.push((name.clone(), (count > 0.0).then(|| sum / count)));
            }
            Derive::Distribution => {}
            Derive::Quantiles => {
                let empty = Vec::new();
                let b = before.map(|(_, b)| &b.buckets).unwrap_or(&empty);
                for (label, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
                    out.push((format!("{name} {label}"), quantile(q, &r.buckets, b)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_deltas() {
        // 10 observations before; 100 more since, all in (0.1, 0.2].
        let before = [(0.1, 10.0), (0.2, 10.0), (f64::INFINITY, 10.0)];
        let now = [(0.1, 10.0), (0.2, 110.0), (f64::INFINITY, 110.0)];
        let p50 = quantile(0.5, &now, &before).unwrap_or_default();
        assert!((p50 - 0.15).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(0.5, &before, &before), None);
    }

    #[test]
    fn the_ring_keeps_rates_and_quantiles_per_model_version() {
        let metrics = flotilla_core::metrics::Metrics::new();
        let sampler = Sampler::new(metrics.registry.clone());
        sampler.sample();
        metrics.inference_requests.with_label_values(&["m", "1", "success"]).inc_by(10);
        metrics.inference_requests.with_label_values(&["m", "1", "failure"]).inc_by(2);
        for _ in 0..20 {
            metrics.request_duration.with_label_values(&["m", "1"]).observe(0.003);
        }
        metrics.queue_depth.with_label_values(&["m", "1"]).set(4);
        sampler.sample();
        let page = sampler.page("serving").unwrap_or_default();
        let chart = |id: &str| page["charts"].as_array().into_iter().flatten().find(|c| c["id"] == id).cloned();
        let last =
            |id: &str, s: &str| chart(id).and_then(|c| c["series"][s].as_array().and_then(|a| a.last().cloned()));
        assert!(last("request_rate", "m:1").and_then(|v| v.as_f64()).is_some_and(|v| v > 0.0));
        assert!(last("failure_rate", "m:1").and_then(|v| v.as_f64()).is_some_and(|v| v > 0.0));
        assert_eq!(last("queue_depth", "m:1").and_then(|v| v.as_f64()), Some(4.0));
        let p99 = last("latency", "m:1 p99").and_then(|v| v.as_f64()).unwrap_or_default();
        assert!(p99 > 0.0 && p99 <= 0.01, "{p99}");
        assert_eq!(page["t"].as_array().map(Vec::len), Some(2));
        // batch sizes 1, 3, 3 and 100: one execution of 1, two in 3–4, one in 65–128
        for rows in [1.0, 3.0, 3.0, 100.0] {
            metrics.batch_size.with_label_values(&["m", "1"]).observe(rows);
        }
        sampler.sample();
        let page = sampler.page("serving").unwrap_or_default();
        let d = page["charts"].as_array().into_iter().flatten().find(|c| c["kind"] == "distribution").cloned();
        let d = d.unwrap_or_default();
        assert_eq!(d["bins"], json!(["≤ 1", "2", "3–4", "5–8", "9–16", "17–32", "33–64", "65–128"]));
        assert_eq!(d["series"]["m:1"], json!([1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0]));
        assert!(sampler.page("nope").is_none());
    }
}
