// drover's dashboard: polls /dashboard/data every second and draws it; acts through the
// admin API. Served by drover itself (src/dashboard.rs); no dependencies.
"use strict";

const POLL_MS = 1000;
let previous = null; // { at, models: {name: {requests, tokens}} } for rates

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};

const bytes = (n) => (n == null ? "–" : (n / 1e9).toFixed(1) + " GB");

async function call(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-drover-dashboard": "1" },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = { raw: text }; }
  return { ok: r.ok, status: r.status, json };
}

// The load a server reports about itself (llama.cpp /slots, vLLM /metrics), or a dash.
function reported(r) {
  if (!r) return "–";
  const parts = [r.slots != null ? `${r.running} / ${r.slots} slots` : `${r.running} running`];
  if (r.waiting) parts.push(`${r.waiting} waiting`);
  if (r.kv_cache_used != null) parts.push(`KV ${Math.round(r.kv_cache_used * 100)}%`);
  if (r.full) parts.push("full");
  return parts.join(", ");
}

function drawServers(servers) {
  const body = document.querySelector("#servers tbody");
  body.replaceChildren(...servers.map((s) => {
    const routes = s.routes.map((r) => `${r.model} · ${r.priority} · ${r.weight}`).join("\n") || "(discovery)";
    const button = el("button", { class: "drain", type: "button" }, s.drained ? "enable" : "drain");
    button.addEventListener("click", async () => {
      button.disabled = true;
      await call("/admin/drain", { server_url: s.url, drained: !s.drained });
      refresh();
    });
    return el("tr", { "data-server": s.url, "data-state": s.state, "data-kind": s.kind },
      el("td", {}, s.url, el("div", { class: "small" }, `${s.kind}${s.version ? " " + s.version : ""}`)),
      el("td", { class: `state state-${s.state}`, title: s.down_reason || "" }, s.state.replace("_", " "),
        s.down_reason ? el("div", { class: "small" }, s.down_reason) : ""),
      el("td", { class: "small", style: "white-space: pre-line" }, routes),
      el("td", { class: "num" }, `${s.in_flight} / ${s.max_concurrency}`),
      el("td", { class: "small", "data-reported": s.reported_load ? "yes" : "no" }, reported(s.reported_load)),
      el("td", { class: "small" }, s.loaded.join(", ") || "–"),
      el("td", { class: "num" }, bytes(s.free_ram_bytes)),
      el("td", { class: "num" }, bytes(s.free_vram_bytes)),
      el("td", { class: "num" }, s.requests),
      el("td", { class: "num", title: s.last_error || "" }, s.errors),
      el("td", {}, button));
  }));
}

function drawModels(models, now) {
  const rate = (name, key, value) => {
    const before = previous && previous.models[name];
    if (!before) return "–";
    const secs = (now - previous.at) / 1000;
    return secs > 0 ? ((value - before[key]) / secs).toFixed(1) : "–";
  };
  document.querySelector("#models tbody").replaceChildren(...models.map((m) =>
    el("tr", { "data-model": m.model },
      el("td", {}, m.model),
      el("td", { class: "num" }, rate(m.model, "requests", m.requests)),
      el("td", { class: "num" }, rate(m.model, "tokens", m.tokens)),
      el("td", { class: "num" }, m.requests),
      el("td", { class: "num" }, m.tokens))));
  previous = { at: now, models: Object.fromEntries(models.map((m) => [m.model, m])) };
}

function drawRequired(rows) {
  document.querySelector("#required tbody").replaceChildren(...rows.map((r) =>
    el("tr", {},
      el("td", {}, r.server), el("td", {}, r.model), el("td", {}, r.state),
      el("td", { class: "small" }, r.total ? `${Math.round(100 * r.completed / r.total)}% ${r.status}` : (r.error || "")))));
}

function drawErrors(errors) {
  document.querySelector("#errors tbody").replaceChildren(...errors.slice().reverse().map((e) =>
    el("tr", {},
      el("td", { class: "small" }, e.time), el("td", {}, e.status), el("td", {}, e.model || ""),
      el("td", { class: "small" }, e.server || ""), el("td", {}, e.error))));
}

// The replica keeper (load_balancer.replicas): copies placed, loads under way, last changes.
function drawReplicas(r) {
  const state = document.getElementById("replicas-state");
  if (!r || !r.enabled) {
    state.textContent = "(off: load_balancer.replicas)";
    document.querySelector("#replicas tbody").replaceChildren();
    return;
  }
  const placed = r.placed.map((p) => `${p.model} on ${p.server}`).join(", ") || "none";
  const loading = r.loading.map((p) => `${p.model} on ${p.server}`).join(", ");
  state.textContent = `(${r.min_replicas} to ${r.max_replicas} copies; placed: ${placed}${loading ? "; loading: " + loading : ""})`;
  document.querySelector("#replicas tbody").replaceChildren(...r.changes.slice().reverse().map((c) =>
    el("tr", { "data-change": c.change },
      el("td", { class: "small" }, c.at), el("td", {}, c.model), el("td", { class: "small" }, c.server),
      el("td", { title: c.error || "" }, c.change))));
}

async function refresh() {
  const updated = document.getElementById("updated");
  try {
    const r = await fetch("/dashboard/data", { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const d = await r.json();
    const now = Date.now();
    const up = d.servers.filter((s) => s.state !== "down").length;
    document.getElementById("summary").textContent =
      `${up} of ${d.servers.length} servers up · ${d.queued} queued · up ${d.uptime_seconds}s`;
    drawServers(d.servers);
    drawModels(d.models, now);
    drawRequired(d.required_models || []);
    drawReplicas(d.replicas);
    drawErrors(d.errors);
    updated.textContent = "updated " + new Date(now).toLocaleTimeString();
    updated.classList.remove("stale");
  } catch (e) {
    updated.textContent = `cannot reach drover (${e.message})`;
    updated.classList.add("stale");
  }
}

document.getElementById("pull-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("pull-result");
  const model = document.getElementById("pull-model").value.trim();
  const body = { model };
  out.hidden = false;
  out.textContent = `pulling ${model}…`;
  if (document.getElementById("pull-all").checked) {
    // Only Ollama servers manage models.
    body.servers = [...document.querySelectorAll("#servers tbody tr")]
      .filter((tr) => tr.dataset.kind === "ollama")
      .map((tr) => tr.dataset.server);
  }
  const r = await call("/admin/models/pull", body);
  out.textContent = (r.ok ? "done\n" : `failed (HTTP ${r.status})\n`) + JSON.stringify(r.json, null, 2);
  out.dataset.status = r.ok ? "success" : "failed";
  refresh();
});

refresh();
setInterval(refresh, POLL_MS);
