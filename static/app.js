// medfed control panel: plain JS, live updates from /api/events (SSE).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { tasks: {}, settings: {}, runId: null, runActive: false, series: {}, charts: {},
                privacy: {}, privacyChart: null };

function showError(message) {
  const box = $("#error");
  if (!message) { box.hidden = true; return; }
  box.textContent = message;
  box.hidden = false;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function token() { return $("#token").value.trim(); }

function fmt(x, digits = 4) { return x === null || x === undefined ? "—" : Number(x).toFixed(digits); }

function time(unix) { return unix ? new Date(unix * 1000).toLocaleTimeString() : "—"; }

// ---------- overview ----------

function renderCards() {
  const cards = $("#task-cards");
  cards.innerHTML = "";
  for (const [name, t] of Object.entries(state.tasks)) {
    const m = t.last_metrics || {};
    const card = document.createElement("div");
    card.className = "card";
    card.id = `card-${name}`;
    card.innerHTML = `
      <h3>${name} <span class="phase ${t.phase}" id="phase-${name}">${t.phase}</span></h3>
      <div>round <span class="round" id="round-${name}">${t.round}/${t.target_rounds}</span></div>
      <dl>
        <dt>kind</dt><dd>${t.kind}</dd>
        <dt>accuracy</dt><dd>${fmt(m.accuracy)}</dd>
        <dt>AUC</dt><dd>${fmt(m.auc)}</dd>
        <dt>loss</dt><dd>${fmt(m.loss)}</dd>
        ${t.abort_reason ? `<dt>aborted</dt><dd class="status-offline">${t.abort_reason}</dd>` : ""}
      </dl>`;
    cards.appendChild(card);
  }
  $("#start").disabled = state.runActive;
  $("#stop").disabled = !state.runActive;
}

function renderForm() {
  const choices = $("#task-choices");
  choices.innerHTML = "";
  for (const name of Object.keys(state.tasks)) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" name="task" value="${name}" checked> ${name}`;
    choices.appendChild(label);
  }
  const lines = Object.entries(state.settings).map(([name, s]) => {
    const p = s.privacy.mode === "off" ? "privacy off" :
      `privacy ${s.privacy.mode} (${s.privacy.relation}), epsilon ${s.privacy.epsilon}, delta ${s.privacy.delta}`;
    return `${name}: ${s.hospitals} ${s.kind} hospitals (quorum ${s.min_hospitals}), ${s.strategy}, ${s.partition} partition, ${p}`;
  });
  $("#settings").innerHTML = "Settings from the configuration: " + lines.join("; ");
}

function chartFor(name) {
  if (state.charts[name]) return state.charts[name];
  const box = document.createElement("div");
  box.className = "panel";
  box.innerHTML = `<h2>${name}: held-out metrics per round</h2><div id="chart-${name}"></div>`;
  $("#charts").appendChild(box);
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
  }, [s.round, s.accuracy, s.auc, s.loss], $(`#chart-${name}`));
  state.charts[name] = chart;
  return chart;
}

function redraw(name) {
  const s = state.series[name];
  chartFor(name).setData([s.round, s.accuracy, s.auc, s.loss]);
}

async function loadState() {
  const s = await api("/api/state");
  state.tasks = s.tasks; state.settings = s.settings;
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
  sessionStorage.setItem("medfed-token", token());
  try {
    const r = await api("/api/runs", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": `Bearer ${token()}` },
      body: JSON.stringify({ rounds, tasks, exclude }),
    });
    state.runId = r.id;
  } catch (err) { showError(`Could not start the run: ${err.message}`); }
});

$("#stop").addEventListener("click", async () => {
  showError(null);
  if (!state.runId) return;
  try {
    await api(`/api/runs/${encodeURIComponent(state.runId)}/stop`,
      { method: "POST", headers: { "Authorization": `Bearer ${token()}` } });
  } catch (err) { showError(`Could not stop the run: ${err.message}`); }
});

// ---------- hospitals ----------

