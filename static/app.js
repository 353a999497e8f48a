// medfed control panel: plain JS, live updates from /api/events (SSE).
// Every server-provided string reaches the page as text (textContent,
// never innerHTML); the Content-Security-Policy allows no inline script.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { tasks: {}, settings: {}, joined: {}, runId: null, runActive: false, series: {}, charts: {},
                privacy: {}, privacyChart: null, csrf: null, source: null };

// An element with attributes and children; strings become text nodes.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "className") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(message) {
  const box = $("#error");
  if (!message) { box.hidden = true; return; }
  box.textContent = message;
  box.hidden = false;
}

class Unauthenticated extends Error {}

// Same-origin requests carry the session cookie; changes also carry the
// session's CSRF token.
async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = Object.assign({}, options.headers || {});
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (response.status === 401 && path !== "/api/login") {
    signedOut();
    throw new Unauthenticated((body && body.error) || "sign in first");
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function fmt(x, digits = 4) { return x === null || x === undefined ? "—" : Number(x).toFixed(digits); }

function time(unix) { return unix ? new Date(unix * 1000).toLocaleTimeString() : "—"; }

// ---------- sign-in ----------

function signedOut() {
  state.csrf = null;
  if (state.source) { state.source.close(); state.source = null; }
  $("#main").hidden = true;
  $("#logout").hidden = true;
  $("#login-form").hidden = false;
  $("#connection").textContent = "signed out";
  $("#connection").className = "pill offline";
}

function signedIn(csrf) {
  state.csrf = csrf;
  $("#login-form").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  connect();
  Promise.all([loadState(), loadHospitals(), loadRuns(), loadModels()])
    .then(loadRunSeries)
    .catch(reportError("Cannot reach the coordinator"));
}

function reportError(prefix) {
  return (err) => { if (!(err instanceof Unauthenticated)) showError(`${prefix}: ${err.message}`); };
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  const input = $("#token");
  try {
    const session = await api("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: input.value.trim() }),
    });
    input.value = "";
    signedIn(session.csrf);
  } catch (err) { showError(`Could not sign in: ${err.message}`); }
});

$("#logout").addEventListener("click", async () => {
  try { await api("/api/logout", { method: "POST" }); } catch (_) { /* signed out either way */ }
  signedOut();
});

// ---------- overview ----------

function renderCards() {
  const cards = $("#task-cards");
  cards.replaceChildren();
  for (const [name, t] of Object.entries(state.tasks)) {
    const m = t.last_metrics || {};
    const s = state.settings[name] || {};
    const joined = state.joined[name] ?? 0;
    const members = s.hospitals ? `${joined} of ${s.hospitals} joined (quorum ${s.min_hospitals})` : String(joined);
    const facts = [["kind", t.kind], ["hospitals", members], ["accuracy", fmt(m.accuracy)], ["AUC", fmt(m.auc)],
      ["loss", fmt(m.loss)]];
    const list = el("dl", {}, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    if (t.abort_reason) list.append(el("dt", {}, "aborted"), el("dd", { className: "status-offline" }, t.abort_reason));
    cards.append(el("div", { className: "card", id: `card-${name}` },
      el("h3", {}, name, " ", el("span", { className: `phase ${t.phase}`, id: `phase-${name}` }, t.phase)),
      el("div", {}, "round ", el("span", { className: "round", id: `round-${name}` }, `${t.round}/${t.target_rounds}`)),
      list));
  }
  $("#start").disabled = state.runActive;
  $("#stop").disabled = !state.runActive;
}

function renderForm() {
  const choices = $("#task-choices");
  choices.replaceChildren();
  for (const name of Object.keys(state.tasks)) {
    choices.append(el("label", {}, el("input", { type: "checkbox", name: "task", value: name, checked: true }), " ", name));
  }
  const lines = Object.entries(state.settings).map(([name, s]) => {
    const p = s.privacy.mode === "off" ? "privacy off" :
      `privacy ${s.privacy.mode} (${s.privacy.relation}), epsilon ${s.privacy.epsilon}, delta ${s.privacy.delta}`;
    return `${name}: ${s.hospitals} ${s.kind} hospitals (quorum ${s.min_hospitals}), ${s.strategy}, ${s.partition} partition, ${p}`;
  });
  $("#settings").textContent = "Settings from the configuration: " + lines.join("; ");
}

function chartFor(name) {
  if (state.charts[name]) return state.charts[name];
  const target = el("div", { id: `chart-${name}` });
  const box = el("div", { className: "panel" }, el("h2", {}, `${name}: held-out metrics per round`), target);
  $("#charts").append(box);
  const s = state.series[name] || (state.series[name] = { round: [], accuracy: [], auc: [], loss: [] });
  const width = Math.max(380, box.clientWidth - 40);
  const chart = new uPlot({
    width, height: 260,
    scales: { x: { time: false }, y: { range: [0, 1] } },
    axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, { label: "metric" }],
    series: [{ label: "round" },
      { label: "accuracy", stroke: "#1f6feb", width: 2 },
      { label: "AUC", stroke: "#1a7f37", width: 2 },
      { label: "loss", stroke: "#cf222e", width: 2 }],
  }, [s.round, s.accuracy, s.auc, s.loss], target);
  state.charts[name] = chart;
  return chart;
}

