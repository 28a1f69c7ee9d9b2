#!/usr/bin/env python3
"""Writes the Grafana dashboards in dashboards/ from the panel lists below.

    python3 scripts/dashboards.py          # write dashboards/*.json
    python3 scripts/dashboards.py --check  # fail if they differ (the tests run this)

Every panel: a title, a description, a unit, `${datasource}`, and
`$__rate_interval` wherever it rates. Every metric selector of every query is
scoped by the `cluster`, `namespace`, `job` and `instance` variables (added
here, not written in each query). Panels are laid out left to right, top to
bottom, in rows of 24 columns.
"""

import json
import re
import sys
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
OUT = Path(__file__).resolve().parent.parent / "dashboards"
SCOPE = 'cluster=~"$cluster",namespace=~"$namespace",job=~"$job",instance=~"$instance"'

_AGGREGATIONS = {"sum", "avg", "max", "min", "count", "topk", "bottomk", "quantile", "stddev",
                 "stdvar", "count_values", "group"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "offset", "bool"} | _AGGREGATIONS
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def scoped(expr):
    """`expr` with SCOPE added to every metric selector."""
    out, i, n = [], 0, len(expr)
    while i < n:
        c = expr[i]
        if c == '"':
            j = i + 1
            while j < n and expr[j] != '"':
                j += 2 if expr[j] == "\\" else 1
            out.append(expr[i:j + 1])
            i = j + 1
        elif c == "[":
            j = expr.index("]", i)
            out.append(expr[i:j + 1])
            i = j + 1
        elif c.isdigit():
            m = re.match(r"[0-9][0-9.]*(?:[eE][+-]?[0-9]+)?[a-zA-Z]*", expr[i:])
            out.append(m.group(0))
            i += len(m.group(0))
        elif c == "$":
            m = re.match(r"\$[A-Za-z_]+", expr[i:])
            out.append(m.group(0))
            i += len(m.group(0))
        elif re.match(r"[A-Za-z_:]", c):
            ident = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", expr[i:]).group(0)
            j = k = i + len(ident)
            while k < n and expr[k] == " ":
                k += 1
            if ident in _LABEL_LISTS and k < n and expr[k] == "(":
                e = expr.index(")", k)
                out.append(expr[i:e + 1])
                i = e + 1
            elif ident in _KEYWORDS or (k < n and expr[k] == "("):
                out.append(ident)
                i = j
            elif j < n and expr[j] == "{":
                e = expr.index("}", j)
                inner = expr[j + 1:e]
                out.append(f"{ident}{{{SCOPE}{',' + inner if inner else ''}}}")
                i = e + 1
            else:
                out.append(f"{ident}{{{SCOPE}}}")
                i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def var_datasource():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }


def var_query(name, label, query, multi=True, include_all=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": include_all,
        "allValue": ".*",
        "current": {},
        "sort": 1,
        "hide": 0,
    }


def var_aggregator():
    return {
        "name": "aggregator",
        "label": "Aggregator URL",
        "type": "textbox",
        "query": "http://127.0.0.1:7180",
        "current": {"text": "http://127.0.0.1:7180", "value": "http://127.0.0.1:7180"},
        "hide": 0,
    }


def scope_variables():
    """cluster, namespace, job and instance, each narrowing the next."""
    return [
        var_query("cluster", "Cluster", "label_values(up, cluster)"),
        var_query("namespace", "Namespace", 'label_values(up{cluster=~"$cluster"}, namespace)'),
        var_query("job", "Job", 'label_values(up{cluster=~"$cluster",namespace=~"$namespace"}, job)'),
        var_query("instance", "Instance",
                  'label_values(up{cluster=~"$cluster",namespace=~"$namespace",job=~"$job"}, instance)'),
    ]


def deploys():
    """An annotation at each new version of a service: a (service, version)
    of paytrace_build_info that was not there a minute before."""
    info = scoped("paytrace_build_info")
    return {
        "name": "Deploys",
        "datasource": DS,
        "enable": True,
        "iconColor": "blue",
        "expr": f"count by (service_name, version) ({info}) unless count by (service_name, version) ({info} offset 1m)",
        "step": "1m",
        "titleFormat": "Deploy {{service_name}} {{version}}",
        "textFormat": "{{service_name}} now runs {{version}}",
    }


def thresholds(panel_, steps, line=False):
    """Colour steps [(colour, from), ...]; drawn as lines on a graph when `line`."""
    defaults = panel_["fieldConfig"]["defaults"]
    defaults["thresholds"] = {"mode": "absolute",
                              "steps": [{"color": c, "value": v} for c, v in steps]}
    if line:
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    else:
        defaults["color"] = {"mode": "thresholds"}
    return panel_


