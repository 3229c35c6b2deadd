"""OpenTelemetry export of the spans of :mod:`streamcart.tracing`, when an endpoint is configured.

Off by default: without ``otel_endpoint`` nothing of OpenTelemetry is imported or started, and no collector is
needed to run anything. With it, each process sends its spans over OTLP/HTTP in batches from a background thread
(the optional extra ``streamcart[otel]`` brings the packages). Spans keep the trace ids the Kafka headers carry,
so one order is one trace in the collector too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from streamcart.errors import StreamcartError
from streamcart.settings import Settings
from streamcart.tracing import SpanKind, record_spans

TRACES_PATH = "/v1/traces"


class OtelUnavailable(StreamcartError):
    """An OpenTelemetry endpoint is configured but the OpenTelemetry packages are not installed."""


class OtelRecorder:
    """Records :mod:`streamcart.tracing` spans as OpenTelemetry spans (which mint the ids)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind as OtelKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer("streamcart")
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {kind.name.lower(): kind for kind in OtelKind}

    @contextmanager
    def span(self, name: str, parent: str | None, kind: SpanKind) -> Iterator[str]:
        # Missing or malformed, the parent extracts to an empty context: a new trace (never OpenTelemetry's own
        # current span, which streamcart.tracing does not use).
        context = self._propagator.extract({"traceparent": parent or ""})
        with self._tracer.start_as_current_span(name, context=context, kind=self._kinds[kind]) as span:
            ids = span.get_span_context()
            yield f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"

    def shutdown(self) -> None:
        """Stop recording, send what is still buffered and stop the export thread."""
        record_spans(None)
        self.provider.shutdown()


def start_export(settings: Settings, service: str, exporter: Any = None) -> OtelRecorder | None:
    """Export this process's spans as ``service`` if ``settings.otel_endpoint`` is set (else do nothing and return
    ``None``). Call once at the process's wiring point; :meth:`OtelRecorder.shutdown` at its end. ``exporter``
    replaces the OTLP/HTTP one (tests)."""
    if not settings.otel_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise OtelUnavailable(
            "STREAMCART_OTEL_ENDPOINT is set but OpenTelemetry is not installed: pip install 'streamcart[otel]'"
        ) from exc
    endpoint = settings.otel_endpoint.rstrip("/")
    if not endpoint.endswith(TRACES_PATH):
        endpoint += TRACES_PATH
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=endpoint)))
    recorder = OtelRecorder(provider)
    record_spans(recorder)
    return recorder
