// A small line chart drawn as inline SVG from epoch records (no library): axes with ticks,
// one polyline and one marker per point for each series, a legend. Colours come from CSS
// classes (series-0, series-1, ...), so the chart follows the light or dark theme.

import { fmtNumber, h, s } from "./dom.js";

const W = 560;
const H = 260;
const M = { top: 16, right: 16, bottom: 40, left: 64 };

/** A chart of `series` ([{key, label}]) against `epoch`; `.update(records)` redraws it. */
export function lineChart({ title, yLabel, series }) {
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                         "aria-label": title, "data-points": "0" });
  const caption = h("figcaption", {}, title);
  const legend = h("ul", { class: "legend" },
    series.map((one, i) => h("li", {}, h("span", { class: `swatch series-${i}`,
                                                      "aria-hidden": "true" }), one.label)));
  const note = h("p", { class: "muted chart-note" }, "no epochs yet");
  const figure = h("figure", { class: "chart-box" }, caption, svg, legend, note);

  function update(records) {
    const points = records.filter((r) => Number.isFinite(r.epoch));
    svg.setAttribute("data-points", String(points.length));
    svg.classList.toggle("dense", points.length > 40);
    svg.replaceChildren();
    note.textContent = points.length
      ? `${points.length} epoch${points.length === 1 ? "" : "s"}` : "no epochs yet";
    const values = [];
    for (const one of series) {
      for (const r of points) if (Number.isFinite(r[one.key])) values.push(r[one.key]);
    }
    const xMax = Math.max(1, ...points.map((r) => r.epoch));
    let yMin = values.length ? Math.min(...values) : 0;
    let yMax = values.length ? Math.max(...values) : 1;
    if (yMin === yMax) { yMin -= 0.5; yMax += 0.5; }
    const pad = (yMax - yMin) * 0.05;
    yMin -= pad; yMax += pad;
    const x = (e) => M.left + ((e - (xMax > 1 ? 1 : 0)) / Math.max(1, xMax - 1)) * (W - M.left - M.right);
    const y = (v) => H - M.bottom - ((v - yMin) / (yMax - yMin)) * (H - M.top - M.bottom);

    const axes = s("g", { class: "axes" });
    axes.append(s("line", { x1: M.left, y1: H - M.bottom, x2: W - M.right, y2: H - M.bottom }),
                s("line", { x1: M.left, y1: M.top, x2: M.left, y2: H - M.bottom }));
    for (const v of ticks(yMin, yMax, 5)) {
      axes.append(s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
                  s("text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, fmtNumber(v, 3)));
    }
    for (const e of ticks(1, xMax, 6).filter((t) => Number.isInteger(t) && t >= 1)) {
      axes.append(s("text", { x: x(e), y: H - M.bottom + 16, "text-anchor": "middle" }, String(e)));
    }
    axes.append(
      s("text", { x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle",
                  class: "axis-label" }, "epoch"),
      s("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
                  class: "axis-label",
                  transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, yLabel));
    svg.append(axes);

    series.forEach((one, i) => {
      const pts = points.filter((r) => Number.isFinite(r[one.key]));
      if (!pts.length) return;
      const g = s("g", { class: `series series-${i}`, "data-series": one.key });
      g.append(s("polyline", { points: pts.map((r) => `${x(r.epoch)},${y(r[one.key])}`).join(" ") }));
      for (const r of pts) {
        g.append(s("circle", { cx: x(r.epoch), cy: y(r[one.key]), r: 2.5 },
                   s("title", {}, `${one.label}, epoch ${r.epoch}: ${fmtNumber(r[one.key])}`)));
      }
      svg.append(g);
    });
  }

  update([]);
  return { el: figure, update };
}

/** About `n` round tick values between lo and hi. */
function ticks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => span / st <= n) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}