def target(expr, legend="", fmt="time_series", ref="A"):
    t = {"datasource": DS, "expr": scoped(expr), "legendFormat": legend, "refId": ref}
    if fmt != "time_series":
        t["format"] = fmt
    return t


def panel(kind, title, description, unit, targets, width=8, height=8, **extra):
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(*t) if isinstance(t, tuple) else target(t) for t in targets],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "_w": width,
        "_h": height,
    }
    for i, t in enumerate(p["targets"]):
        t["refId"] = chr(ord("A") + i)
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi"}}
    if kind == "heatmap":
        for t in p["targets"]:
            t["format"] = "heatmap"
        p["options"] = {"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1,
                        "color": {"mode": "scheme", "scheme": "Oranges"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area"}
    if kind == "bargauge":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True}
    if kind == "table":
        p["options"] = {"showHeader": True}
    p.update(extra)
    return p


# gRPC status codes that mean the server failed (paytrace_semconv::grpc_status::SERVER_FAILURES).
GRPC_FAILURES = "UNKNOWN|DEADLINE_EXCEEDED|INTERNAL|UNAVAILABLE|DATA_LOSS"


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


def stage_link(panel_, stage_expr="${__field.labels.stage}"):
    """A data link from a stage panel to the aggregator's page for the flow and stage."""
    link = {
        "title": "Open in the paytrace aggregator",
        "url": "${aggregator}/?flow=${flow}&stage=" + stage_expr + "&window=5m",
        "targetBlank": True,
    }
    panel_["fieldConfig"]["defaults"]["links"] = [link]
    return panel_


def dashboard(uid, title, description, variables, panels, tags):
    x = y = row_height = 0
    laid = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_height = max(row_height, h)
        if p["type"] == "row":
            x, y, row_height = 0, y + h, 0
        laid.append(p)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["paytrace"] + tags,
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [var_datasource()] + scope_variables() + variables},
        "annotations": {"list": [deploys()]},
        "links": [{"title": "paytrace dashboards", "type": "dashboards", "tags": ["paytrace"], "asDropdown": True}],
        "panels": laid,
    }


