#!/usr/bin/env python3
"""Generates the Grafana dashboards in this folder (dashboards/*.json) from the tables below.

    python3 dashboards/generate.py          # rewrite the JSON files
    python3 dashboards/generate.py --check  # fail if a JSON file differs from what this writes

Every panel has a description and a unit; every query uses the `${datasource}` variable (no data
source uid is written anywhere). Metric names come from src/catalog.rs or from the recording
rules in alerts/recording.rules.yml; `tests/it/assets.rs` checks both, and scripts/e2e-assets.sh
runs every query against a real Prometheus scraping `gatemeter demo`.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
RANGE = "$__range"


# ---- Building blocks ----------------------------------------------------------------------


def target(expr, legend="", instant=False):
    return {"expr": expr, "legendFormat": legend, "instant": instant, "range": not instant}


def panel(kind, title, desc, unit, targets, w=12, h=8, **extra):
    targets = [t if isinstance(t, dict) else target(t) for t in targets]
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
        t["datasource"] = DS
    p = {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": targets,
        "gridPos": {"w": w, "h": h},
    }
    defaults = p["fieldConfig"]["defaults"]
    if "thresholds" in extra:
        defaults["thresholds"] = {"mode": "absolute", "steps": extra.pop("thresholds")}
        defaults["color"] = {"mode": "thresholds"}
    for k in ("min", "max", "decimals", "mappings"):
        if k in extra:
            defaults[k] = extra.pop(k)
    if kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 10, "showPoints": "never"}
        if extra.pop("stack", False):
            defaults["custom"]["stacking"] = {"mode": "normal"}
        p["options"] = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "area"}
    elif kind == "bargauge":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "horizontal",
                        "displayMode": "gradient"}
    elif kind == "state-timeline":
        p["options"] = {"showValue": "never", "mergeValues": False}
    elif kind == "heatmap":
        p["options"] = {"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1}
        for t in p["targets"]:
            t["format"] = "heatmap"
    p.update(extra)
    return p


def ts(title, desc, unit, *targets, **kw):
    return panel("timeseries", title, desc, unit, list(targets), **kw)


def stat(title, desc, unit, expr, **kw):
    text_mode = kw.pop("text_mode", None)
    p = panel("stat", title, desc, unit, [target(expr, instant=True)], w=kw.pop("w", 4), h=kw.pop("h", 4), **kw)
    if text_mode:
        p["options"]["textMode"] = text_mode
    return p


def bars(title, desc, unit, expr, legend, **kw):
    return panel("bargauge", title, desc, unit, [target(expr, legend, instant=True)], **kw)


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def var(name, label, metric, label_name, regex=""):
    q = f"label_values({metric}, {label_name})"
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": q,
        "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": regex,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


DATASOURCE_VAR = {
    "type": "datasource",
    "name": "datasource",
    "label": "Prometheus",
    "query": "prometheus",
    "current": {},
    "hide": 0,
}


def dashboard(uid, title, description, variables, panels, tags=()):
    x = y = 0
    row_h = 0
    laid = []
    for i, p in enumerate(panels):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i + 1
        x += w
        row_h = max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
        laid.append(p)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["gatemeter", *tags],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [DATASOURCE_VAR, *variables]},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["gatemeter"], "asDropdown": True, "title": "gatemeter"}],
        "panels": laid,
    }


GREEN_RED = [{"color": "red", "value": None}, {"color": "green", "value": 0.5}]
NS = 'namespace=~"$namespace"'
PM = 'provider=~"$provider", model=~"$model"'
PR = 'provider=~"$provider", provider!=""'


# ---- The dashboards ------------------------------------------------------------------------


def overview():
    return dashboard(
        "gatemeter-overview",
        "gatemeter / Gateway overview",
        "Is the AI gateway healthy right now, how busy is it and what does it cost? One screen for the whole fleet.",
        [],
        [
            stat("Requests per second", "Requests completed by the gateway fleet per second (ai_gateway_requests_total).",
                 "reqps", f"sum(rate(ai_gateway_requests_total[{RI}]))"),
            stat("Error ratio (5 m)", "Share of requests that failed (4xx, 5xx or no response) over 5 minutes, blocked requests included.",
                 "percentunit", "gatemeter:error:ratio_rate5m",
                 thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.1}, {"color": "red", "value": 0.25}]),
            stat("P99 latency (5 m)", "99th percentile of request duration over 5 minutes, from the classic histogram.",
                 "s", 'gatemeter:request_duration_seconds:quantile_rate5m{quantile="0.99"}'),
            stat("In flight", "Requests started but not finished (two-phase ingest), all namespaces.",
                 "short", "sum(ai_gateway_namespace_concurrent_requests)"),
            stat("Cost, last 24 h", "Cost of all requests over the last 24 hours (recording rule gatemeter:cost_usd:increase1d).",
                 "currencyUSD", "gatemeter:cost_usd:increase1d"),
            stat("Daily budget used", "Last 24 hours' cost as a share of the daily budget (recording rule gatemeter:budget_usd:daily).",
                 "percentunit", "gatemeter:cost_usd:increase1d / on () gatemeter:budget_usd:daily",
                 thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.8}, {"color": "red", "value": 1}]),
            ts("Requests by namespace", "Requests completed per second, per namespace.", "reqps",
               target(f"sum by (namespace) (rate(ai_gateway_namespace_requests_total[{RI}]))", "{{namespace}}"), stack=True),
            ts("Requests by status code", "Requests per second by final HTTP status code (0 = no response from upstream).", "reqps",
               target(f"sum by (status_code) (rate(gatemeter_status_codes_total[{RI}]))", "{{status_code}}"), stack=True),
            ts("Latency quantiles (exact, 1 m window)",
               "P50 / P95 / P99 of request duration over the last minute, exact from gatemeter's HDR histograms.", "s",
               target('gatemeter_request_duration_quantile_seconds{window="1m"}', "P{{percentile}}")),
            ts("Latency distribution", "Request duration histogram over all requests (buckets per second).", "s",
               target(f'sum by (le) (rate(gatemeter_request_duration_seconds_bucket[{RI}]))', "{{le}}"),
               ),
            ts("Provider availability (5 m)", "Share of forwarded requests that succeeded, per provider. Below 50 % is the seed's red (alert GatewayProviderAvailabilityLow).",
               "percentunit", target("provider:gatemeter_availability:ratio_rate5m", "{{provider}}"), min=0, max=1),
            ts("Active sessions", "Sessions with a request in the last analytics.session_active_secs (default 5 minutes), per namespace of their first request (gatemeter_active_sessions).", "short",
               target("sum by (namespace) (gatemeter_active_sessions)", "{{namespace}}"), stack=True),
            ts("Tokens by type", "Tokens per second over all requests: input, output, cache writes (5 m, 1 h) and cache reads.", "short",
               target(f"sum by (type) (rate(gatemeter_tokens_total[{RI}]))", "{{type}}"), stack=True),
            ts("Cost per hour", "Cost of the last hour, all requests (recording rule gatemeter:cost_usd:increase1h).", "currencyUSD",
               target("gatemeter:cost_usd:increase1h", "last hour")),
            ts("Time to first byte (exact, 1 m window)", "P50 / P95 / P99 time to first byte of streamed requests over the last minute.", "s",
               target('gatemeter_time_to_first_byte_quantile_seconds{window="1m"}', "P{{percentile}}")),
            ts("Blocked before forwarding", "Requests the gateway refused by policy before any provider (empty provider), per second; left out of provider availability.",
               "reqps", target(f'sum(rate(gatemeter_provider_requests_total{{provider=""}}[{RI}]))', "blocked")),
            ts("Mean response time since start", "The seed system's average response time since gatemeter started, overall.", "s",
               target("ai_gateway_response_time_seconds", "mean")),
            ts("Failed requests since start", "The seed's failed request counter (4xx, 5xx or no response) as counted since gatemeter started.", "short",
               target("sum(ai_gateway_errors_total)", "failed")),
        ],
    )


def namespace():
    return dashboard(
        "gatemeter-namespace",
        "gatemeter / Namespace",
        "Which namespace (team, application) sends what, how fast is it served, where does it fail and what does it cost?",
        [var("namespace", "Namespace", "ai_gateway_namespace_requests_total", "namespace")],
        [
            ts("Requests per second", "Requests completed per second, per namespace.", "reqps",
               target(f"sum by (namespace) (rate(ai_gateway_namespace_requests_total{{{NS}}}[{RI}]))", "{{namespace}}")),
            ts("Error ratio (5 m)", "Share of the namespace's requests that failed, 5-minute rate.", "percentunit",
               target(f"namespace:gatemeter_error:ratio_rate5m{{{NS}}}", "{{namespace}}"), min=0),
            ts("Status codes", "Requests per second by namespace and final status code (seed family, label namespace_code kept).", "reqps",
               target(f"sum by (namespace, status_code) (rate(ai_gateway_namespace_status_codes_total{{{NS}}}[{RI}]))",
                      "{{namespace}} {{status_code}}"), stack=True),
            ts("Errors per second", "Failed requests per second, per namespace.", "reqps",
               target(f"sum by (namespace) (rate(gatemeter_namespace_errors_total{{{NS}}}[{RI}]))", "{{namespace}}")),
            ts("Latency quantiles (exact, 5 m window)", "P50 / P95 / P99 request duration per namespace over 5 minutes (HDR, nearest rank).", "s",
               target(f'gatemeter_namespace_request_duration_quantile_seconds{{{NS}, window="5m"}}', "{{namespace}} P{{percentile}}")),
            panel("heatmap", "Latency heatmap", "Request duration distribution of the selected namespaces (classic buckets).", "s",
                  [target(f"sum by (le) (rate(gatemeter_namespace_request_duration_seconds_bucket{{{NS}}}[{RI}]))", "{{le}}")]),
            ts("In flight", "Requests started but not finished, per namespace (two-phase ingest).", "short",
               target(f"sum by (namespace) (ai_gateway_namespace_concurrent_requests{{{NS}}})", "{{namespace}}")),
            ts("Mean response time since start", "The seed's average response time since start, per namespace.", "s",
               target(f"ai_gateway_namespace_response_time_seconds{{{NS}}}", "{{namespace}}")),
            ts("Tokens by type", "Tokens per second by namespace and type.", "short",
               target(f"sum by (namespace, type) (rate(gatemeter_namespace_tokens_total{{{NS}}}[{RI}]))", "{{namespace}} {{type}}"), stack=True),
            bars("Cost in the time range", "Cost per namespace over the dashboard's time range.", "currencyUSD",
                 f"sum by (namespace) (increase(gatemeter_namespace_cost_usd_total{{{NS}}}[{RANGE}]))", "{{namespace}}"),
            ts("Cost per day", "Cost of the last 24 hours per namespace (recording rule).", "currencyUSD",
               target(f"namespace:gatemeter_namespace_cost_usd:increase1d{{{NS}}}", "{{namespace}}")),
            ts("Abandoned requests", "Start markers never finished within the pending timeout, per namespace, over 1 hour.", "short",
               target(f"sum by (namespace) (increase(gatemeter_abandoned_requests_total{{{NS}}}[1h]))", "{{namespace}}")),
        ],
    )


def model_cost():
    return dashboard(
        "gatemeter-model-cost",
        "gatemeter / Model & cost",
        "Which provider and model is used, how fast, how many tokens and at what cost? Includes the OpenTelemetry GenAI families.",
        [var("provider", "Provider", "model_requests_total", "provider", regex="/.+/"),
         var("model", "Model", 'model_requests_total{provider=~"$provider"}', "model")],
        [
            stat("Cost in the time range", "Cost of the selected providers and models over the dashboard's time range.", "currencyUSD",
                 f"sum(increase(model_cost_usd_total{{{PM}}}[{RANGE}]))", w=6),
            stat("Cost, last 24 h vs budget", "All requests' cost over the last 24 hours as a share of the daily budget.", "percentunit",
                 "gatemeter:cost_usd:increase1d / on () gatemeter:budget_usd:daily", w=6),
            stat("Unpriced requests in the range", "Requests with no cost whose model is not in the price table (counted at 0 USD): add the model to pricing.",
                 "short", f"sum(increase(gatemeter_unpriced_requests_total{{{PM}}}[{RANGE}]))", w=6,
                 thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}]),
            stat("Total cost since start", "gatemeter_cost_usd_total over all requests, as counted since the process started.", "currencyUSD",
                 "sum(gatemeter_cost_usd_total)", w=6),
            bars("Cost by model in the range", "Cost per provider and model over the dashboard's time range.", "currencyUSD",
                 f"sort_desc(sum by (provider, model) (increase(model_cost_usd_total{{{PM}}}[{RANGE}])))", "{{provider}} {{model}}"),
            ts("Cost per hour by model", "Cost of the last hour per provider and model (recording rule).", "currencyUSD",
               target(f"provider_model:model_cost_usd:increase1h{{{PM}}}", "{{provider}} {{model}}"), stack=True),
            ts("Requests by model", "Requests per second per provider and model.", "reqps",
               target(f"sum by (provider, model) (rate(model_requests_total{{{PM}}}[{RI}]))", "{{provider}} {{model}}"), stack=True),
            ts("Errors by model", "Failed requests per second per provider and model.", "reqps",
               target(f"sum by (provider, model) (rate(model_errors_total{{{PM}}}[{RI}]))", "{{provider}} {{model}}")),
            ts("Input and output tokens (seed)", "Input (without cache) and output tokens per second, the seed's model families.", "short",
               target(f"sum(rate(model_tokens_input_total{{{PM}}}[{RI}]))", "input"),
               target(f"sum(rate(model_tokens_output_total{{{PM}}}[{RI}]))", "output")),
            ts("Tokens by type and model", "Tokens per second by type (cache writes and reads included) per model.", "short",
               target(f"sum by (model, type) (rate(gatemeter_model_tokens_total{{{PM}}}[{RI}]))", "{{model}} {{type}}"), stack=True),
            ts("P95 latency by model (histogram)", "95th percentile of request duration per model over the rate window, from the classic buckets.", "s",
               target(f"histogram_quantile(0.95, sum by (provider, model, le) (rate(model_request_duration_seconds_bucket{{{PM}}}[{RI}])))",
                      "{{provider}} {{model}}")),
            ts("P99 latency by model (exact, 5 m)", "Exact 99th percentile per model over 5 minutes (HDR).", "s",
               target(f'gatemeter_model_request_duration_quantile_seconds{{{PM}, window="5m", percentile="99"}}', "{{provider}} {{model}}")),
            ts("Time to first byte P50 by model (exact, 5 m)", "Median time to first byte of streamed requests per model.", "s",
               target(f'gatemeter_model_time_to_first_byte_quantile_seconds{{{PM}, window="5m", percentile="50"}}', "{{provider}} {{model}}")),
            ts("Time to first byte P95 (histogram)", "95th percentile time to first byte per model, from the classic buckets.", "s",
               target(f"histogram_quantile(0.95, sum by (model, le) (rate(gatemeter_time_to_first_byte_seconds_bucket{{{PM}}}[{RI}])))", "{{model}}")),
            ts("GenAI operation duration P95 (semconv)", "gen_ai.client.operation.duration, 95th percentile per response model (OpenTelemetry buckets).", "s",
               target(f'histogram_quantile(0.95, sum by (gen_ai_response_model, le) (rate(gen_ai_client_operation_duration_seconds_bucket{{gen_ai_provider_name=~"$provider"}}[{RI}])))',
                      "{{gen_ai_response_model}}")),
            ts("GenAI tokens per operation (semconv)", "gen_ai.client.token.usage: mean tokens per operation by token type (input includes cache).", "short",
               target(f'sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{gen_ai_provider_name=~"$provider"}}[{RI}])) / sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_count{{gen_ai_provider_name=~"$provider"}}[{RI}]))',
                      "{{gen_ai_token_type}}")),
        ],
    )


def providers():
    return dashboard(
        "gatemeter-providers",
        "gatemeter / Provider availability",
        "Is each upstream provider up, down or unknown, since when, and how fast and how often does it fail? Computed from the request families (blocked requests, with no provider, are left out) and, in the last row, from the active probes.",
        [var("provider", "Provider", "gatemeter_provider_requests_total", "provider", regex="/.+/")],
        [
            panel("state-timeline", "State over time",
                  "Green: availability ≥ 50 % over 5 minutes; red: below (the seed's red, alert GatewayProviderAvailabilityLow); grey gap: no traffic, state unknown.",
                  "percentunit", [target(f"provider:gatemeter_availability:ratio_rate5m{{{PR}}}", "{{provider}}")],
                  w=24, h=6, thresholds=GREEN_RED, min=0, max=1),
            bars("Availability, last hour", "Share of forwarded requests that succeeded over the last hour, per provider.", "percentunit",
                 f"provider:gatemeter_availability:ratio_rate1h{{{PR}}}", "{{provider}}", thresholds=GREEN_RED, min=0, max=1),
            ts("Availability (5 m)", "Share of forwarded requests that succeeded, 5-minute rate.", "percentunit",
               target(f"provider:gatemeter_availability:ratio_rate5m{{{PR}}}", "{{provider}}"), min=0, max=1),
            ts("Traffic", "Requests forwarded per second, per provider (5-minute rate); none for 15 minutes raises GatewayProviderUnknown.", "reqps",
               target(f"provider:gatemeter_provider_requests:rate5m{{{PR}}}", "{{provider}}")),
            ts("Errors per second", "Failed requests per second, per provider.", "reqps",
               target(f"sum by (provider) (rate(gatemeter_provider_errors_total{{{PR}}}[{RI}]))", "{{provider}}")),
            ts("P50 / P95 / P99 (histogram, 5 m)", "Request duration quantiles per provider from the classic buckets (recording rules).", "s",
               target(f"provider:gatemeter_provider_request_duration_seconds:quantile_rate5m{{{PR}}}", "{{provider}} q{{quantile}}")),
            ts("P50 / P95 / P99 (exact, 5 m)", "Exact request duration quantiles per provider over 5 minutes (HDR, nearest rank).", "s",
               target(f'gatemeter_provider_request_duration_quantile_seconds{{{PR}, window="5m"}}', "{{provider}} P{{percentile}}")),
            bars("Status (gatemeter)", "gatemeter's own colour per provider, from the request log's rollups: 1 on the current status (green: availability over the last hour ≥ 50 %, red: below, unknown: no request in 15 minutes). The same rule as GET /api/v1/availability.", "short",
                 f'gatemeter_provider_status{{{PR}}} == 1', "{{provider}} {{status}}"),
            ts("Availability (rollups, 5 m and 1 h)", "Share of a provider's requests that succeeded over the last 5 minutes and hour, read from the request log's rollups (gatemeter_provider_availability_ratio): fleet-wide with a shared PostgreSQL, independent of Prometheus' rate windows.", "percentunit",
               target(f"gatemeter_provider_availability_ratio{{{PR}}}", "{{provider}} {{window}}"), min=0, max=1),
            ts("Errors by status code (all providers)", "Failed requests per second by final status: 429 quota, 5xx provider, 0 no response, 403 blocked by policy.", "reqps",
               target(f'sum by (status_code) (rate(gatemeter_status_codes_total{{status_code!~"[23].."}}[{RI}]))', "{{status_code}}"), stack=True),
            ts("Latency distribution", "Request duration histogram of the selected providers (buckets per second).", "s",
               target(f"sum by (le) (rate(gatemeter_provider_request_duration_seconds_bucket{{{PR}}}[{RI}]))", "{{le}}")),
            row("Active probes"),
            panel("state-timeline", "Probe state",
                  "Each configured probe of the selected providers (`probes:` in the config): green when its last run succeeded, red when it failed (alert ProbeFailing after 5 minutes). With a shared Redis every replica shows the fleet's last run.",
                  "short", [target(f'max by (probe, provider) (gatemeter_probe_up{{provider=~"$provider"}})', "{{provider}} {{probe}}")],
                  w=24, h=5, thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}], min=0, max=1,
                  mappings=[{"type": "value", "options": {"0": {"text": "down"}, "1": {"text": "up"}}}]),
            bars("Probe success (5 m)", "Share of each probe's runs that succeeded over 5 minutes, summed over the replicas (recording rule probe:gatemeter_probe_success:ratio_rate5m). Compare with the request-based availability above: a probe failing while requests succeed points at the probe's path or credentials.", "percentunit",
                 f'probe:gatemeter_probe_success:ratio_rate5m{{provider=~"$provider"}}', "{{provider}} {{probe}}", thresholds=GREEN_RED, min=0, max=1),
            ts("Probe duration P95", "95th percentile of the probe runs' duration (connect, TLS, first byte of the answer), per probe.", "s",
               target(f'histogram_quantile(0.95, sum by (probe, le) (rate(gatemeter_probe_duration_seconds_bucket{{provider=~"$provider"}}[{RI}])))', "{{probe}}")),
            ts("Probe runs by outcome", "Probe runs per second by outcome: ok, fail (unexpected status), timeout, refused, tls, dns, error. GET /api/v1/export/probe-log has each run's line.", "ops",
               target(f'sum by (probe, outcome) (rate(gatemeter_probe_results_total{{provider=~"$provider"}}[{RI}])) > 0', "{{probe}} {{outcome}}"), stack=True),
        ],
    )


def leaderboards():
    sel = 'scope=~"$scope", period=~"$period"'
    return dashboard(
        "gatemeter-leaderboards",
        "gatemeter / Leaderboards",
        "Who spent what and who sent the most, today, this week and this month (in analytics.time_zone): the top analytics.top_n users, API keys, providers and requested models, with the rest as `other`. Read from the request log's rollups by gatemeter itself; the API (GET /api/v1/leaderboard) has every line.",
        [var("scope", "Scope", "gatemeter_leaderboard_cost_usd", "scope"),
         var("period", "Period", "gatemeter_leaderboard_cost_usd", "period")],
        [
            bars("Top by cost", "The top lines by cost in the period (USD), rank 1 first; `other` is everything below the top N.", "currencyUSD",
                 f'sort_desc(gatemeter_leaderboard_cost_usd{{{sel}, rank!="other"}})', "{{scope}} {{period}} #{{rank}} {{name}}", w=12, h=12),
            bars("Top by requests", "The top lines by requests in the period, rank 1 first.", "short",
                 f'sort_desc(gatemeter_leaderboard_requests{{{sel}, rank!="other"}})', "{{scope}} {{period}} #{{rank}} {{name}}", w=12, h=12),
            ts("Leader's cost over time", "Cost so far in the period of whoever holds rank 1, per scope and period (the line resets when the period starts again).", "currencyUSD",
               target(f'gatemeter_leaderboard_cost_usd{{{sel}, rank="1"}}', "{{scope}} {{period}} {{name}}")),
            ts("Top N against the rest (cost)", "Cost of the top N lines together against `other`, per scope and period: how concentrated the spending is.", "currencyUSD",
               target(f'sum by (scope, period) (gatemeter_leaderboard_cost_usd{{{sel}, rank!="other"}})', "top {{scope}} {{period}}"),
               target(f'sum by (scope, period) (gatemeter_leaderboard_cost_usd{{{sel}, rank="other"}}) or on () vector(0)', "other")),
        ],
    )


def sessions():
    ns = NS
    return dashboard(
        "gatemeter-sessions",
        "gatemeter / Sessions",
        "How many conversations and CLI sessions are open, in which namespace, is a namespace spiking, and how do Claude Code sessions start, last and cost? Gateway records' session_id and Claude Code's session.id count alike.",
        [var("namespace", "Namespace", "gatemeter_active_sessions", "namespace")],
        [
            stat("Active sessions", "Sessions with a request in the last analytics.session_active_secs (default 5 minutes), selected namespaces (gatemeter_active_sessions, from the request log's rollups).",
                 "short", f"sum(gatemeter_active_sessions{{{ns}}})"),
            stat("Namespaces with sessions", "Namespaces with at least one active session.", "short",
                 f"count(gatemeter_active_sessions{{{ns}}} > 0)"),
            stat("Largest 15 m jump", "The largest change of a namespace's active sessions over the last 15 minutes (the session-spike alert compares with the week's peak instead).",
                 "short", f"max(delta(namespace:gatemeter_active_sessions:sum{{{ns}}}[15m]))"),
            stat("Claude Code sessions", "Claude Code CLI sessions started in the time range (claude_code.session.count: fresh, continued and resumed).",
                 "short", f"sum(increase(claude_code_session_count_total[{RANGE}]))"),
            stat("Claude Code active time", "Time users and the CLI were active in Claude Code in the range (claude_code.active_time.total).",
                 "s", f"sum(increase(claude_code_active_time_seconds_total[{RANGE}]))"),
            stat("Claude Code cost per session", "Claude Code's reported cost in the range divided by the sessions started in it.",
                 "currencyUSD", f"sum(increase(claude_code_cost_usage_usd_total[{RANGE}])) / (sum(increase(claude_code_session_count_total[{RANGE}])) > 0)"),
            ts("Active sessions by namespace", "Active sessions per namespace of the session's first request (the busiest 50; the rest in __overflow__). Claude Code sessions are in the namespace of their team.id (otlp.namespace_attribute).", "short",
               target(f"sum by (namespace) (gatemeter_active_sessions{{{ns}}})", "{{namespace}}"), stack=True),
            ts("Session spike context: change over 15 minutes", "How much each namespace's active sessions grew (or fell) over the last 15 minutes. GatewaySessionSpike fires when a namespace holds more than twice its busiest moment of the previous 7 days (recording rule namespace:gatemeter_active_sessions:max7d_offset1h), and at least 20 sessions, for 10 minutes.",
               "short", target(f"delta(namespace:gatemeter_active_sessions:sum{{{ns}}}[15m])", "{{namespace}}")),
            panel("bargauge", "Now against the peak of the range", "Active sessions per namespace now, and the most it had at any time in the dashboard's range.", "short",
                  [target(f"namespace:gatemeter_active_sessions:sum{{{ns}}}", "{{namespace}} now", instant=True),
                   target(f"max_over_time(namespace:gatemeter_active_sessions:sum{{{ns}}}[{RANGE}])", "{{namespace}} peak", instant=True)]),
            ts("Claude Code sessions started by start type", "CLI sessions started per hour of the rate window: fresh, continued (--continue) or resumed (--resume).", "short",
               target(f"sum by (start_type) (rate(claude_code_session_count_total[{RI}])) * 3600", "{{start_type}}"), stack=True),
            bars("Claude Code sessions by team in the range", "CLI sessions started per team.id in the range; their requests count in the namespace of the same name.", "short",
                 f"sort_desc(sum by (team_id) (increase(claude_code_session_count_total[{RANGE}])))", "{{team_id}}"),
            ts("Claude Code active time by type", "Active seconds per second (≈ sessions busy at once): user = the user typing or reading, cli = the CLI working (tools, model calls).", "short",
               target(f"sum by (type) (rate(claude_code_active_time_seconds_total[{RI}]))", "{{type}}"), stack=True),
            bars("Active time per session in the range", "Claude Code active time in the range per session started in it, by type (user, cli).", "s",
                 f"sum by (type) (increase(claude_code_active_time_seconds_total[{RANGE}])) / scalar(sum(increase(claude_code_session_count_total[{RANGE}])) > 0)",
                 "{{type}}"),
        ],
    )


CC_M = 'model=~"$model"'


def claude_code():
    return dashboard(
        "gatemeter-claude-code",
        "gatemeter / Claude Code",
        "What do Claude Code users spend and produce: cost and tokens by type and model, sessions, active time, lines of code, commits, pull requests, tool calls, failures, durations and permission decisions (from Claude Code's own OTLP telemetry).",
        [var("model", "Model", "claude_code_cost_usage_usd_total", "model")],
        [
            stat("Cost", "Claude Code's reported cost in the time range (metric claude_code.cost.usage). Not to be added to the gateway's request cost.",
                 "currencyUSD", f"sum(increase(claude_code_cost_usage_usd_total{{{CC_M}}}[{RANGE}]))"),
            stat("Sessions", "CLI sessions started in the time range (fresh and continued).", "short",
                 f"sum(increase(claude_code_session_count_total[{RANGE}]))"),
            stat("Active time", "Time users actively spent in Claude Code in the range (claude_code.active_time.total).", "s",
                 f"sum(increase(claude_code_active_time_seconds_total[{RANGE}]))"),
            stat("Lines added", "Lines of code added by Claude Code in the range.", "short",
                 f'sum(increase(claude_code_lines_of_code_total{{type="added"}}[{RANGE}]))'),
            stat("Commits", "Git commits made by Claude Code in the range.", "short",
                 f"sum(increase(claude_code_commits_total[{RANGE}]))"),
            stat("Pull requests", "Pull requests created by Claude Code in the range.", "short",
                 f"sum(increase(claude_code_pull_requests_total[{RANGE}]))"),
            ts("Cost by model", "Claude Code cost per model, USD per hour of the rate window.", "currencyUSD",
               target(f"sum by (model) (rate(claude_code_cost_usage_usd_total{{{CC_M}}}[{RI}])) * 3600", "{{model}}"), stack=True),
            bars("Cost per session by model", "Cost in the range divided by sessions started in the range.", "currencyUSD",
                 f"sum by (model) (increase(claude_code_cost_usage_usd_total{{{CC_M}}}[{RANGE}])) / scalar(sum(increase(claude_code_session_count_total[{RANGE}])))",
                 "{{model}}"),
            ts("Tokens by type", "Tokens per second by type: input, output, cacheRead, cacheCreation.", "short",
               target(f"sum by (type) (rate(claude_code_token_usage_tokens_total{{{CC_M}}}[{RI}]))", "{{type}}"), stack=True),
            bars("Tokens by model and type in the range", "Tokens per model and type over the time range.", "short",
                 f"sum by (model, type) (increase(claude_code_token_usage_tokens_total{{{CC_M}}}[{RANGE}]))", "{{model}} {{type}}"),
            ts("Sessions", "Sessions started per hour of the rate window.", "short",
               target(f"sum(rate(claude_code_session_count_total[{RI}])) * 3600", "sessions / h")),
            ts("Active time", "Active seconds per second across users (≈ users working at once).", "short",
               target(f"sum by (type) (rate(claude_code_active_time_seconds_total[{RI}]))", "{{type}}")),
            bars("Lines of code in the range", "Lines added and removed in the range.", "short",
                 f"sum by (type) (increase(claude_code_lines_of_code_total[{RANGE}]))", "{{type}}"),
            ts("Commits and pull requests", "Commits and pull requests per hour of the rate window.", "short",
               target(f"sum(rate(claude_code_commits_total[{RI}])) * 3600", "commits / h"),
               target(f"sum(rate(claude_code_pull_requests_total[{RI}])) * 3600", "pull requests / h")),
            bars("Tool calls in the range", "Tool calls (tool_result events) per tool.", "short",
                 f"sort_desc(sum by (tool) (increase(claude_code_tool_calls_total[{RANGE}])))", "{{tool}}"),
            bars("Tool failure ratio in the range", "Share of each tool's calls that failed (tool_result success=false).", "percentunit",
                 f"sum by (tool) (increase(claude_code_tool_failures_total[{RANGE}])) / (sum by (tool) (increase(claude_code_tool_calls_total[{RANGE}])) > 0)",
                 "{{tool}}", min=0, max=1),
            bars("Tool duration P95 in the range", "95th percentile duration of tool calls per tool over the time range.", "s",
                 f"histogram_quantile(0.95, sum by (tool, le) (increase(claude_code_tool_duration_seconds_bucket[{RANGE}])))", "{{tool}}"),
            bars("Mean tool duration in the range", "Mean duration of tool calls per tool over the time range.", "s",
                 f"sum by (tool) (increase(claude_code_tool_duration_seconds_sum[{RANGE}])) / (sum by (tool) (increase(claude_code_tool_duration_seconds_count[{RANGE}])) > 0)",
                 "{{tool}}"),
            bars("Tool permission decisions", "tool_decision events by tool, decision (accept / reject) and who decided (config, user).", "short",
                 f"sum by (tool, decision, source) (increase(claude_code_tool_decisions_total[{RANGE}]))", "{{tool}} {{decision}} ({{source}})"),
            bars("Edit decisions by language", "Code edit tool permission decisions by decision and language (claude_code.code_edit_tool.decision).", "short",
                 f"sum by (decision, language) (increase(claude_code_code_edit_tool_decisions_total[{RANGE}]))", "{{decision}} {{language}}"),
            bars("Events in the range", "Claude Code log events received, by event name.", "short",
                 f"sort_desc(sum by (event) (increase(claude_code_events_total[{RANGE}])))", "{{event}}"),
        ],
    )


def self_monitoring():
    per = "sum by (instance"
    return dashboard(
        "gatemeter-self",
        "gatemeter / Self-monitoring",
        "Is gatemeter itself healthy: taking every record, keeping up, reaching its stores, and what does it refuse or drop and why? Per process (instance).",
        [],
        [
            stat("Targets up", "Scrape targets of the gatemeter jobs that answer (Prometheus's up).", "short",
                 'sum(up{job=~"gatemeter-.*"})'),
            stat("Stores down", "Stores (live store, request log) reported unreachable by any process.", "short",
                 "count(gatemeter_store_up == 0) or vector(0)",
                 thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
            stat("Uptime", "Seconds since the process started (the oldest process).", "s", "max(gatemeter_uptime_seconds)"),
            stat("Version", "Build version of the running processes.", "none", "count by (version) (gatemeter_build_info)",
                 text_mode="name"),
            ts("Records accepted", "Records accepted per second by each process, by source (native, otlp).", "short",
               target(f"{per}, source) (rate(gatemeter_ingest_accepted_records_total[{RI}]))", "{{instance}} {{source}}")),
            ts("Records processed", "Records and start markers applied by the aggregator per second.", "short",
               target(f"{per}) (rate(gatemeter_processed_records_total[{RI}]))", "{{instance}}")),
            ts("Records rejected by reason", "Invalid records refused with a precise 4xx, per second, by source and reason.", "short",
               target(f"{per}, source, reason) (rate(gatemeter_ingest_rejected_records_total[{RI}]))", "{{instance}} {{source}} {{reason}}")),
            ts("Requests rejected by reason", "Whole ingest requests refused before any record was read (too large, bad media type, overloaded, ...).", "short",
               target(f"{per}, source, reason) (rate(gatemeter_ingest_rejected_requests_total[{RI}]))", "{{instance}} {{source}} {{reason}}")),
            ts("Records dropped by reason", "Valid records gatemeter could not take or pass on (alert GatemeterDroppingRecords).", "short",
               target(f"{per}, reason) (rate(gatemeter_dropped_records_total[{RI}]))", "{{instance}} {{reason}}")),
            ts("Duplicates", "Records ignored because their request_id was already counted, per second.", "short",
               target(f"{per}) (rate(gatemeter_duplicate_records_total[{RI}]))", "{{instance}}")),
            ts("Ingest queue", "Records waiting in the ingest queue and its capacity (alert GatemeterQueueNearFull at 80 %).", "short",
               target("gatemeter_queue_depth_records", "{{instance}} depth"),
               target("gatemeter_queue_capacity_records", "{{instance}} capacity")),
            ts("Pending two-phase requests", "Start markers waiting for their final record in this process.", "short",
               target("gatemeter_pending_requests", "{{instance}}")),
            ts("Connections", "HTTP connections open, refused per second at server.max_connections, and TLS handshakes failed per second (listen_tls: plain HTTP, a client rejecting the certificate, too slow).", "short",
               target("gatemeter_open_connections", "{{instance}} open"),
               target(f"{per}) (rate(gatemeter_refused_connections_total[{RI}]))", "{{instance}} refused / s"),
               target(f"{per}) (rate(gatemeter_tls_handshake_failures_total[{RI}]))", "{{instance}} TLS handshake failed / s")),
            panel("state-timeline", "Store up", "1 when the store is reachable: live store (memory, redis) and request log (sqlite, postgres).",
                  "bool_on_off", [target("gatemeter_store_up", "{{instance}} {{store}}")],
                  thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]),
            ts("Series overflow", "Records folded into __overflow__ because a label dimension hit its series cap, per second.", "short",
               target(f"sum by (dimension) (rate(gatemeter_series_overflow_total[{RI}]))", "{{dimension}}"),
               target(f"sum by (metric) (rate(gatemeter_claude_code_series_overflow_total[{RI}]))", "claude code {{metric}}")),
            ts("Series budget", "Series of the last exposition against the global budget (pipeline.max_series); past half of it new scopes get counters only, at the limit new label values fold into __overflow__.", "short",
               target("max by (state) (gatemeter_series_budget)", "{{state}}")),
            ts("Series budget refusals", "New label values that got less than their own series, per second: histogram = counters only, series = folded into __overflow__.", "short",
               target(f"sum by (kind) (rate(gatemeter_series_refused_total[{RI}]))", "{{kind}}")),
            ts("Durable spool: bytes", "Bytes in the durable spool (durability: spool) not yet confirmed by both the request log and the live store; grows while a store is away, 503 spool_full at spool.max_bytes. Zero with durability: none.", "bytes",
               target("sum by (instance) (gatemeter_spool_bytes)", "{{instance}}")),
            ts("Durable spool: records and group commits", "Records acknowledged through the spool and fdatasync group commits per second; records replayed at start (after a crash) in the range.", "short",
               target(f"sum(rate(gatemeter_spool_records_total[{RI}]))", "records/s"),
               target(f"sum(rate(gatemeter_spool_syncs_total[{RI}]))", "group commits/s"),
               target("sum(increase(gatemeter_spool_replayed_records_total[$__range]))", "replayed")),
            ts("Durable spool: fsync time", "Seconds per second spent writing and fdatasync-ing spool groups (near 1 means the disk is the limit).", "s",
               target(f"sum(rate(gatemeter_spool_sync_seconds_total[{RI}]))", "fsync")),
            ts("OTLP items received / accepted", "OTLP items received by signal, and what the accepted ones became.", "short",
               target(f"sum by (signal) (rate(gatemeter_otlp_received_items_total[{RI}]))", "received {{signal}}"),
               target(f"sum by (signal, use) (rate(gatemeter_otlp_accepted_items_total[{RI}]))", "accepted {{signal}} {{use}}")),
            ts("OTLP rejected", "OTLP items rejected (partial_success) and whole export requests refused, by signal and reason.", "short",
               target(f"sum by (signal, reason) (rate(gatemeter_otlp_rejected_items_total[{RI}]))", "items {{signal}} {{reason}}"),
               target(f"sum by (signal, reason) (rate(gatemeter_otlp_rejected_requests_total[{RI}]))", "requests {{signal}} {{reason}}")),
            ts("OTLP log export", "Records delivered to the OTLP log export endpoint, retries, and records given up by reason.", "short",
               target(f"sum(rate(gatemeter_otlp_export_records_total[{RI}]))", "delivered"),
               target(f"sum(rate(gatemeter_otlp_export_retries_total[{RI}]))", "retries"),
               target(f"sum by (reason) (rate(gatemeter_otlp_export_dropped_records_total[{RI}]))", "dropped {{reason}}")),
        ],
    )


DASHBOARDS = {
    "gateway-overview.json": overview,
    "namespace.json": namespace,
    "model-cost.json": model_cost,
    "provider-availability.json": providers,
    "leaderboards.json": leaderboards,
    "sessions.json": sessions,
    "claude-code.json": claude_code,
    "gatemeter-self.json": self_monitoring,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale dashboards (run python3 dashboards/generate.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
