"""`streamcart status`'s line about the dead-letter topics, and its JSON."""

from __future__ import annotations

import json

from streamcart.stack.admin import Depth
from streamcart.stack.probes import Probe
from streamcart.stack.stack import ProcessStatus
from streamcart.stack.views import dead_letters_line, status_json


def kafka(dead_letters: dict[str, Depth] | None) -> ProcessStatus:
    return ProcessStatus("kafka", True, 1, (9092,), Probe(True, "1 broker"), 1, 1.0, dead_letters=dead_letters)


def test_the_line_gives_each_dead_letter_topics_depth_and_what_came_lately():
    line = dead_letters_line([kafka({"commerce.warehouse.dlq": Depth(0, 0), "commerce.dlq": Depth(12, 3)})])
    assert line is not None
    assert line.startswith("dead letters: commerce.dlq 12 ([yellow]3 in the last 24 h[/]); "
                           "commerce.warehouse.dlq 0 (none in the last 24 h).")
    assert "`streamcart dlq list`" in line


def test_no_line_while_kafka_does_not_answer_and_a_hint_when_the_topics_are_missing():
    assert dead_letters_line([kafka(None)]) is None
    assert dead_letters_line([]) is None
    assert "no dead-letter topics yet" in (dead_letters_line([kafka({})]) or "")


def test_the_json_carries_the_depths_on_kafkas_row():
    (row,) = status_json([kafka({"commerce.dlq": Depth(2, 1)})])
    assert row["dead_letters"] == {"commerce.dlq": {"records": 2, "recent": 1}}


def test_status_exits_0_only_when_every_process_runs_and_answers_its_health_check(monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from streamcart import cli

    healthy = kafka({})
    worker = ProcessStatus("worker-0", True, 2, (8080,), Probe(True, "ready"), 1, 1.0)
    for rows, code in (([healthy, worker], 0),
                       ([healthy, ProcessStatus("worker-0", True, 2, (8080,), Probe(False, "rebalancing"), 1, 1.0)], 3),
                       ([healthy, ProcessStatus("worker-0", False, None, (8080,), None, None, None)], 3)):
        monkeypatch.setattr(cli, "_stack", lambda rows=rows, **_: SimpleNamespace(status=lambda: rows))
        assert CliRunner().invoke(cli.app, ["status", "--json"]).exit_code == code


def test_logs_say_which_process_has_no_log_yet_instead_of_an_empty_section(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from streamcart import cli

    monkeypatch.setenv("STREAMCART_HOME", str(tmp_path))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "kafka.log").write_text("started\n")
    (logs / "gateway.log").write_text("")
    result = CliRunner().invoke(cli.app, ["logs"])
    assert result.exit_code == 0, result.output
    assert "started" in result.output
    assert "gateway.log: empty" in result.output
    assert "worker-0.log: not written yet" in result.output
    assert "kafka.log:" not in result.output  # the one with lines shows them, nothing more


def test_a_setting_that_does_not_validate_does_not_keep_a_person_from_stopping_the_stack(tmp_path, monkeypatch):
    """Set after `up` (or refused by a newer version), a bad STREAMCART_* value made `down` refuse to run."""
    from typer.testing import CliRunner

    from streamcart import cli

    monkeypatch.setenv("STREAMCART_HOME", str(tmp_path))
    monkeypatch.setenv("STREAMCART_ANALYTICS_LATENESS_S", "600")
    stopped = CliRunner().invoke(cli.app, ["down"])
    assert stopped.exit_code == 0, stopped.output
    assert "STREAMCART_ANALYTICS_LATENESS_S" in stopped.stderr and "taking their defaults" in stopped.stderr
    # A check across settings (worker 3's port would be Connect's), and a value that is markup: still stopped.
    monkeypatch.setenv("STREAMCART_WORKERS", "4")
    monkeypatch.setenv("STREAMCART_LOG_LEVEL", "[/]")
    stopped = CliRunner().invoke(cli.app, ["status", "--json"])
    assert stopped.exit_code in (0, 3), stopped.stderr  # 3: nothing runs here
    assert "every setting but STREAMCART_HOME" in stopped.stderr
    assert json.loads(stopped.stdout) is not None  # the warning is not in the machine-readable output
    monkeypatch.delenv("STREAMCART_WORKERS")
    monkeypatch.delenv("STREAMCART_LOG_LEVEL")
    started = CliRunner().invoke(cli.app, ["up"])  # what would start processes still refuses it
    assert started.exit_code != 0 and "STREAMCART_ANALYTICS_LATENESS_S" in str(started.exception)
