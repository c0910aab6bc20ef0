#!/usr/bin/env bash
# End-to-end test of the shipped assets (scripts/test.sh runs it): real processes on free
# loopback ports in a temporary directory, stopped on exit.
#
#   gatemeter demo (gateway records, its simulated Claude Code CLI sessions over OTLP, probes of
#   itself)  →  Prometheus with prometheus/prometheus.yml and alerts/*.rules.yml  →  every panel
#   query of every dashboard, variables filled with real label values, returns data, and no alert
#   fires or is pending on this healthy traffic; then one provider fails  →
#   GatewayProviderAvailabilityLow fires in Prometheus, reaches Alertmanager
#   (alerts/alertmanager.yml) and is delivered to a local webhook receiver.
#
# Only the test's copies are changed: targets and paths, 1 s scrape and evaluation intervals,
# every `for:` cut to 5 s, the rules loaded after 15 s of scrapes, webhook URLs pointed at the
# local receiver.
#
#   scripts/e2e-assets.sh [path/to/gatemeter]   (default: target/debug/gatemeter, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '==> %s\n' "$*"; }
fail() { echo "e2e-assets: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

bin=${1:-target/debug/gatemeter}
[ -x "$bin" ] || cargo build --quiet --bin gatemeter
have prometheus || fail "prometheus is missing (Debian package prometheus)"
am_bin=$(command -v prometheus-alertmanager || command -v alertmanager || true)
[ -n "$am_bin" ] || fail "alertmanager is missing (Debian package prometheus-alertmanager)"
have python3 || fail "python3 is missing"
have curl || fail "curl is missing"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url, what
  for _ in $(seq 1 150); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done
  fail "$2 did not answer at $1"
}

# ---- gatemeter demo ----
. scripts/demo-lib.sh
start_demo "$bin" "$tmp/demo.log"
gm=$demo_addr
say "gatemeter demo on $gm"

# ---- webhook receiver: appends every POST body as one line ----
wh_port=$(free_port)
python3 - "$wh_port" "$tmp/webhook.jsonl" >"$tmp/webhook.log" 2>&1 <<'EOF' &
import http.server, json, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "a") as f:
            f.write(json.dumps({"path": self.path, "body": json.loads(body)}) + "\n")
        self.send_response(200); self.end_headers()
    def do_GET(self):
        self.send_response(200); self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
pids+=($!)
wait_http "http://127.0.0.1:$wh_port/" "webhook receiver"

# ---- Alertmanager with the shipped config, webhooks pointed here ----
am_port=$(free_port)
mkdir -p "$tmp/alerts" "$tmp/am"
sed "s#http://alert-webhook:9095/#http://127.0.0.1:$wh_port/#" alerts/alertmanager.yml >"$tmp/alerts/alertmanager.yml"
grep -q "127.0.0.1:$wh_port" "$tmp/alerts/alertmanager.yml" || fail "webhook URL not substituted"
"$am_bin" --config.file="$tmp/alerts/alertmanager.yml" --storage.path="$tmp/am" \
  --web.listen-address="127.0.0.1:$am_port" --cluster.listen-address= >"$tmp/am.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$am_port/-/ready" "alertmanager"

# ---- Prometheus with the shipped config and rules ----
# The rules load after 15 s of scrapes: with every `for:` cut to 5 s, no alert may judge a rate
# over the first two or three scrapes (a few dozen requests of the demo's flaky provider, whose
# error ratio peaked at 16 % over runs with the rules loaded at once, against the 25 % threshold
# of GatewayProviderErrorRateHigh); in production `for:` gives these windows minutes.
prom_port=$(free_port)
rules=(alerts/recording.rules.yml alerts/alerts.rules.yml)
for f in "${rules[@]}"; do
  sed -e 's/^\(\s*\)for: .*/\1for: 5s/' -e 's/^\(\s*\)interval: 1m$/\1interval: 1s/' "$f" >"$tmp/$f.later"
  echo 'groups: []' >"$tmp/$f"
