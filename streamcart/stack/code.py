"""Which code the project's own processes run: a short hash of the checkout's Python sources.

A worker or the gateway imports its modules when it starts and keeps them; edited sources change nothing in it
until it restarts. ``up`` records the hash each one started from, and ``status`` compares it with the checkout's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamcart

#: The packages the gateway and the workers import from the checkout (pyproject's ``packages.find``).
PACKAGES = ("agents", "api", "schemas", "streamcart", "tables")


def checkout_root() -> Path:
    """The folder holding the packages this interpreter imports (the clone, with an editable install)."""
    return Path(streamcart.__file__).resolve().parents[1]


def code_version(root: Path | None = None) -> str:
    """A short hash of every ``*.py`` file of :data:`PACKAGES` under ``root`` (default: :func:`checkout_root`):
    each file's path relative to ``root`` and its bytes, in path order. It changes with any edit, addition,
    removal or rename of a source file, and not with a file's time stamp or a bytecode cache."""
    root = root or checkout_root()
    sources = sorted(
        (path.relative_to(root).as_posix(), path) for package in PACKAGES for path in (root / package).rglob("*.py")
    )
    digest = hashlib.blake2b(digest_size=6)
    for relative, path in sources:
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # removed since the walk (an editor's save by rename): as if never there
            continue
        # Lengths first, so no path and content pair can pass for another (``a`` + ``bc`` versus ``ab`` + ``c``).
        for part in (relative.encode(), content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()
