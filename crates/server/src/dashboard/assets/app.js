// Flotilla dashboard: draws the page the path names (/dashboard/<page>) from the server's JSON
// endpoints (/dashboard/api/...), refreshing every few seconds. Plots are uPlot instances, kept
// on window.__plots by id (the browser tests read their data there).
//
// Layout: token + api() (fetch with the bearer token), chart helpers (plot, updatePlot),
// then one render function per page (serving/features share renderSeries), then start().
"use strict";

// === auth: ?token=t is kept in sessionStorage and sent as a bearer token ===
(function keepToken() {
  const t = new URLSearchParams(location.search).get("token");
  if (t) sessionStorage.setItem("flotilla.token", t);
})();

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem("flotilla.token");
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

const PAGES = { serving: "Serving", drift: "Drift", features: "Feature store", fleet: "Fleet" };
const REFRESH_MS = { serving: 2000, features: 2000, drift: 5000, fleet: 3000 };
// Colour-blind-friendly, dark enough on white (Okabe–Ito, darkened).
const COLORS = ["#0b57d0", "#c0392b", "#1e7b34", "#8e44ad", "#b35900", "#00838f", "#6d4c41", "#37474f"];
window.__plots = {};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function fmt(v, unit) {
  if (v == null || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (unit === "s") return a >= 1 ? v.toFixed(2) + " s" : (v * 1000).toPrecision(3) + " ms";
  if (unit === "%") return v.toFixed(1) + " %";
  if (unit === "bytes") return a >= 1 << 20 ? (v / (1 << 20)).toFixed(1) + " MiB" : a >= 1024 ? (v / 1024).toFixed(1) + " KiB" : v.toFixed(0) + " B";
  const s = a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : v.toPrecision(2);
  return unit ? s + " " + unit : s;
}

function status(text) {
  document.getElementById("status").textContent = text;
}

// === charts ===

function chartWidth(fig) {
  return Math.max(320, (fig.clientWidth || 560) - 20);
}

// Units whose tick labels carry them (they change scale: ms/s, B/KiB/MiB); the others are in the caption.
const SCALING_UNITS = new Set(["s", "bytes", "%"]);

// A figure holding one uPlot plot: `id` keys window.__plots; `names` the series; `data` is
// uPlot's [x, ...ys]; `opts.time` false for a non-time x axis (window index).
function plot(container, id, title, unit, names, data, opts) {
  opts = opts || {};
  if (opts.time !== false && !opts.xLabels && data[0].length === 1) {
    // one time alone: uPlot would span years around it; show the minute before it
    data = data.map((xs, i) => [i === 0 ? xs[0] - 60 : null, xs[0]]);
  }
  let fig = container.querySelector(`figure[data-id="${id}"]`);
  const key = names.concat(opts.xLabels || [], opts.yLabels || []).join("\u0000");
  if (fig && fig.dataset.key === key && window.__plots[id]) {
    window.__plots[id].setData(data);
    fig.querySelector(".latest").textContent = opts.xLabels || opts.yLabels ? "" : latestText(names, data, unit);
    return window.__plots[id];
  }
  if (window.__plots[id]) window.__plots[id].destroy();
  if (!fig) {
    fig = el("figure", { class: "chart", "data-id": id, role: "group", "aria-label": title });
    container.append(fig);
  }
  if (!fig.querySelector(".plot")) {
    // new, or a "No data yet." placeholder filled in place (the charts keep their order)
    fig.replaceChildren(el("figcaption", { text: title + (unit ? " (" + unit + ")" : "") }),
      el("div", { class: "plot", "aria-hidden": "true" }),
      el("p", { class: "latest", "aria-live": "off" }));
  }
  fig.dataset.key = key;
  const target = fig.querySelector(".plot");
  target.replaceChildren();
  const series = [{}].concat(names.map((n, i) => Object.assign({
    label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
    value: (u, v) => fmt(v, unit),
  }, opts.bars ? groupedBars(i, names.length, COLORS[i % COLORS.length]) : {}, (opts.series || {})[n] || {})));
  const u = new uPlot({
    width: chartWidth(fig), height: opts.height || 220, series,
    scales: opts.xLabels
      ? { x: { time: false, range: [-0.5, opts.xLabels.length - 0.5] }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } }
      : opts.yLabels ? { x: { time: true }, y: { range: [-0.5, opts.yLabels.length - 0.5] } }
      : { x: { time: opts.time !== false } },
    axes: [opts.xLabels ? categoryAxis(opts.xLabels) : {},
      opts.yLabels ? Object.assign(categoryAxis(opts.yLabels), { rotate: 0, size: 110 }) : { size: 72, values: (u, vals) => vals.map(v => fmt(v, SCALING_UNITS.has(unit) ? unit : "")) }],
    legend: { live: true },
  }, data, target);
  u.xLabels = opts.xLabels || null;  // category names of a bar chart (the browser tests read them)
  window.__plots[id] = u;
  fig.querySelector(".latest").textContent = opts.xLabels || opts.yLabels ? "" : latestText(names, data, unit);
  return u;
}

