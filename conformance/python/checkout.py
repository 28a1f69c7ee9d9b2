"""Conformance checkouts from the OpenTelemetry Python SDK.

Five services (gateway, order, inventory, payment, and the payment
channel's callback into payment), each with its own TracerProvider, batch
processor and OTLP/HTTP protobuf exporter, as five processes would have.
Calls between them carry W3C trace context and baggage through the SDK's
propagators; server and client spans carry the HTTP attributes the Python
HTTP instrumentations set. Stages sleep known times.

    python checkout.py CASE ENDPOINT FLOWS

CASE is overlap | link | failures | long | late | plain | sampled |
skew_ahead | skew_behind (inventory's clock 500 ms ahead of, behind, the
others'). In
"overlap" every span starts on a whole millisecond and ends its precise
duration later, as a millisecond clock (the JS SDK's Date.now()) records it;
the Python SDK's own clock is in nanoseconds. In "failures" 2 of every 5
checkouts fail at inventory.try. In "sampled" every service samples with the
SDK's consistent probability samplers at 50% (parent threshold over a trace
id ratio: spans carry `ot=th:8` in their tracestate), the flow is named
"sampled" and has no callback; the output lists each checkout's trace id and
whether the SDK kept it.
"""

import sys
import time
from contextlib import contextmanager

from opentelemetry import baggage, context, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

CASE, ENDPOINT, FLOWS = sys.argv[1], sys.argv[2], int(sys.argv[3])
PLAIN = CASE == "plain"
SAMPLED = CASE == "sampled"
FLOW = "sampled" if SAMPLED else "checkout"
COARSE = CASE == "overlap"
# The skewed service and how far its clock is off, in ns.
SKEW = {"skew_ahead": ("inventory", 500_000_000), "skew_behind": ("inventory", -500_000_000)}.get(CASE)
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])

providers = {}


def tracer(service):
    if service not in providers:
        sampler = None
        if SAMPLED:
            from opentelemetry.sdk.trace._sampling_experimental import (
                composable_parent_threshold,
                composable_traceid_ratio_based,
                composite_sampler,
            )

            sampler = composite_sampler(
                composable_parent_threshold(composable_traceid_ratio_based(0.5))
            )
        provider = TracerProvider(
            resource=Resource.create({"service.name": service}), sampler=sampler
        )
        # BatchSpanProcessor reads OTEL_BSP_SCHEDULE_DELAY from the environment.
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{ENDPOINT}/v1/traces"))
        )
        providers[service] = provider
    return providers[service].get_tracer("paytrace-conformance")


@contextmanager
def span(service, name, kind=SpanKind.INTERNAL, attributes=None, links=None, ctx=None):
    """A span of `service`, current inside the block."""
    real_start = time.time_ns()
    start = real_start // 1_000_000 * 1_000_000 if COARSE else real_start
    if SKEW and SKEW[0] == service:
        start += SKEW[1]
    s = tracer(service).start_span(
        name, context=ctx, kind=kind, attributes=attributes or {}, links=links or [],
        start_time=start,
    )
    if SAMPLED:
        # SDK 1.45's experimental composite sampler returns no attributes,
        # and the SDK keeps only what the sampler returns: set them again.
        for key, value in (attributes or {}).items():
            s.set_attribute(key, value)
    token = context.attach(trace.set_span_in_context(s, ctx if ctx is not None else None))
    try:
        yield s
    finally:
        context.detach(token)
        s.end(end_time=start + (time.time_ns() - real_start))


def business(flow_id):
    if PLAIN:
        return {}
    return {"paytrace.flow": FLOW, "paytrace.flow_id": flow_id}


@contextmanager
def stage(service, name, flow_id, links=None):
    if PLAIN:
        yield None
        return
    attributes = {"paytrace.stage": name, **business(flow_id)}
    with span(service, name, attributes=attributes, links=links) as s:
        yield s


