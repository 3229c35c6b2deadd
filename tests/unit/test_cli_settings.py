"""A bad STREAMCART_* setting makes every command print what to fix and exit with 2, not a pydantic traceback."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streamcart import cli
from streamcart.settings import Settings


def run_token(monkeypatch: pytest.MonkeyPatch, **env: str) -> int:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(["token", "--sub", "ops", "--role", "admin"])
    return int(exited.value.code or 0)


def test_each_bad_setting_is_named_by_its_variable_with_the_reason_and_the_exit_code_is_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_token(monkeypatch, STREAMCART_PARTITIONS="abc", STREAMCART_LOG_FORMAT="xml") == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "error: bad settings (STREAMCART_* environment variables):",
        "  STREAMCART_PARTITIONS='abc': Input should be a valid integer, unable to parse string as an integer",
        "  STREAMCART_LOG_FORMAT='xml': Input should be 'json' or 'text'",
    ]
    assert out == ""


def test_workers_whose_ports_reach_another_process_say_which_and_how_to_move_them(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_token(monkeypatch, STREAMCART_WORKERS="4") == 2
    err = capsys.readouterr().err
    assert "worker 3's API port would be 8083, which is connect_port" in err
    assert "STREAMCART_API_PORT=8180" in err and "Traceback" not in err and "Value error" not in err
    assert len(err.splitlines()) == 2


def test_good_settings_run_the_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_token(monkeypatch, STREAMCART_WORKERS="4", STREAMCART_API_PORT="8180") == 0
    assert capsys.readouterr().out.count(".") == 2  # a JWT: header.payload.signature


def test_the_value_of_a_bad_secret_is_never_shown() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(jwt_secret=123456789)  # type: ignore[arg-type]
    described = cli.describe_bad_settings(raised.value)
    assert "STREAMCART_JWT_SECRET: Input should be a valid string" in described
    assert "123456789" not in described


def test_a_variable_that_names_no_setting_is_warned_about_but_not_into_a_stack_process_log(monkeypatch):
    """A worker's and the gateway's stderr is their log, one JSON object per line: the worker logs it itself."""
    from typer.testing import CliRunner

    from streamcart import cli

    monkeypatch.setenv("STREAMCART_WORKRES", "4")
    said = CliRunner().invoke(cli.app, ["token", "--help"])
    assert "STREAMCART_WORKRES is no setting (did you mean STREAMCART_WORKERS?)" in said.output
    for process in ("worker", "gateway"):
        quiet = CliRunner().invoke(cli.app, [process, "--help"])
        assert quiet.exit_code == 0 and "no setting" not in quiet.output, process


def test_check_stores_with_no_store_to_read_is_no_pass(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """A mistyped STREAMCART_HOME checked nothing and exited 0, as if every store were exact."""
    monkeypatch.setenv("STREAMCART_HOME", str(tmp_path / "no-stack-here"))
    monkeypatch.setattr("streamcart.store_check.Changelogs", lambda settings: type("Nothing", (), {
        "close": lambda self: None})())
    with pytest.raises(SystemExit) as exited:
        cli.main(["check-stores"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"no worker stores under {tmp_path / 'no-stack-here' / 'data'}" in err and "Traceback" not in err