function redraw(name) {
  const s = state.series[name];
  chartFor(name).setData([s.round, s.accuracy, s.auc, s.loss]);
}

async function loadState() {
  const s = await api("/api/state");
  state.tasks = s.tasks; state.settings = s.settings; state.joined = s.joined || {};
  state.runId = s.run_id; state.runActive = s.run_active;
  renderCards();
  if (!$("#task-choices").children.length) renderForm();
  for (const name of Object.keys(state.tasks)) chartFor(name);
}

async function loadRunSeries() {
  if (!state.runId) return;
  const run = await api(`/api/runs/${encodeURIComponent(state.runId)}`);
  for (const [name, t] of Object.entries(run.report || {})) {
    state.series[name] = {
      round: t.rounds.map((r) => r.round), accuracy: t.rounds.map((r) => r.accuracy),
      auc: t.rounds.map((r) => r.auc), loss: t.rounds.map((r) => r.loss) };
    redraw(name);
  }
}

$("#start-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  const tasks = [...document.querySelectorAll("input[name=task]:checked")].map((i) => i.value);
  const rounds = Number($("#rounds").value);
  const exclude = $("#exclude").value.split(",").map((h) => h.trim()).filter((h) => h);
  try {
    const r = await api("/api/runs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rounds, tasks, exclude }),
    });
    state.runId = r.id;
  } catch (err) { reportError("Could not start the run")(err); }
});

$("#stop").addEventListener("click", async () => {
  showError(null);
  if (!state.runId) return;
  try {
    await api(`/api/runs/${encodeURIComponent(state.runId)}/stop`, { method: "POST" });
  } catch (err) { reportError("Could not stop the run")(err); }
});

// ---------- hospitals ----------

async function loadHospitals() {
  const { hospitals } = await api("/api/hospitals");
  const body = $("#hospital-table tbody");
  body.replaceChildren();
  // Membership on the overview cards follows the hospital table.
  state.joined = {};
  for (const h of hospitals) if (h.status === "online") state.joined[h.task] = (state.joined[h.task] || 0) + 1;
  renderCards();
  for (const h of hospitals) {
    const privacy = h.epsilon_budget ? `${fmt(h.epsilon_spent || 0, 3)} / ${fmt(h.epsilon_budget, 2)}` : "DP off";
    const samples = h.samples === 0 ? "withheld (DP)" : h.epsilon_budget ? `${h.samples} (noised)` : String(h.samples);
    const cells = [h.name, h.task, h.kind, h.node];
    body.append(el("tr", {},
      cells.map((c) => el("td", {}, c ?? "—")),
      el("td", { className: `status-${h.status}` }, h.status),
      el("td", {}, time(h.last_seen)), el("td", {}, samples), el("td", {}, privacy),
      el("td", {}, h.last_update || "—"), el("td", {}, fmt(h.last_train_loss))));
  }
}

