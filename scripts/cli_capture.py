"""Captures the OTLP telemetry of a real coding CLI (Gemini CLI or Codex CLI) working against a
local stand-in of its model API. Run by scripts/cli-capture.sh inside a network namespace that
has only loopback (nothing reaches the internet):

    python cli_capture.py gemini|codex CLI_BIN WORKDIR CAPTURE_DIR

In one process: an OTLP/HTTP sink that records every body (CAPTURE_DIR/index.jsonl +
NNNN_<signal>.pb|.json) and answers an empty success; the stand-in model API (Gemini
`streamGenerateContent` / `generateContent` / `countTokens`, or the OpenAI Responses API as
server-sent events), which answers a tool call on the first turn of each prompt and text after,
with usage including cached and thought / reasoning tokens, and counts what it answered; then
the CLI, run non-interactively a few times. Writes CAPTURE_DIR/expected.json: model calls,
tokens by type per model, as the stand-in answered them.
"""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KIND, CLI, WORK, CAPTURE = sys.argv[1:5]
os.makedirs(CAPTURE, exist_ok=True)
lock = threading.Lock()
seq = {"n": 0}
calls = {"n": 0}
expected = {"requests": 0, "models": {}, "paths": {}}


def read_body(h):
    """The request body, with a length or chunked (Node's exporters send chunked bodies)."""
    if "chunked" in h.headers.get("transfer-encoding", ""):
        out = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("content-length", 0)))


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = read_body(self)
        ct = self.headers.get("content-type", "")
        enc = self.headers.get("content-encoding")
        signal = self.path.rstrip("/").rsplit("/", 1)[-1]
        with lock:
            seq["n"] += 1
            n = seq["n"]
        ext = ".json" if "json" in ct else ".pb"
        name = f"{n:04d}_{signal}{ext}" + (".gz" if enc == "gzip" else "")
        with open(os.path.join(CAPTURE, name), "wb") as f:
            f.write(body)
        with open(os.path.join(CAPTURE, "index.jsonl"), "a") as f:
            f.write(json.dumps({"n": n, "path": self.path, "content_type": ct, "content_encoding": enc, "file": name}) + "\n")
        answer = b"{}" if "json" in ct else b""
        self.send_response(200)
        self.send_header("content-type", "application/json" if "json" in ct else "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def count(model, usage):
    with lock:
        expected["requests"] += 1
        m = expected["models"].setdefault(model, {"requests": 0, "input": 0, "output": 0, "cached": 0, "thoughts": 0})
        m["requests"] += 1
        for k, v in usage.items():
            m[k] += v


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def sse(self, events):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for e in events:
            self.chunk(e.encode())
        self.chunk(b"")

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self):
        with lock:
            expected["paths"]["GET " + self.path.split("?")[0]] = expected["paths"].get("GET " + self.path.split("?")[0], 0) + 1
        if KIND == "codex" and self.path.split("?")[0].endswith("/models"):
            self.send_json(200, {"object": "list", "data": [{"id": "gpt-5-codex", "object": "model"}], "models": []})
            return
        self.send_json(404, {"error": {"message": f"stand-in: no {self.path}"}})

    def do_POST(self):
        raw = read_body(self)
        path = self.path.split("?")[0]
        with lock:
            expected["paths"]["POST " + path] = expected["paths"].get("POST " + path, 0) + 1
            calls["n"] += 1
            n = calls["n"]
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            req = {}
        if KIND == "gemini":
            self.gemini(path, req, n)
        else:
            self.codex(path, req, n)

    # ---- Gemini API ----

    def gemini(self, path, req, n):
        model = path.rsplit("/", 1)[-1].split(":")[0]
        if path.endswith(":countTokens"):
            self.send_json(200, {"totalTokens": 42})
            return
        contents = req.get("contents", [])
        last = contents[-1] if contents else {}
        answered_tool = any("functionResponse" in p for p in last.get("parts", []))
        asked_tool = any(
            "list the files" in p.get("text", "") for p in last.get("parts", []) if isinstance(p, dict))
        prompt_tokens = 100 + 10 * len(contents)
        usage = {"input": prompt_tokens, "output": 7 + n % 5, "cached": 40, "thoughts": 3}
        meta = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": usage["output"],
                "cachedContentTokenCount": usage["cached"], "thoughtsTokenCount": usage["thoughts"],
                "totalTokenCount": prompt_tokens + usage["output"] + usage["thoughts"]}
        if asked_tool and not answered_tool:
            parts = [{"functionCall": {"name": "list_directory", "args": {"dir_path": WORK}}}]
        else:
            parts = [{"text": "Done: the stand-in says hello."}]
        resp = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": meta, "modelVersion": model, "responseId": f"resp-{n}"}
        count(model, usage)
        if ":streamGenerateContent" in path:
            self.sse([f"data: {json.dumps(resp)}\r\n\r\n"])
        else:
            self.send_json(200, resp)

    # ---- OpenAI Responses API (Codex) ----

    def codex(self, path, req, n):
        if not path.endswith("/responses"):
            self.send_json(200, {})  # analytics posts (turn costs): not model calls
            return
        model = req.get("model", "unknown")
        tools = [t.get("name") for t in req.get("tools", []) if isinstance(t, dict)]
        with lock:
            expected["tools_offered"] = tools
        items = req.get("input", [])
        answered_tool = any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items[-2:])
        asked_tool = "list the files" in json.dumps(items[-3:])
        usage = {"input": 200 + 10 * len(items), "output": 9 + n % 5, "cached": 64, "thoughts": 5}
        rid = f"resp_{n:04d}"
        if asked_tool and not answered_tool:
            if "shell_command" in tools:
                name, args = "shell_command", {"command": "ls -1", "workdir": WORK}
            elif "exec_command" in tools:
                name, args = "exec_command", {"cmd": "ls -1", "workdir": WORK}
            else:
                name, args = "shell", {"command": ["ls", "-1"], "workdir": WORK}
            item = {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": name,
                    "arguments": json.dumps(args)}
        else:
            item = {"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "Done: the stand-in says hello.", "annotations": []}]}
        count(model, usage)
        created = {"type": "response.created", "response": {"id": rid, "object": "response", "model": model, "status": "in_progress", "output": []}}
        added = {"type": "response.output_item.added", "output_index": 0, "item": item}
        done = {"type": "response.output_item.done", "output_index": 0, "item": item}
        completed = {"type": "response.completed", "response": {
            "id": rid, "object": "response", "model": model, "status": "completed", "output": [item],
            "usage": {"input_tokens": usage["input"], "input_tokens_details": {"cached_tokens": usage["cached"]},
                      "output_tokens": usage["output"], "output_tokens_details": {"reasoning_tokens": usage["thoughts"]},
                      "total_tokens": usage["input"] + usage["output"]}}}
        self.sse([f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (created, added, done, completed)])


def serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


sink = serve(Sink)
api = serve(Api)
sink_url = f"http://127.0.0.1:{sink.server_address[1]}"
api_url = f"http://127.0.0.1:{api.server_address[1]}"
home = os.path.join(WORK, "home")
os.makedirs(home, exist_ok=True)
env = {"PATH": os.environ["PATH"], "HOME": home, "TERM": "dumb", "NO_COLOR": "1", "CI": "1"}
prompts = ["Say hello.", "Please list the files in this folder, then say done."]

if KIND == "gemini":
    env.update({
        "GEMINI_API_KEY": "test-key-not-real",
        "GOOGLE_GEMINI_BASE_URL": api_url,
        "GEMINI_TELEMETRY_ENABLED": "true",
        "GEMINI_TELEMETRY_TARGET": "local",
        "GEMINI_TELEMETRY_OTLP_ENDPOINT": sink_url,
        "GEMINI_TELEMETRY_OTLP_PROTOCOL": "http",
        "GEMINI_TELEMETRY_LOG_PROMPTS": "false",
        "OTEL_RESOURCE_ATTRIBUTES": "team.id=cli-team",
        "GEMINI_CLI_NO_RELAUNCH": "true",
    })
    os.makedirs(os.path.join(home, ".gemini"), exist_ok=True)
    with open(os.path.join(home, ".gemini", "settings.json"), "w") as f:
        json.dump({"security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
                   "privacy": {"usageStatisticsEnabled": False},
                   "telemetry": {"enabled": True, "target": "local", "otlpEndpoint": sink_url, "otlpProtocol": "http",
                                 "logPrompts": False}}, f)
    runs = [[CLI, "--approval-mode", "yolo", "-m", "gemini-2.5-pro", "-p", p] for p in prompts]
else:
    env.update({"CODEX_HOME": os.path.join(home, ".codex"), "OPENAI_API_KEY": "test-key-not-real",
                "OTEL_RESOURCE_ATTRIBUTES": "team.id=cli-team"})
    os.makedirs(env["CODEX_HOME"], exist_ok=True)
    with open(os.path.join(env["CODEX_HOME"], "config.toml"), "w") as f:
        f.write(f'''model = "gpt-5-codex"
model_provider = "standin"
approval_policy = "never"
sandbox_mode = "danger-full-access"

[model_providers.standin]
name = "stand-in"
base_url = "{api_url}/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[otel]
environment = "capture"
log_user_prompt = false
exporter = {{ otlp-http = {{ endpoint = "{sink_url}/v1/logs", protocol = "binary" }} }}
trace_exporter = {{ otlp-http = {{ endpoint = "{sink_url}/v1/traces", protocol = "binary" }} }}
metrics_exporter = {{ otlp-http = {{ endpoint = "{sink_url}/v1/metrics", protocol = "binary" }} }}
''')
    runs = [[CLI, "exec", "--skip-git-repo-check", p] for p in prompts]

for cmd in runs:
    r = subprocess.run(cmd, cwd=WORK, env=env, capture_output=True, text=True, timeout=180)
    print(f"$ {' '.join(cmd[1:])} -> {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-2500:]}", file=sys.stderr)
    time.sleep(1)

time.sleep(3)

# ---- Scrub: the machine's names and the tools' arguments and output (file names of the work
# folder) are replaced; everything gatemeter reads stays as sent. ----

SCRUB = {"host.name": "capture-host", "process.owner": "user", "host.id": "capture-host-id",
         "arguments": "[scrubbed]", "output": "[scrubbed]", "process.command": "gemini",
         "process.executable.path": "/usr/bin/node"}
DROP = {"process.command_args", "process.command_line"}


def scrub_json(v):
    if isinstance(v, dict):
        if isinstance(v.get("attributes"), list):
            v["attributes"] = [a for a in v["attributes"] if a.get("key") not in DROP]
            for a in v["attributes"]:
                if a.get("key") in SCRUB:
                    a["value"] = {"stringValue": SCRUB[a["key"]]}
        for x in v.values():
            scrub_json(x)
    elif isinstance(v, list):
        for x in v:
            scrub_json(x)


def scrub_pb(msg):
    from google.protobuf.message import Message
    for field, value in msg.ListFields():
        if field.name == "attributes":
            keep = [a for a in value if a.key not in DROP]
            del value[:]
            value.extend(keep)
            for a in value:
                if a.key in SCRUB:
                    a.value.Clear()
                    a.value.string_value = SCRUB[a.key]
        elif field.message_type is not None:
            items = [value] if isinstance(value, Message) else value
            for x in items:
                if isinstance(x, Message):
                    scrub_pb(x)


from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

TYPES = {"logs": ExportLogsServiceRequest, "metrics": ExportMetricsServiceRequest, "traces": ExportTraceServiceRequest}
for line in open(os.path.join(CAPTURE, "index.jsonl")):
    e = json.loads(line)
    path = os.path.join(CAPTURE, e["file"])
    if e["file"].endswith(".json"):
        d = json.load(open(path))
        scrub_json(d)
        json.dump(d, open(path, "w"))
    elif e["file"].endswith(".pb"):
        signal = e["file"].split("_", 1)[1].split(".")[0]
        m = TYPES[signal]()
        m.ParseFromString(open(path, "rb").read())
        scrub_pb(m)
        open(path, "wb").write(m.SerializeToString())

with open(os.path.join(CAPTURE, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")
print(json.dumps(expected, sort_keys=True))
print(f"{seq['n']} OTLP bodies captured in {CAPTURE}")
