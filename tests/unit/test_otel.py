"""OpenTelemetry export: nothing at all unless an endpoint is configured; with one, the spans of
:mod:`streamcart.tracing` are exported with the trace ids the Kafka headers carry."""

import asyncio
import subprocess
import sys

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamcart.otel import start_export
from streamcart.settings import Settings
from streamcart.tracing import call_span, new_traceparent, span, trace_id

NOTHING_LOADED = """
from streamcart.otel import start_export
from streamcart.settings import Settings
from streamcart import tracing
assert start_export(Settings(), "worker-0") is None
assert tracing._recorder is None
loaded = sorted(m for m in __import__("sys").modules if m.startswith("opentelemetry"))
assert not loaded, loaded
"""


def test_without_an_endpoint_nothing_of_opentelemetry_is_loaded_or_started():
    # A fresh interpreter: this test process has OpenTelemetry loaded by the tests below.
    subprocess.run([sys.executable, "-c", NOTHING_LOADED], check=True, env={"PATH": ""}, timeout=60)


@pytest.fixture
def exported():
    memory = InMemorySpanExporter()
    recorder = start_export(Settings(otel_endpoint="http://127.0.0.1:1"), "worker-0", exporter=memory)
    assert recorder is not None

    def spans():
        recorder.shutdown()
        return {s.name: s for s in memory.get_finished_spans()}

    yield spans
    recorder.shutdown()  # idempotent; leaves no recorder behind for other tests


def test_a_handled_message_and_its_call_are_exported_as_parent_and_child_in_the_message_trace(exported):
    parent = new_traceparent()
    with span(parent, "orders", "consumer") as handling, call_span("payment gateway authorizations") as call:
        pass
    spans = exported()
    consumer, client = spans["orders"], spans["payment gateway authorizations"]
    assert f"{consumer.context.trace_id:032x}" == trace_id(parent) == trace_id(call)
    assert f"{consumer.parent.span_id:016x}" == parent.split("-")[2]
    assert f"{consumer.context.span_id:016x}" == handling.split("-")[2]
    assert client.parent.span_id == consumer.context.span_id
    assert (consumer.kind.name, client.kind.name) == ("CONSUMER", "CLIENT")
    assert consumer.resource.attributes["service.name"] == "worker-0"


def test_a_missing_or_malformed_parent_starts_a_new_trace(exported):
    with span("garbage", "orders", "consumer") as first, span(None, "api", "server") as second:
        pass
    spans = exported()
    assert spans["orders"].parent is None and spans["api"].parent is None
    assert trace_id(first) != trace_id(second)


async def test_spans_go_over_otlp_http_to_the_configured_endpoint(aiohttp_server):
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        received.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    collector = await aiohttp_server(app)
    recorder = start_export(Settings(otel_endpoint=str(collector.make_url(""))), "gateway")
    assert recorder is not None
    parent = new_traceparent()
    with span(parent, "POST /v1/authorizations", "server"):
        pass
    await asyncio.to_thread(recorder.shutdown)  # the exporter posts from its own thread; the loop must serve it
    (exported,) = [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert exported.name == "POST /v1/authorizations"
    assert exported.trace_id.hex() == trace_id(parent)