def checkout_overview():
    svc = 'service_name=~"$service_name"'
    panels = [
        row("Service level objectives"),
        thresholds(panel("stat", "Error budget remaining",
              "Share of each SLO's 30-day error budget left (1 = untouched, 0 = spent, below 0 = overspent): red once spent, orange below a quarter. From slo:error_budget_remaining:ratio, generated from alerts/slos.yaml.",
              "percentunit", [("slo:error_budget_remaining:ratio", "{{slo}} {{payment_channel}}")], width=12),
              [("red", None), ("orange", 0), ("green", 0.25)]),
        thresholds(panel("timeseries", "Burn rate (1h)",
              "How fast each SLO spends its budget: 1 = exactly on budget over the period; the lines are the slow-burn ticket (6) and the fast-burn page (14.4, with the 5m window agreeing).",
              "none", [("slo:sli_error:ratio_rate1h / on (cluster, namespace, job, slo) group_left () (1 - slo:objective:ratio)", "{{slo}} {{payment_channel}}")], width=12),
              [("green", None), ("orange", 6), ("red", 14.4)], line=True),
        thresholds(panel("timeseries", "Checkout availability",
              "Share of POST /checkout requests at the gateway that did not answer 5xx; the line is the 99.9% objective.",
              "percentunit", [('1 - slo:sli_error:ratio_rate5m{slo="checkout_availability"}', "5m"),
                              ('1 - slo:sli_error:ratio_rate1h{slo="checkout_availability"}', "1h")]),
              [("red", None), ("green", 0.999)], line=True),
        thresholds(panel("timeseries", "Checkouts within 2.5 s",
              "Share of checkouts that completed end to end (stitched across the payment callback) within 2.5 s; the line is the 99% objective.",
              "percentunit", [('1 - slo:sli_error:ratio_rate5m{slo="checkout_latency"}', "5m"),
                              ('1 - slo:sli_error:ratio_rate1h{slo="checkout_latency"}', "1h")]),
              [("red", None), ("green", 0.99)], line=True),
        thresholds(panel("timeseries", "Payment success per channel",
              "Share of requests to each third-party payment channel that succeeded; the line is the 99% objective.",
              "percentunit", [('1 - slo:sli_error:ratio_rate5m{slo="payment_success"}', "{{payment_channel}}")]),
              [("red", None), ("green", 0.99)], line=True),
        row("RED per service"),
        panel("timeseries", "Requests per service",
              "Requests per second each service answers (http_server_request_duration_seconds_count).",
              "reqps", [(f"sum by (service_name) (rate(http_server_request_duration_seconds_count{{{svc}}}[{RATE}]))", "{{service_name}}")]),
        panel("timeseries", "Errors per service and route",
              "Share of each route's requests answered 5xx. 502/504 usually means a downstream failed; 499 means the caller gave up.",
              "percentunit", [(f'sum by (service_name, http_route) (rate(http_server_request_duration_seconds_count{{{svc},http_response_status_code=~"5.."}}[{RATE}])) / sum by (service_name, http_route) (rate(http_server_request_duration_seconds_count{{{svc}}}[{RATE}]))', "{{service_name}} {{http_route}}")]),
        panel("timeseries", "p99 per service and route",
              "99th percentile of request duration per route (from the histogram buckets).",
              "s", [(f"histogram_quantile(0.99, sum by (service_name, http_route, le) (rate(http_server_request_duration_seconds_bucket{{{svc}}}[{RATE}])))", "{{service_name}} {{http_route}}")]),
        panel("timeseries", "Downstream errors",
              "Share of each service's outgoing calls per downstream that failed: 5xx or no answer at all.",
              "percentunit", [(f'sum by (service_name, server_address) (rate(http_client_request_duration_seconds_count{{{svc},http_response_status_code=~"5..|"}}[{RATE}])) / sum by (service_name, server_address) (rate(http_client_request_duration_seconds_count{{{svc}}}[{RATE}]))', "{{service_name}} → {{server_address}}")]),
        panel("timeseries", "Downstream p99",
              "99th percentile of outgoing call duration per service and downstream.",
              "s", [(f"histogram_quantile(0.99, sum by (service_name, server_address, le) (rate(http_client_request_duration_seconds_bucket{{{svc}}}[{RATE}])))", "{{service_name}} → {{server_address}}")]),
        panel("timeseries", "Requests in flight",
              "Requests being served now, per service (http_server_active_requests).",
              "short", [(f"sum by (service_name) (http_server_active_requests{{{svc}}})", "{{service_name}}")]),
        row("RED per service: gRPC"),
        panel("timeseries", "gRPC calls per service",
              "gRPC calls per second each service answers (rpc_server_call_duration_seconds_count).",
              "reqps", [(f"sum by (service_name) (rate(rpc_server_call_duration_seconds_count{{{svc}}}[{RATE}]))", "{{service_name}}")]),
        panel("timeseries", "gRPC errors per service and method",
              f"Share of each method's calls that ended with a status saying the server failed ({GRPC_FAILURES.replace('|', ', ')}), as GrpcServerErrorRatioHigh counts them; _OTHER are methods the server does not know.",
              "percentunit", [(f'sum by (service_name, rpc_method) (rate(rpc_server_call_duration_seconds_count{{{svc},rpc_response_status_code=~"{GRPC_FAILURES}"}}[{RATE}])) / sum by (service_name, rpc_method) (rate(rpc_server_call_duration_seconds_count{{{svc}}}[{RATE}]))', "{{service_name}} {{rpc_method}}")]),
        panel("timeseries", "gRPC p99 per service and method",
              "99th percentile of call duration per method, to the end of the response (a stream counts whole).",
              "s", [(f"histogram_quantile(0.99, sum by (service_name, rpc_method, le) (rate(rpc_server_call_duration_seconds_bucket{{{svc}}}[{RATE}])))", "{{service_name}} {{rpc_method}}")]),
        panel("timeseries", "gRPC statuses",
              "gRPC calls per second answered, by status code: business answers (ABORTED, NOT_FOUND) beside failures.",
              "reqps", [(f"sum by (service_name, rpc_response_status_code) (rate(rpc_server_call_duration_seconds_count{{{svc}}}[{RATE}]))", "{{service_name}} {{rpc_response_status_code}}")]),
        panel("timeseries", "gRPC downstream errors",
              "Share of each service's outgoing gRPC calls per downstream that failed (UNAVAILABLE, DEADLINE_EXCEEDED and the other failure codes).",
              "percentunit", [(f'sum by (service_name, server_address) (rate(rpc_client_call_duration_seconds_count{{{svc},rpc_response_status_code=~"{GRPC_FAILURES}"}}[{RATE}])) / sum by (service_name, server_address) (rate(rpc_client_call_duration_seconds_count{{{svc}}}[{RATE}]))', "{{service_name}} → {{server_address}}")]),
        panel("timeseries", "gRPC calls in flight",
              "gRPC calls being served now, per service (rpc_server_active_calls).",
              "short", [(f"sum by (service_name) (rpc_server_active_calls{{{svc}}})", "{{service_name}}")]),
    ]
    return dashboard("paytrace-checkout", "paytrace / Checkout overview",
                     "Checkout SLOs, their error budgets and burn rates, and RED per service.",
                     [var_query("service_name", "Service", "label_values(paytrace_build_info, service_name)")],
                     panels, ["checkout", "slo"])