// Series `i` of `n` as bars side by side around each x (categories at 0, 1, 2, ...).
function groupedBars(i, n, color) {
  const w = 0.8 / n;
  return {
    fill: color + "b3", stroke: color, width: 1, points: { show: false },
    paths: uPlot.paths.bars({ disp: { x0: { unit: 1, values: u => u.data[0].map(x => x - 0.4 + i * w) }, size: { unit: 1, values: () => [w] } } }),
  };
}

// An x axis with one tick per category (bin labels, shortened).
function categoryAxis(labels) {
  const short = l => (l.length > 14 ? l.slice(0, 13) + "…" : l);
  return { splits: () => labels.map((_, i) => i), values: (u, vals) => vals.map(v => short(labels[v] ?? "")), rotate: labels.length > 6 ? -30 : 0, size: labels.length > 6 ? 70 : 40 };
}

// "latest: a = 1.2 req/s, b = …" for screen readers and a quick look.
function latestText(names, data, unit) {
  const parts = names.map((n, i) => {
    const ys = data[i + 1] || [];
    let v = null;
    for (let j = ys.length - 1; j >= 0 && v == null; j--) v = ys[j];
    return n + " = " + fmt(v, unit);
  });
  return "Latest: " + parts.join(", ");
}

function clearPlotsOutside(root) {
  for (const [id, u] of Object.entries(window.__plots)) {
    if (!root.contains(u.root)) { u.destroy(); delete window.__plots[id]; }
  }
}

// === Serving and Feature store: the sampler's series ===

async function renderSeries(page, content) {
  const doc = await api("/dashboard/api/series?page=" + page);
  let grid = content.querySelector(".grid");
  if (!grid) { grid = el("div", { class: "grid" }); content.append(grid); }
  for (const chart of doc.charts) {
    const names = Object.keys(chart.series).sort();
    const id = page + "." + chart.id;
    if (names.length === 0) {
      if (!grid.querySelector(`figure[data-id="${id}"]`)) {
        grid.append(el("figure", { class: "chart", "data-id": id, role: "group", "aria-label": chart.title },
          el("figcaption", { text: chart.title + " (" + chart.unit + ")" }),
          el("p", { class: "empty", text: "No data yet." })));
      }
      continue;
    }
    if (chart.kind === "distribution") {
      plot(grid, id, chart.title, chart.unit, names, [chart.bins.map((_, i) => i)].concat(names.map(n => chart.series[n])),
        { xLabels: chart.bins, bars: true });
    } else {
      plot(grid, id, chart.title, chart.unit, names, [doc.t].concat(names.map(n => chart.series[n])));
    }
  }
  return doc.t.length + " samples, every " + doc.every_seconds + " s";
}

// === Drift: per model, each feature's scores over recent windows against the thresholds ===

const LEVEL_RANK = { ok: 0, moderate: 1, significant: 2 };

