"""The web console in headless Chromium (scripts/console-browser.sh starts the server).

Usage: console_browser.py BASE_URL TMP_DIR SHOTS_DIR OPEN_URL

The server runs `gatemeter demo` (synthetic traffic all along). This adds fixed gateway records
(users alice, bob, carol; four providers, one of them `flaky` that the demo never uses;
sessions; stored requests) and the captured Claude Code session (tests/data/claude-code/json),
then, through the browser:
- a first load asks for a token; the overview refreshes itself when records arrive;
- signs in with the admin token; every page, at 1280 and 390 px wide, shows data and no API
  error, and the browser logs no console error anywhere in the run;
- a request-log filter changes the table; the usage CSV downloaded with it starts with the
  UTF-8 BOM and holds only the filtered rows;
- the session request JSON, the probe log and the backup download, and the audit trail lists them;
- a provider whose records fail turns from green to red in the availability grid;
- a user token sees only its own rows (even when the URL asks for another user's), has no admin
  page, and the server refuses it the admin routes;
- leaderboards sort by a column and take a custom range;
- a server with no tokens (OPEN_URL, no request log) opens without sign-in and says what the
  missing request log means.
Screenshots of each page at both widths go to SHOTS_DIR.
"""

import csv
import glob
import io
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request

os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a driver

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

BASE, TMP, SHOTS, OPEN = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
INGEST = "ingest-token-browser-0123456789"
ADMIN = "admin-token-browser-0123456789"
ALICE = "alice-token-browser-0123456789"
ANA = "ana-token-browser-0123456789"  # ana@example.com, one of the demo's Claude Code developers
PAGES = ["overview", "availability", "leaderboards", "sessions", "logs", "claude-code", "admin"]
WIDTHS = [(1280, 900), (390, 844)]
DOWNLOADS = os.path.join(TMP, "downloads")
os.makedirs(DOWNLOADS, exist_ok=True)

