// DOM building (text nodes only: no data is ever parsed as markup) and the formats of times
// (in analytics.time_zone), money, tokens, durations and ratios, each with its unit.

/**
 * h("tag.class", {attr: value, on: {event: fn}}, ...children): an element. Children are
 * nodes, strings (as text), arrays, or null/false (skipped).
 */
export function h(spec, props = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "text") el.textContent = v;
    else if (k === "class") el.className = [el.className, v].filter(Boolean).join(" ");
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

let zone = "UTC";
let clock = null;
let day = null;

export function setZone(z) {
  zone = z || "UTC";
  const opts = { timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit" };
  clock = new Intl.DateTimeFormat("en-CA", opts);
  day = new Intl.DateTimeFormat("en-CA", { timeZone: zone, month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}
setZone("UTC");

export function getZone() {
  return zone;
}

function parts(ms) {
  const p = {};
  for (const { type, value } of clock.formatToParts(new Date(ms))) p[type] = value;
  return p;
}

/** `2026-12-05 14:03:09` in the analytics zone. */
export function fmtTime(ms) {
  if (ms === null || ms === undefined) return "—";
  const p = parts(ms);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

/** `14:03` (or `Dec 5, 14:03` for spans over a day) in the analytics zone. */
export function fmtTick(ms, long) {
  if (long) return day.format(new Date(ms));
  const p = parts(ms);
  return `${p.hour}:${p.minute}`;
}

/** The value of a datetime-local input for epoch `ms` in the analytics zone. */
export function toLocalInput(ms) {
  const p = parts(ms);
  return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}`;
}

/** Epoch ms of a datetime-local value read as a wall time in the analytics zone. */
export function fromLocalInput(v) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(v || "");
  if (!m) return null;
  const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
  // The zone's offset at a guess, then at the corrected instant (DST edges).
  let t = wall;
  for (let i = 0; i < 2; i++) {
    const p = parts(t);
    const seen = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
    t = wall - (seen - t);
  }
  return t;
}

const int = new Intl.NumberFormat("en-US");

export function fmtInt(n) {
  return n === null || n === undefined ? "—" : int.format(n);
}

/** A count with a unit: `1,234 requests`, `1.23 M tokens`. */
export function fmtCount(n, unit) {
  if (n === null || n === undefined) return "—";
  const abs = Math.abs(n);
  let s;
  if (abs >= 1e9) s = `${(n / 1e9).toFixed(2)} G`;
  else if (abs >= 1e6) s = `${(n / 1e6).toFixed(2)} M`;
  else if (abs >= 1e4) s = `${(n / 1e3).toFixed(1)} k`;
  else s = int.format(n);
  return unit ? `${s} ${unit}` : s;
}

/** USD from integer micro-USD or an exact decimal string: `$12.34`, `$0.0042`. */
export function fmtUsd(v) {
  if (v === null || v === undefined) return "—";
  const usd = typeof v === "string" ? Number(v) : v / 1e6;
  const abs = Math.abs(usd);
  const digits = abs === 0 ? 2 : abs < 0.01 ? 6 : abs < 1 ? 4 : 2;
  return `$${usd.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })}`;
}

/** USD from a float (Claude Code's metrics). */
export function fmtUsdFloat(v) {
  return fmtUsd(Math.round((v || 0) * 1e6));
}

/** Milliseconds with a unit: `850 ms`, `2.35 s`, `29.5 min`. */
export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms >= 7_200_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  if (ms >= 120_000) return `${(ms / 60_000).toFixed(1)} min`;
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.round(ms)} ms`;
}

/** A ratio as a percentage: `97.5 %`. */
export function fmtPct(r) {
  if (r === null || r === undefined) return "—";
  const p = r * 100;
  if (p === 100 || p === 0) return `${p} %`;
  // Never round a failure away: 99.95 % is not 100 %.
  return `${p > 99.9 ? Math.min(p, 99.99).toFixed(2) : p.toFixed(1)} %`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}