async function renderDrift(content) {
  const doc = await api("/dashboard/api/drift");
  if (doc.models.length === 0) {
    content.replaceChildren(el("p", { class: "empty", text: "No loaded model has a drift profile." }));
    return "no models";
  }
  for (const m of doc.models) {
    let sec = content.querySelector(`section[data-model="${CSS.escape(m.model)}"]`);
    if (!sec) {
      sec = el("section", { class: "model", "data-model": m.model, "aria-label": "Model " + m.model },
        el("h3", { text: "Model " + m.model }), el("div", { class: "versions" }));
      content.append(sec);
    }
    const box = sec.querySelector(".versions");
    for (const v of m.versions) renderDriftVersion(box, m, v);
  }
  return doc.models.length + " model(s)";
}

function renderDriftVersion(box, m, v) {
  const vid = m.model + ":" + v.version;
  let part = box.querySelector(`div[data-version="${CSS.escape(vid)}"]`);
  if (!part) {
    part = el("div", { "data-version": vid },
      el("h4", { text: `Version ${v.version}` }),
      el("p", { class: "note" }), el("div", { class: "alerts" }), el("div", { class: "detail-box" }),
      el("div", { class: "grid" }), el("div", { class: "history" }));
    box.append(part);
  }
  part.querySelector(".note").textContent =
    `Current window #${v.current_window.index}: ${v.current_window.rows} rows (opened ${v.current_window.opened}); ` +
    `windows of ${m.settings.window_rows} rows; alerts after ${m.settings.consecutive} consecutive windows.`;
  // Windows oldest first (the report lists the newest first).
  const windows = (v.windows || []).slice().reverse();
  const columns = new Map();
  for (const w of windows) for (const c of w.features.concat(w.outputs)) columns.set(c.name, true);
  // Alert states, with a button per feature that opens its reference vs current window.
  const rows = [...columns.keys()].map(name => {
    const state = (v.alerts || {})[name] || "ok";
    const last = windows.length ? windows[windows.length - 1].features.concat(windows[windows.length - 1].outputs).find(c => c.name === name) : null;
    return el("tr", {},
      el("th", { scope: "row" }, el("button", { class: "link", type: "button", "aria-label": "Show reference and current window of " + name, onclick: () => showColumn(part, m, name, last) }, name)),
      el("td", { class: "level-" + state, text: state }),
      el("td", { text: last ? (last.breaches.join(", ") || "none") : "–" }));
  });
  part.querySelector(".alerts").replaceChildren(el("table", {},
    el("caption", { class: "note", text: "Alert state per feature (select a feature for its reference vs current window)" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Feature" }), el("th", { scope: "col", text: "Alert" }), el("th", { scope: "col", text: "Breached in the last window" }))),
    el("tbody", {}, ...rows)));
  // Scores per feature over the windows, with the thresholds as dashed lines.
  const grid = part.querySelector(".grid");
  // psi first: its thresholds are the ones drawn.
  const metrics = Object.keys(m.settings.thresholds).sort((a, b) => (b === "psi") - (a === "psi"));
  for (const name of columns.keys()) {
    const x = windows.map(w => w.index);
    const names = [], ys = [], seriesOpts = {};
    for (const metric of metrics) {
      const vals = windows.map(w => { const c = w.features.concat(w.outputs).find(c => c.name === name); return c && c.scores[metric] != null ? c.scores[metric] : null; });
      if (vals.every(v => v == null)) continue;
      names.push(metric); ys.push(vals);
    }
    // The thresholds of psi when shown, else of the first metric shown.
    const tm = names.includes("psi") ? "psi" : names[0];
    const t = tm ? m.settings.thresholds[tm] : null;
    if (t) {
      for (const [k, dash] of [["moderate", [6, 4]], ["significant", [2, 3]]]) {
        const label = `${tm} ${k} threshold`;
        names.push(label); ys.push(x.map(() => t[k]));
        seriesOpts[label] = { stroke: k === "moderate" ? "#8a4b00" : "#a30000", dash, width: 1.5 };
      }
    }
    if (!names.length || !x.length) continue;
    plot(grid, "drift." + vid + "." + name, `${name}: scores per window`, "", names, [x].concat(ys), { time: false, series: seriesOpts });
  }
  // Alert history: the windows in which some column left "ok".
  const hist = windows.slice().reverse().map(w => {
    const bad = w.features.concat(w.outputs).filter(c => c.level !== "ok");
    return el("tr", {}, el("td", { text: "#" + w.index }), el("td", { text: w.closed }), el("td", { text: String(w.rows) }),
      el("td", {}, ...(bad.length ? bad.map(c => el("span", { class: "level-" + c.level, text: `${c.name}: ${c.level} ` })) : [el("span", { class: "level-ok", text: "all ok" })])));
  });
  part.querySelector(".history").replaceChildren(el("table", {},
    el("caption", { class: "note", text: "Window history (newest first)" }),
    el("thead", {}, el("tr", {}, ...["Window", "Closed", "Rows", "Levels"].map(h => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...hist)));
}

// A column's reference and last-window histograms on the same bins: numeric columns on the
// reference's decile bins (bin i is (edge[i-1], edge[i]], the first (-inf, edge[0]], the last
// (edge[last], +inf)), categorical ones per category shown (the rest as "(other)"). Shares in
// percent; null when the report carries no histogram.
function histogram(ref, cur) {
  const share = xs => { const t = xs.reduce((a, b) => a + b, 0); return xs.map(x => (t ? 100 * x / t : null)); };
  if (ref.kind === "numeric" && ref.bins && cur.bins && ref.bins.length === cur.bins.length) {
    const e = ref.bin_edges.map(x => fmt(x));
    const labels = ref.bins.map((_, i) => i === 0 ? (e.length ? "≤ " + e[0] : "all") : i === e.length ? "> " + e[i - 1] : `${e[i - 1]} – ${e[i]}`);
    return { labels, reference: share(ref.bins), window: share(cur.bins) };
  }
  if (ref.kind === "categorical" && ref.counts && cur.categories) {
    const names = [...new Set(Object.keys(ref.counts).concat(Object.keys(cur.categories)))];
    names.sort((a, b) => (ref.counts[b] || 0) - (ref.counts[a] || 0) || (cur.categories[b] || 0) - (cur.categories[a] || 0));
    const r = names.map(n => ref.counts[n] || 0), w = names.map(n => cur.categories[n] || 0);
    if (ref.other_categories || cur.other_categories) {
      names.push("(other)"); r.push(ref.other_categories || 0); w.push(cur.other_categories || 0);
    }
    return { labels: names, reference: share(r), window: share(w) };
  }
  return null;
}

// The reference column against the last closed window: both histograms as bars (with the same
// numbers in a table for screen readers), the summary statistics, and the window's scores.
function showColumn(part, m, name, last) {
  const ref = m.reference.columns.find(c => c.name === name) || {};
  const cur = last ? last.window : {};
  const f = v => (v == null ? "–" : typeof v === "number" ? fmt(v) : String(v));
  const rows = ["count", "mean", "std", "min", "max"].map(k =>
    el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: f(ref[k]) }), el("td", { text: f(cur[k]) })));
  const box = part.querySelector(".detail-box");
  const scores = last ? Object.entries(last.scores).map(([k, v]) => `${k} ${fmt(v)}`).join(", ") : "";
  const hist = histogram(ref, cur);
  const figures = el("div", { class: "grid" });
  const pct = v => (v == null ? "–" : v.toFixed(1) + " %");
  const shares = hist && el("table", { class: "shares" },
    el("caption", { class: "note", text: "Share of values per bin" }),
    el("thead", {}, el("tr", {}, ...["Bin", "Reference", "Last window"].map(h => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...hist.labels.map((l, i) => el("tr", {}, el("th", { scope: "row", text: l }), el("td", { text: pct(hist.reference[i]) }), el("td", { text: pct(hist.window[i]) })))));
  box.replaceChildren(el("div", { class: "detail", role: "region", "aria-label": "Detail of " + name, tabindex: "-1" },
    el("h4", { text: `${name}: reference vs last window` }),
    figures,
    el("details", {}, el("summary", { text: "Histogram as a table" }), shares || el("p", { text: "No histogram in this report." })),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "" }), el("th", { scope: "col", text: "Reference" }), el("th", { scope: "col", text: "Last window" }))), el("tbody", {}, ...rows)),
    el("p", { class: "note", text: "Scores: " + scores })));
  if (hist) {
    const x = hist.labels.map((_, i) => i);
    plot(figures, "drift.hist." + m.model + "." + name, `${name}: histogram, reference vs last window`, "%",
      ["Reference", "Last window"], [x, hist.reference, hist.window], { xLabels: hist.labels, bars: true });
  }
  box.firstChild.focus();
}