def stage_breakdown():
    sel = 'flow="$flow",payment_method=~"$payment_method",payment_channel=~"$payment_channel"'
    panels = [
        row("Where the user waits"),
        stage_link(panel("bargauge", "Critical-path share per stage",
              "Share of the flow's end-to-end time each stage holds on the critical path (async:<stage> is the wait before an async hop, e.g. the channel's callback). Shares sum to 1. Click a bar to open the stage in the aggregator's page.",
              "percentunit", [(f"sum by (stage) (rate(paytrace_stage_critical_path_seconds_sum{{{sel}}}[{RATE}])) / scalar(sum(rate(paytrace_flow_duration_seconds_sum{{{sel}}}[{RATE}])))", "{{stage}}")], width=12, height=10)),
        stage_link(panel("timeseries", "Critical-path share per stage by payment method",
              "The same shares over time, per payment method: the stage that grows for one method stands out.",
              "percentunit", [(f"sum by (payment_method, stage) (rate(paytrace_stage_critical_path_seconds_sum{{{sel}}}[{RATE}])) / on (payment_method) group_left () sum by (payment_method) (rate(paytrace_flow_duration_seconds_sum{{{sel}}}[{RATE}]))", "{{payment_method}} {{stage}}")], width=12, height=10)),
        panel("timeseries", "End to end p50 and p99 by payment method",
              "Flow duration from the first span to the last, stitched across async hops by the aggregator.",
              "s", [(f"histogram_quantile(0.5, sum by (payment_method, le) (rate(paytrace_flow_duration_seconds_bucket{{{sel}}}[{RATE}])))", "p50 {{payment_method}}"),
                    (f"histogram_quantile(0.99, sum by (payment_method, le) (rate(paytrace_flow_duration_seconds_bucket{{{sel}}}[{RATE}])))", "p99 {{payment_method}}")]),
        panel("heatmap", "End to end",
              "Distribution of end-to-end flow durations over time.",
              "s", [(f"sum by (le) (rate(paytrace_flow_duration_seconds_bucket{{{sel}}}[{RATE}]))", "{{le}}")]),
        panel("timeseries", "Incomplete flows",
              "Flow instances per second the aggregator gave up on, by reason (terminal_stage_missing: the callback never came).",
              "ops", [(f'sum by (reason) (rate(paytrace_flows_incomplete_total{{flow="$flow"}}[{RATE}]))', "{{reason}}")]),
        row("Stage $stage"),
        stage_link(panel("heatmap", "Stage duration",
              "Distribution of the stage's durations as its service measured them (paytrace_stage_duration_seconds).",
              "s", [(f'sum by (le) (rate(paytrace_stage_duration_seconds_bucket{{{sel},stage="$stage"}}[{RATE}]))', "{{le}}")], width=12), "$stage"),
        stage_link(panel("heatmap", "Stage critical-path time",
              "Distribution of the stage's time on the flow's critical path, per flow instance (paytrace_stage_critical_path_seconds).",
              "s", [(f'sum by (le) (rate(paytrace_stage_critical_path_seconds_bucket{{{sel},stage="$stage"}}[{RATE}]))', "{{le}}")], width=12), "$stage"),
        stage_link(panel("timeseries", "Stage p99 per channel",
              "99th percentile of the stage's duration per payment channel.",
              "s", [(f'histogram_quantile(0.99, sum by (payment_channel, le) (rate(paytrace_stage_duration_seconds_bucket{{{sel},stage="$stage"}}[{RATE}])))', "{{payment_channel}}")]), "$stage"),
        stage_link(panel("timeseries", "Stage self time p50",
              "Median self time of the stage: its duration minus the time its children ran (paytrace_stage_self_seconds).",
              "s", [(f'histogram_quantile(0.5, sum by (stage, le) (rate(paytrace_stage_self_seconds_bucket{{{sel},stage="$stage"}}[{RATE}])))', "{{stage}}")]), "$stage"),
        stage_link(panel("timeseries", "Stage outcomes",
              "Stage completions per second by outcome (ok, error, timeout, rejected) and channel.",
              "ops", [(f'sum by (payment_channel, outcome) (rate(paytrace_stage_duration_seconds_count{{{sel},stage="$stage"}}[{RATE}]))', "{{payment_channel}} {{outcome}}")]), "$stage"),
    ]
    variables = [
        var_query("flow", "Flow", "label_values(paytrace_flow_duration_seconds_count, flow)", multi=False, include_all=False),
        var_query("payment_method", "Payment method", 'label_values(paytrace_flow_duration_seconds_count{flow="$flow"}, payment_method)'),
        var_query("payment_channel", "Payment channel", 'label_values(paytrace_flow_duration_seconds_count{flow="$flow"}, payment_channel)'),
        var_query("stage", "Stage", 'label_values(paytrace_stage_critical_path_seconds_count{flow="$flow"}, stage)', multi=False, include_all=False),
        var_aggregator(),
    ]
    return dashboard("paytrace-stages", "paytrace / Stage breakdown",
                     "Where the user waits: critical-path share per stage by payment method and channel, stage heatmaps, end to end.",
                     variables, panels, ["checkout", "stages"])


