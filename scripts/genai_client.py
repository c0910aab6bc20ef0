"""The real OpenAI Python client with the official OpenTelemetry GenAI instrumentation
(opentelemetry-instrumentation-openai-v2; spans, metrics and events on) against a local
stand-in of the Chat Completions and Embeddings APIs, exporting OTLP/HTTP to gatemeter.

Run by scripts/genai-client.sh (which makes the pinned venv and starts gatemeter):

    python genai_client.py GATEMETER_URL CAPTURE_DIR [openai-v2|openllmetry] [spans|metrics]

`openai-v2` (default): the official opentelemetry-instrumentation-openai-v2;
`openllmetry`: OpenLLMetry's opentelemetry-instrumentation-openai (Traceloop), whose attribute
names differ (gen_ai.system, llm.request.type, gen_ai.usage.prompt_tokens / input_tokens).
`metrics` (4th argument): gatemeter lists this client in `otlp.genai_metric_sources`, so its
metric points, not its spans, must give the same totals (default `spans`).

In one process:
- a stand-in of the OpenAI API on 127.0.0.1 (real-shaped JSON and SSE answers with `usage`;
  every tenth call fails, alternately 500 and 429);
- a recording relay between the OTel exporters and gatemeter: each OTLP body is saved in
  CAPTURE_DIR (index.jsonl + NNNN_<signal>.pb) and forwarded unchanged, gatemeter's answer
  returned unchanged;
- the client: chat completions on two models (some streamed), embeddings, with the client's
  own retries off (max_retries=0) so one call is one HTTP exchange and one span.

Writes CAPTURE_DIR/expected.json (requests, errors, tokens per model, requests per namespace,
as the stand-in answered them) and then checks gatemeter's /metrics against it exactly:
exit 1 on any difference.
"""

import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GATEMETER = sys.argv[1].rstrip("/")
CAPTURE = sys.argv[2]
FLAVOUR = sys.argv[3] if len(sys.argv) > 3 else "openai-v2"
RECORDS_FROM = sys.argv[4] if len(sys.argv) > 4 else "spans"
CALLS = 40
TEAM = "search"
os.makedirs(CAPTURE, exist_ok=True)

# ---- The stand-in of the OpenAI API. ----

lock = threading.Lock()
served = {"n": 0}
expected = {"requests": 0, "errors": 0, "models": {}, "namespaces": {}, "statuses": {}}


def count(model, ok, prompt, completion, status=200):
    with lock:
        expected["requests"] += 1
        expected["statuses"][str(status)] = expected["statuses"].get(str(status), 0) + 1
        expected["namespaces"][TEAM] = expected["namespaces"].get(TEAM, 0) + 1
        m = expected["models"].setdefault(model, {"requests": 0, "input": 0, "output": 0})
        m["requests"] += 1
        if ok:
            m["input"] += prompt
            m["output"] += completion
        else:
            expected["errors"] += 1


class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with lock:
            served["n"] += 1
            n = served["n"]
        model = req["model"]
        # The response model is the dated snapshot of the asked-for alias, like the real API.
        resp_model = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}.get(model, model)
        if n % 10 == 0:
            status = 500 if (n // 10) % 2 else 429
            count(model, False, 0, 0, status)
            kind = "server_error" if status == 500 else "rate_limit_exceeded"
            self.send_json(status, {"error": {"message": "stand-in failure", "type": kind, "param": None, "code": kind}},
                           [("retry-after", "0")] if status == 429 else [])
            return
        if self.path.endswith("/embeddings"):
            inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
            prompt = sum(len(s.split()) for s in inputs) + 1
            count(model, True, prompt, 0)
            self.send_json(200, {"object": "list", "model": model, "data": [
                {"object": "embedding", "index": i, "embedding": [0.01 * i, 0.02, -0.03]} for i in range(len(inputs))],
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})
            return
        prompt = 11 + n % 7 + sum(len(m["content"].split()) for m in req["messages"])
        completion = 5 + n % 13
        count(resp_model, True, prompt, completion)
        cid = f"chatcmpl-standin{n:04d}"
        created = int(time.time())
        text = " ".join(["word"] * completion)
        if req.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                          "total_tokens": prompt + completion}},
            ]
            for c in chunks:
                c.update({"id": cid, "object": "chat.completion.chunk", "created": created, "model": resp_model})
                self.chunk(f"data: {json.dumps(c)}\n\n".encode())
            self.chunk(b"data: [DONE]\n\n")
            self.chunk(b"")
            return
        self.send_json(200, {
            "id": cid, "object": "chat.completion", "created": created, "model": resp_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
            "system_fingerprint": "fp_standin"})

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


# ---- The recording relay in front of gatemeter. ----

seq = {"n": 0}


class Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        ct = self.headers.get("content-type", "")
        enc = self.headers.get("content-encoding")
        signal = self.path.rstrip("/").rsplit("/", 1)[-1]
        with lock:
            seq["n"] += 1
            n = seq["n"]
        name = f"{n:04d}_{signal}.pb" + (".gz" if enc == "gzip" else "")
        with open(os.path.join(CAPTURE, name), "wb") as f:
            f.write(body)
        with open(os.path.join(CAPTURE, "index.jsonl"), "a") as f:
            f.write(json.dumps({"n": n, "path": self.path, "content_type": ct, "content_encoding": enc, "file": name}) + "\n")
        headers = {"content-type": ct}
        if enc:
            headers["content-encoding"] = enc
        req = urllib.request.Request(GATEMETER + self.path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req) as r:
                status, answer, act = r.status, r.read(), r.headers.get("content-type", ct)
        except urllib.error.HTTPError as e:
            status, answer, act = e.code, e.read(), e.headers.get("content-type", ct)
        if status != 200:
            print(f"gatemeter answered {status} to {self.path}: {answer[:200]!r}", file=sys.stderr)
        self.send_response(status)
        self.send_header("content-type", act)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


api = serve(StandIn)
relay = serve(Relay)
relay_url = f"http://127.0.0.1:{relay.server_address[1]}"

# ---- OpenTelemetry: the SDK with OTLP/HTTP exporters, as a user would set it up. ----

os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_and_event")
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_EMIT_EVENT", "true")

from opentelemetry import _logs, metrics, trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk._logs import LoggerProvider  # noqa: E402
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402

resource = Resource.create({"service.name": "genai-client-test", "team.id": TEAM})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{relay_url}/v1/traces")))
trace.set_tracer_provider(tracer_provider)
reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{relay_url}/v1/metrics"), export_interval_millis=2000)
meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
metrics.set_meter_provider(meter_provider)
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{relay_url}/v1/logs")))
_logs.set_logger_provider(logger_provider)

if FLAVOUR == "openllmetry":
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor  # noqa: E402
else:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor  # noqa: E402

OpenAIInstrumentor().instrument()

import openai  # noqa: E402

client = openai.OpenAI(base_url=f"http://127.0.0.1:{api.server_address[1]}/v1", api_key="sk-test-not-a-real-key", max_retries=0)

failures = 0
for i in range(CALLS):
    model = "gpt-4o-mini" if i % 2 == 0 else "gpt-4o"
    try:
        if i % 8 == 7:
            client.embeddings.create(model="text-embedding-3-small", input=[f"document {i} about otel", "second text"])
        elif i % 5 == 4:
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Stream call {i}, say a few words."}],
                stream=True, stream_options={"include_usage": True})
            for _ in stream:
                pass
        else:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Call {i}: say hello."}])
    except (openai.RateLimitError, openai.InternalServerError):
        failures += 1

tracer_provider.force_flush()
meter_provider.force_flush()
logger_provider.force_flush()
tracer_provider.shutdown()
meter_provider.shutdown()
logger_provider.shutdown()
assert failures == expected["errors"], (failures, expected["errors"])

with open(os.path.join(CAPTURE, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")

# ---- gatemeter's counters against what the stand-in answered. ----


def scrape():
    with urllib.request.urlopen(GATEMETER + "/metrics") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, value = line.rsplit(" ", 1)
        out[name_labels] = float(value)
    return out


def total(samples, name, **labels):
    s = 0.0
    for k, v in samples.items():
        if k.split("{", 1)[0] != name:
            continue
        if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
            s += v
    return s


deadline = time.time() + 10
while True:
    m = scrape()
    if total(m, "ai_gateway_requests_total") >= expected["requests"] or time.time() > deadline:
        break
    time.sleep(0.3)

problems = []


def want(what, got, exp):
    if got != exp:
        problems.append(f"{what}: gatemeter {got}, stand-in {exp}")


want("requests", total(m, "ai_gateway_requests_total"), expected["requests"])
want("errors", total(m, "ai_gateway_errors_total"), expected["errors"])
for model, w in expected["models"].items():
    want(f"{model} requests", total(m, "model_requests_total", model=model), w["requests"])
    want(f"{model} input tokens", total(m, "model_tokens_input_total", model=model), w["input"])
    want(f"{model} output tokens", total(m, "model_tokens_output_total", model=model), w["output"])
for ns, n in expected["namespaces"].items():
    want(f"namespace {ns}", total(m, "ai_gateway_namespace_requests_total", namespace=ns), n)
for status, n in expected["statuses"].items():
    want(f"status {status}", total(m, "ai_gateway_namespace_status_codes_total", status_code=status), n)
covered = {s: total(m, "gatemeter_otlp_accepted_items_total", signal=s, use="covered") for s in ("logs", "metrics")}
records = {s: total(m, "gatemeter_otlp_accepted_items_total", signal=s, use="record") for s in ("traces", "metrics")}
rejected = total(m, "gatemeter_otlp_rejected_items_total")
want("rejected OTLP items", rejected, 0)
if RECORDS_FROM == "metrics":
    if records["metrics"] == 0:
        problems.append("no GenAI metric point was read as records (genai_metric_sources?)")
    want("spans read as records", records["traces"], 0)
elif covered["metrics"] == 0:
    problems.append("no GenAI metric point reached gatemeter (metrics export off?)")
if covered["logs"] == 0 and FLAVOUR == "openai-v2":
    problems.append("no GenAI event reached gatemeter (events off?)")
print(json.dumps({"expected": expected, "covered": covered, "records": records}, sort_keys=True))
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"genai client ({RECORDS_FROM}): {expected['requests']} calls, {expected['errors']} failed: gatemeter agrees exactly")