// === Fleet (router): workers, load and capacity, placement, events, traffic ===

const fleetHistory = { t: [], outstanding: {}, capacity: {} };

async function renderFleet(content) {
  const doc = await api("/dashboard/api/fleet");
  const now = Date.now() / 1000;
  const h = fleetHistory;
  h.t.push(now);
  const seen = new Set();
  for (const w of doc.workers) {
    seen.add(w.id);
    for (const [k, v] of [["outstanding", w.outstanding], ["capacity", (w.routing || []).reduce((a, l) => a + (l.rate_rps || 0), 0)]]) {
      if (!h[k][w.id]) h[k][w.id] = h.t.slice(0, -1).map(() => null);
      h[k][w.id].push(v);
    }
  }
  for (const k of ["outstanding", "capacity"]) for (const id of Object.keys(h[k])) if (!seen.has(id)) h[k][id].push(null);
  if (h.t.length > 300) { h.t.shift(); for (const k of ["outstanding", "capacity"]) for (const s of Object.values(h[k])) s.shift(); }
  let tables = content.querySelector(".tables");
  if (!tables) { tables = el("div", { class: "tables" }); content.append(tables, el("div", { class: "grid" }), el("div", { class: "events" })); }
  const opportunistic = doc.workers.filter(w => w.capacity_class && w.capacity_class !== "guaranteed");
  const total = doc.workers.reduce((a, w) => a + w.outstanding, 0);
  const share = total ? opportunistic.reduce((a, w) => a + w.outstanding, 0) / total : 0;
  const cell = v => el("td", { text: v == null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v) });
  tables.replaceChildren(
    el("p", { class: "note", text: `Policy ${doc.policy}; ${doc.workers.length} worker(s); in-flight share on opportunistic capacity ${(share * 100).toFixed(0)}%.` }),
    el("table", {}, el("caption", { class: "note", text: "Workers by capacity class and hardware" }),
      el("thead", {}, el("tr", {}, ...["Worker", "Class", "Hardware", "State", "Outstanding", "Measured rps", "Models"].map(x => el("th", { scope: "col", text: x })))),
      el("tbody", {}, ...doc.workers.map(w => el("tr", {}, cell(w.id), cell(w.capacity_class), cell(w.hardware), cell(w.state), cell(w.outstanding),
        cell((w.routing || []).reduce((a, l) => a + (l.rate_rps || 0), 0).toFixed(2)), cell((w.models || []).map(m => m.name || m).join(", ")))))),
    el("table", {}, el("caption", { class: "note", text: "Traffic per model (rollout, canary, A/B and shadow state)" }),
      el("thead", {}, el("tr", {}, ...["Model", "Stable version", "Policy", "Canary", "Rollout", "Arms"].map(x => el("th", { scope: "col", text: x })))),
      el("tbody", {}, ...((doc.traffic || []).length ? doc.traffic.map(trafficRow)
        : [el("tr", {}, el("td", { colspan: "6", text: "No traffic policy declared (route --desired-state): each model's versions are served as loaded." }))]))));
  const grid = content.querySelector(".grid");
  const ids = Object.keys(h.outstanding).sort();
  if (ids.length) {
    plot(grid, "fleet.outstanding", "Outstanding requests per worker", "requests", ids, [h.t].concat(ids.map(i => h.outstanding[i])));
    plot(grid, "fleet.capacity", "Routed rate per worker", "req/s", ids, [h.t].concat(ids.map(i => h.capacity[i])));
  }
  timeline(grid, doc.events || []);
  const events = (doc.events || []).slice(-30).reverse();
  content.querySelector(".events").replaceChildren(el("table", {},
    el("caption", { class: "note", text: "Recent fleet events (preemption notices, drains, joins), newest first" }),
    el("thead", {}, el("tr", {}, ...["Time", "Worker", "Event", "Detail"].map(x => el("th", { scope: "col", text: x })))),
    el("tbody", {}, ...events.map(e => el("tr", {}, cell(new Date(e.at_ms).toLocaleTimeString()), cell(e.worker),
      cell(e.kind === "draining" ? "draining (preemption notice)" : e.kind), cell(e.detail))))));
  return doc.workers.length + " worker(s)";
}