def tcc():
    res = 'resource=~"$resource"'
    panels = [
        row("Phases"),
        panel("timeseries", "Phase decisions",
              "TCC phases per second at the participants' fences, by resource, phase and outcome (ok/error: the handler ran; skipped: a repeat or empty rollback; rejected).",
              "ops", [(f"sum by (resource, phase, outcome) (rate(paytrace_tcc_phase_total{{{res}}}[{RATE}]))", "{{resource}} {{phase}} {{outcome}}")], width=12),
        panel("timeseries", "Phase-two retries",
              "Confirm and Cancel retries per second by the coordinator, per resource.",
              "ops", [(f"sum by (resource, phase) (rate(paytrace_tcc_phase_retries_total{{{res}}}[{RATE}]))", "{{resource}} {{phase}}")], width=12),
        row("Anomalies"),
        panel("timeseries", "Anomalies by kind (participants)",
              "Anomalies the participants' fences counted per second: empty rollbacks, hanging Tries, Cancels after Confirm, duplicates.",
              "ops", [(f"sum by (resource, kind) (rate(paytrace_tcc_anomalies_total{{{res}}}[{RATE}]))", "{{resource}} {{kind}}")], width=12),
        panel("timeseries", "Anomalies across services (aggregator)",
              "Anomalies the aggregator found by replaying each branch's spans in time order across services, including decision_violated and frozen. The list with trace ids: the aggregator's /api/v1/tcc/anomalies.",
              "ops", [(f"sum by (resource, kind) (rate(paytrace_tcc_global_anomalies_total{{{res}}}[{RATE}]))", "{{resource}} {{kind}}")], width=12),
        panel("stat", "Cancels after Confirm (1h)",
              "Cancels refused because the branch was already confirmed, in the last hour. Any is a page.",
              "short", [(f'sum(increase(paytrace_tcc_anomalies_total{{{res},kind="cancel_after_confirm"}}[1h]))', "")]),
        panel("timeseries", "Empty rollback share",
              "Share of Cancels that were empty rollbacks (the Cancel overtook its Try), per resource.",
              "percentunit", [(f'sum by (resource) (rate(paytrace_tcc_anomalies_total{{{res},kind="empty_rollback"}}[{RATE}])) / sum by (resource) (rate(paytrace_tcc_phase_total{{{res},phase="cancel"}}[{RATE}]))', "{{resource}}")]),
        panel("stat", "Decision violations (1h)",
              "Branches that ran the opposite of the coordinator's decision in the last hour (aggregator). The transaction is inconsistent.",
              "short", [(f'sum(increase(paytrace_tcc_global_anomalies_total{{kind="decision_violated"}}[1h]))', "")]),
        row("Pending and frozen"),
        panel("timeseries", "Pending branches",
              "Branches tried and waiting for Confirm or Cancel, per participant and resource.",
              "short", [(f"sum by (service_name, resource) (paytrace_tcc_branches_pending{{{res}}})", "{{service_name}} {{resource}}")]),
        panel("timeseries", "Oldest pending branch",
              "Age of the oldest tried branch per participant; the frozen-branch alert fires past 15 minutes.",
              "s", [(f"max by (service_name, resource) (paytrace_tcc_pending_oldest_seconds{{{res}}})", "{{service_name}} {{resource}}")]),
        panel("timeseries", "Unfinished transactions",
              "Global transactions the aggregator sees with a branch tried and no phase two anywhere past its TCC timeout.",
              "short", [("sum(paytrace_tcc_transactions_unfinished)", "unfinished")], width=4),
        panel("timeseries", "Oldest unfinished transaction",
              "Age of the oldest waiting Try among the unfinished transactions (0 when none).",
              "s", [("max(paytrace_tcc_unfinished_oldest_seconds)", "oldest")], width=4),
    ]
    return dashboard("paytrace-tcc", "paytrace / TCC",
                     "TCC phases, anomalies at the participants and across services, pending and frozen branches, unfinished transactions.",
                     [var_query("resource", "Resource", "label_values(paytrace_tcc_phase_total, resource)")],
                     panels, ["tcc"])


