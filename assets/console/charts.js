// Inline SVG charts, drawn from data with text nodes only (no library, nothing fetched): a
// horizontal bar chart, a column series over time (coloured per bucket) and a line chart.
// Every mark carries a <title>, so hovering (or a screen reader) gives the exact figure.

import { fmtTick } from "./format.js";

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function title(text) {
  return s("title", {}, text);
}

function svg(width, height, label, kind) {
  return s("svg", { class: `chart ${kind}`, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
}

/**
 * Horizontal bars: items [{label, value, text, alt}] (text: the formatted value, alt: a second
 * bar under it, e.g. failures under calls).
 */
export function bars(items, { label = "bar chart", width = 420 } = {}) {
  const row = 24;
  const labelW = Math.min(190, width * 0.45);
  const valueW = 92;
  const height = Math.max(row, items.length * row) + 4;
  const el = svg(width, height, label, "bars");
  const max = Math.max(1e-12, ...items.map((i) => Math.max(i.value || 0, i.alt || 0)));
  const span = width - labelW - valueW;
  items.forEach((it, i) => {
    const y = i * row + 2;
    const name = it.label.length > 24 ? `${it.label.slice(0, 23)}…` : it.label;
    el.append(s("text", { x: labelW - 6, y: y + 15, "text-anchor": "end" }, name, title(it.label)));
    const w = Math.max(1, (span * (it.value || 0)) / max);
    el.append(s("rect", { class: "bar", x: labelW, y: y + 3, width: w, height: it.alt !== undefined ? 9 : 16, rx: 2 },
      title(`${it.label}: ${it.text}`)));
    if (it.alt !== undefined) {
      const wa = Math.max(it.alt ? 1 : 0, (span * it.alt) / max);
      el.append(s("rect", { class: "bar alt", x: labelW, y: y + 13, width: wa, height: 7, rx: 2 },
        title(`${it.label}: ${it.altText}`)));
    }
    el.append(s("text", { x: labelW + w + 4, y: y + 15 }, it.text));
  });
  return el;
}

/**
 * Columns over time: buckets [{start, value, cls, text}] between from and to, one column of
 * width `step` each; value in [0, max]. `cls` colours it (green / red / unknown / bar).
 */
export function columns(buckets, { from, to, step, max, label = "time series", height = 90, width = 420, unit = "" }) {
  const top = 4;
  const bottom = 16;
  const el = svg(width, height, label, "columns");
  const plot = height - top - bottom;
  const n = Math.max(1, Math.ceil((to - from) / step));
  const cw = width / n;
  const peak = max ?? Math.max(1e-12, ...buckets.map((b) => b.value || 0));
  el.append(s("line", { class: "axis", x1: 0, x2: width, y1: top + plot, y2: top + plot }));
  for (const b of buckets) {
    const i = Math.floor((b.start - from) / step);
    if (i < 0 || i >= n) continue;
    const v = Math.max(0, b.value || 0);
    const hgt = Math.max(b.value === null ? plot : 2, (plot * v) / peak);
    el.append(s("rect", {
      class: b.cls || "bar", x: i * cw + 0.5, y: top + plot - hgt, width: Math.max(1, cw - 1), height: hgt,
    }, title(`${fmtTick(b.start, to - from > 86_400_000)}: ${b.text}${unit}`)));
  }
  const long = to - from > 86_400_000;
  for (const t of [from, from + (to - from) / 2, to]) {
    const x = ((t - from) / (to - from)) * width;
    const anchor = t === from ? "start" : t === to ? "end" : "middle";
    el.append(s("text", { x, y: height - 3, "text-anchor": anchor }, fmtTick(t, long)));
  }
  return el;
}

/** Lines over time: series [{name, points: [[t, v]]}] (v null: a gap). */
export function lines(series, { from, to, label = "line chart", height = 120, width = 420, format = String }) {
  const top = 6;
  const bottom = 16;
  const left = 54;
  const el = svg(width, height, label, "lines");
  const plot = height - top - bottom;
  const vals = series.flatMap((s0) => s0.points.map((p) => p[1]).filter((v) => v !== null));
  const max = Math.max(1e-12, ...vals);
  const x = (t) => left + ((t - from) / (to - from)) * (width - left);
  const y = (v) => top + plot - (plot * v) / max;
  el.append(s("line", { class: "axis", x1: left, x2: width, y1: top + plot, y2: top + plot }));
  el.append(s("text", { x: left - 4, y: top + 10, "text-anchor": "end" }, format(max)));
  el.append(s("text", { x: left - 4, y: top + plot, "text-anchor": "end" }, format(0)));
  series.forEach((ser, k) => {
    let d = "";
    let pen = false;
    for (const [t, v] of ser.points) {
      if (v === null) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) el.append(s("path", { class: `line s${k % 3}`, d }, title(ser.name)));
  });
  const long = to - from > 86_400_000;
  for (const t of [from, to]) {
    el.append(s("text", { x: x(t), y: height - 3, "text-anchor": t === from ? "start" : "end" }, fmtTick(t, long)));
  }
  return el;
}
