// The privacy view: per DP hospital, what its ledger has spent and has
// left, what the next run would cost, and its epsilon after each accepted
// round. All of it comes from /api/privacy, so it survives a reload.

import { $, api, el, fmt } from "./common.js";
import { chart, color } from "./charts.js";

let epsilonChart = null;
let chartNames = "";
let largestBudget = 0;

export async function loadPrivacy(rounds) {
  const query = rounds ? `?rounds=${encodeURIComponent(rounds)}` : "";
  const { hospitals } = await api(`/api/privacy${query}`);
  const section = $("#privacy");
  section.hidden = hospitals.length === 0;
  if (!hospitals.length) return;
  const body = $("#privacy-table tbody");
  body.replaceChildren();
  for (const h of hospitals) {
    const next = h.next_run || {};
    const cost = next.epsilon === null || next.epsilon === undefined ? "unknown" :
      `${fmt(next.epsilon, 3)} over ${next.rounds} rounds${next.fits === false ? " (more than is left: later rounds will be declined)" : ""}`;
    const used = h.epsilon_budget > 0 ? Math.min(1, h.epsilon_spent / h.epsilon_budget) : 0;
    body.append(el("tr", { dataset: { hospital: h.name } },
      el("td", {}, h.name), el("td", {}, h.task),
      el("td", {}, `${h.mechanism.mechanism}, noise ${fmt(h.mechanism.noise_multiplier, 3)}, delta ${h.mechanism.delta}`),
      el("td", { className: "spent" }, fmt(h.epsilon_spent, 3)),
      el("td", {}, fmt(h.epsilon_budget, 2)),
      el("td", { className: "remaining" }, fmt(h.epsilon_remaining, 3),
        el("meter", { min: 0, max: 1, value: used, title: `${Math.round(used * 100)}% spent` })),
      el("td", { className: "next-run" }, cost)));
  }
  drawHistory(hospitals);
}

// x: the order in which rounds were accepted (all runs), y: lifetime epsilon.
function drawHistory(hospitals) {
  const keys = [];
  const seen = new Set();
  for (const h of hospitals) {
    for (const p of h.history) {
      const k = `${p.run} ${p.task} ${p.round}`;
      if (!seen.has(k)) { seen.add(k); keys.push(k); }
    }
  }
  const names = hospitals.map((h) => h.name);
  const x = keys.map((_, i) => i + 1);
  const ys = hospitals.map((h) => {
    const by = new Map(h.history.map((p) => [`${p.run} ${p.task} ${p.round}`, p.epsilon]));
    return keys.map((k) => (by.has(k) ? by.get(k) : null));
  });
  const data = [x, ...ys];
  largestBudget = Math.max(0, ...hospitals.map((h) => h.epsilon_budget));
  if (epsilonChart && names.join(",") !== chartNames) { epsilonChart.destroy(); epsilonChart = null; }
  if (!epsilonChart) {
    epsilonChart = chart($("#privacy-chart"), {
      scales: { x: { time: false }, y: { auto: true, range: (u, lo, hi) => [0, Math.max(hi, largestBudget)] } },
      axes: [{ label: "accepted round (all runs, in order)", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500],
        values: (u, t) => t.map((v) => (Number.isInteger(v) ? String(v) : "")) }, { label: "epsilon spent" }],
      series: [{ label: "round" }, ...names.map((h, i) => ({ label: h, stroke: color(i), width: 2, spanGaps: true }))],
    }, data);
    chartNames = names.join(",");
  } else {
    epsilonChart.setData(data);
  }
}
