"""The CLI turns streamcart's own errors into one red line and exit code 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamcart.cli", *args],
        capture_output=True,
        text=True,
        env={"STREAMCART_HOME": str(home), "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=60,
    )


def test_an_unknown_process_is_one_error_line_and_exit_code_1(tmp_path: Path) -> None:
    done = run_cli("up", "--only", "brokr", home=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: unknown process brokr; choose from kafka")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_status_of_a_stack_that_never_ran_says_everything_is_down(tmp_path: Path) -> None:
    done = run_cli("status", "--json", home=tmp_path)
    assert done.returncode == 3, done.stderr  # for scripts: not everything runs
    assert '"running": false' in done.stdout
    assert '"running": true' not in done.stdout


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_cli_with(env: dict[str, str], *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamcart.cli", *args], capture_output=True, text=True,
                          env={"STREAMCART_HOME": str(home), "PATH": "/usr/bin:/bin", **env}, check=False, timeout=60)


def test_a_read_of_the_api_while_the_stack_is_down_says_so_in_one_line(tmp_path: Path) -> None:
    for command in (["order", "show", "o-1"], ["product", "show", "KB-001"]):
        done = run_cli_with({"STREAMCART_API_PORT": str(free_port())}, *command, home=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "does not answer" in done.stderr and "is the stack up" in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_setting_out_of_range_or_too_weak_stops_every_command_with_exit_code_2(tmp_path: Path) -> None:
    for env in ({"STREAMCART_API_PORT": "99999"}, {"STREAMCART_JWT_SECRET": ""}, {"STREAMCART_LOG_LEVEL": "verbose"},
                {"STREAMCART_API_PORT": "65535"}):  # the second worker's port would be 65536
        done = run_cli_with(env, "token", "--sub", "x", "--role", "admin", home=tmp_path)
        assert done.returncode == 2, (env, done.stderr)
        assert next(iter(env)) in done.stderr or "worker 1" in done.stderr
        assert "Traceback" not in done.stderr


def test_an_empty_only_list_is_a_usage_error_not_the_whole_stack(tmp_path: Path) -> None:
    done = run_cli("up", "--only", ",", home=tmp_path)
    assert done.returncode == 2 and "name at least one process" in done.stderr


def test_a_stack_started_with_a_short_secret_can_still_be_looked_at_and_stopped(tmp_path: Path) -> None:
    # The secret is checked where tokens are signed (up, a worker's start, token), not by every command.
    for command in (["status"], ["down"], ["logs"]):
        done = run_cli_with({"STREAMCART_JWT_SECRET": "short-secret-from-before"}, *command, home=tmp_path)
        assert done.returncode != 2, (command, done.stderr)
    refused = run_cli_with({"STREAMCART_JWT_SECRET": "short-secret-from-before"}, "up", home=tmp_path)
    assert refused.returncode == 2 and "at least 32 bytes" in refused.stderr


def test_python_loggings_other_level_names_are_accepted(tmp_path: Path) -> None:
    for level in ("WARN", "fatal", "Info"):
        done = run_cli_with({"STREAMCART_LOG_LEVEL": level}, "token", "--sub", "x", "--role", "admin", home=tmp_path)
        assert done.returncode == 0, (level, done.stderr)