def call(caller, callee, method, route, handler):
    """An HTTP call from `caller` to `callee`: a client span, the headers the
    propagators write, and the callee's server span continuing them."""
    with span(caller, method, SpanKind.CLIENT, {"http.request.method": method}):
        headers = {}
        PROPAGATOR.inject(headers)
        incoming = PROPAGATOR.extract(headers)
        attributes = {"http.request.method": method, "http.route": route}
        with span(callee, f"{method} {route}", SpanKind.SERVER, attributes, ctx=incoming) as server:
            token = context.attach(incoming)
            try:
                # Re-enter the server span over the extracted context.
                token2 = context.attach(trace.set_span_in_context(server, incoming))
                try:
                    status = handler()
                finally:
                    context.detach(token2)
            finally:
                context.detach(token)
            server.set_attribute("http.response.status_code", status)
            if status >= 500:
                server.set_status(Status(StatusCode.ERROR))
            return status


def checkout(i):
    flow_id = f"ord_py_{CASE}_{i}"
    fail = CASE == "failures" and i % 5 < 2
    attributes = {"http.request.method": "POST", "http.route": "/checkout"}
    request_span = {}
    with span("gateway", "POST /checkout", SpanKind.SERVER, attributes) as root:
        if CASE == "long":
            root.set_attribute("paytrace.outcome", "error: " + "x" * 4000)
        ctx = context.get_current()
        if not PLAIN:
            for k, v in (("paytrace.flow", FLOW), ("paytrace.flow_id", flow_id),
                         ("payment.method", "alipay")):
                ctx = baggage.set_baggage(k, v, ctx)
        token = context.attach(ctx)
        try:
            def order():
                with stage("order", "order.create", flow_id):
                    time.sleep(0.040)
                return 200

            def stock():
                time.sleep(0.015)
                return 200

            def reserve():
                with stage("inventory", "inventory.try", flow_id):
                    time.sleep(0.060)
                return 500 if fail else 200

            def pay():
                with stage("payment", "channel.request", flow_id) as s:
                    time.sleep(0.050)  # the channel answers
                    request_span["context"] = s.get_span_context() if s else None
                return 200

            call("gateway", "order", "POST", "/orders", order)
            if PLAIN:
                call("gateway", "inventory", "GET", "/stock/:sku", stock)
            status = call("gateway", "inventory", "POST", "/reserve", reserve)
            if status >= 500:
                root.set_attribute("http.response.status_code", 502)
                root.set_status(Status(StatusCode.ERROR))
                return False
            call("gateway", "payment", "POST", "/pay", pay)
            # The notification is sent in the background, never waited on.
            notify = None
            if not PLAIN:
                notify = tracer("payment").start_span(
                    "notify.send", attributes={"paytrace.stage": "notify.send", **business(flow_id)}
                )
            root.set_attribute("http.response.status_code", 200)
            root_context = root.get_span_context()
            KEPT.append((f"{root_context.trace_id:032x}", root_context.trace_flags.sampled))
        finally:
            context.detach(token)
    if SAMPLED:
        if notify is not None:
            notify.end()
        return True
    time.sleep(0.060)
    if notify is not None:
        notify.end()
    time.sleep(0.040)
    # The channel's callback, 100 ms after it answered: a new trace with no
    # trace context, linked by the handler's stage to the request span.
    attributes = {"http.request.method": "POST", "http.route": "/callback"}
    with span("payment", "POST /callback", SpanKind.SERVER, attributes, ctx=context.Context()):
        linked = request_span.get("context")
        links = [Link(linked)] if linked is not None and not PLAIN else []
        with stage("payment", "channel.callback", flow_id, links=links):
            time.sleep(0.030)
        with stage("payment", "payment.confirm", flow_id):
            time.sleep(0.020)
    return True


KEPT = []


def main():
    failed = sum(0 if checkout(i) else 1 for i in range(FLOWS))
    for provider in providers.values():
        provider.shutdown()
    kept = ", ".join(f'["{t}", {str(s).lower()}]' for t, s in KEPT)
    print(f'{{"flows": {FLOWS}, "failed": {failed}, "roots": [{kept}]}}')


if __name__ == "__main__":
    main()
