// The console's pages. Each is `async (ctx) => void`, drawing into ctx.root from the /api/v1
// answers; ctx.who is the whoami answer, ctx.query the hash's parameters, ctx.path the hash
// path's parts, ctx.every(ms, fn) a refresh that stops when the page is left, ctx.alive() false
// once it was left. Errors from the API are shown where the data would have been.

import { ApiError, download, get } from "./api.js";
import { bars, columns, lines } from "./charts.js";
import {
  fmtBytes, fmtCount, fmtInt, fmtMs, fmtPct, fmtTime, fmtUsd, fmtUsdFloat, fromLocalInput, getZone, h,
  toLocalInput,
} from "./format.js";

// ---- shared pieces ----

export function errorBox(err) {
  const text = err instanceof ApiError ? err.toString() : `unexpected error: ${err && err.message ? err.message : err}`;
  let hint = null;
  if (err instanceof ApiError && err.status === 401) hint = "Your token was not accepted: sign out and sign in again.";
  if (err instanceof ApiError && err.status === 403) hint = "Your token's role may not use this.";
  return h("div.error", { role: "alert" }, h("strong", {}, "The API answered an error. "), text, hint ? h("div", {}, hint) : null);
}

function tile(label, value, unit, title) {
  return h("div.tile", { title: title || null },
    h("div.label", {}, label),
    h("div.value", {}, value, unit ? h("span.unit", {}, ` ${unit}`) : null));
}

/** A table: cols [{label, num, cell(row) → node|string, sort}], with an empty message. */
function table(cols, rows, empty) {
  if (!rows.length) return h("div.table-wrap", {}, h("div.empty", {}, empty));
  return h("div.table-wrap", {},
    h("table", {},
      h("thead", {}, h("tr", {}, cols.map((c) => h(c.num ? "th.num" : "th", { scope: "col" }, c.head || c.label)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, cols.map((c) => {
        const v = c.cell(r);
        return h(c.num ? "td.num" : c.wrap ? "td.wrap" : "td", {}, v === null || v === undefined ? "—" : v);
      }))))));
}

function seg(label, options, current, onPick) {
  return h("div.seg", { role: "group", "aria-label": label },
    options.map(([value, text]) => h("button", {
      type: "button", "aria-pressed": String(value === current), on: { click: () => onPick(value) },
    }, text)));
}

function statusPill(st) {
  return h(`span.status.${st}`, {}, st);
}

function statusCell(code) {
  return h(code >= 200 && code < 400 ? "span.ok" : "span.bad", {}, code === 0 ? "0 (no response)" : String(code));
}

function tokens(t) {
  return fmtCount(t.total, "tokens");
}

function tokenTitle(t) {
  return `input ${fmtInt(t.input)}, output ${fmtInt(t.output)}, cache write 5m ${fmtInt(t.cache_write_5m)}, ` +
    `cache write 1h ${fmtInt(t.cache_write_1h)}, cache read ${fmtInt(t.cache_read)}`;
}

function errorsText(errors) {
  const e = Object.entries(errors || {}).sort((a, b) => b[1] - a[1]);
  return e.length ? e.map(([code, n]) => `${code === "0" ? "no response" : code} × ${fmtInt(n)}`).join(", ") : "none";
}

/** How to send the first record: shown wherever there is nothing yet. */
function firstRecord(what) {
  const origin = location.origin;
  return h("div.empty", {},
    h("p", {}, what),
    h("p", {}, "Point a gateway at ", h("code", {}, `${origin}/v1/events`), " (one JSON record per finished request), ",
      "or Claude Code at ", h("code", {}, origin), " (OTLP/HTTP). A first record by hand:"),
    h("pre", {}, `curl -X POST ${origin}/v1/events \\\n  -H 'content-type: application/json' \\\n` +
      "  -H \"authorization: Bearer $INGEST_TOKEN\" \\\n" +
      `  -d '{"user":"alice","provider":"anthropic","model":"claude-sonnet-4-5","status":200,"duration_ms":850,"input_tokens":1200,"output_tokens":300}'`),
    h("p", {}, "Or run ", h("code", {}, "gatemeter demo"), " to see the console with synthetic traffic."));
}

function needs(ctx, what) {
  if (what === "analytics" && !ctx.who.analytics) {
    ctx.root.append(h("div.notice", {}, "This page is answered from the request log's rollups, which this server does not keep: set ",
      h("code", {}, "log_store.kind"), " to sqlite or postgres and keep ", h("code", {}, "log_store.rollups"), " on."));
    return false;
  }
  if (what === "log" && !ctx.who.request_log) {
    ctx.root.append(h("div.notice", {}, "This server keeps no request log (", h("code", {}, "log_store.kind: none"),
      "): there are no stored requests to list or export."));
    return false;
  }
  return true;
}

/** Runs `load` into `box`, showing its error there instead of data. */
async function fill(box, load) {
  try {
    const node = await load();
    box.replaceChildren(node);
  } catch (e) {
    box.replaceChildren(errorBox(e));
  }
}

function pageHead(title, ...extra) {
  return h("div.row.spread", {}, h("h1", {}, title), h("div.row", {}, extra));
}