function recordPrivacy(event) {
  if (event.epsilon_spent === null || event.epsilon_spent === undefined) return;
  const key = `${event.task} r${event.round}`;
  (state.privacy[event.hospital] = state.privacy[event.hospital] || {})[key] = event.epsilon_spent;
  const hospitals = Object.keys(state.privacy).sort();
  const steps = [...new Set(hospitals.flatMap((h) => Object.keys(state.privacy[h])))];
  const x = steps.map((_, i) => i + 1);
  const data = [x, ...hospitals.map((h) => steps.map((k) => state.privacy[h][k] ?? null))];
  if (!state.privacyChart) {
    const box = $("#privacy-chart");
    box.replaceChildren(el("h2", {}, "Epsilon spent per hospital, by round"));
    state.privacyChart = new uPlot({
      width: Math.max(380, box.clientWidth - 20), height: 240, scales: { x: { time: false } },
      axes: [{ label: "round (all tasks)", incrs: [1, 2, 5, 10, 20, 50, 100] }, { label: "epsilon" }],
      series: [{ label: "round" }, ...hospitals.map((h, i) => ({ label: h, stroke: `hsl(${i * 47} 70% 45%)`, width: 2 }))],
    }, data, box);
  } else if (state.privacyChart.series.length - 1 !== hospitals.length) {
    state.privacyChart.destroy(); state.privacyChart = null; recordPrivacy(event);
  } else {
    state.privacyChart.setData(data);
  }
}

// ---------- runs ----------

// A download link: same-origin, so the session cookie authenticates it.
function download(path, filename, text) {
  return el("a", { href: path, download: filename }, text);
}

async function loadRuns() {
  const { runs } = await api("/api/runs");
  const body = $("#run-table tbody");
  body.replaceChildren();
  for (const r of runs) {
    const acc = Object.entries(r.final_accuracy || {}).map(([t, a]) => `${t} ${fmt(a)}`).join(", ") || "—";
    const models = r.tasks.map((t) => [download(
      `/api/runs/${encodeURIComponent(r.id)}/model?task=${encodeURIComponent(t)}`,
      `${r.id}-${t}.safetensors`, `${t}.safetensors`), " "]);
    body.append(el("tr", {},
      el("td", {}, el("button", { type: "button", className: "link", dataset: { run: r.id } }, r.id)),
      el("td", {}, r.status), el("td", {}, time(r.started_at)), el("td", {}, r.tasks.join(", ")),
      el("td", {}, acc), el("td", {}, models)));
  }
}

// The registry, from the store.
async function loadModels() {
  const body = $("#model-table tbody");
  let models = [];
  try { ({ models } = await api("/api/models")); } catch (err) {
    if (err instanceof Unauthenticated) throw err;
    models = []; // this server keeps no store
  }
  body.replaceChildren();
  for (const m of models) {
    const cells = [`${m.task}:${m.version}`, m.run_id, String(m.round), fmt(m.metrics && m.metrics.accuracy),
      fmt(m.metrics && m.metrics.auc), m.replaces ? `version ${m.replaces}` : "—", m.sha256.slice(0, 16)];
    const path = `/api/models/${encodeURIComponent(m.task)}/${encodeURIComponent(m.version)}/download`;
    body.append(el("tr", {}, cells.map((c) => el("td", {}, c)),
      el("td", {}, download(path, `${m.task}-v${m.version}.safetensors`, "download"))));
  }
}

