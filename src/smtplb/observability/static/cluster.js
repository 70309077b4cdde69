// smtplb dashboard, cluster panel: polls /api/v1/cluster every 5 s and lists the nodes
// (their heartbeats in Redis; this node alone without [cluster] redis) with queue depth,
// delivery rate, member health and the age of the heartbeat. Test hooks: data-node
// (with data-self), data-redis.
"use strict";

(() => {
  const POLL_MS = 5000;
  const card = document.querySelector("#cluster-card");
  if (!card) return;

  const el = window.smtplbEl; // from dashboard.js, loaded before this file

  const health = (h) => Object.entries(h || {}).map(([state, n]) => `${n} ${state}`).join(", ") || "—";
  const REDIS = { off: "no Redis: this node only", up: "Redis up", down: "Redis unreachable: shared limits fall back to a local share", unknown: "Redis: not tried yet" };

  function render(d) {
    const redis = card.querySelector("#cluster-redis");
    redis.textContent = REDIS[d.redis] || d.redis;
    redis.setAttribute("data-redis", d.redis);
    redis.className = d.redis === "down" ? "badge badge-warn" : "muted";
    const rows = d.nodes.map((n) => el("tr", { "data-node": n.node, "data-self": n.self ? "true" : "false" },
      el("td", {}, n.self ? `${n.node} (this node)` : n.node),
      el("td", { class: "mono" }, (n.smtp || []).join(", ")),
      el("td", { class: "num" }, String(n.queue_depth)),
      el("td", { class: "num" }, String(n.rate_per_minute)),
      el("td", {}, health(n.health)),
      el("td", {}, n.draining ? "draining" : "accepting"),
      el("td", {}, n.version),
      el("td", { class: "num" }, `${n.age.toFixed(1)} s`)));
    card.querySelector("#cluster tbody").replaceChildren(...rows);
  }

  async function poll() {
    try {
      const resp = await fetch("/api/v1/cluster", {
        cache: "no-store", signal: AbortSignal.timeout(5000), headers: { Accept: "application/json" },
      });
      if (resp.ok) render(await resp.json());
    } catch (_err) {
      // the main panel's status already says the node does not answer
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