async function loadHospitals() {
  const { hospitals } = await api("/api/hospitals");
  const body = $("#hospital-table tbody");
  body.innerHTML = "";
  for (const h of hospitals) {
    const privacy = h.epsilon_budget ? `${fmt(h.epsilon_spent || 0, 3)} / ${fmt(h.epsilon_budget, 2)}` : "DP off";
    const row = document.createElement("tr");
    row.innerHTML = `<td>${h.name}</td><td>${h.task}</td><td>${h.kind}</td><td>${h.node}</td>
      <td class="status-${h.status}">${h.status}</td><td>${time(h.last_seen)}</td><td>${h.samples === 0 ? "withheld (DP)" : h.epsilon_budget ? `${h.samples} (noised)` : h.samples}</td>
      <td>${privacy}</td><td>${h.last_update || "—"}</td><td>${fmt(h.last_train_loss)}</td>`;
    body.appendChild(row);
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
    box.innerHTML = "<h2>Epsilon spent per hospital, by round</h2>";
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

async function loadRuns() {
  const { runs } = await api("/api/runs");
  const body = $("#run-table tbody");
  body.innerHTML = "";
  for (const r of runs) {
    const acc = Object.entries(r.final_accuracy || {}).map(([t, a]) => `${t} ${fmt(a)}`).join(", ") || "—";
    const models = r.tasks.map((t) =>
      `<a href="/api/runs/${encodeURIComponent(r.id)}/model?task=${encodeURIComponent(t)}" download>${t}.safetensors</a>`).join(" ");
    const row = document.createElement("tr");
    row.innerHTML = `<td><button class="link" data-run="${r.id}">${r.id}</button></td><td>${r.status}</td>
      <td>${time(r.started_at)}</td><td>${r.tasks.join(", ")}</td><td>${acc}</td><td>${models}</td>`;
    body.appendChild(row);
  }
}

// The registry, from the store: every value is set as text.
async function loadModels() {
  const body = $("#model-table tbody");
  let models = [];
  try { ({ models } = await api("/api/models")); } catch (_) { models = []; }
  body.replaceChildren();
  for (const m of models) {
    const row = document.createElement("tr");
    const cells = [`${m.task}:${m.version}`, m.run_id, String(m.round), fmt(m.metrics && m.metrics.accuracy),
      fmt(m.metrics && m.metrics.auc), m.replaces ? `version ${m.replaces}` : "—", m.sha256.slice(0, 16)];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      row.appendChild(td);
    }
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.className = "link";
    button.textContent = "download";
    button.addEventListener("click", () => downloadModel(m).catch((err) => showError(err.message)));
    td.appendChild(button);
    row.appendChild(td);
    body.appendChild(row);
  }
}

// Downloads need the token, so they go through fetch.
async function downloadModel(m) {
  const path = `/api/models/${encodeURIComponent(m.task)}/${encodeURIComponent(m.version)}/download`;
  const response = await fetch(path, { headers: { "Authorization": `Bearer ${token()}` } });
  if (!response.ok) throw new Error(`Could not download ${m.task}:${m.version}: ${response.status} (is the API token set?)`);
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = `${m.task}-v${m.version}.safetensors`;
  a.click();
  // Some browsers cancel a download whose URL is revoked at once.
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

$("#run-table").addEventListener("click", async (e) => {
  const id = e.target.dataset && e.target.dataset.run;
  if (!id) return;
  try {
    const run = await api(`/api/runs/${encodeURIComponent(id)}`);
    const detail = $("#run-detail");
    detail.innerHTML = "";
    for (const [name, t] of Object.entries(run.report || {})) {
      const box = document.createElement("div");
      box.className = "panel";
      box.innerHTML = `<h2>${run.id} — ${name} (${t.status}${t.abort_reason ? ": " + t.abort_reason : ""})</h2>`;
      detail.appendChild(box);
      new uPlot({ width: Math.max(380, box.clientWidth - 40), height: 220, scales: { x: { time: false } },
        series: [{ label: "round" }, { label: "accuracy", stroke: "#1f6feb", width: 2 },
          { label: "AUC", stroke: "#1a7f37", width: 2 }, { label: "loss", stroke: "#cf222e", width: 2 }] },
        [t.rounds.map((r) => r.round), t.rounds.map((r) => r.accuracy), t.rounds.map((r) => r.auc),
         t.rounds.map((r) => r.loss)], box);
    }
  } catch (err) { showError(`Could not load run ${id}: ${err.message}`); }
});

// ---------- live events ----------

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadHospitals().catch((e) => showError(e.message)), 200);
}

function onEvent(event) {
  switch (event.type) {
    case "run_started":
      state.runId = event.run_id; state.runActive = true;
      for (const t of event.tasks) { state.series[t] = { round: [], accuracy: [], auc: [], loss: [] }; redraw(t); }
      loadState().catch((e) => showError(e.message));
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
      Promise.all([loadRuns(), loadModels()]).catch((e) => showError(e.message));
      loadState().catch((e) => showError(e.message));
      break;
    case "lagged":
      loadState().then(loadRunSeries).catch((e) => showError(e.message)); break;
    default:
      if (event.type && event.type.startsWith("hospital_")) refreshSoon();
      if (event.type && event.type.startsWith("update_")) refreshSoon();
  }
}

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => { $("#connection").textContent = "live"; $("#connection").className = "pill online"; };
  source.onerror = () => { $("#connection").textContent = "reconnecting"; $("#connection").className = "pill offline"; };
  source.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { showError(`bad event: ${e.message}`); } };
}

// ---------- tabs and start-up ----------

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${tab.dataset.view}`;
    if (tab.dataset.view === "hospitals") loadHospitals().catch((e) => showError(e.message));
    if (tab.dataset.view === "runs") Promise.all([loadRuns(), loadModels()]).catch((e) => showError(e.message));
  });
}

$("#token").value = sessionStorage.getItem("medfed-token") || "";
connect();
Promise.all([loadState(), loadHospitals(), loadRuns(), loadModels()])
  .then(loadRunSeries)
  .catch((e) => showError(`Cannot reach the coordinator: ${e.message}`));