def use():
    svc = 'service_name=~"$service_name"'
    panels = [
        row("Runtime"),
        panel("timeseries", "Tokio workers busy",
              "Share of time the service's tokio workers were busy (paytrace_runtime_worker_busy_ratio); near 1, tasks wait for a worker.",
              "percentunit", [(f"paytrace_runtime_worker_busy_ratio{{{svc}}}", "{{service_name}}")]),
        panel("timeseries", "Global queue depth",
              "Tasks waiting in the runtime's global queue.",
              "short", [(f"paytrace_runtime_global_queue_depth{{{svc}}}", "{{service_name}}")]),
        panel("timeseries", "Alive tasks",
              "Tasks alive in the runtime; a steady climb is a task leak.",
              "short", [(f"paytrace_runtime_alive_tasks{{{svc}}}", "{{service_name}}")]),
        row("Pools"),
        panel("timeseries", "Pool utilisation",
              "Resources of each pool in use over its capacity (paytrace_resource_in_use / paytrace_resource_capacity).",
              "percentunit", [(f"paytrace_resource_in_use{{{svc}}} / paytrace_resource_capacity{{{svc}}}", "{{service_name}} {{resource}}")]),
        panel("timeseries", "Pool wait p99",
              "99th percentile of the time callers waited for a pool resource.",
              "s", [(f"histogram_quantile(0.99, sum by (service_name, resource, le) (rate(paytrace_resource_wait_seconds_bucket{{{svc}}}[{RATE}])))", "{{service_name}} {{resource}}")]),
        panel("timeseries", "Pool errors",
              "Failures to acquire or use a pool resource per second, by kind.",
              "ops", [(f"sum by (service_name, resource, kind) (rate(paytrace_resource_errors_total{{{svc}}}[{RATE}]))", "{{service_name}} {{resource}} {{kind}}")]),
        row("Queues"),
        panel("timeseries", "Queue depth",
              "Messages waiting in each queue.",
              "short", [(f"paytrace_queue_depth{{{svc}}}", "{{service_name}} {{queue}}")]),
        panel("timeseries", "Oldest message age",
              "How long the oldest waiting message has waited.",
              "s", [(f"paytrace_queue_oldest_age_seconds{{{svc}}}", "{{service_name}} {{queue}}")]),
        panel("timeseries", "Messages by outcome",
              "Messages handled per second: processed, failed (retried), dead_lettered (given up).",
              "ops", [(f"sum by (service_name, queue, outcome) (rate(paytrace_queue_messages_total{{{svc}}}[{RATE}]))", "{{service_name}} {{queue}} {{outcome}}")]),
        panel("timeseries", "Broker backlog",
              "Messages waiting in each broker queue (RabbitMQ ready, a Redis Streams group's lag), as the consuming service read it from the broker.",
              "short", [(f"max by (service_name, messaging_system, queue) (paytrace_broker_messages_ready{{{svc}}})", "{{service_name}} {{messaging_system}} {{queue}}")]),
        panel("timeseries", "Unacknowledged",
              "Messages delivered to consumers and not yet acknowledged, per broker queue.",
              "short", [(f"max by (service_name, messaging_system, queue) (paytrace_broker_messages_unacked{{{svc}}})", "{{service_name}} {{messaging_system}} {{queue}}")]),
        panel("timeseries", "Consumer lag",
              "Age of the oldest message not yet acknowledged, per broker queue (0 when none, or when the broker does not report it: RabbitMQ quorum queues).",
              "s", [(f"max by (service_name, messaging_system, queue) (paytrace_broker_oldest_message_age_seconds{{{svc}}})", "{{service_name}} {{messaging_system}} {{queue}}")]),
        panel("timeseries", "Sent and consumed",
              "Messages sent per destination (by error type) and delivered to consumers per second.",
              "ops", [(f'sum by (service_name, messaging_destination_name, error_type) (rate(messaging_client_sent_messages_total{{{svc}}}[{RATE}]))', "sent {{service_name}} {{messaging_destination_name}} {{error_type}}"),
                      (f"sum by (service_name, messaging_destination_name) (rate(messaging_client_consumed_messages_total{{{svc}}}[{RATE}]))", "consumed {{service_name}} {{messaging_destination_name}}")]),
        panel("timeseries", "Process duration p99",
              "99th percentile of the consumers' processing of a message, per destination.",
              "s", [(f"histogram_quantile(0.99, sum by (service_name, messaging_destination_name, le) (rate(messaging_process_duration_seconds_bucket{{{svc}}}[{RATE}])))", "{{service_name}} {{messaging_destination_name}}")]),
        panel("timeseries", "Redeliveries and dead letters",
              "Deliveries of messages delivered before, and messages moved to the dead-letter destination, per second.",
              "ops", [(f"sum by (service_name, queue) (rate(paytrace_broker_redeliveries_total{{{svc}}}[{RATE}]))", "redelivered {{service_name}} {{queue}}"),
                      (f"sum by (service_name, queue) (rate(paytrace_broker_dead_lettered_total{{{svc}}}[{RATE}]))", "dead-lettered {{service_name}} {{queue}}")]),
        panel("timeseries", "Outbox unpublished",
              "Messages committed to an outbox and not yet published, and the oldest one's age (OutboxNotDraining past 60 s).",
              "short", [(f"max by (service_name, outbox) (paytrace_outbox_pending_messages{{{svc}}})", "{{service_name}} {{outbox}}")]),
        panel("timeseries", "Outbox oldest unpublished",
              "Age of the oldest message committed to an outbox and not yet published.",
              "s", [(f"max by (service_name, outbox) (paytrace_outbox_oldest_pending_seconds{{{svc}}})", "{{service_name}} {{outbox}}")]),
        panel("timeseries", "Inbox duplicates",
              "Messages an inbox had applied before and skipped, per second (redeliveries and relay repeats made harmless).",
              "ops", [(f"sum by (service_name, inbox) (rate(paytrace_inbox_duplicates_total{{{svc}}}[{RATE}]))", "{{service_name}} {{inbox}}")]),
        row("Process"),
        panel("timeseries", "Process CPU",
              "CPU seconds per second each service process uses (1 = one core).",
              "percentunit", [(f"rate(process_cpu_seconds_total[{RATE}]) * on (cluster, namespace, job, instance) group_left (service_name) max by (cluster, namespace, job, instance, service_name) (paytrace_build_info{{{svc}}})", "{{service_name}}")]),
        panel("timeseries", "Process resident memory",
              "Resident memory of each service process.",
              "bytes", [(f"process_resident_memory_bytes * on (cluster, namespace, job, instance) group_left (service_name) max by (cluster, namespace, job, instance, service_name) (paytrace_build_info{{{svc}}})", "{{service_name}}")]),
        panel("timeseries", "Open file descriptors",
              "Open file descriptors of each service process over its limit.",
              "percentunit", [(f"process_open_fds / process_max_fds * on (cluster, namespace, job, instance) group_left (service_name) max by (cluster, namespace, job, instance, service_name) (paytrace_build_info{{{svc}}})", "{{service_name}}")]),
        row("Host"),
        panel("timeseries", "CPU utilisation",
              "Share of CPU time not idle, per host (node_exporter).",
              "percentunit", [(f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{RATE}]))', "{{instance}}")]),
        panel("timeseries", "Memory available",
              "Share of memory available to new work, per host.",
              "percentunit", [("node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{instance}}")]),
        panel("timeseries", "Disk free",
              "Free share of each real filesystem (tmpfs and overlay left out).",
              "percentunit", [('node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs|overlay"} / node_filesystem_size_bytes{fstype!~"tmpfs|ramfs|overlay"}', "{{instance}} {{mountpoint}}")]),
        panel("timeseries", "System file descriptors",
              "Allocated file descriptors over the system-wide maximum.",
              "percentunit", [("node_filefd_allocated / node_filefd_maximum", "{{instance}}")]),
    ]
    return dashboard("paytrace-use", "paytrace / USE",
                     "Utilisation, saturation and errors: tokio runtime, pools, queues, processes, hosts.",
                     [var_query("service_name", "Service", "label_values(paytrace_build_info, service_name)")],
                     panels, ["use"])