// One model's traffic: its policy, canary step and state, rollout, and each arm's numbers.
function trafficRow(t) {
  const text = v => (v == null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const canary = t.canary ? `v${t.canary.version}: ${text(t.canary.state)} (${t.canary.step_for_s.toFixed(0)} s in this step)` : "–";
  const arms = Object.entries(t.arms || {}).map(([k, a]) =>
    `${k}: ${a.requests} req, ${(100 * (a.error_rate || 0)).toFixed(1)} % errors, p99 ${a.p99_ms == null ? "–" : a.p99_ms.toFixed(1) + " ms"}`).join("; ");
  return el("tr", {}, ...[t.model, t.stable_version, t.policy, canary, text(t.rollout), arms || "–"].map(v => el("td", { text: text(v) })));
}

// Worker events on a timeline: one row per worker, one marker series per kind of event
// (preemption notices, drains, joins, departures, ejections).
const TIMELINE_KINDS = [
  ["draining", "preemption notice", "#c0392b"], ["drained", "drained", "#b35900"], ["joined", "joined", "#1e7b34"],
  ["serving", "serving again", "#00838f"], ["left", "left", "#37474f"], ["expired", "expired", "#6d4c41"],
  ["ejected", "ejected", "#8e44ad"], ["returned", "returned", "#0b57d0"],
];

function timeline(grid, events) {
  const kinds = new Map(TIMELINE_KINDS.map(([k, label]) => [k, label]));
  const shown = events.filter(e => kinds.has(e.kind)).sort((a, b) => a.at_ms - b.at_ms);
  if (!shown.length) return;
  const workers = [...new Set(shown.map(e => e.worker))].sort();
  const x = shown.map(e => e.at_ms / 1000);
  const names = [], ys = [], series = {};
  for (const [kind, label, color] of TIMELINE_KINDS) {
    if (!shown.some(e => e.kind === kind)) continue;
    names.push(label);
    ys.push(shown.map(e => (e.kind === kind ? workers.indexOf(e.worker) : null)));
    series[label] = { stroke: color, fill: color, width: 0, paths: () => null, points: { show: true, size: 11, stroke: color, fill: color }, value: (u, v) => (v == null ? "–" : workers[v]) };
  }
  plot(grid, "fleet.timeline", "Worker events (preemption notices, drains, joins) over time", "", names, [x].concat(ys),
    { yLabels: workers, series, height: Math.max(160, 60 + 28 * workers.length) });
}

// === page loop ===

async function start() {
  const { pages } = await api("/dashboard/api/pages");
  const asked = location.pathname.split("/")[2];
  const page = pages.includes(asked) ? asked : pages[0];
  const nav = document.getElementById("nav");
  for (const p of pages) {
    const a = el("a", { href: "/dashboard/" + p, text: PAGES[p] });
    if (p === page) a.setAttribute("aria-current", "page");
    nav.append(el("li", {}, a));
  }
  document.getElementById("title").textContent = PAGES[page];
  document.title = "Flotilla · " + PAGES[page];
  const content = document.getElementById("content");
  const render = { serving: c => renderSeries("serving", c), features: c => renderSeries("features", c), drift: renderDrift, fleet: renderFleet }[page];
  const tick = async () => {
    try {
      const note = await render(content);
      clearPlotsOutside(content);
      status("Updated " + new Date().toLocaleTimeString() + " · " + note);
      document.body.dataset.ready = "true";
    } catch (e) {
      status("Cannot refresh: " + e.message);
    }
    setTimeout(tick, REFRESH_MS[page]);
  };
  tick();
  window.addEventListener("resize", () => {
    for (const u of Object.values(window.__plots)) u.setSize({ width: chartWidth(u.root.closest("figure")), height: u.height });
  });
}

start().catch(e => status("Cannot load the dashboard: " + e.message));
