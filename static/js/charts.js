// Charts (uPlot) that fit their box at any width: each is sized from its
// own container once that container is in the page, and re-measured when
// the container resizes, so cards added later never overlap earlier ones.

const HEIGHT = 240;

// Rounds are whole numbers: ticks at 1, 2, 5, 10... and never a fraction.
export const roundAxis = (label = "round") => ({
  label,
  incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
  values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? String(t) : "")),
});

export const COLORS = ["#1f6feb", "#1a7f37", "#8250df", "#bf3989", "#9a6700", "#0a7f8c", "#cf222e", "#57606a"];

export function color(i) { return i < COLORS.length ? COLORS[i] : `hsl(${(i * 47) % 360} 65% 42%)`; }

// A chart in `box` (an empty element already in the page).
export function chart(box, options, data) {
  const width = () => Math.max(200, Math.floor(box.getBoundingClientRect().width));
  const plot = new uPlot(Object.assign({ width: width(), height: options.height || HEIGHT, legend: { live: false } }, options),
    data, box);
  let last = plot.width;
  const observer = new ResizeObserver(() => {
    const w = width();
    if (Math.abs(w - last) >= 1) { last = w; plot.setSize({ width: w, height: plot.height }); }
  });
  observer.observe(box);
  return {
    plot,
    setData(d) { plot.setData(d); },
    destroy() { observer.disconnect(); plot.destroy(); },
  };
}

// Held-out metrics of one task per round on [0, 1], loss on its own
// axis; the federated pooled accuracy and a centralized baseline when known.
export function taskSeries(report) {
  const rounds = report.rounds || [];
  const x = rounds.map((r) => r.round);
  const pooled = rounds.map((r) => (r.federated && r.federated.pooled ? r.federated.pooled.accuracy : null));
  const baseline = report.centralized ? rounds.map(() => report.centralized.accuracy) : rounds.map(() => null);
  return [x, rounds.map((r) => r.accuracy), rounds.map((r) => r.auc), rounds.map((r) => r.f1), pooled, baseline,
    rounds.map((r) => r.loss)];
}

export function taskChartOptions() {
  return {
    scales: { x: { time: false }, y: { range: [0, 1] }, loss: { auto: true } },
    axes: [roundAxis(), { scale: "y", label: "held-out metric" },
      { scale: "loss", side: 1, label: "loss", grid: { show: false } }],
    series: [{ label: "round" },
      { label: "accuracy", stroke: COLORS[0], width: 2 },
      { label: "AUC", stroke: COLORS[1], width: 2 },
      { label: "F1", stroke: COLORS[2], width: 2 },
      { label: "federated accuracy (pooled)", stroke: COLORS[3], width: 2, dash: [6, 4] },
      { label: "centralized baseline", stroke: COLORS[7], width: 1.5, dash: [2, 4] },
      { label: "loss", stroke: COLORS[6], width: 2, scale: "loss" }],
  };
}

// Each hospital's accuracy of the global model on its own test split.
export function hospitalSeries(report) {
  const rounds = report.rounds || [];
  const names = [...new Set(rounds.flatMap((r) => Object.keys((r.federated && r.federated.accuracy_by_hospital) || {})))].sort();
  const x = rounds.map((r) => r.round);
  const ys = names.map((h) => rounds.map((r) => {
    const by = (r.federated && r.federated.accuracy_by_hospital) || {};
    return h in by ? by[h] : null;
  }));
  return { names, data: [x, ...ys] };
}

export function hospitalChartOptions(names) {
  return {
    scales: { x: { time: false }, y: { range: [0, 1] } },
    axes: [roundAxis(), { label: "local test accuracy" }],
    series: [{ label: "round" }, ...names.map((h, i) => ({ label: h, stroke: color(i), width: 1.5 }))],
  };
}
