// One task's results: held-out metrics per round (with the federated pooled
// accuracy and a centralized baseline where one was computed), each
// hospital's local accuracy, the latest precision / recall / F1 and the
// confusion matrix. Used by the overview (the current run) and the runs tab.

import { el, fmt } from "./common.js";
import { chart, hospitalChartOptions, hospitalSeries, taskChartOptions, taskSeries } from "./charts.js";

export class TaskView {
  // `prefix` keeps element ids apart between the overview and a run's detail.
  constructor(parent, name, prefix) {
    this.name = name;
    this.id = `${prefix}-${name}`;
    this.metricsBox = el("div", { className: "chart", id: `${this.id}-metrics` });
    this.hospitalBox = el("div", { className: "chart", id: `${this.id}-hospitals` });
    this.hospitalNote = el("p", { className: "note-text" });
    this.table = el("div", { className: "metrics-table", id: `${this.id}-table` });
    this.confusion = el("div", { className: "confusion", id: `${this.id}-confusion` });
    this.title = el("h2", {}, name);
    this.panel = el("section", { className: "panel task-panel", id: this.id },
      this.title,
      el("div", { className: "task-grid" },
        el("div", { className: "cell" }, el("h3", {}, "Held-out metrics per round"), this.metricsBox),
        el("div", { className: "cell" }, el("h3", {}, "Accuracy at each hospital (its own test split)"),
          this.hospitalBox, this.hospitalNote),
        el("div", { className: "cell" }, el("h3", {}, "Latest round"), this.table),
        el("div", { className: "cell" }, el("h3", {}, "Confusion matrix (held-out, threshold 0.5)"), this.confusion)));
    parent.append(this.panel);
    this.metrics = null;
    this.hospitals = null;
    this.hospitalNames = "";
  }

  setTitle(text) { this.title.textContent = text; }

  update(report) {
    report = report || { rounds: [] };
    const series = taskSeries(report);
    if (!this.metrics) this.metrics = chart(this.metricsBox, taskChartOptions(), series);
    else this.metrics.setData(series);
    const { names, data } = hospitalSeries(report);
    // The series set changes when hospitals do: rebuild the chart then.
    if (this.hospitals && names.join(",") !== this.hospitalNames) { this.hospitals.destroy(); this.hospitals = null; }
    if (!this.hospitals) this.hospitals = chart(this.hospitalBox, hospitalChartOptions(names), data);
    else this.hospitals.setData(data);
    this.hospitalNames = names.join(",");
    const declined = report.rounds.length ? Object.keys(report.rounds[report.rounds.length - 1].federated.declined || {}).length : 0;
    this.hospitalNote.textContent = !names.length && declined ? "Hospitals withhold local metrics under differential privacy." : "";
    this.renderTable(report);
    this.renderConfusion(report);
  }

  renderTable(report) {
    const last = report.rounds.length ? report.rounds[report.rounds.length - 1] : null;
    const rows = [];
    const row = (label, m) => el("tr", {}, el("th", { scope: "row" }, label),
      ["accuracy", "precision", "recall", "f1", "auc", "loss"].map((k) => el("td", {}, m ? fmt(m[k]) : "—")));
    if (last) rows.push(row(`global model, round ${last.round}`, last));
    if (last && last.federated && last.federated.pooled) {
      rows.push(row(`federated (pooled over ${last.federated.evaluated} hospitals)`, last.federated.pooled));
    }
    if (report.centralized) rows.push(row("centralized baseline", report.centralized));
    this.table.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, ""), ["accuracy", "precision", "recall", "F1", "AUC", "loss"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7 }, "no round yet")))));
  }

  renderConfusion(report) {
    const last = report.rounds.length ? report.rounds[report.rounds.length - 1] : null;
    const c = last && last.confusion;
    if (!c) { this.confusion.replaceChildren(el("p", {}, "no round yet")); return; }
    this.confusion.replaceChildren(el("table", { className: "matrix" },
      el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {}, "predicted positive"), el("th", {}, "predicted negative"))),
      el("tbody", {},
        el("tr", {}, el("th", { scope: "row" }, "actual positive"),
          el("td", { className: "tp", dataset: { cell: "tp" } }, String(c.tp)), el("td", { className: "fn", dataset: { cell: "fn" } }, String(c.fn))),
        el("tr", {}, el("th", { scope: "row" }, "actual negative"),
          el("td", { className: "fp", dataset: { cell: "fp" } }, String(c.fp)), el("td", { className: "tn", dataset: { cell: "tn" } }, String(c.tn))))));
  }

  destroy() {
    if (this.metrics) this.metrics.destroy();
    if (this.hospitals) this.hospitals.destroy();
    this.panel.remove();
  }
}
