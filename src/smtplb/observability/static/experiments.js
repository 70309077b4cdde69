// smtplb dashboard, experiments panel: polls /api/v1/experiments and each experiment's
// report every 10 s; shows per variant the messages, the curve of the median time to
// deliver, and the metrics with their verdicts. Test hooks: data-experiment,
// data-variant, data-metric (with data-verdict), data-srm.
"use strict";

(() => {
  const POLL_MS = 10000; // a report reads every result: not every second
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TONES = 5; // .exp-c0 … .exp-c4 in dashboard.css (no inline styles: CSP)
  const root = document.querySelector("#experiments");
  if (!root) return;

  const pct = (x) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(2)}%`);
  const secs = (x) => (x === null || x === undefined ? "—" : x < 1 ? `${Math.round(x * 1000)} ms` : `${x.toFixed(2)} s`);
  const pval = (x) => (x === null || x === undefined ? "" : x < 1e-4 ? "<0.0001" : x.toFixed(4));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    node.append(...children);
    return node;
  }

  function curve(report) {
    const s = report.series;
    const names = report.variants.map((v) => v.name);
    const W = 520, H = 150, pad = { l: 50, r: 8, t: 8, b: 18 };
    const all = names.flatMap((n) => (s.variants[n]?.time_to_deliver_median ?? []).filter((x) => x !== null));
    if (!all.length) return el("p", { class: "empty" }, "No deliveries yet.");
    const max = Math.max(...all) * 1.1 || 1;
    const len = Math.max(...names.map((n) => s.variants[n].messages.length));
    const x = (i) => pad.l + (len > 1 ? (i / (len - 1)) * (W - pad.l - pad.r) : 0);
    const y = (v) => pad.t + (H - pad.t - pad.b) * (1 - v / max);
    const parts = [0, 0.5, 1].map((f) =>
      `<line class="grid" x1="${pad.l}" x2="${W - pad.r}" y1="${y(max * f)}" y2="${y(max * f)}"/>` +
      `<text class="axis" x="${pad.l - 6}" y="${y(max * f) + 4}" text-anchor="end">${secs(max * f)}</text>`);
    names.forEach((n, k) => {
      const xy = s.variants[n].time_to_deliver_median
        .map((v, i) => (v === null ? null : [x(i).toFixed(1), y(v).toFixed(1), v])).filter(Boolean);
      if (xy.length) {
        parts.push(`<polyline class="exp-line exp-c${k % TONES}" points="${xy.map(([a, b]) => `${a},${b}`).join(" ")}"><title>${n}: median time to deliver</title></polyline>`);
        for (const [a, b, v] of xy) {
          parts.push(`<circle class="exp-dot exp-c${k % TONES}" cx="${a}" cy="${b}" r="2.5"><title>${n}: ${secs(v)}</title></circle>`);
        }
      }
    });
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "Median time to deliver per variant over time");
    svg.innerHTML = parts.join("");
    const legend = el("div", { class: "legend" }, ...names.map((n, k) =>
      el("span", {}, el("i", { class: `exp-c${k % TONES}` }), n)));
    return el("div", { class: "exp-curve" }, svg, legend);
  }

  function card(report) {
    const head = el("div", { class: "card-head" },
      el("h2", {}, `Experiment ${report.name}`),
      el("span", { class: "tag" }, report.state),
      el("span", { class: "muted" }, `pool ${report.pool} · split by ${report.split} · ${report.messages} messages`));
    const variants = el("div", { class: "exp-variants" }, ...report.variants.map((v) =>
      el("span", { "data-variant": v.name, class: v.stopped ? "exp-stopped" : "" },
        `${v.name}${v.control ? " (control)" : ""}: ${v.messages} messages, ${v.share}%` +
        (v.stopped ? ` — stopped: ${v.stopped.reason}` : ""))));
    const srm = report.srm;
    const srmLine = el("p", { class: srm.mismatch ? "exp-bad" : "muted", "data-srm": srm.mismatch ? "mismatch" : "ok" },
      `Sample ratio: ${srm.counts.join(" / ")} (expected ${srm.expected.join(" / ")}), ` +
      `p = ${pval(srm.p_value)}${srm.mismatch ? " — MISMATCH: check the assignment" : " — ok"}`);
    const rows = report.metrics.filter((m) => "verdict" in m).map((m) => {
      const control = report.metrics.find((c) => c.variant === report.control && c.metric === m.metric);
      const value = m.kind === "rate" ? pct(m.value) : secs(m.median);
      const base = m.kind === "rate" ? pct(control?.value) : secs(control?.median);
      const diff = m.kind === "rate" ? pct(m.difference) : secs(m.difference);
      return el("tr", { "data-metric": `${m.variant}:${m.metric}`, "data-verdict": m.verdict },
        el("td", {}, m.variant), el("td", {}, m.metric.replace(/_/g, " ")),
        el("td", { class: "num" }, base), el("td", { class: "num" }, value),
        el("td", { class: "num" }, diff), el("td", { class: "num" }, pval(m.adjusted_p)),
        el("td", { class: `exp-verdict exp-${m.verdict.replace(/ /g, "-")}` }, m.verdict));
    });
    const table = el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ...["variant", "metric", "control", "value", "difference", "adj. p", "verdict"]
        .map((t, i) => el("th", i >= 2 && i <= 5 ? { class: "num" } : {}, t)))),
      el("tbody", {}, ...rows)));
    return el("section", { class: "card", "data-experiment": report.name }, head, variants, srmLine, curve(report), table);
  }

  async function getJson(path) {
    const resp = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return resp.json();
  }

  async function poll() {
    try {
      const list = await getJson("/api/v1/experiments");
      const reports = await Promise.all(list.experiments.map((e) => getJson(`/api/v1/experiments/${encodeURIComponent(e.name)}`)));
      root.replaceChildren(...reports.map(card));
      root.hidden = reports.length === 0;
    } catch (err) {
      // the main panel shows the connection state; keep the last rendering
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
