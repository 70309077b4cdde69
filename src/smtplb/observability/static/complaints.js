// smtplb dashboard, complaint-budget panel: polls /api/v1/compliance every 10 s and
// lists the sender domains over budget (throttled: half share of their marketing and
// bulk mail; stopped: that mail waits), with a badge in the header while any is.
// Test hooks: data-domain (with data-state) on each row, #budget-badge.
"use strict";

(() => {
  const POLL_MS = 10000;
  const card = document.querySelector("#budget-card");
  const badge = document.querySelector("#budget-badge");
  if (!card || !badge) return;
  const body = card.querySelector("tbody");
  const limits = card.querySelector("#budget-limits");
  const pct = (x) => `${(x * 100).toFixed(2)}%`;

  function td(text, cls) {
    const cell = document.createElement("td");
    if (cls) cell.className = cls;
    cell.textContent = text;
    return cell;
  }

  function render(view) {
    const budget = view.complaint_budget;
    const over = budget.domains.filter((d) => d.state !== "ok");
    limits.textContent = `throttle at ${pct(budget.throttle)} · stop at ${pct(budget.stop)} · ` +
      `window ${Math.round(budget.window / 3600)} h · at least ${budget.min_volume} delivered`;
    body.replaceChildren(...over.map((d) => {
      const row = document.createElement("tr");
      row.dataset.domain = d.domain;
      row.dataset.state = d.state;
      row.append(td(d.domain), td(d.state, `budget-${d.state}`), td(pct(d.rate), "num"),
        td(`${d.complaints} / ${d.delivered}`, "num"),
        td(d.lifted_until ? new Date(d.lifted_until * 1000).toLocaleString() : "—"));
      return row;
    }));
    card.hidden = over.length === 0;
    const stopped = over.filter((d) => d.state === "stopped").length;
    badge.hidden = over.length === 0;
    badge.textContent = `complaint budget: ${stopped} stopped, ${over.length - stopped} throttled`;
  }

  async function poll() {
    try {
      const resp = await fetch("/api/v1/compliance", { cache: "no-store", headers: { Accept: "application/json" } });
      if (resp.ok) render(await resp.json());
    } catch (err) {
      // the main panel shows the connection state; keep the last rendering
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
