// The console's one door to the server: every call carries the bearer token the user signed in
// with (kept in sessionStorage only: it ends with the tab), and every failure becomes an
// ApiError carrying the server's {"error", "message"} so a page can show it.

const KEY = "gatemeter.token";

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message, path) {
    super(message);
    this.status = status;
    this.code = code;
    this.path = path;
  }
  toString() {
    const what = this.status ? `${this.status} ${this.code}` : this.code;
    return `${what}: ${this.message}`;
  }
}

/** The URL of `path` with the non-empty entries of `params` as its query string. */
export function url(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "" && v !== false) q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

async function send(path, params, accept) {
  const headers = { Accept: accept };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let resp;
  try {
    resp = await fetch(url(path, params), { headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "network", `the server did not answer (${e.message})`, path);
  }
  if (!resp.ok) {
    let code = "http_error";
    let message = resp.statusText || "request failed";
    try {
      const body = await resp.json();
      code = body.error || code;
      message = body.message || message;
    } catch (_) {
      // Not JSON: keep the status text.
    }
    throw new ApiError(resp.status, code, message, path);
  }
  return resp;
}

/** GET a JSON answer. */
export async function get(path, params = {}) {
  const resp = await send(path, params, "application/json");
  return resp.json();
}

/** GET a text answer. */
export async function getText(path, params = {}) {
  const resp = await send(path, params, "text/plain");
  return resp.text();
}

/**
 * Downloads an export with the token (a plain link cannot send it): the answer becomes a file
 * named as the server's Content-Disposition says. Resolves to {name, bytes, truncated}.
 */
export async function download(path, params = {}, fallbackName = "download") {
  const resp = await send(path, params, "*/*");
  const disposition = resp.headers.get("Content-Disposition") || "";
  const m = /filename="([^"]+)"/.exec(disposition);
  const name = m ? m[1] : fallbackName;
  const blob = await resp.blob();
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
  return { name, bytes: blob.size, truncated: resp.headers.get("X-Gatemeter-Truncated") === "true" };
}