failures = []
console_errors = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def http(path, token=None, body=None, content_type="application/json"):
    req = urllib.request.Request(BASE + path, data=body, method="POST" if body is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_records(records):
    status, body = http("/v1/events", INGEST, json.dumps(records).encode())
    assert status == 200 and json.loads(body)["accepted"] == len(records), body


# ---- data ----

now = int(time.time() * 1000)
USERS = ["alice", "bob", "carol"]
PROVIDERS = [("anthropic", "claude-sonnet-4-5", 0), ("openai", "gpt-4.1", 429), ("gemini", "gemini-2.5-pro", 500)]
records = []
for i in range(240):
    user = USERS[i % 7 % 3]
    provider, model, bad = PROVIDERS[i % 5 % 3]
    status = bad if bad and i % 9 == 0 else 200
    records.append({
        "request_id": f"console-{now}-{i}",
        "timestamp": now - i * 2_500,
        "user": user, "user_id": user, "key": f"key-{user}", "namespace": "team-a" if i % 2 else "team-b",
        "provider": provider, "model": model, "original_model": model,
        "endpoint": "/v1/messages" if provider == "anthropic" else "/v1/chat/completions",
        "status": status, "duration_ms": 300 + (i * 37) % 2500, "ttfb_ms": 120 + i % 90,
        "input_tokens": 800 + (i * 13) % 900, "output_tokens": 120 + (i * 7) % 400,
        "cache_read_tokens": (i * 11) % 300, "cost_usd": f"{0.002 + (i % 13) * 0.0007:.6f}",
        "session_id": f"sess-{user}-{i % 4}", "is_streaming": i % 2 == 0,
        "error": None if status == 200 else f"upstream answered {status}",
        "request": {"headers": {"authorization": "Bearer sk-ant-secret-0123456789", "content-type": "application/json"},
                    "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}},
    })
# A provider that starts healthy.
for i in range(4):
    records.append({"request_id": f"console-{now}-flaky-ok-{i}", "timestamp": now - 30_000 - i * 1000, "user": "bob",
                    "provider": "flaky", "model": "flaky-1", "status": 200, "duration_ms": 200, "cost_usd": "0.001"})
post_records(records)

# The captured Claude Code session, as Claude Code sent it.
cc_dir = "tests/data/claude-code/json"
with open(os.path.join(cc_dir, "index.jsonl")) as f:
    for line in f:
        if not line.strip():
            continue
        item = json.loads(line)
        with open(os.path.join(cc_dir, f"{item['n']:04d}_{item['signal']}.json"), "rb") as b:
            status, body = http(item["path"], INGEST, b.read())
        assert status == 200, (item, body)

deadline = time.time() + 60
while True:
    status, body = http("/api/v1/overview", ADMIN)
    seen = json.loads(body).get("requests", 0) if status == 200 else 0
    if seen >= len(records):
        break
    assert time.time() < deadline, f"the rollups hold {seen} of {len(records)} records"
    time.sleep(0.5)

# ---- browser ----

opts = webdriver.ChromeOptions()
opts.binary_location = shutil.which("chromium")
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
            "--lang=en-US"]:
    opts.add_argument(arg)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
opts.add_experimental_option("prefs", {"download.default_directory": DOWNLOADS, "download.prompt_for_download": False})
driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": DOWNLOADS})


def collect_console(where):
    for entry in driver.get_log("browser"):
        if entry["level"] == "SEVERE":
            console_errors.append(f"{where}: {entry['message']}")


def wait(cond, what, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception:  # noqa: BLE001 - the DOM changes under us while the page draws
            pass
        time.sleep(0.1)
    check(False, f"timed out waiting for {what}")
    return None


def js(script, *args):
    return driver.execute_script(script, *args)


def loaded():
    """True once the page drew (no 'Loading…' left in main)."""
    return js("return document.querySelector('#main') && !document.querySelector('#main').textContent.includes('Loading…')"
              " && document.querySelector('#main').children.length > 0")


def visit(hash_):
    url = f"{BASE}/#/{hash_}"
    if driver.current_url == url:
        driver.refresh()  # the same URL again is no navigation at all
    else:
        driver.get(url)
    wait(loaded, f"#/{hash_} to load")
    collect_console(hash_)


def errors_shown():
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#main .error")]


def rows(selector="#main table tbody tr"):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def column(index):
    return js("return [...document.querySelectorAll('#main table tbody tr')].map(r => r.children[arguments[0]].textContent)", index)


def sign_in(token, role):
    driver.get(BASE + "/")
    wait(lambda: driver.find_elements(By.ID, "token"), "the sign-in form")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
    wait(lambda: js("const r = document.getElementById('role'); return r && r.dataset.role") == role, f"signed in as {role}")
    collect_console(f"sign-in {role}")


def sign_out():
    driver.find_element(By.CSS_SELECTOR, "#who button").click()
    wait(lambda: driver.find_elements(By.ID, "token"), "the sign-in form after signing out")


def downloaded(pattern, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        done = [p for p in glob.glob(os.path.join(DOWNLOADS, pattern)) if not p.endswith(".crdownload")]
        if done and os.path.getsize(done[0]) > 0:
            time.sleep(0.2)
            return done[0]
        time.sleep(0.1)
    return None


def click_button(text):
    for b in driver.find_elements(By.CSS_SELECTOR, "#main button"):
        if b.text.strip() == text:
            b.click()
            return True
    check(False, f"a button {text!r}")
    return False


def set_width(width, height):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def screenshot(name, width, height):
    full = min(5000, js("return document.documentElement.scrollHeight"))
    set_width(width, max(height, full))
    time.sleep(0.2)
    driver.save_screenshot(os.path.join(SHOTS, f"{name}-{width}.png"))
    set_width(width, height)


try:
    # The first load asks whoami without a token: a sign-in form, no console error.
    driver.get(BASE + "/")
    wait(lambda: driver.find_elements(By.ID, "token"), "the sign-in form")
    collect_console("first load")
    screenshot("sign-in", 1280, 900)
    sign_in(ADMIN, "admin")
    check(js("return [...document.querySelectorAll('#nav a')].map(a => a.textContent).includes('Admin')"),
          "an admin sees the Admin page in the navigation")

    # The overview refreshes itself: a new record shows without a reload.
    visit("overview")

    def requests_tile():
        return js("const t = [...document.querySelectorAll('.tile')].find(t => t.textContent.startsWith('Requests'));"
                  " return t && t.querySelector('.value').firstChild.textContent")

    first = wait(requests_tile, "the requests tile")
    post_records([{"request_id": f"console-{now}-live", "timestamp": int(time.time() * 1000), "user": "carol",
                   "provider": "anthropic", "model": "claude-sonnet-4-5", "status": 200, "duration_ms": 420,
                   "cost_usd": "0.001"}])
    check(bool(wait(lambda: requests_tile() not in (None, first), "the overview to refresh", timeout=30)),
          f"the overview refreshed by itself ({first} -> {requests_tile()})")

    # Leaderboards: sorting by a column, and a custom range.
    visit("leaderboards?scope=provider&period=today&sort=cost")
    driver.find_element(By.XPATH, "//th//button[normalize-space()='Requests']").click()
    wait(lambda: "sort=requests" in driver.current_url and loaded() and rows(), "the leaderboard sorted by requests")
    counts = [int(c.replace(",", "")) for c in column(2)]
    check(counts == sorted(counts, reverse=True) and len(counts) >= 4, f"sorted by requests, most first ({counts})")
    hour_ago = int(time.time() * 1000) - 3_600_000
    visit(f"leaderboards?scope=user&period=custom&from={hour_ago}&to={int(time.time() * 1000) + 60_000}")
    check({"alice", "bob", "carol"} <= set(column(1)) and not errors_shown(), f"a custom range ranks the users ({column(1)})")
    check(bool(driver.find_elements(By.CSS_SELECTOR, "#main input[type=datetime-local]")), "a custom range has its inputs")
    collect_console("leaderboards")

    # A log filter changes the table; the CSV with that filter starts with the BOM.
    visit("logs")
    before = column(3)
    check(len(before) == 50 and len(set(before)) > 1, f"the log lists a page of mixed providers ({len(before)} rows)")
    field = driver.find_element(By.CSS_SELECTOR, "#log-filters input[name=provider]")
    field.send_keys("openai")
    driver.find_element(By.CSS_SELECTOR, "#log-filters button[type=submit]").click()
    wait(lambda: "provider=openai" in driver.current_url and loaded() and rows() and set(column(3)) == {"openai"},
         "the filtered table")
    after = column(3)
    check(after and set(after) == {"openai"} and after != before, f"the provider filter leaves only openai rows ({len(after)})")
    click_button("Download usage CSV")
    path = downloaded("usage-*.csv")
    check(path is not None, "the usage CSV downloaded")
    if path:
        raw = open(path, "rb").read()
        check(raw.startswith(b"\xef\xbb\xbf"), "the usage CSV starts with the UTF-8 BOM")
        table = list(csv.reader(io.StringIO(raw[3:].decode("utf-8"))))
        at = table[0].index("provider")
        data = [r for r in table[1:] if r and not r[0].startswith("#")]
        # The demo keeps adding openai rows: at least the fixed ones, and no other provider's.
        expected = sum(1 for r in records if r["provider"] == "openai")
        check(len(data) >= expected and all(r[at] == "openai" for r in data),
              f"the CSV holds the filter's rows only ({len(data)}, of which {expected} fixed)")
    collect_console("logs filter and CSV")

    # A record's detail.
    driver.find_element(By.CSS_SELECTOR, "#main table tbody tr a").click()
    wait(lambda: "/logs/" in driver.current_url and loaded(), "a record's detail")
    check(js("return document.querySelector('#main dl.kv') !== null") and not errors_shown(), "a record's detail shows")
    collect_console("log detail")

    # A session's detail and its request JSON (admins, stored requests).
    visit("sessions/" + "sess-alice-0")
    check(len(rows()) > 5 and not errors_shown(), f"a session's requests are listed ({len(rows())})")
    click_button("Download")
    path = downloaded("session-*-request.json")
    check(path is not None, "the session request JSON downloaded")
    if path:
        doc = json.load(open(path))
        check(doc.get("sessionId") == "sess-alice-0" and "sk-ant-secret" not in json.dumps(doc),
              "the session request JSON is the session's, its secret redacted")

    # The probe log (admins) on the availability page.
    visit("availability")
    wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#avail-grid .card")) >= 4, "the provider grid")
    wait(lambda: "closed-port" in driver.find_element(By.ID, "main").text, "the probe results", timeout=30)
    click_button("Download probe log")
    path = downloaded("probe-logs-*.txt")
    check(path is not None and open(path).read().startswith("["), "the probe log downloaded, one line per run")

    # The availability grid turns a provider red when its records fail.
    def flaky():
        return js("const c = document.querySelector('#avail-grid .card[data-provider=flaky]'); return c && c.dataset.status")

    check(flaky() == "green", f"flaky starts green ({flaky()})")
    post_records([{"request_id": f"console-{now}-flaky-bad-{i}", "timestamp": int(time.time() * 1000) - i * 500,
                   "user": "bob", "provider": "flaky", "model": "flaky-1", "status": 503, "duration_ms": 900,
                   "error": "upstream unavailable"} for i in range(12)])
    end = time.time() + 45
    while time.time() < end and flaky() != "red":
        time.sleep(2)
        visit("availability")
        wait(lambda: flaky() is not None, "the flaky card")
    check(flaky() == "red", f"flaky turned red after its records failed ({flaky()})")

    # The backup, then the audit trail lists every export.
    visit("admin")
    click_button("Download backup")
    path = downloaded("backup_*")
    check(path is not None and open(path, "rb").read(16).startswith(b"SQLite format 3"), "the backup downloaded (a SQLite file)")
    actions = set()
    end = time.time() + 15
    while time.time() < end and "backup" not in actions:  # audited once the file is whole
        visit("admin")
        actions = set(column(2))
    check({"usage_csv", "probe_log", "backup"} <= actions and len(actions) >= 4, f"the audit trail lists the exports ({sorted(actions)})")

    # Every page at both widths: data, no API error; a screenshot of each.
    for width, height in WIDTHS:
        set_width(width, height)
        for page in PAGES:
            started = time.time()
            visit(page)
            print(f"time {page} at {width} px: drawn {1000 * (time.time() - started):.0f} ms after navigation", flush=True)
            time.sleep(0.3)
            errs = errors_shown()
            check(not errs, f"{page} at {width} px shows no API error {errs[:1]}")
            has_data = {
                "overview": lambda: len(driver.find_elements(By.CSS_SELECTOR, ".tile")) >= 7
                and driver.find_elements(By.CSS_SELECTOR, "svg.chart rect"),
                "availability": lambda: len(driver.find_elements(By.CSS_SELECTOR, "#avail-grid .card")) >= 4,
                "leaderboards": lambda: len(rows()) >= 3 and driver.find_elements(By.CSS_SELECTOR, "svg.chart rect"),
                "sessions": lambda: len(rows()) >= 3,
                "logs": lambda: len(rows()) == 50,
                "claude-code": lambda: "Bash" in column(0) or "Bash" in driver.find_element(By.ID, "main").text,
                "admin": lambda: len(rows()) >= 4,
            }[page]
            check(bool(wait(has_data, f"{page} data at {width} px")), f"{page} at {width} px shows data")
            overflow = js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            check(overflow <= 1, f"{page} at {width} px does not scroll sideways ({overflow} px)")
            screenshot(page, width, height)
            collect_console(f"{page} at {width}")
    set_width(1280, 900)

    # Keyboard: the navigation and the sign-out button are reachable with Tab alone.
    driver.get(BASE + "/#/overview")
    driver.refresh()  # focus starts at the top of a fresh page
    wait(loaded, "the overview")
    reached = set()
    for _ in range(12):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        reached.add(js("return document.activeElement.textContent.trim()"))
    check({"Overview", "Request log", "Admin", "Sign out"} <= reached, f"Tab reaches the navigation ({sorted(reached)[:12]})")

    # Claude Code per user (user.email kept as a label): an admin sees every developer.
    visit("claude-code")
    per_user = wait(lambda: (lambda t: t if "ana@example.com" in t and "ben@example.com" in t else None)(
        driver.find_element(By.ID, "main").text), "the demo's developers on the Claude Code page", timeout=30)
    check(bool(per_user), "an admin's Claude Code page lists cost and tokens per developer")

    # A user token: its own rows only, whatever the URL asks; no admin page.
    sign_out()
    sign_in(ALICE, "user")
    check(not js("return [...document.querySelectorAll('#nav a')].map(a => a.textContent).includes('Admin')"),
          "a user has no Admin page in the navigation")
    visit("logs?user=bob")
    users = column(1)
    check(users and set(users) == {"alice"}, f"a user token asking for bob's rows sees only its own ({set(users)})")
    visit("leaderboards?scope=user")
    check(column(1) == ["alice"], f"a user's leaderboard shows its own line only ({column(1)})")
    collect_console("user before asking for bob's session")
    driver.get(f"{BASE}/#/sessions/sess-bob-0")
    wait(loaded, "bob's session as alice")
    check(any("404" in e for e in errors_shown()), "another user's session is not found for a user token")
    driver.get_log("browser")  # that 404 was asked for: the page shows it, it is no fault of the page
    visit("admin")
    check(driver.find_elements(By.ID, "admin-denied") and not rows(), "the admin page tells a user it needs an admin token")
    for path in ["/api/v1/audit", "/api/v1/export/backup", "/api/v1/export/probe-log"]:
        status, _ = http(path, ALICE)
        check(status == 403, f"the server refuses {path} to a user token ({status})")
    status, body = http("/api/v1/logs?user=bob&limit=1000", ALICE)
    items = json.loads(body)["items"]
    check(status == 200 and items and {i["user"] for i in items} == {"alice"}, "the API gives a user token its own rows only")
    collect_console("user")

    # A Claude Code developer's token: its own series only, no fleet-wide tool totals.
    sign_out()
    sign_in(ANA, "user")
    visit("claude-code")
    text = driver.find_element(By.ID, "main").text
    check("ana@example.com" in text and "ben@example.com" not in text and "Permission decisions" not in text,
          "a developer's token sees its own Claude Code figures only")
    status, body = http("/api/v1/claude-code", ANA)
    mine = json.loads(body)
    users = {u["name"] for u in mine["by_user"]}
    check(status == 200 and users == {"ana@example.com"} and mine["tools"] is None,
          f"the API gives a developer's token its own series only ({users})")
    collect_console("developer")

    # No tokens configured: the console opens at once (no sign-in, no sign-out) and the pages
    # that need the request log say so instead of failing.
    driver.get(OPEN + "/")
    wait(lambda: js("const r = document.getElementById('role'); return r && r.dataset.role") == "open", "the open console")
    check(not driver.find_elements(By.ID, "token") and not driver.find_elements(By.CSS_SELECTOR, "#who button"),
          "with no tokens the console opens without sign-in")
    wait(loaded, "the open overview")
    check("log_store.kind" in driver.find_element(By.ID, "main").text and not errors_shown(),
          "without a request log the overview says what to configure")
    driver.get(OPEN + "/#/claude-code")
    wait(loaded, "the open Claude Code page")
    check("OTEL_EXPORTER_OTLP_ENDPOINT" in driver.find_element(By.ID, "main").text, "an empty Claude Code page says how to send telemetry")
    collect_console("open server")
finally:
    collect_console("end")
    driver.quit()

check(not console_errors, "no console errors" + ("".join(f"\n  {e}" for e in console_errors[:10])))
if failures:
    print(f"{len(failures)} console check(s) failed", file=sys.stderr)
    sys.exit(1)
print("console: every check passed")
