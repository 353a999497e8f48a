// "Start a run": tasks, rounds, hospitals left out, and per task the
// settings of the configuration's [tasks.T.strategy], [tasks.T.training]
// and [privacy] tables. Only values that differ from the configuration are
// sent; the server checks them with the configuration's own code and an
// error is shown next to the field it names.

import { $, api, el, reportError, showError, state, ApiError } from "./common.js";

const TRAINING = [
  ["local_epochs", "Local epochs", "1"],
  ["learning_rate", "Learning rate", "any"],
  ["batch_size", "Batch size", "1"],
];

function field(key, label, input) {
  input.dataset.key = key;
  input.id = `field-${key.replaceAll(".", "-")}`;
  return el("label", { className: "field" }, label, input,
    el("span", { className: "field-error", id: `${input.id}-error`, role: "alert" }));
}

function numberInput(value, step, extra = {}) {
  return el("input", Object.assign({ type: "number", step, value: value ?? "", inputmode: "decimal" }, extra));
}

// The strategy's parameter inputs, from its defaults (or the configured values).
function strategyParams(task, name, box) {
  const configured = state.settings[task].strategy_config || {};
  const values = configured.name === name ? configured : (state.strategies[name] || {});
  const defaults = state.strategies[name] || {};
  box.replaceChildren();
  for (const param of Object.keys(defaults).filter((k) => k !== "name")) {
    const step = Number.isInteger(defaults[param]) ? "1" : "any";
    const input = numberInput(values[param], step, { placeholder: defaults[param] === null ? "automatic" : "" });
    input.dataset.param = param;
    box.append(field(`settings.${task}.strategy.${param}`, param, input));
  }
}

function taskSettings(task) {
  const s = state.settings[task];
  const strategy = el("select", {}, Object.keys(state.strategies).map((n) =>
    el("option", { value: n, selected: n === s.strategy }, n)));
  const params = el("div", { className: "params" });
  strategy.addEventListener("change", () => strategyParams(task, strategy.value, params));
  const box = el("fieldset", { className: "task-settings", dataset: { task } },
    el("legend", {}, `${task} settings`),
    field(`settings.${task}.strategy`, "Strategy", strategy), params,
    TRAINING.map(([k, label, step]) => field(`settings.${task}.training.${k}`, label,
      numberInput(s.training[k], step, { min: step === "1" ? 1 : undefined }))));
  strategyParams(task, s.strategy, params);
  const p = s.privacy;
  // The mode is the hospitals' policy: offered so that the form covers the
  // setting, and a change is refused by the server next to it.
  const mode = el("select", {}, ["off", "dp-sgd", "update"].map((m) => el("option", { value: m, selected: m === p.mode }, m)));
  box.append(field(`settings.${task}.privacy.mode`, "Privacy mode", mode));
  if (p.mode === "off") {
    box.append(el("p", { className: "privacy-line" }, "Privacy: off (the hospitals' policy)"));
  } else {
    box.append(el("p", { className: "privacy-line" }, `Privacy: ${p.mode} (${p.relation}), by the hospitals' policy; a run may only make it stricter`),
      field(`settings.${task}.privacy.epsilon`, `Epsilon budget (at most ${p.epsilon})`,
        numberInput(p.epsilon, "any", { min: 0, max: p.epsilon })),
      field(`settings.${task}.privacy.noise_multiplier`, "Noise multiplier (at least)",
        numberInput(p.noise_multiplier, "any", { min: 0, placeholder: "calibrated" })));
  }
  return box;
}

export function renderForm() {
  const choices = $("#task-choices");
  choices.replaceChildren();
  const settings = $("#task-settings");
  settings.replaceChildren();
  for (const name of Object.keys(state.tasks)) {
    const box = el("input", { type: "checkbox", name: "task", value: name, checked: true });
    box.addEventListener("change", () => { settings.querySelector(`[data-task="${CSS.escape(name)}"]`).hidden = !box.checked; });
    choices.append(el("label", {}, box, " ", name));
    settings.append(taskSettings(name));
  }
  const first = Object.values(state.tasks)[0];
  if (first) $("#rounds").value = first.default_rounds;
}

const num = (input) => (input.value.trim() === "" ? null : Number(input.value));

// The settings that differ from the configuration, per task.
function collect(tasks) {
  const out = {};
  for (const task of tasks) {
    const s = state.settings[task];
    const box = document.querySelector(`fieldset[data-task="${CSS.escape(task)}"]`);
    const mine = {};
    const name = box.querySelector(`[data-key="settings.${task}.strategy"]`).value;
    const strategy = { name };
    for (const input of box.querySelectorAll("[data-param]")) {
      const v = num(input);
      if (v !== null) strategy[input.dataset.param] = v;
    }
    const configured = Object.assign({}, s.strategy_config);
    for (const k of Object.keys(configured)) if (configured[k] === null) delete configured[k];
    if (JSON.stringify(Object.entries(strategy).sort()) !== JSON.stringify(Object.entries(configured).sort())) {
      mine.strategy = strategy;
    }
    const training = {};
    for (const [k] of TRAINING) {
      const v = num(box.querySelector(`[data-key="settings.${task}.training.${k}"]`));
      if (v !== null && v !== s.training[k]) training[k] = v;
    }
    if (Object.keys(training).length) mine.training = training;
    const privacy = {};
    const mode = box.querySelector(`[data-key="settings.${task}.privacy.mode"]`).value;
    if (mode !== s.privacy.mode) privacy.mode = mode;
    if (s.privacy.mode !== "off") {
      const eps = num(box.querySelector(`[data-key="settings.${task}.privacy.epsilon"]`));
      if (eps !== null && eps !== s.privacy.epsilon) privacy.epsilon = eps;
      const sigma = num(box.querySelector(`[data-key="settings.${task}.privacy.noise_multiplier"]`));
      if (sigma !== null && sigma !== s.privacy.noise_multiplier) privacy.noise_multiplier = sigma;
    }
    if (Object.keys(privacy).length) mine.privacy = privacy;
    if (Object.keys(mine).length) out[task] = mine;
  }
  return out;
}

function clearFieldErrors() {
  for (const e of document.querySelectorAll(".field-error")) e.textContent = "";
  for (const i of document.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
}

// Show `err` next to the field its key names (or its nearest enclosing
// setting); `true` when it found one.
function showFieldError(err) {
  if (!(err instanceof ApiError) || !err.key) return false;
  let key = err.key;
  while (key) {
    const input = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      document.getElementById(`${input.id}-error`).textContent = err.message;
      input.focus();
      return true;
    }
    key = key.includes(".") ? key.slice(0, key.lastIndexOf(".")) : "";
  }
  return false;
}

export function wireForm(onStarted) {
  $("#start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(null);
    clearFieldErrors();
    const tasks = [...document.querySelectorAll("input[name=task]:checked")].map((i) => i.value);
    const rounds = Number($("#rounds").value);
    const exclude = $("#exclude").value.split(",").map((h) => h.trim()).filter((h) => h);
    const body = { rounds, tasks, exclude };
    const settings = collect(tasks);
    if (Object.keys(settings).length) body.settings = settings;
    try {
      const r = await api("/api/runs", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      onStarted(r.id);
    } catch (err) {
      if (!showFieldError(err)) reportError("Could not start the run")(err);
    }
  });
}