def aggregator():
    panels = [
        row("Spans in"),
        panel("timeseries", "Spans received by protocol",
              "Spans per second the aggregator received, valid or not.",
              "ops", [(f"sum by (protocol) (rate(paytrace_aggregator_spans_received_total[{RATE}]))", "{{protocol}}")], width=12),
        panel("timeseries", "Spans dropped by reason",
              "Spans per second not analysed: invalid, late (trace already complete), trace_span_limit, tcc_limit.",
              "ops", [(f"sum by (reason) (rate(paytrace_aggregator_spans_dropped_total[{RATE}]))", "{{reason}}")], width=12),
        panel("timeseries", "Refused requests",
              "OTLP requests refused whole, by protocol and reason; overloaded ones are retried by exporters.",
              "reqps", [(f"sum by (protocol, reason) (rate(paytrace_aggregator_requests_refused_total[{RATE}]))", "{{protocol}} {{reason}}")]),
        panel("timeseries", "Refused connections",
              "Connections to a TLS listener closed before they carried a request, by listener and reason: not_tls (plaintext to a TLS port), client_certificate_missing or _invalid (under --tls-client-ca), handshake_timeout, handshake_failed.",
              "ops", [(f"sum by (listener, reason) (rate(paytrace_aggregator_connections_refused_total[{RATE}]))", "{{listener}} {{reason}}")]),
        panel("timeseries", "State snapshots",
              "Snapshots of --state-dir by outcome: written (periodically and at shutdown), failed (see AggregatorStateNotSaved), restored or set_aside (at start).",
              "short", [(f"sum by (outcome) (increase(paytrace_aggregator_state_snapshots_total[{RATE}]))", "{{outcome}}")]),
        row("Assembly"),
        panel("timeseries", "Buffered traces",
              "Traces being assembled now.",
              "short", [("sum(paytrace_aggregator_traces_live)", "live")]),
        panel("timeseries", "Traces completed",
              "Traces assembled per second and handed to flow stitching.",
              "ops", [(f"sum(rate(paytrace_aggregator_traces_completed_total[{RATE}]))", "completed")]),
        panel("timeseries", "Evictions",
              "Traces analysed before they were idle because the buffer was full, by reason.",
              "ops", [(f"sum by (reason) (rate(paytrace_aggregator_traces_evicted_total[{RATE}]))", "{{reason}}")]),
        panel("timeseries", "Series overflow",
              "Label values folded into `other` per second, at the aggregator and at the services.",
              "ops", [(f"sum(rate(paytrace_aggregator_series_overflow_total[{RATE}]))", "aggregator"),
                      (f"sum by (label) (rate(paytrace_series_overflow_total[{RATE}]))", "services: {{label}}")]),
        row("Export from the services"),
        panel("timeseries", "Spans exported by services",
              "Spans per second the services' exporters delivered.",
              "ops", [(f"sum by (job, instance) (rate(paytrace_spans_exported_total[{RATE}]))", "{{instance}}")], width=12),
        panel("timeseries", "Spans dropped by services",
              "Spans per second the services dropped before export, by reason (queue_full, export_failed, export_timeout).",
              "ops", [(f"sum by (instance, reason) (rate(paytrace_spans_dropped_total[{RATE}]))", "{{instance}} {{reason}}")], width=12),
        row("Forwarding to the trace store"),
        panel("timeseries", "Flows forwarded by reason",
              "Kept flows forwarded whole to the trace store per second (serve --forward-otlp), by why they were kept: error, tcc, slow, sample.",
              "ops", [(f"sum by (reason) (rate(paytrace_aggregator_flows_forwarded_total[{RATE}]))", "{{reason}}")], width=12),
        panel("timeseries", "Kept flows dropped by reason",
              "Kept flows that did not reach the trace store per second, by reason: budget, queue_full, export_failed, not_as_sent (see AggregatorNotForwarding).",
              "ops", [(f"sum by (reason) (rate(paytrace_aggregator_flows_forward_dropped_total[{RATE}]))", "{{reason}}")], width=12),
        row("Replicas"),
        panel("timeseries", "Flows split across replicas",
              "Flow instances per second finished with a link to a trace this replica never received: the Collector sent part of the flow to another replica (a routing change, a replica down), or it was lost. Each is analysed without the missing part; a steady rate means the Collector does not route by paytrace.flow_id.",
              "ops", [(f"sum by (flow) (rate(paytrace_aggregator_flows_split_total[{RATE}]))", "{{flow}}")], width=12),
        panel("timeseries", "Failed peer requests",
              "Requests per second from each replica to its peers (serve --peer) that failed or timed out; each answer that needed one was partial (\"partial\": true, the peer in missing_peers).",
              "ops", [(f"sum by (instance, peer) (rate(paytrace_aggregator_peer_requests_failed_total[{RATE}]))", "{{instance}} to {{peer}}")], width=12),
    ]
    return dashboard("paytrace-aggregator", "paytrace / Aggregator",
                     "The aggregator's own health, and span export from the services.",
                     [], panels, ["aggregator"])


DASHBOARDS = {
    "checkout-overview.json": checkout_overview,
    "stage-breakdown.json": stage_breakdown,
    "tcc.json": tcc,
    "use.json": use,
    "aggregator.json": aggregator,
}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        path = OUT / name
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"dashboards out of date: {', '.join(stale)}; run python3 scripts/dashboards.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
