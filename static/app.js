// medfed control panel: sign-in, tabs, the live overview (SSE from
// /api/events), hospitals with their privacy, and the run history.

import { $, api, el, fmt, reportError, shortNode, showError, state, time, Unauthenticated, whenSignedOut } from "./js/common.js";
import { renderForm, wireForm } from "./js/runform.js";
import { loadPrivacy } from "./js/privacy.js";
import { TaskView } from "./js/taskview.js";

const views = {};      // the overview's task views, by task
let detailViews = [];  // the run detail's

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
whenSignedOut(signedOut);

function signedIn(csrf) {
  state.csrf = csrf;
  $("#login-form").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  connect();
  Promise.all([loadState(), loadHospitals(), loadRuns(), loadModels()])
    .then(loadReport)
    .catch(reportError("Cannot reach the coordinator"));
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
    const facts = [["kind", t.kind], ["hospitals", members], ["accuracy", fmt(m.accuracy)], ["precision", fmt(m.precision)],
      ["recall", fmt(m.recall)], ["F1", fmt(m.f1)], ["AUC", fmt(m.auc)], ["loss", fmt(m.loss)]];
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

async function loadState() {
  const s = await api("/api/state");
  state.tasks = s.tasks; state.settings = s.settings; state.strategies = s.strategies || {};
  state.joined = s.joined || {};
  state.runId = s.run_id; state.runActive = s.run_active;
  renderCards();
  if (!$("#task-choices").children.length) renderForm();
  for (const name of Object.keys(state.tasks)) {
    if (!views[name]) views[name] = new TaskView($("#charts"), name, "live");
  }
}

// The current (or last) run's report: every chart and table of the overview.
async function loadReport() {
  if (!state.runId) { for (const v of Object.values(views)) v.update(null); return; }
  const run = await api(`/api/runs/${encodeURIComponent(state.runId)}`);
  for (const [name, v] of Object.entries(views)) {
    v.setTitle(`${name} — run ${run.id}`);
    v.update((run.report || {})[name]);
  }
}

let reportTimer = null;
function reportSoon() {
  clearTimeout(reportTimer);
  reportTimer = setTimeout(() => loadReport().catch(reportError("Cannot load the run's report")), 250);
}

wireForm((id) => { state.runId = id; });

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
    let privacy = h.epsilon_budget ? `${fmt(h.epsilon_spent || 0, 3)} / ${fmt(h.epsilon_budget, 2)}` : "DP off";
    // Distributed DP: the first figure holds against the coordinator, this one
    // against the coordinator colluding with every other hospital.
    if (h.epsilon_collusion !== undefined) privacy += ` (${fmt(h.epsilon_collusion, 3)} if all others collude)`;
    const samples = h.samples === 0 ? "withheld (DP)" : h.epsilon_budget ? `${h.samples} (noised)` : String(h.samples);
    const status = h.activity ? `${h.status}, ${h.activity}` : h.status;
    body.append(el("tr", { dataset: { hospital: h.name } },
      el("td", {}, h.name), el("td", {}, h.task), el("td", {}, h.kind), el("td", { className: "node" }, shortNode(h.node)),
      el("td", { className: `status-${h.status}` }, status),
      el("td", {}, time(h.last_seen)), el("td", {}, samples),
      el("td", {}, `${h.accepted} / ${h.declined} / ${h.rejected}`),
      el("td", {}, h.update_seconds === undefined ? "—" : `${fmt(h.update_seconds, 2)} s`),
      el("td", {}, privacy), el("td", {}, h.last_update || "—"), el("td", {}, fmt(h.last_train_loss))));
  }
}

function loadPrivacyView() {
  const rounds = Number($("#rounds").value) || undefined;
  return loadPrivacy(rounds);
}

// ---------- runs ----------

// A download link: same-origin, so the session cookie authenticates it.
function download(path, filename, text) {
  return el("a", { href: path, download: filename }, text);
}

function settingsText(settings) {
  const parts = Object.entries(settings || {}).map(([task, s]) => {
    const bits = [];
    if (s.strategy) bits.push(`strategy ${JSON.stringify(s.strategy)}`);
    if (s.training) bits.push(`training ${JSON.stringify(s.training)}`);
    if (s.privacy) bits.push(`privacy ${JSON.stringify(s.privacy)}`);
    return `${task}: ${bits.join(", ")}`;
  });
  return parts.length ? `Run settings: ${parts.join("; ")}` : "Run settings: as configured";
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
    for (const v of detailViews) v.destroy();
    detailViews = [];
    const detail = $("#run-detail");
    detail.replaceChildren(el("p", { className: "run-settings" }, settingsText(run.settings)));
    // Each task's run in MLflow, when the server tracks there.
    const links = Object.entries(run.mlflow || {});
    if (links.length) {
      detail.append(el("p", { className: "mlflow-links" }, "MLflow: ",
        links.map(([task, url]) => [el("a", { href: url, target: "_blank", rel: "noopener", dataset: { mlflow: task } }, task), " "])));
    }
    for (const [name, t] of Object.entries(run.report || {})) {
      const v = new TaskView(detail, name, "run");
      v.setTitle(`${run.id} — ${name} (${t.status}${t.abort_reason ? ": " + t.abort_reason : ""})`);
      v.update(t);
      detailViews.push(v);
    }
  } catch (err) { reportError(`Could not load run ${id}`)(err); }
});

// ---------- live events ----------

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    loadHospitals().catch(reportError("Cannot load hospitals"));
    if (!$("#view-hospitals").hidden) loadPrivacyView().catch(reportError("Cannot load the privacy view"));
  }, 200);
}

function onEvent(event) {
  switch (event.type) {
    case "run_started":
      state.runId = event.run_id; state.runActive = true;
      loadState().then(loadReport).catch(reportError("Cannot load the state"));
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
      reportSoon();
      break;
    }
    case "hospital_evaluated":
      reportSoon(); break;
    case "round_started":
    case "update_accepted":
      refreshSoon(); break;
    case "task_aborted":
      showError(`${event.task} aborted: ${event.reason}`); break;
    case "run_ended":
      state.runActive = false; renderCards();
      Promise.all([loadRuns(), loadModels()]).catch(reportError("Cannot load runs"));
      loadState().then(loadReport).catch(reportError("Cannot load the state"));
      break;
    case "lagged":
      loadState().then(loadReport).catch(reportError("Cannot load the state")); break;
    default:
      if (event.type && (event.type.startsWith("hospital_") || event.type.startsWith("update_"))) refreshSoon();
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
    if (tab.dataset.view === "hospitals") {
      loadHospitals().catch(reportError("Cannot load hospitals"));
      loadPrivacyView().catch(reportError("Cannot load the privacy view"));
    }
    if (tab.dataset.view === "runs") Promise.all([loadRuns(), loadModels()]).catch(reportError("Cannot load runs"));
  });
}

// A page reload keeps its session (the cookie): ask for its CSRF token.
api("/api/session")
  .then((s) => signedIn(s.csrf))
  .catch((err) => { if (!(err instanceof Unauthenticated)) showError(`Cannot reach the server: ${err.message}`); });

// For the browser tests: the panel's state and its renderers.
window.medfedPanel = { state, views, onEvent, loadHospitals, loadRuns, loadPrivacyView };
