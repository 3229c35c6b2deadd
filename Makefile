# The README's commands. Each target sets up whatever is missing first (fast when nothing is).
.PHONY: setup demo test down lock

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/streamcart demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/pytest

down:
	@if [ -x .venv/bin/streamcart ]; then .venv/bin/streamcart down; else echo "nothing to stop (no .venv)"; fi

# Re-pin every dependency to what the virtualenv has now (after changing pyproject.toml on purpose).
lock:
	.venv/bin/pip freeze --exclude-editable > constraints.txt
