// The console's entry: asks the server who the token is (whoami), shows the sign-in form when
// it must, then routes by the URL's fragment (#/page/sub?query) to the pages of pages.js. The
// token lives in sessionStorage only; the server enforces every role, the page only hides
// what a role may not use.

import { ApiError, get, setToken, token } from "./api.js";
import { getZone, h, setZone } from "./format.js";
import * as pages from "./pages.js";

const PAGES = [
  { id: "overview", title: "Overview", render: pages.overview },
  { id: "availability", title: "Availability", render: pages.availability },
  { id: "leaderboards", title: "Leaderboards", render: pages.leaderboards },
  { id: "sessions", title: "Sessions", render: pages.sessions },
  { id: "logs", title: "Request log", render: pages.logs },
  { id: "claude-code", title: "Claude Code", render: pages.claudeCode },
  { id: "admin", title: "Admin", render: pages.admin, admin: true },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const whoBox = document.getElementById("who");
let who = null;
let generation = 0;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  return { parts: parts.length ? parts : ["overview"], query: new URLSearchParams(query) };
}

/** Navigates to `#/page?params` (empty values left out). */
function go(page, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  const next = `#/${page}${s ? `?${s}` : ""}`;
  if (location.hash === next) route();
  else location.hash = next;
}

function drawNav(current) {
  nav.replaceChildren(...PAGES.filter((p) => !p.admin || who.admin).map((p) =>
    h("a", { href: `#/${p.id}`, "aria-current": p.id === current ? "page" : null }, p.title)));
  nav.hidden = false;
}

function drawWho() {
  const label = { open: "open (no tokens configured)", admin: "admin", user: `user ${who.user}` }[who.role] || who.role;
  whoBox.replaceChildren(h("span.role", { id: "role", "data-role": who.role }, label),
    who.role === "open" ? null : h("button", { type: "button", on: { click: signOut } }, "Sign out"));
  document.getElementById("zone").textContent = `Times in ${getZone()}`;
}

function signOut() {
  setToken("");
  who = null;
  start();
}

async function route() {
  const gen = ++generation;
  const { parts, query } = parseHash();
  const page = PAGES.find((p) => p.id === parts[0]);
  drawNav(page ? page.id : "");
  main.replaceChildren();
  if (!page) {
    main.append(h("h1", {}, "Not found"), h("p", {}, "No such page: ", h("a", { href: "#/overview" }, "go to the overview"), "."));
    return;
  }
  document.title = `${page.title} · gatemeter`;
  const ctx = {
    who,
    root: main,
    path: parts,
    query,
    go,
    alive: () => gen === generation,
    /** Runs `load` now and every `ms` while the page is shown (not while the tab is hidden). */
    every(ms, load, box) {
      const tick = async () => {
        if (gen !== generation) return;
        if (!document.hidden) {
          try {
            await load();
          } catch (e) {
            if (gen === generation) box.replaceChildren(pages.errorBox(e));
          }
        }
        if (gen === generation) setTimeout(tick, ms);
      };
      return tick();
    },
  };
  try {
    await page.render(ctx);
  } catch (e) {
    if (gen === generation) main.append(pages.errorBox(e));
  }
}

function signIn(message) {
  nav.hidden = true;
  whoBox.replaceChildren();
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true, "aria-describedby": "token-help" });
  const status = h("div", { "aria-live": "assertive" }, message ? h("div.error", { role: "alert" }, message) : null);
  const form = h("form", { id: "signin" },
    h("label.field", {}, "Bearer token", input),
    h("p.muted", { id: "token-help" }, "An admin token (auth.admin_tokens) sees everything; a user token (auth.user_tokens) sees its own requests. ",
      "The token is kept in this tab's session storage only."),
    h("button", { type: "submit" }, "Sign in"), status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    await start();
  });
  main.replaceChildren(h("section.panel.signin", {}, h("h1", {}, "Sign in to gatemeter"), form));
  input.focus();
}

async function start() {
  main.replaceChildren(h("p.muted", {}, "Loading…"));
  try {
    who = await get("/api/v1/whoami");
  } catch (e) {
    setToken("");
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      signIn(e.status === 401 ? "That token is not known to this server." : `That token may not read the console: ${e.message}.`);
    } else {
      main.replaceChildren(pages.errorBox(e));
    }
    return;
  }
  if (who.role === "none") {
    signIn(token() ? "That token is not known to this server." : null);
    return;
  }
  setZone(who.time_zone);
  drawWho();
  await route();
}

window.addEventListener("hashchange", () => {
  if (who && who.role !== "none") route();
});
start();