done
sed -e 's/scrape_interval: 15s/scrape_interval: 1s/' -e 's/evaluation_interval: 15s/evaluation_interval: 1s/' \
  -e "s#\"gatemeter:4318\"#\"$gm\"#g" -e "s#\"alertmanager:9093\"#\"127.0.0.1:$am_port\"#" \
  -e "s#\.\./alerts/#$tmp/alerts/#" prometheus/prometheus.yml >"$tmp/prometheus.yml"
grep -q "$gm" "$tmp/prometheus.yml" || fail "targets not substituted"
promtool check config "$tmp/prometheus.yml" >/dev/null
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prom" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prom.log" 2>&1 &
prom_pid=$!
pids+=($prom_pid)
prom="http://127.0.0.1:$prom_port"
wait_http "$prom/-/ready" "prometheus"
say "prometheus on $prom, alertmanager on 127.0.0.1:$am_port, webhook on 127.0.0.1:$wh_port"

# Both jobs scraped; then time for counters to rise between scrapes (a counter's first value is
# not an increase to Prometheus) and for the recording rules.
for _ in $(seq 1 100); do
  n=$(curl -fsS "$prom/api/v1/query" --data-urlencode 'query=sum(up{job=~"gatemeter-.*"})' |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')
  [ "$n" = 2 ] && break
  sleep 0.2
done
[ "$n" = 2 ] || { cat "$tmp/prom.log"; fail "prometheus does not scrape both gatemeter jobs"; }
say "15 s of scrapes, then the rules"
sleep 15
for f in "${rules[@]}"; do mv "$tmp/$f.later" "$tmp/$f"; done
promtool check rules "${rules[@]/#/$tmp/}" >/dev/null
kill -HUP "$prom_pid"
for _ in $(seq 1 50); do
  n=$(curl -fsS "$prom/api/v1/rules" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["groups"]))')
  [ "$n" -gt 0 ] && break
  sleep 0.2
done
[ "$n" -gt 0 ] || { tail -n 20 "$tmp/prom.log"; fail "prometheus did not load the rules"; }
say "waiting 25 s for rates and recording rules"
sleep 25

