from streamcart.ids import derive_id, new_id
from streamcart.tracing import child_traceparent, new_traceparent, trace_id


def test_derived_ids_are_stable_and_distinguish_their_parts():
    assert derive_id("e-1", "ReserveStock", "A") == derive_id("e-1", "ReserveStock", "A")
    assert derive_id("e-1", "ReserveStock", "A") != derive_id("e-1", "ReserveStock", "B")
    assert derive_id("a", "bc") != derive_id("ab", "c")


def test_new_ids_are_unique():
    assert new_id() != new_id()


def test_a_child_span_keeps_the_trace_id_and_gets_a_new_span_id():
    parent = new_traceparent()
    child = child_traceparent(parent)
    assert trace_id(child) == trace_id(parent)
    assert child != parent


def test_a_malformed_parent_starts_a_new_trace():
    assert trace_id(child_traceparent("garbage")) is not None
    assert trace_id(child_traceparent(None)) is not None


def test_with_tracing_off_no_span_is_current_and_messages_carry_no_traceparent():
    import asyncio
    from types import SimpleNamespace

    from agents.runtime import Runtime
    from streamcart import tracing
    from streamcart.settings import Settings

    sent: list[list[tuple[str, bytes]]] = []

    class Sink:
        async def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
            sent.append(headers)

    runtime = Runtime(settings=Settings(), app=SimpleNamespace(), codec=None, tables=None, sink=Sink())  # type: ignore[arg-type]
    try:
        tracing.set_enabled(False)
        with tracing.span(new_traceparent(), "flow") as traceparent:
            assert traceparent == "" and tracing.current_traceparent() is None
            asyncio.run(runtime.send_record("t", b"k", b"v"))
        tracing.set_enabled(True)
        with tracing.span(None, "flow") as traceparent:
            assert trace_id(traceparent) is not None
            asyncio.run(runtime.send_record("t", b"k", b"v"))
    finally:
        tracing.set_enabled(True)
    assert sent == [[], [("traceparent", traceparent.encode())]]
