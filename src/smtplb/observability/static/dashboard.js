// smtplb dashboard: polls /api/v1/overview every second and updates the page in place.
// No build step, no dependencies. Test hooks: data-kpi, data-pool, data-member, data-field,
// data-queue-state, data-event (each carrying data-value / data-health where useful), and
// window.smtplbDashboard, which lives exactly as long as the page is not reloaded.
"use strict";

(() => {
  const POLL_MS = 1000;
  const STACK = ["delivered", "deferred", "bounced"];
  const IN_QUEUE = ["queued", "in_flight", "deferred"];
  const FINAL = ["delivered", "bounced", "expired", "suppressed"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = { loadedAt: Date.now(), polls: 0, failures: 0, last: null, depth: [] };
  window.smtplbDashboard = state;

  // -- helpers ----------------------------------------------------------------------

  const $ = (sel, root = document) => root.querySelector(sel);
  const numberFormat = new Intl.NumberFormat();
  const fmtNum = (n) => numberFormat.format(n ?? 0);
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  const label = (s) => s.replace(/_/g, " ");

  function fmtAge(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "—";
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    node.append(...children);
    return node;
  }
  window.smtplbEl = el; // the other panels (cluster.js) build their nodes with it

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setAttr(node, name, value) {
    if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
  }

  // -- header and KPI tiles ---------------------------------------------------------

  function renderHeader(d) {
    setText($("#hostname"), d.hostname);
    setText($("#version"), d.version);
    setText($("#uptime"), fmtAge(d.uptime));
    $("#draining").hidden = !d.draining;
    document.title = `${d.draining ? "[draining] " : ""}${d.hostname} · smtplb`;
  }

  function sparkline(svg, values) {
    const w = 84, h = 30, n = values.length;
    const max = Math.max(1, ...values) * 1.1;
    const pts = values.map((v, i) => [(i / Math.max(1, n - 1)) * w, h - (v / max) * h]);
    const line = pts.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.innerHTML = n < 2 ? "" : `<path class="stroke" d="${line}"/>`;
  }

  function setKpi(name, value, text, spark, alert = "") {
    const tile = $(`[data-kpi="${name}"]`);
    setAttr(tile, "data-value", value);
    setText($(".kpi-value", tile), text);
    if (alert) tile.dataset.alert = alert;
    else delete tile.dataset.alert;
    const svg = $(".spark", tile);
    if (svg && spark) sparkline(svg, spark);
  }

  function renderKpis(d) {
    const q = d.queue, series = d.series;
    const depth = sum(IN_QUEUE.map((s) => q[s] ?? 0));
    const oldest = depth ? Math.max(0, ...Object.values(d.queue_oldest_age ?? {})) : 0;
    const perMinute = sum(series.delivered.slice(-60 / series.step));
    state.depth = [...state.depth.slice(-59), depth];

    setKpi("delivered", d.totals.delivered, fmtNum(d.totals.delivered), series.delivered);
    setKpi("deferred", d.totals.deferred, fmtNum(d.totals.deferred), series.deferred,
      sum(series.deferred) ? "warn" : "");
    setKpi("bounced", d.totals.bounced, fmtNum(d.totals.bounced), series.bounced,
      sum(series.bounced) ? "bad" : "");
    setKpi("queue", depth, fmtNum(depth), state.depth);
    setKpi("oldest", Math.round(oldest), depth ? fmtAge(oldest) : "—", null,
      oldest > 3600 ? "bad" : oldest > 300 ? "warn" : "");
    setKpi("rate", perMinute, fmtNum(perMinute), null);
  }

  // -- throughput chart ---------------------------------------------------------------

  // The y axis has four gridlines; keep each step a whole, round count.
  function niceMax(v) {
    const raw = Math.max(1, v / 4);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 3, 4, 5, 6, 8, 10].map((f) => f * mag).find((s) => s >= raw && Number.isInteger(s));
    return 4 * (step ?? Math.ceil(raw));
  }

  function renderChart(series) {
    const box = $("#chart");
    const W = Math.max(300, box.clientWidth), H = Math.max(230, box.clientHeight);
    const pad = { l: 40, r: 8, t: 8, b: 22 };
    const pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
    const n = series.delivered.length, step = series.step;
    const totals = series.delivered.map((_, i) => sum(STACK.map((k) => series[k][i])));
    const max = niceMax(Math.max(...totals, ...series.received));
    const y = (v) => pad.t + ph - (v / max) * ph;
    const slot = pw / n, bw = Math.max(1, slot - (slot > 6 ? 2 : 1));
    const start = series.end - n * step + 1;
    const parts = [];

    for (let t = 0; t <= 4; t++) {
      const v = (max / 4) * t, yy = y(v).toFixed(1);
      parts.push(`<line class="grid" x1="${pad.l}" x2="${W - pad.r}" y1="${yy}" y2="${yy}"/>`,
        `<text class="axis" x="${pad.l - 6}" y="${+yy + 4}" text-anchor="end">${fmtNum(v)}</text>`);
    }
    const minutes = Math.round((n * step) / 60);
    for (let m = minutes; m >= 0; m--) {
      const x = pad.l + pw - (m * 60 / step) * slot;
      const anchor = m === minutes ? "start" : m === 0 ? "end" : "middle";
      parts.push(`<text class="axis" x="${x.toFixed(1)}" y="${H - 6}" text-anchor="${anchor}">${m ? `−${m}m` : "now"}</text>`);
    }
    for (let i = 0; i < n; i++) {
      const x = pad.l + i * slot;
      let base = 0;
      for (const k of STACK) {
        const v = series[k][i];
        if (!v) continue;
        const y0 = y(base), y1 = y(base + v);
        parts.push(`<rect class="s-${k}" x="${x.toFixed(1)}" y="${y1.toFixed(1)}" width="${bw.toFixed(1)}" height="${(y0 - y1).toFixed(1)}"/>`);
        base += v;
      }
      const when = new Date((start + i * step) * 1000).toLocaleTimeString();
      const tip = `${when} — ${STACK.map((k) => `${k} ${series[k][i]}`).join(", ")}, ` +
        `received ${series.received[i]}, failover ${series.failover[i]}`;
      parts.push(`<rect class="slot" fill="transparent" x="${x.toFixed(1)}" y="${pad.t}" width="${slot.toFixed(1)}" height="${ph}"><title>${tip}</title></rect>`);
    }
    const line = series.received.map((v, i) =>
      `${i ? "L" : "M"}${(pad.l + i * slot + bw / 2).toFixed(1)},${y(v).toFixed(1)}`).join("");
    parts.push(`<path class="received" d="${line}"/>`);
    if (!sum(totals) && !sum(series.received)) {
      parts.push(`<text class="nodata" x="${pad.l + pw / 2}" y="${pad.t + ph / 2}">No traffic in the last 5 minutes</text>`);
    }
    box.innerHTML = `<svg xmlns="${SVG_NS}" viewBox="0 0 ${W} ${H}" role="img" aria-label="Throughput over the last 5 minutes">${parts.join("")}</svg>`;

    const legend = [...STACK, "received"].map((k) =>
      `<span><i class="l-${k}"></i>${label(k)} <b>${fmtNum(sum(series[k]))}</b></span>`);
    $("#legend").innerHTML = legend.join("");
  }

  // -- queue panel -------------------------------------------------------------------

  function renderQueue(d) {
    const box = $("#queue");
    if (!box.firstChild) {
      const group = (title, states) => [el("h3", {}, title), ...states.map((s) =>
        el("div", { class: `q-row q-${s}`, "data-queue-state": s, "data-value": "0" },
          el("span", {}, label(s)), el("div", { class: "bar" }, el("span")),
          el("span", { class: "q-count" }, "0"),
          ...(IN_QUEUE.includes(s) ? [el("span", { class: "q-age" })] : [])))];
      box.append(...group("In the queue", IN_QUEUE), ...group("Final", FINAL));
    }
    for (const states of [IN_QUEUE, FINAL]) {
      const max = Math.max(1, ...states.map((s) => d.queue[s] ?? 0));
      for (const s of states) {
        const row = $(`[data-queue-state="${s}"]`, box), n = d.queue[s] ?? 0;
        setAttr(row, "data-value", n);
        setText($(".q-count", row), fmtNum(n));
        $(".bar > span", row).style.width = `${(n / max) * 100}%`;
        const age = $(".q-age", row);
        if (age) setText(age, n ? `oldest ${fmtAge(d.queue_oldest_age?.[s] ?? 0)}` : "");
      }
    }
  }

  // -- pools and members ---------------------------------------------------------------

  const COLUMNS = [
    ["member", "Member"], ["health", "Health"], ["reputation", "Reputation"], ["weight", "Weight", "num"],
    ["connections", "Connections"], ["per_minute", "Rate/min", "num"],
    ["latency_p50_ms", "p50", "num"], ["latency_p95_ms", "p95", "num"],
    ["delivered", "Delivered", "num"], ["deferred", "Deferred", "num"],
    ["bounced", "Bounced", "num"], ["failures", "Failures", "num"],
  ];

  function poolCard(pool) {
    const head = el("tr", {}, ...COLUMNS.map(([, title, cls]) => el("th", cls ? { class: cls } : {}, title)));
    return el("section", { class: "card pool", "data-pool": pool.name },
      el("div", { class: "card-head" },
        el("h2", {}, "Pool ", el("span", { "data-field": "name" }, pool.name)),
        el("span", { class: "tag", "data-field": "strategy" }),
        el("span", { class: "muted", "data-field": "summary" }),
        el("span", { class: "spacer" }),
        el("span", { class: "muted", "data-field": "waiting" })),
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), el("tbody"))));
  }

  function memberRow(m) {
    const cells = COLUMNS.map(([field, , cls]) => el("td", { "data-field": field, ...(cls ? { class: cls } : {}) }));
    const row = el("tr", { "data-member": m.name }, ...cells);
    $('[data-field="member"]', row).append(
      el("div", { class: "m-name" }, m.name), el("div", { class: "m-sub" }), el("div", { class: "m-warmup" }));
    $('[data-field="health"]', row).append(el("span", { class: "pill" }));
    $('[data-field="reputation"]', row).append(
      el("span", { class: "rep-pill" }), el("div", { class: "rep-providers" }));
    $('[data-field="connections"]', row).append(
      el("div", { class: "conn" }, el("div", { class: "bar" }, el("span")), el("span", { class: "conn-text" })));
    return row;
  }

  function updateMember(row, m) {
    const cell = (f) => $(`[data-field="${f}"]`, row);
    setAttr(row, "data-health", m.health);
    setText($(".m-sub", row), `${m.kind} · ${m.target ?? "—"}`);
    updateWarmup($(".m-warmup", row), m.warmup ?? {});
    const pill = $(".pill", cell("health"));
    setAttr(pill, "data-health", m.health);
    setText(pill, label(m.health));
    setAttr(cell("health"), "data-value", m.health);
    // Reputation: the member's worst state, and per provider its state and rates.
    const rep = m.reputation ?? { state: "ok", providers: {} };
    const repPill = $(".rep-pill", cell("reputation"));
    setAttr(repPill, "data-reputation", rep.state);
    setText(repPill, label(rep.state));
    setAttr(repPill, "title", rep.reason ?? "");
    setAttr(cell("reputation"), "data-value", rep.state);
    const pct = (x) => `${(100 * (x ?? 0)).toFixed(1)}%`;
    setText($(".rep-providers", row), Object.entries(rep.providers ?? {}).map(([name, p]) =>
      `${name} ${p.state}: hard ${pct(p.hard_bounce_rate)} · block ${pct(p.policy_block_rate)}` +
      ` · compl ${pct(p.complaint_rate)} (${p.attempts})`).join("; "));

    const load = m.max_connections ? m.active / m.max_connections : 0;
    const conn = $(".conn", row);
    setAttr(conn, "data-load", load >= 1 ? "full" : load >= 0.8 ? "high" : "ok");
    $(".bar > span", conn).style.width = `${Math.min(100, load * 100)}%`;
    setText($(".conn-text", conn), `${m.active} / ${m.max_connections}` + (m.idle_connections ? ` · ${m.idle_connections} idle` : ""));
    setAttr(cell("connections"), "data-value", m.active);

    const numbers = {
      weight: [m.weight, String(m.weight)],
      per_minute: [m.per_minute, fmtNum(m.per_minute)],
      latency_p50_ms: [m.latency_p50_ms ?? "", fmtMs(m.latency_p50_ms)],
      latency_p95_ms: [m.latency_p95_ms ?? "", fmtMs(m.latency_p95_ms)],
      delivered: [m.delivered, fmtNum(m.delivered)],
      deferred: [m.deferred, fmtNum(m.deferred)],
      bounced: [m.bounced, fmtNum(m.bounced)],
      failures: [m.failures, fmtNum(m.failures)],
    };
    for (const [field, [value, text]] of Object.entries(numbers)) {
      const c = cell(field);
      setAttr(c, "data-value", value);
      setText(c, text);
      c.classList.toggle("zero", !value);
    }
  }

  // Warm-up: one progress bar per provider, today's messages against today's cap.
  function updateWarmup(box, warmup) {
    const seen = new Set();
    for (const [provider, w] of Object.entries(warmup)) {
      seen.add(provider);
      let line = [...box.children].find((c) => c.dataset.provider === provider);
      if (!line) {
        box.append(line = el("div", { class: "wu", "data-provider": provider },
          el("span", { class: "wu-text" }), el("div", { class: "bar" }, el("span"))));
      }
      const warm = w.cap === null || w.cap === undefined;
      const share = warm ? 1 : Math.min(1, w.sent / Math.max(1, w.cap));
      setAttr(line, "data-value", warm ? "warm" : `${w.sent}/${w.cap}`);
      setAttr(line, "data-load", warm ? "warm" : share >= 1 ? "full" : share >= 0.8 ? "high" : "ok");
      setText($(".wu-text", line), warm ? `${provider} · warm` : `${provider} · day ${w.day} · ${fmtNum(w.sent)} / ${fmtNum(w.cap)}`);
      $(".bar > span", line).style.width = `${share * 100}%`;
    }
    [...box.children].forEach((c) => seen.has(c.dataset.provider) || c.remove());
  }

  function renderPools(pools) {
    const root = $("#pools");
    const seen = new Set();
    for (const pool of pools) {
      seen.add(pool.name);
      let card = [...root.children].find((c) => c.dataset.pool === pool.name);
      if (!card) root.append(card = poolCard(pool));
      const up = pool.members.filter((m) => m.health === "up").length;
      setText($('[data-field="strategy"]', card), label(pool.strategy));
      setText($('[data-field="summary"]', card), `${pool.members.length} members · ${up} up`);
      setText($('[data-field="waiting"]', card), pool.waiting ? `${fmtNum(pool.waiting)} waiting for a connection` : "");
      const body = $("tbody", card);
      const rows = new Map([...body.children].map((r) => [r.dataset.member, r]));
      pool.members.forEach((m, i) => {
        const row = rows.get(m.name) ?? memberRow(m);
        rows.delete(m.name);
        if (body.children[i] !== row) body.insertBefore(row, body.children[i] ?? null);
        updateMember(row, m);
      });
      rows.forEach((r) => r.remove());
    }
    [...root.children].forEach((c) => seen.has(c.dataset.pool) || c.remove());
  }

  // -- recent errors -------------------------------------------------------------------

  // A member retrying the same refusal fills the list with copies: show each run once, ×N.
  function groupRuns(errors) {
    const runs = [];
    for (const e of errors) {
      const sig = [e.event, e.pool, e.member, e.code, e.enhanced_code, e.response].join("\u0000");
      const prev = runs[runs.length - 1];
      if (prev && prev.sig === sig) prev.count += 1;
      else runs.push({ ...e, sig, count: 1 });
    }
    return runs;
  }

  function renderErrors(errors, now) {
    const list = $("#errors");
    const key = errors.length ? `${errors.length}:${errors[0].ts}:${errors[0].event}` : "";
    if (list.dataset.key !== key) {
      list.dataset.key = key;
      list.replaceChildren(...groupRuns(errors).map((e) => {
        const code = [e.code, e.enhanced_code].filter(Boolean).join(" ");
        const where = [e.pool, e.member].filter(Boolean).join(" / ") || "—";
        return el("li", { "data-event": e.event, "data-ts": e.ts, "data-count": e.count, ...(e.member ? { "data-member": e.member } : {}) },
          el("span", { class: "ago", title: new Date(e.ts * 1000).toLocaleString() }),
          el("span", { class: "ev", "data-event": e.event }, label(e.event.replace(/^member_/, "member ")),
            ...(e.count > 1 ? [el("span", { class: "times", title: `${e.count} in a row` }, `×${e.count}`)] : [])),
          el("span", {}, where),
          el("span", { class: "mono" }, code || "—"),
          el("span", { class: "resp mono", title: e.response ?? "" }, e.response || ""));
      }));
    }
    for (const li of list.children) setText($(".ago", li), `${fmtAge(now - li.dataset.ts)} ago`);
    $("#errors-empty").hidden = errors.length > 0;
    setText($("#errors-count"), errors.length ? `last ${errors.length}` : "");
  }

  // -- providers -----------------------------------------------------------------------

  function suspensionText(held, now, polledAt) {
    if (!held) return "—";
    const left = held.seconds_left - (now - polledAt);
    return `${fmtAge(left)} left · rule ${held.rule}`;
  }

  function renderProviders(providers) {
    const card = $("#providers-card");
    const rows = [];
    for (const p of providers || []) {
      if (p.suspended) {
        rows.push(el("tr", { "data-provider": p.name, "data-member": "*", "data-suspended": "true" },
          el("td", {}, p.name), el("td", {}, "all members"), el("td", { class: "num" }, "—"),
          el("td", { class: "num" }, "—"), el("td", { class: "num" }, "—"),
          el("td", { class: "mono" }, suspensionText(p.suspended, 0, 0))));
      }
      for (const m of p.members) {
        const rate = m.rate_per_minute === null || m.rate_per_minute === undefined
          ? (p.rate ? p.rate : "—") : fmtNum(m.rate_per_minute);
        rows.push(el("tr", { "data-provider": p.name, "data-member": m.member, "data-suspended": m.suspended ? "true" : "false" },
          el("td", {}, p.name),
          el("td", {}, m.member),
          el("td", { class: "num", title: `adaptive window ${m.window}` }, `${m.active} / ${m.concurrency}`),
          el("td", { class: "num" }, m.throttled ? `${rate} (throttled)` : rate),
          el("td", { class: "num" }, fmtNum(m.rate_limited)),
          el("td", { class: "mono" }, suspensionText(m.suspended, 0, 0))));
      }
    }
    $("#providers tbody").replaceChildren(...rows);
    card.hidden = rows.length === 0;
  }

  // -- polling -------------------------------------------------------------------------

  function render(d) {
    renderHeader(d);
    renderKpis(d);
    renderChart(d.series);
    renderQueue(d);
    renderPools(d.pools);
    renderProviders(d.providers);
    renderErrors(d.errors, d.series.end);
  }

  function setStatus(live, text) {
    const status = $("#status");
    setAttr(status, "data-state", live ? "live" : "stale");
    setText(status, text);
    document.body.classList.toggle("stale", !live);
  }

  async function poll() {
    try {
      const resp = await fetch("/api/v1/overview", {
        cache: "no-store", signal: AbortSignal.timeout(5000), headers: { Accept: "application/json" },
      });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      state.last = await resp.json();
      render(state.last);
      state.polls += 1;
      state.failures = 0;
      setStatus(true, `live · ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      state.failures += 1;
      setStatus(false, `no answer (${err.message || err}) · retrying`);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // -- theme ---------------------------------------------------------------------------

  function initTheme() {
    const saved = localStorage.getItem("smtplb-theme");
    if (saved) document.documentElement.dataset.theme = saved;
    $("#theme").addEventListener("click", () => {
      const dark = document.documentElement.dataset.theme
        ? document.documentElement.dataset.theme === "dark"
        : matchMedia("(prefers-color-scheme: dark)").matches;
      document.documentElement.dataset.theme = dark ? "light" : "dark";
      localStorage.setItem("smtplb-theme", document.documentElement.dataset.theme);
    });
  }

  new ResizeObserver(() => state.last && renderChart(state.last.series)).observe($("#chart"));

  initTheme();
  poll();
})();