say "every panel query of every dashboard returns data"
python3 - "$prom" dashboards/*.json <<'EOF'
import json, re, sys, urllib.error, urllib.parse, urllib.request
prom, files = sys.argv[1], sys.argv[2:]
GRAFANA = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "15s"}

def api(path, **params):
    url = f"{prom}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.load(r)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{path} {params}: HTTP {e.code} {e.read().decode()}")
    if answer["status"] != "success":
        raise SystemExit(f"{path} {params}: {answer}")
    return answer["data"]

def fill(text, values):
    for k, v in GRAFANA.items():
        text = text.replace(k, v)
    for name, v in values.items():
        text = text.replace("${" + name + "}", v).replace("$" + name, v)
    return text

failures, queries = [], 0
for path in files:
    d = json.load(open(path))
    values = {}
    for var in d["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
        metric, label = fill(m.group(1), values), m.group(2)
        found = [v for v in api(f"label/{label}/values", **{"match[]": metric}) if v]
        if not found:
            failures.append(f"{path}: variable {var['name']}: no value for {var['definition']}")
            found = ["none"]
        # As Grafana does for a regex matcher: regex-escaped, then escaped for a PromQL string.
        values[var["name"]] = re.escape(found[0]).replace("\\", "\\\\")
    for p in d["panels"]:
        for t in p.get("targets", []):
            q = fill(t["expr"], values)
            queries += 1
            result = api("query", query=q)["result"]
            real = [s for s in result if s["value"][1] not in ("NaN", "+Inf", "-Inf")]
            if not real:
                failures.append(f"{path}: {p['title']!r}: {'only NaN' if result else 'no data'} for {q}")
print(f"{queries} panel queries over {len(files)} dashboards")
if failures:
    raise SystemExit("panels without data:\n  " + "\n  ".join(failures))
EOF

say "healthy demo traffic: no alert firing or pending, nothing sent to Alertmanager"
python3 - "$prom" "127.0.0.1:$am_port" <<'EOF'
import json, sys, urllib.request
prom, am = sys.argv[1:]
get = lambda url: json.load(urllib.request.urlopen(url, timeout=10))
alerts = [(a["labels"], a["state"]) for a in get(f"{prom}/api/v1/alerts")["data"]["alerts"]]
assert not alerts, f"alerts on healthy demo traffic: {alerts}"
held = get(f"http://{am}/api/v2/alerts")
assert not held, f"Alertmanager holds alerts on healthy demo traffic: {held}"
print("no alert: every rule evaluated on the demo's traffic stays quiet")
EOF
[ ! -s "$tmp/webhook.jsonl" ] || fail "webhook got a notification on healthy traffic: $(cat "$tmp/webhook.jsonl")"

say "one provider fails: GatewayProviderAvailabilityLow must fire, reach Alertmanager and the webhook"
fail_records() {
  local batch="[" i
  for i in $(seq 1 20); do
    batch+="{\"namespace\":\"e2e\",\"provider\":\"e2e-failing\",\"model\":\"e2e-model\",\"status\":502,\"duration_ms\":80,\"error\":\"bad gateway\"},"
  done
  curl -fsS -o /dev/null -H 'Content-Type: application/json' --data-binary "${batch%,}]" "http://$gm/v1/events"
}
delivered=""
for _ in $(seq 1 90); do
  fail_records
  if grep -q '"GatewayProviderAvailabilityLow"' "$tmp/webhook.jsonl" 2>/dev/null &&
    grep '"GatewayProviderAvailabilityLow"' "$tmp/webhook.jsonl" | grep -q '"e2e-failing"'; then
    delivered=yes
    break
  fi
  sleep 1
done
[ -n "$delivered" ] || {
  curl -sS "$prom/api/v1/alerts" >&2 || true
  tail -n 20 "$tmp/am.log" >&2
  fail "the availability alert did not reach the webhook"
}
python3 - "$prom" "127.0.0.1:$am_port" "$tmp/webhook.jsonl" <<'EOF'
import json, sys, urllib.request
prom, am, hook = sys.argv[1:]
get = lambda url: json.load(urllib.request.urlopen(url, timeout=10))
firing = [a["labels"] for a in get(f"{prom}/api/v1/alerts")["data"]["alerts"]
          if a["labels"]["alertname"] == "GatewayProviderAvailabilityLow" and a["state"] == "firing"]
assert [a["provider"] for a in firing] == ["e2e-failing"], f"firing in Prometheus: {firing}"
in_am = [a["labels"] for a in get(f"http://{am}/api/v2/alerts")
         if a["labels"]["alertname"] == "GatewayProviderAvailabilityLow"]
assert [a["provider"] for a in in_am] == ["e2e-failing"], f"in Alertmanager: {in_am}"
posts = [json.loads(l) for l in open(hook)]
post = next(p for p in posts if any(a["labels"]["alertname"] == "GatewayProviderAvailabilityLow" for a in p["body"]["alerts"]))
assert post["path"] == "/gatemeter/critical", post["path"]
alert = next(a for a in post["body"]["alerts"] if a["labels"]["alertname"] == "GatewayProviderAvailabilityLow")
assert alert["labels"]["severity"] == "critical" and alert["status"] == "firing", alert
assert alert["annotations"]["summary"].startswith("Provider e2e-failing is failing"), alert["annotations"]
print("fired in Prometheus, held by Alertmanager, delivered to the critical webhook:", alert["annotations"]["summary"])
others = [a["labels"] for a in get(f"{prom}/api/v1/alerts")["data"]["alerts"]
          if a["labels"].get("provider") != "e2e-failing"]
assert not others, f"alerts beside the failing provider's: {others}"
print("healthy demo providers raised no alert; only the failing provider's alerts are active")
EOF
say "e2e assets: passed"
