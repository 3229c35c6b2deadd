"""Log records as JSON lines (or text) with the ids of what is being handled."""

import io
import json
import logging
import logging.config
import sys

import pytest

from streamcart.logs import JsonFormatter, TextFormatter, log_context, logging_config
from streamcart.settings import Settings
from streamcart.tracing import new_traceparent, span, trace_id


def record(message: str = "reserved %d units", *args: object, exc_info: object = None) -> logging.LogRecord:
    args = args or ((2,) if "%" in message else ())
    return logging.LogRecord("agents.inventory", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_record_is_one_json_object_with_time_level_logger_and_message():
    line = JsonFormatter().format(record())
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "warning"
    assert entry["logger"] == "agents.inventory"
    assert entry["message"] == "reserved 2 units"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert "order_id" not in entry and "trace_id" not in entry


def test_a_record_carries_the_bound_ids_and_the_current_trace_id():
    parent = new_traceparent()
    with span(parent, "test"), log_context(order_id="o-1", event_id="e-1", sku=None):
        entry = json.loads(JsonFormatter().format(record()))
    assert entry["order_id"] == "o-1" and entry["event_id"] == "e-1"
    assert entry["trace_id"] == trace_id(parent)
    assert "sku" not in entry


def test_nested_contexts_add_to_each_other_and_are_undone_on_leaving():
    with log_context(flow="orders"):
        with log_context(order_id="o-1"):
            inner = json.loads(JsonFormatter().format(record()))
        outer = json.loads(JsonFormatter().format(record()))
    after = json.loads(JsonFormatter().format(record()))
    assert (inner["flow"], inner["order_id"]) == ("orders", "o-1")
    assert outer["flow"] == "orders" and "order_id" not in outer
    assert "flow" not in after


def test_an_exception_is_kept_in_the_same_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        line = JsonFormatter().format(record("failed", exc_info=sys.exc_info()))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "failed"
    assert "ValueError: boom" in entry["exception"]


def test_the_text_format_puts_the_context_after_the_message():
    with log_context(order_id="o-1"):
        line = TextFormatter().format(record())
    assert line.endswith("agents.inventory: reserved 2 units [order_id=o-1]")


def test_json_is_the_default_and_text_is_a_setting(monkeypatch):
    assert Settings().log_format == "json"
    monkeypatch.setenv("STREAMCART_LOG_FORMAT", "text")
    assert Settings().log_format == "text"
    monkeypatch.setenv("STREAMCART_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_logging_config_sends_every_logger_to_stdout_as_json(restore_root_logger, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    logging.config.dictConfig(logging_config("json", "info"))
    logging.getLogger("faust.worker").info("starting")
    logging.getLogger("streamcart.test").debug("below the level")
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["logger"] for line in lines] == ["faust.worker"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_repeated_word_for_word_is_written_once_a_window_then_says_how_many_were_held_back():
    from streamcart.logs import RepeatedRecords

    clock = Clock()
    repeats = RepeatedRecords(window_s=10, clock=clock)
    refused = "Unable connect to node with id %s: %s"
    assert repeats.filter(record(refused, 1, "[Errno 111]"))
    for _ in range(57):
        clock.now += 0.1
        assert not repeats.filter(record(refused, 1, "[Errno 111]"))
    assert repeats.filter(record(refused, 2, "[Errno 111]"))  # another word: another line
    assert repeats.filter(record("reserved %d units", 2))
    clock.now += 10
    again = record(refused, 1, "[Errno 111]")
    assert repeats.filter(again)
    assert again.getMessage() == ("Unable connect to node with id 1: [Errno 111] "
                                  "(57 more like it held back in the last 10 s)")
    clock.now += 10
    quiet = record(refused, 1, "[Errno 111]")
    assert repeats.filter(quiet) and quiet.getMessage() == "Unable connect to node with id 1: [Errno 111]"


def test_routine_faust_and_mode_lines_that_differ_only_in_a_figure_count_as_the_same_line():
    from streamcart.logs import RepeatedRecords

    clock = Clock()
    repeats = RepeatedRecords(window_s=10, clock=clock)

    def line(logger: str, message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(logger, logging.WARNING, __file__, 1, message, args, None)

    overlapping = "Timer %s is overlapping (interval=%r runtime=%r)"
    assert repeats.filter(line("mode.timers", overlapping, "commit", 0.2, 0.31))
    assert not repeats.filter(line("mode.timers", overlapping, "commit", 0.2, 1.65))
    assert repeats.filter(line("mode.timers", overlapping, "livelock", 0.5, 0.7))  # another timer: news
    assert repeats.filter(line("faust.transport.producer", "producer buffer full size 102"))
    for size in (165, 101, 113):
        assert not repeats.filter(line("faust.transport.producer", f"producer buffer full size {size}"))
    # The same words from another logger, or a figure in a line not known to be routine, still count.
    assert repeats.filter(line("agents.inventory", "producer buffer full size 103"))
    assert repeats.filter(line("aiokafka", "Unable connect to node with id %s", 2))
    assert repeats.filter(line("aiokafka", "Unable connect to node with id %s", 3))
    clock.now += 10
    later = line("faust.transport.producer", "producer buffer full size 130")
    assert repeats.filter(later)
    assert later.getMessage() == "producer buffer full size 130 (3 more like it held back in the last 10 s)"


def test_the_logging_config_holds_repeated_lines_back(restore_root_logger, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    logging.config.dictConfig(logging_config("json", "info"))
    for _ in range(5):
        logging.getLogger("aiokafka").error("Unable to update metadata from [1]")
    logging.getLogger("aiokafka").error("Unable to update metadata from [2]")
    lines = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert lines == ["Unable to update metadata from [1]", "Unable to update metadata from [2]"]


def test_the_same_line_about_another_request_or_with_an_exception_is_never_held_back():
    import sys as _sys

    from streamcart.logs import RepeatedRecords

    repeats = RepeatedRecords(window_s=10, clock=Clock())
    failed = "unhandled error on %s %s"
    with log_context(request_id="r-1"):
        assert repeats.filter(record(failed, "GET", "/v1/orders/o-1"))
    with log_context(request_id="r-2"):
        assert repeats.filter(record(failed, "GET", "/v1/orders/o-1"))
        assert not repeats.filter(record(failed, "GET", "/v1/orders/o-1"))
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            assert repeats.filter(record(failed, "GET", "/v1/orders/o-1", exc_info=_sys.exc_info()))


def test_a_line_that_cannot_be_formatted_is_left_to_the_handler():
    from streamcart.logs import RepeatedRecords

    assert RepeatedRecords().filter(record("%d units", "not a number"))