$("#run-table").addEventListener("click", async (e) => {
  const id = e.target.dataset && e.target.dataset.run;
  if (!id) return;
  try {
    const run = await api(`/api/runs/${encodeURIComponent(id)}`);
    const detail = $("#run-detail");
    detail.replaceChildren();
    for (const [name, t] of Object.entries(run.report || {})) {
      const title = `${run.id} — ${name} (${t.status}${t.abort_reason ? ": " + t.abort_reason : ""})`;
      const box = el("div", { className: "panel" }, el("h2", {}, title));
      detail.append(box);
      new uPlot({ width: Math.max(380, box.clientWidth - 40), height: 220, scales: { x: { time: false } },
        series: [{ label: "round" }, { label: "accuracy", stroke: "#1f6feb", width: 2 },
          { label: "AUC", stroke: "#1a7f37", width: 2 }, { label: "loss", stroke: "#cf222e", width: 2 }] },
        [t.rounds.map((r) => r.round), t.rounds.map((r) => r.accuracy), t.rounds.map((r) => r.auc),
         t.rounds.map((r) => r.loss)], box);
    }
  } catch (err) { reportError(`Could not load run ${id}`)(err); }
});

// ---------- live events ----------

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadHospitals().catch(reportError("Cannot load hospitals")), 200);
}

function onEvent(event) {
  switch (event.type) {
    case "run_started":
      state.runId = event.run_id; state.runActive = true;
      for (const t of event.tasks) { state.series[t] = { round: [], accuracy: [], auc: [], loss: [] }; redraw(t); }
      loadState().catch(reportError("Cannot load the state"));
      break;
    case "phase_changed":
      if (state.tasks[event.task]) {
        state.tasks[event.task].phase = event.phase.phase;
        if (event.phase.reason) state.tasks[event.task].abort_reason = event.phase.reason;
        renderCards();
      }
      break;
    case "round_aggregated": {
      const t = state.tasks[event.task];
      if (t) { t.round = event.round; t.last_metrics = event.metrics; renderCards(); }
      const s = state.series[event.task] || (state.series[event.task] = { round: [], accuracy: [], auc: [], loss: [] });
      s.round.push(event.round); s.accuracy.push(event.metrics.accuracy);
      s.auc.push(event.metrics.auc); s.loss.push(event.metrics.loss);
      redraw(event.task);
      break;
    }
    case "update_accepted":
      recordPrivacy(event); refreshSoon(); break;
    case "task_aborted":
      showError(`${event.task} aborted: ${event.reason}`); break;
    case "run_ended":
      state.runActive = false; renderCards();
      Promise.all([loadRuns(), loadModels()]).catch(reportError("Cannot load runs"));
      loadState().catch(reportError("Cannot load the state"));
      break;
    case "lagged":
      loadState().then(loadRunSeries).catch(reportError("Cannot load the state")); break;
    default:
      if (event.type && event.type.startsWith("hospital_")) refreshSoon();
      if (event.type && event.type.startsWith("update_")) refreshSoon();
  }
}

// The stream is a same-origin GET: the session cookie authenticates it,
// so no token ever goes into a URL.
function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/api/events");
  state.source = source;
  source.onopen = () => { $("#connection").textContent = "live"; $("#connection").className = "pill online"; };
  source.onerror = () => {
    $("#connection").textContent = "reconnecting"; $("#connection").className = "pill offline";
    // A refused stream is not retried by the browser: find out whether the session ended.
    if (source.readyState === EventSource.CLOSED) {
      api("/api/session").then(() => setTimeout(connect, 2000)).catch(() => {});
    }
  };
  source.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { showError(`bad event: ${e.message}`); } };
}

// ---------- tabs and start-up ----------

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${tab.dataset.view}`;
    if (tab.dataset.view === "hospitals") loadHospitals().catch(reportError("Cannot load hospitals"));
    if (tab.dataset.view === "runs") Promise.all([loadRuns(), loadModels()]).catch(reportError("Cannot load runs"));
  });
}

// A page reload keeps its session (the cookie): ask for its CSRF token.
api("/api/session")
  .then((s) => signedIn(s.csrf))
  .catch((err) => { if (!(err instanceof Unauthenticated)) showError(`Cannot reach the server: ${err.message}`); });