function downloadButton(text, path, params, fallback, status) {
  const b = h("button.secondary", { type: "button" }, text);
  b.addEventListener("click", async () => {
    b.disabled = true;
    status.replaceChildren("Downloading…");
    try {
      const got = await download(path, params(), fallback);
      status.replaceChildren(`Saved ${got.name} (${fmtBytes(got.bytes)})${got.truncated ? ", truncated at the row cap" : ""}.`);
    } catch (e) {
      status.replaceChildren(errorBox(e));
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

// ---- Overview ----

export async function overview(ctx) {
  if (!needs(ctx, "analytics")) return;
  const stamp = h("span.live", { "aria-live": "off" }, "live");
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(pageHead("Overview · today", stamp), body);
  const load = async () => {
    const [ov, av, models] = await Promise.all([
      get("/api/v1/overview"),
      get("/api/v1/availability", { window: "6h" }),
      get("/api/v1/leaderboard", { scope: "model", period: "today", sort: "cost", limit: 8 }),
    ]);
    if (!ctx.alive()) return;
    stamp.textContent = `live · updated ${fmtTime(Date.now()).slice(11)}`;
    const parts = [];
    if (ov.own_rows_only) parts.push(h("div.notice", {}, `Your own requests only (user ${ctx.who.user}).`));
    parts.push(h("div.tiles", {},
      tile("Requests", fmtInt(ov.requests), "requests"),
      tile("Cost", fmtUsd(ov.cost_usd), "USD"),
      tile("Tokens", fmtCount(ov.tokens.total), "tokens", tokenTitle(ov.tokens)),
      tile("Error rate", fmtPct(ov.error_rate)),
      tile("P95 latency", fmtMs(ov.p95_ms)),
      tile("Active users", fmtInt(ov.active_users), "today"),
      tile("Active sessions", fmtInt(ov.active_sessions), `last ${Math.round(ctx.who.session_active_secs / 60)} min`)));
    if (ov.requests === 0) {
      parts.push(firstRecord(`No requests since midnight (${getZone()}).`));
      body.replaceChildren(...parts);
      return;
    }
    // Requests per bucket over 24 h, every provider together, coloured by availability.
    const sum = new Map();
    for (const p of av.providers) {
      for (const b of p.buckets) {
        const cur = sum.get(b.start) || { requests: 0, successes: 0 };
        cur.requests += b.requests;
        cur.successes += b.successes;
        sum.set(b.start, cur);
      }
    }
    const buckets = [...sum.entries()].map(([start, c]) => ({
      start, value: c.requests, cls: c.successes * 2 >= c.requests ? "green" : "red",
      text: `${fmtInt(c.requests)} requests, ${fmtPct(c.successes / c.requests)} ok`,
    }));
    parts.push(h("div.grid2", {},
      h("section.panel", { "aria-labelledby": "ov-req" }, h("h2", { id: "ov-req" }, "Requests, last 6 h"),
        columns(buckets, { from: av.from, to: av.to, step: av.bucket_ms, label: "requests per bucket, last 6 hours" }),
        h("p.muted", {}, `${Math.round(av.bucket_ms / 60000)}-minute buckets; red: fewer than half succeeded.`)),
      h("section.panel", { "aria-labelledby": "ov-models" }, h("h2", { id: "ov-models" }, "Cost by model, today"),
        models.entries.length ? bars(models.entries.map((e) => ({ label: e.name, value: e.cost_micros, text: fmtUsd(e.cost_usd) })),
          { label: "cost by model today" }) : h("p.muted", {}, "No model has requests today."))));
    parts.push(h("h2", {}, "Providers, last 6 h"));
    parts.push(table([
      { label: "Provider", cell: (p) => h("a", { href: "#/availability?window=6h" }, p.provider) },
      { label: "Status", cell: (p) => statusPill(p.status) },
      { label: "Availability", num: true, cell: (p) => fmtPct(p.availability) },
      { label: "Requests", num: true, cell: (p) => fmtInt(p.requests) },
      { label: "P95", num: true, cell: (p) => fmtMs(p.p95_ms) },
    ], av.providers, "No provider has requests in the last 6 hours."));
    body.replaceChildren(...parts);
  };
  ctx.every(5000, load, body);
}

// ---- Availability ----

export async function availability(ctx) {
  if (!needs(ctx, "analytics")) return;
  const win = ctx.query.get("window") || "1h";
  const stamp = h("span.live", {}, "live");
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(pageHead("Availability", stamp,
    seg("Window", [["1h", "1 h"], ["6h", "6 h"], ["24h", "24 h"], ["7d", "7 d"]], win, (w) => ctx.go("availability", { window: w }))),
  h("p.muted", {}, "Green: at least 50 % of the window's requests succeeded; red: fewer; unknown: no request in the last 15 minutes."),
  body);
  const load = async () => {
    const av = await get("/api/v1/availability", { window: win });
    if (!ctx.alive()) return;
    stamp.textContent = `live · updated ${fmtTime(Date.now()).slice(11)}`;
    const parts = [];
    if (!av.providers.length) {
      parts.push(firstRecord("No provider has requests or probes in this window."));
      body.replaceChildren(...parts);
      return;
    }
    parts.push(h("div.avail-grid", { id: "avail-grid" }, av.providers.map((p) => {
      const buckets = p.buckets.map((b) => ({
        start: b.start, value: b.availability, cls: b.availability === null ? "unknown" : b.availability >= 0.5 ? "green" : "red",
        text: `${fmtPct(b.availability)} of ${fmtInt(b.requests)} requests; P95 ${fmtMs(b.p95_ms)}; errors: ${errorsText(b.errors)}`,
      }));
      const q = (k) => p.buckets.map((b) => [b.start + av.bucket_ms / 2, b[k]]);
      return h(`article.card.${p.status}`, { "data-provider": p.provider, "data-status": p.status, "aria-label": `${p.provider}: ${p.status}` },
        h("div.row.spread", {}, h("h3", {}, p.provider, p.model ? ` · ${p.model}` : ""), statusPill(p.status)),
        h("dl", {},
          h("dt", {}, "Availability"), h("dd", {}, fmtPct(p.availability)),
          h("dt", {}, "Requests"), h("dd", {}, fmtInt(p.requests)),
          h("dt", {}, "P50 / P95 / P99"), h("dd", {}, `${fmtMs(p.p50_ms)} / ${fmtMs(p.p95_ms)} / ${fmtMs(p.p99_ms)}`),
          h("dt", {}, "Errors by code"), h("dd", {}, errorsText(p.errors)),
          h("dt", {}, "Last request"), h("dd", {}, p.last_request_at ? fmtTime(p.last_request_at) : "none in 15 min"),
          p.probes.length ? [h("dt", {}, "Probes"), h("dd", {}, p.probes.map((x) => `${x.probe}: ${x.up === null ? "no run" : x.up ? "up" : "down"}`).join(", "))] : null),
        p.buckets.length ? columns(buckets, { from: av.from, to: av.to, step: av.bucket_ms, max: 1, width: 300, height: 70, label: `${p.provider} availability per bucket` }) : null,
        p.buckets.length ? lines([{ name: "P50", points: q("p50_ms") }, { name: "P95", points: q("p95_ms") }, { name: "P99", points: q("p99_ms") }],
          { from: av.from, to: av.to, width: 300, height: 90, label: `${p.provider} latency quantiles`, format: fmtMs }) : null,
        p.buckets.length ? h("div.legend", {}, ["P50", "P95", "P99"].map((n, i) => h("span", {}, h(`span.sw.s${i}`), n))) : null);
    })));
    const probes = av.providers.flatMap((p) => p.probes.map((x) => ({ ...x, provider: p.provider })));
    parts.push(h("h2", {}, "Probe results"));
    parts.push(table([
      { label: "Probe", cell: (x) => x.probe },
      { label: "Provider", cell: (x) => x.provider },
      { label: "Latest", cell: (x) => x.up === null ? "no run" : h(x.up ? "span.ok" : "span.bad", {}, x.up ? "up" : "down") },
      { label: "Runs", num: true, cell: (x) => fmtInt(x.runs) },
      { label: "OK", num: true, cell: (x) => fmtPct(x.availability) },
      { label: "Last run", cell: (x) => x.last ? fmtTime(x.last.timestamp_ms) : null },
      { label: "Outcome", cell: (x) => x.last ? `${x.last.outcome}${x.last.status ? ` ${x.last.status}` : ""}` : null },
      { label: "Latency", num: true, cell: (x) => x.last ? fmtMs(x.last.latency_ms) : null },
      { label: "Error", wrap: true, cell: (x) => x.last && x.last.error },
    ], probes, h("span", {}, "No probes configured: add ", h("code", {}, "probes:"), " to the config to check provider endpoints actively.")));
    body.replaceChildren(...parts);
  };
  ctx.every(15000, load, body);
  if (ctx.who.admin) {
    const status = h("div", { "aria-live": "polite" });
    const pick = h("select", { "aria-label": "Runs" }, h("option", { value: "" }, "all runs"), h("option", { value: "fail" }, "failed runs"), h("option", { value: "ok" }, "successful runs"));
    const lines100 = h("input", { type: "number", min: "1", max: "1000", value: "100", "aria-label": "Lines at most" });
    ctx.root.append(h("section.panel", {}, h("h2", {}, "Probe log"),
      h("div.row", {}, pick, h("label.check", {}, "lines", lines100),
        downloadButton("Download probe log", "/api/v1/export/probe-log", () => ({ status: pick.value, max_lines: lines100.value }), "probe-log.txt", status)),
      status));
  }
}

// ---- Leaderboards ----

const PERIODS = [["today", "Today"], ["week", "This week"], ["month", "This month"], ["custom", "Custom"]];

export async function leaderboards(ctx) {
  if (!needs(ctx, "analytics")) return;
  const q = ctx.query;
  const scope = q.get("scope") || "user";
  const period = q.get("period") || "today";
  const sort = q.get("sort") || "cost";
  const set = (k, v) => {
    const next = Object.fromEntries(q.entries());
    next[k] = v;
    if (k === "period" && v !== "custom") { delete next.from; delete next.to; }
    ctx.go("leaderboards", next);
  };
  const controls = h("div.row", {},
    seg("Scope", [["user", "Users"], ["key", "Keys"], ["provider", "Providers"], ["model", "Models"]], scope, (v) => set("scope", v)),
    seg("Period", PERIODS, period, (v) => {
      if (v !== "custom") return set("period", v);
      const now = Date.now();
      ctx.go("leaderboards", { ...Object.fromEntries(q.entries()), period: "custom", from: now - 86_400_000, to: now });
    }),
    h("label.field", {}, "Sort by", h("select", { on: { change: (e) => set("sort", e.target.value) } },
      [["cost", "cost"], ["requests", "requests"], ["tokens", "tokens"]].map(([v, t]) => h("option", { value: v, selected: v === sort }, t)))));
  ctx.root.append(pageHead("Leaderboards"), controls);
  const params = { scope, period, sort, limit: 50 };
  if (period === "custom") {
    const from = h("input", { type: "datetime-local", value: toLocalInput(+q.get("from") || Date.now() - 86_400_000) });
    const to = h("input", { type: "datetime-local", value: toLocalInput(+q.get("to") || Date.now()) });
    const apply = h("form.row", { on: { submit: (e) => {
      e.preventDefault();
      ctx.go("leaderboards", { ...Object.fromEntries(q.entries()), from: fromLocalInput(from.value), to: fromLocalInput(to.value) });
    } } }, h("label.field", {}, `From (${getZone()})`, from), h("label.field", {}, "To", to), h("button", { type: "submit" }, "Apply"));
    ctx.root.append(apply);
    params.from = q.get("from");
    params.to = q.get("to");
  }
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(body);
  await fill(body, async () => {
    const lb = await get("/api/v1/leaderboard", params);
    const out = h("div");
    out.append(h("p.muted", {}, `${fmtTime(lb.from)} – ${fmtTime(lb.to)} (${lb.time_zone})`));
    if (lb.own_rows_only) out.append(h("div.notice", {}, "A user token sees only its own line of a leaderboard."));
    if (!lb.entries.length) {
      out.append(firstRecord("Nothing to rank in this period."));
      return out;
    }
    const metric = { cost: (e) => e.cost_micros, requests: (e) => e.requests, tokens: (e) => e.tokens.total }[lb.sort];
    const text = { cost: (e) => fmtUsd(e.cost_usd), requests: (e) => fmtCount(e.requests, "req"), tokens: (e) => fmtCount(e.tokens.total, "tok") }[lb.sort];
    out.append(h("section.panel", {}, h("h2", {}, `Top ${Math.min(10, lb.entries.length)} by ${lb.sort}`),
      bars(lb.entries.slice(0, 10).map((e) => ({ label: e.name || "(none)", value: metric(e), text: text(e) })), { label: `top ${lb.scope}s by ${lb.sort}` })));
    const sortHead = (label, key) => h("button.sort", { type: "button", "aria-pressed": String(lb.sort === key), on: { click: () => set("sort", key) } }, label);
    const cols = [
      { label: "#", num: true, cell: (e) => e.rank },
      { label: lb.scope, cell: (e) => e.name || "(none)" },
      { label: "Requests", head: sortHead("Requests", "requests"), num: true, cell: (e) => fmtInt(e.requests) },
    ];
    if (lb.scope === "provider" || lb.scope === "model") cols.push({ label: "Success", num: true, cell: (e) => fmtPct(e.success_rate) });
    cols.push({ label: "Tokens", head: sortHead("Tokens", "tokens"), num: true, cell: (e) => h("span", { title: tokenTitle(e.tokens) }, tokens(e.tokens)) });
    cols.push({ label: "Cost", head: sortHead("Cost", "cost"), num: true, cell: (e) => fmtUsd(e.cost_usd) });
    if (lb.scope === "provider") {
      cols.push({ label: "Avg", num: true, cell: (e) => fmtMs(e.avg_response_ms) });
      cols.push({ label: "P95", num: true, cell: (e) => fmtMs(e.latency && e.latency.p95_ms) });
    }
    if (lb.scope === "provider" || lb.scope === "model") {
      cols.push({ label: lb.scope === "model" ? "Models used" : "Models", wrap: true, cell: (e) => (e.models || []).map((m) => `${m.model} (${fmtInt(m.requests)})`).join(", ") });
    }
    out.append(table(cols, lb.entries, ""));
    return out;
  });
}

// ---- Sessions ----

export async function sessions(ctx) {
  if (!needs(ctx, "analytics")) return;
  if (ctx.path[1]) return session(ctx, decodeURIComponent(ctx.path[1]));
  const state = ctx.query.get("state") || "active";
  const cursors = (ctx.query.get("trail") || "").split(",").filter(Boolean);
  const cursor = cursors[cursors.length - 1];
  ctx.root.append(pageHead("Sessions",
    seg("State", [["active", "Active"], ["inactive", "Inactive"]], state, (s0) => ctx.go("sessions", { state: s0 }))),
  h("p.muted", {}, `Active: a request in the last ${Math.round(ctx.who.session_active_secs / 60)} minutes.`));
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(body);
  await fill(body, async () => {
    const page = await get("/api/v1/sessions", { state, limit: 50, cursor });
    const out = h("div");
    out.append(table([
      { label: "Session", cell: (s0) => h("a", { href: `#/sessions/${encodeURIComponent(s0.session_id)}` }, s0.session_id) },
      { label: "User", cell: (s0) => s0.user },
      { label: "Namespace", cell: (s0) => s0.namespace },
      { label: "First seen", cell: (s0) => fmtTime(s0.first_seen) },
      { label: "Last seen", cell: (s0) => fmtTime(s0.last_seen) },
      { label: "Requests", num: true, cell: (s0) => fmtInt(s0.requests) },
      { label: "Tokens", num: true, cell: (s0) => h("span", { title: tokenTitle(s0.tokens) }, tokens(s0.tokens)) },
      { label: "Cost", num: true, cell: (s0) => fmtUsd(s0.cost_usd) },
      { label: "Avg", num: true, cell: (s0) => fmtMs(s0.avg_response_ms) },
    ], page.sessions, state === "active"
      ? h("span", {}, "No active session. Records with a ", h("code", {}, "session_id"), " (Claude Code's session.id) appear here while they are busy; see the ", h("a", { href: "#/sessions?state=inactive" }, "inactive"), " ones.")
      : firstRecord("No session yet.")));
    out.append(pager(ctx, "sessions", { state }, cursors, page.next_cursor));
    return out;
  });
}

function pager(ctx, page, base, trail, next) {
  const prev = trail.slice(0, -1);
  return h("div.row", {},
    h("button.secondary", { type: "button", disabled: !trail.length, on: { click: () => ctx.go(page, { ...base, trail: prev.join(",") }) } }, "← Newer"),
    h("button.secondary", { type: "button", disabled: !next, on: { click: () => ctx.go(page, { ...base, trail: [...trail, next].join(",") }) } }, "Older →"),
    h("span.muted", {}, `page ${trail.length + 1}`));
}

async function session(ctx, id) {
  ctx.root.append(h("p", {}, h("a", { href: "#/sessions" }, "← Sessions")), h("h1", {}, "Session ", h("code", {}, id)));
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(body);
  await fill(body, async () => {
    const s0 = await get(`/api/v1/sessions/${encodeURIComponent(id)}`);
    const out = h("div");
    out.append(h("div.tiles", {},
      tile("State", s0.active ? "active" : "inactive"),
      tile("Requests", fmtInt(s0.requests), "requests"),
      tile("Cost", fmtUsd(s0.cost_usd), "USD"),
      tile("Tokens", fmtCount(s0.tokens.total), "tokens", tokenTitle(s0.tokens)),
      tile("Success", fmtPct(s0.success_rate)),
      tile("Avg response", fmtMs(s0.avg_response_ms))));
    out.append(h("section.panel", {}, h("dl.kv", {},
      h("dt", {}, "Users"), h("dd", {}, s0.users.join(", ") || "—"),
      h("dt", {}, "Namespace"), h("dd", {}, s0.namespace),
      h("dt", {}, "First seen"), h("dd", {}, fmtTime(s0.first_seen)),
      h("dt", {}, "Last seen"), h("dd", {}, fmtTime(s0.last_seen)),
      h("dt", {}, "Providers"), h("dd", {}, s0.providers.join(", ") || "—"),
      h("dt", {}, "Models"), h("dd", {}, s0.models.join(", ") || "—"),
      h("dt", {}, "Tokens by type"), h("dd", {}, tokenTitle(s0.tokens)))));
    out.append(h("h2", {}, "Requests in order"));
    const status = h("div", { "aria-live": "polite" });
    const cols = [
      { label: "#", num: true, cell: (r) => r.sequence },
      { label: "Time", cell: (r) => h("a", { href: `#/logs/${r.log_id}` }, fmtTime(r.timestamp)) },
      { label: "Provider", cell: (r) => r.provider },
      { label: "Model", cell: (r) => r.model },
      { label: "Status", cell: (r) => statusCell(r.status) },
      { label: "Duration", num: true, cell: (r) => fmtMs(r.duration_ms) },
    ];
    if (ctx.who.admin && ctx.who.stored_requests) {
      cols.push({ label: "Request JSON", cell: (r) => downloadButton("Download", `/api/v1/sessions/${encodeURIComponent(id)}/requests/${r.sequence}/export`,
        () => ({}), `session-${id.slice(0, 8)}-seq-${r.sequence}-request.json`, status) });
    }
    out.append(table(cols, s0.request_list, "No requests."), status);
    if (s0.requests_truncated) out.append(h("p.muted", {}, "The session has more requests than listed here."));
    return out;
  });
}

// ---- Request log ----

const FILTERS = [
  ["user", "User"], ["key", "Key"], ["provider", "Provider"], ["model", "Model"], ["endpoint", "Endpoint"],
  ["status", "Status"], ["session_id", "Session id"], ["min_retry_count", "Min retries"], ["trace_id", "Trace id"],
  ["span_id", "Span id"], ["provider_request_id", "Provider request id"],
];

function logFilters(q) {
  const f = {};
  for (const k of [...FILTERS.map(([k]) => k), "from", "to", "exclude_200"]) {
    const v = q.get(k);
    if (v) f[k] = v;
  }
  return f;
}

export async function logs(ctx) {
  if (!needs(ctx, "log")) return;
  if (ctx.path[1]) return logDetail(ctx, ctx.path[1]);
  const q = ctx.query;
  const filters = logFilters(q);
  const trail = (q.get("trail") || "").split(",").filter(Boolean);
  const form = h("form.panel", { id: "log-filters", "aria-label": "Filters" });
  const grid = h("div.filters");
  for (const [k, label] of FILTERS) {
    if (k === "user" && ctx.who.user) continue;
    grid.append(h("label.field", {}, label, h("input", { type: k === "status" || k === "min_retry_count" ? "number" : "text", name: k, value: filters[k] || "" })));
  }
  grid.append(h("label.field", {}, `From (${getZone()})`, h("input", { type: "datetime-local", name: "from", value: filters.from ? toLocalInput(+filters.from) : "" })));
  grid.append(h("label.field", {}, "To", h("input", { type: "datetime-local", name: "to", value: filters.to ? toLocalInput(+filters.to) : "" })));
  grid.append(h("label.check", {}, h("input", { type: "checkbox", name: "exclude_200", checked: filters.exclude_200 === "true" }), "Leave out 200"));
  grid.append(h("div.row", {}, h("button", { type: "submit" }, "Apply"), h("button.secondary", { type: "button", on: { click: () => ctx.go("logs", {}) } }, "Clear")));
  form.append(grid);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      if (el.type === "checkbox") { if (el.checked) next[el.name] = "true"; continue; }
      if (!el.value) continue;
      next[el.name] = el.type === "datetime-local" ? String(fromLocalInput(el.value)) : el.value.trim();
    }
    ctx.go("logs", next);
  });
  const status = h("div", { "aria-live": "polite" });
  ctx.root.append(pageHead("Request log",
    downloadButton("Download usage CSV", "/api/v1/export/usage.csv", () => filters, "usage.csv", status)), form, status);
  if (ctx.who.user) ctx.root.append(h("p.muted", {}, `Your own requests only (user ${ctx.who.user}).`));
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(body);
  await fill(body, async () => {
    const page = await get("/api/v1/logs", { ...filters, limit: 50, cursor: trail[trail.length - 1] });
    const out = h("div");
    const filtered = Object.keys(filters).length > 0;
    out.append(table([
      { label: "Time", cell: (r) => h("a", { href: `#/logs/${r.id}` }, fmtTime(r.timestamp_ms)) },
      { label: "User", cell: (r) => r.user_id || r.user },
      { label: "Key", cell: (r) => r.key },
      { label: "Provider", cell: (r) => r.provider || "(blocked)" },
      { label: "Model", cell: (r) => r.model },
      { label: "Endpoint", cell: (r) => r.endpoint },
      { label: "Status", cell: (r) => statusCell(r.status) },
      { label: "Duration", num: true, cell: (r) => fmtMs(r.duration_ms) },
      { label: "Tokens", num: true, cell: (r) => fmtInt(r.input_tokens + r.output_tokens + r.cache_write_5m_tokens + r.cache_write_1h_tokens + r.cache_read_tokens) },
      { label: "Cost", num: true, cell: (r) => fmtUsd(r.cost_micros) },
      { label: "Session", cell: (r) => r.session_id ? h("a", { href: `#/sessions/${encodeURIComponent(r.session_id)}` }, r.session_id.length > 14 ? `${r.session_id.slice(0, 13)}…` : r.session_id) : null },
    ], page.items, filtered ? "No request matches these filters." : firstRecord("The request log is empty.")));
    out.append(pager(ctx, "logs", filters, trail, page.next_cursor));
    return out;
  });
}

async function logDetail(ctx, id) {
  ctx.root.append(h("p", {}, h("a", { href: "#/logs" }, "← Request log")), h("h1", {}, `Request ${id}`));
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(body);
  await fill(body, async () => {
    const r = await get(`/api/v1/logs/${encodeURIComponent(id)}`);
    const rows = [
      ["Time", fmtTime(r.timestamp_ms)], ["Request id", r.request_id], ["Namespace", r.namespace], ["Instance", r.instance],
      ["User", r.user], ["User id", r.user_id], ["Key", r.key], ["Key id", r.key_id], ["Provider", r.provider],
      ["Model", r.model], ["Model asked for", r.original_model], ["Endpoint", `${r.method} ${r.endpoint}`], ["API", r.api_type],
      ["Status", statusCell(r.status)], ["Duration", fmtMs(r.duration_ms)], ["Time to first byte", r.ttfb_ms === null ? null : fmtMs(r.ttfb_ms)],
      ["Input tokens", fmtInt(r.input_tokens)], ["Output tokens", fmtInt(r.output_tokens)],
      ["Cache write 5m", fmtInt(r.cache_write_5m_tokens)], ["Cache write 1h", fmtInt(r.cache_write_1h_tokens)], ["Cache read", fmtInt(r.cache_read_tokens)],
      ["Cost", `${fmtUsd(r.cost_micros)} (${r.cost_source})`], ["Sent as", r.cost_amount ? `${r.cost_amount} ${r.currency}` : null],
      ["Session", r.session_id ? h("a", { href: `#/sessions/${encodeURIComponent(r.session_id)}` }, r.session_id) : null],
      ["Retries", fmtInt(r.retry_count)], ["Provider chain", r.provider_chain.join(" → ")], ["Streaming", r.is_streaming ? "yes" : "no"],
      ["Error", r.error], ["Blocked by", r.blocked_by], ["Block reason", r.block_reason], ["User agent", r.user_agent],
      ["Client IP", r.client_ip], ["Messages", r.messages_count], ["Trace id", r.trace_id], ["Span id", r.span_id],
      ["Provider request id", r.provider_request_id],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "");
    return h("section.panel", {}, h("dl.kv", {}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  });
}

// ---- Claude Code ----

export async function claudeCode(ctx) {
  ctx.root.append(pageHead("Claude Code"),
    h("p.muted", {}, "From Claude Code's own telemetry (OTLP metrics and events) received by this server since it started. ",
      "Request records of its API calls are also in the ", h("a", { href: "#/logs?provider=anthropic" }, "request log"), " and the ",
      h("a", { href: "#/leaderboards?scope=user" }, "leaderboards"), "."));
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(body);
  await fill(body, async () => {
    const cc = await get("/api/v1/claude-code");
    const out = h("div");
    const m = Object.fromEntries(cc.metrics.map((x) => [x.metric, x]));
    const total = (name) => (m[name] ? m[name].total : 0);
    const byLabel = (name, label, value) => (m[name] ? m[name].series.filter((x) => x.labels[label] === value).reduce((a, x) => a + x.value, 0) : 0);
    const empty = cc.metrics.every((x) => !x.series.length) && !(cc.tools && cc.tools.length);
    if (cc.own_rows_only) {
      out.append(h("div.notice", {}, "A user token sees the Claude Code series labelled with its own user only; tool and decision totals mix every user's and are shown to admins. ",
        "Claude Code drops user ids from labels unless ", h("code", {}, "otlp.label_allowlist"), " names ", h("code", {}, "user.email"), " or ", h("code", {}, "user.id"), "."));
    }
    if (empty && cc.own_rows_only) {
      out.append(h("div.empty", {}, "None of Claude Code's series carries your user id."));
      return out;
    }
    if (empty) {
      out.append(h("div.empty", {}, h("p", {}, "No Claude Code telemetry yet."),
        h("p", {}, "Point Claude Code at this server:"),
        h("pre", {}, `export CLAUDE_CODE_ENABLE_TELEMETRY=1\nexport OTEL_METRICS_EXPORTER=otlp OTEL_LOGS_EXPORTER=otlp\nexport OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf\nexport OTEL_EXPORTER_OTLP_ENDPOINT=${location.origin}\nexport OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer $INGEST_TOKEN"`)));
      return out;
    }
    const tokensTotal = total("claude_code.token.usage");
    out.append(h("div.tiles", {},
      tile("Cost", fmtUsdFloat(total("claude_code.cost.usage")), "USD"),
      tile("Tokens", fmtCount(tokensTotal), "tokens"),
      tile("Sessions", fmtInt(total("claude_code.session.count")), "started"),
      tile("Active time", fmtMs(total("claude_code.active_time.total") * 1000)),
      tile("Lines added", fmtInt(byLabel("claude_code.lines_of_code.count", "type", "added")), "lines"),
      tile("Lines removed", fmtInt(byLabel("claude_code.lines_of_code.count", "type", "removed")), "lines"),
      tile("Commits", fmtInt(total("claude_code.commit.count"))),
      tile("Pull requests", fmtInt(total("claude_code.pull_request.count")))));
    const kinds = ["input", "output", "cacheRead", "cacheCreation"];
    out.append(h("div.grid2", {},
      h("section.panel", {}, h("h2", {}, "Cost by model"),
        cc.by_model.length ? bars(cc.by_model.map((u) => ({ label: u.name, value: u.cost_usd, text: fmtUsdFloat(u.cost_usd) })), { label: "Claude Code cost by model" })
          : h("p.muted", {}, "No cost series carries a model.")),
      cc.tools ? h("section.panel", {}, h("h2", {}, "Tools: calls and failures"),
        cc.tools.length ? bars([...cc.tools].sort((a, b) => b.calls - a.calls).slice(0, 12).map((t) => ({
          label: t.tool, value: t.calls, text: `${fmtInt(t.calls)} / ${fmtInt(t.failures)} failed`, alt: t.failures, altText: `${fmtInt(t.failures)} failed`,
        })), { label: "tool calls and failures" }) : h("p.muted", {}, "No tool_result events yet."),
        h("div.legend", {}, h("span", {}, h("span.sw.s0"), "calls"), h("span", {}, h("span.sw.s1"), "failures"))) : null));
    out.append(h("h2", {}, "Tokens and cost by model"));
    out.append(table([
      { label: "Model", cell: (u) => u.name },
      ...kinds.map((k) => ({ label: k, num: true, cell: (u) => fmtInt(Math.round(u.tokens[k] || 0)) })),
      { label: "Cost", num: true, cell: (u) => fmtUsdFloat(u.cost_usd) },
    ], cc.by_model, "No series with a model label."));
    if (cc.tools) {
      out.append(h("h2", {}, "Tools"));
      out.append(table([
        { label: "Tool", cell: (t) => t.tool },
        { label: "Calls", num: true, cell: (t) => fmtInt(t.calls) },
        { label: "Failures", num: true, cell: (t) => h(t.failures ? "span.bad" : "span", {}, fmtInt(t.failures)) },
        { label: "Failure rate", num: true, cell: (t) => fmtPct(t.calls ? t.failures / t.calls : null) },
        { label: "Avg duration", num: true, cell: (t) => fmtMs(t.avg_duration_ms) },
      ], [...cc.tools].sort((a, b) => b.calls - a.calls), "No tool_result events yet."));
      out.append(h("h2", {}, "Permission decisions"));
      out.append(table([
        { label: "Tool", cell: (d) => d.tool },
        { label: "Decision", cell: (d) => h(d.decision === "accept" ? "span.ok" : "span.bad", {}, d.decision) },
        { label: "Source", cell: (d) => d.source },
        { label: "Count", num: true, cell: (d) => fmtInt(d.count) },
      ], cc.decisions, "No tool_decision events yet."));
    }
    const edits = m["claude_code.code_edit_tool.decision"];
    out.append(h("h2", {}, "Code edit decisions"));
    out.append(table([
      { label: "Tool", cell: (x) => x.labels.tool_name || x.labels.tool || x.labels.series },
      { label: "Decision", cell: (x) => x.labels.decision ? h(x.labels.decision === "accept" ? "span.ok" : "span.bad", {}, x.labels.decision) : null },
      { label: "Language", cell: (x) => x.labels.language },
      { label: "Source", cell: (x) => x.labels.source },
      { label: "Count", num: true, cell: (x) => fmtInt(x.value) },
    ], edits ? [...edits.series].sort((a, b) => b.value - a.value) : [], "No claude_code.code_edit_tool.decision points yet."));
    out.append(h("h2", {}, "Per user"));
    out.append(table([
      { label: "User", cell: (u) => u.name },
      ...kinds.map((k) => ({ label: k, num: true, cell: (u) => fmtInt(Math.round(u.tokens[k] || 0)) })),
      { label: "Cost", num: true, cell: (u) => fmtUsdFloat(u.cost_usd) },
    ], cc.by_user, h("span", {}, "Claude Code's metrics carry no user label here (user ids are dropped unless ", h("code", {}, "otlp.label_allowlist"),
      " names ", h("code", {}, "user.email"), " or ", h("code", {}, "user.id"), "). Per-user cost and tokens of its requests: ",
      h("a", { href: "#/leaderboards?scope=user" }, "Leaderboards → Users"), ".")));
    if (cc.events) {
      out.append(h("h2", {}, "Events received"));
      out.append(table([{ label: "Event", cell: (e) => e[0] }, { label: "Count", num: true, cell: (e) => fmtInt(e[1]) }],
        Object.entries(cc.events).sort((a, b) => b[1] - a[1]), "No events yet."));
    }
    return out;
  });
}

// ---- Admin ----

export async function admin(ctx) {
  if (!ctx.who.admin) {
    ctx.root.append(h("h1", {}, "Admin"), h("div.notice", { id: "admin-denied" }, "The admin page needs an admin token: sign out and sign in with one."));
    return;
  }
  if (!needs(ctx, "log")) return;
  const status = h("div", { "aria-live": "polite" });
  const includeLog = h("input", { type: "checkbox", checked: true });
  ctx.root.append(h("h1", {}, "Admin"),
    h("section.panel", {}, h("h2", {}, "Database backup"),
      h("p.muted", {}, "PostgreSQL: pg_dump's custom format; SQLite: an online snapshot of the file. One backup at a time; every one is audited."),
      h("div.row", {}, h("label.check", {}, includeLog, "Include the request log's data"),
        downloadButton("Download backup", "/api/v1/export/backup", () => ({ include_log: includeLog.checked ? "true" : "false" }), "backup", status)),
      status));
  const before = ctx.query.get("before");
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  ctx.root.append(h("h2", {}, "Audit trail"), body);
  await fill(body, async () => {
    const page = await get("/api/v1/audit", { limit: 50, before });
    const out = h("div");
    out.append(table([
      { label: "Time", cell: (a) => fmtTime(a.timestamp_ms) },
      { label: "Who", cell: (a) => `${a.role}${a.actor ? ` · ${a.actor}` : ""}` },
      { label: "Export", cell: (a) => a.action },
      { label: "Filters", wrap: true, cell: (a) => h("code", {}, JSON.stringify(a.filters)) },
      { label: "Rows", num: true, cell: (a) => fmtInt(a.rows) },
      { label: "Size", num: true, cell: (a) => fmtBytes(a.bytes) },
      { label: "Outcome", cell: (a) => h(a.outcome === "ok" ? "span.ok" : "span.bad", {}, a.outcome) },
      { label: "Detail", wrap: true, cell: (a) => a.detail },
    ], page.items, "No export yet: usage CSVs, session request JSON, probe logs and backups are recorded here."));
    out.append(h("div.row", {},
      h("button.secondary", { type: "button", disabled: !before, on: { click: () => ctx.go("admin", {}) } }, "← Newest"),
      h("button.secondary", { type: "button", disabled: !page.next_before, on: { click: () => ctx.go("admin", { before: page.next_before }) } }, "Older →")));
    return out;
  });
}

