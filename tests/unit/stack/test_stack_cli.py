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
    assert done.returncode == 0, done.stderr
    assert '"running": false' in done.stdout
    assert '"running": true' not in done.stdout
