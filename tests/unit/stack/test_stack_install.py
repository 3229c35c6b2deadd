"""Setup's pure parts: the throwaway pom, Java version parsing, PostgreSQL provisioning SQL."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from streamcart.settings import Settings
from streamcart.stack import install, postgres

NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def test_the_kafka_pom_copies_every_runtime_dependency_into_the_target() -> None:
    kafka = next(s for s in install.MAVEN_SETS if s.name == "kafka")
    pom = ET.fromstring(install.render_pom(kafka, Path("/cache/kafka/libs.partial")))
    artifacts = [d.findtext("m:artifactId", namespaces=NS) for d in pom.iterfind(".//m:dependency", NS)]
    assert {"kafka_2.13", "kafka-tools", "connect-runtime", "log4j-slf4j-impl"} <= set(artifacts)
    assert pom.findtext(".//m:configuration/m:outputDirectory", namespaces=NS) == "/cache/kafka/libs.partial"
    assert pom.findtext(".//m:configuration/m:includeScope", namespaces=NS) == "runtime"


def test_the_registry_pom_unpacks_the_all_archive() -> None:
    apicurio = next(s for s in install.MAVEN_SETS if s.name == "apicurio")
    pom = ET.fromstring(install.render_pom(apicurio, Path("/cache/apicurio.partial")))
    item = pom.find(".//m:artifactItem", NS)
    assert item is not None
    fields = ("artifactId", "version", "type", "classifier")
    assert [item.findtext(f"m:{n}", namespaces=NS) for n in fields] == [
        "apicurio-registry-app",
        "3.3.3",
        "tar.gz",
        "all",
    ]
    assert pom.find(".//m:dependencies/m:dependency", NS) is None


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "25.0.2" 2026-01-20', 25),
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_412"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("something else", None),
    ],
)
def test_java_versions_are_read_from_dash_version(output: str, major: int | None) -> None:
    assert install.java_major_version(output) == major


def test_provisioning_quotes_names_and_passwords() -> None:
    settings = Settings(postgres_user='we"ird', postgres_password="it's", postgres_db="wh")
    sql = postgres.provisioning_sql(settings)
    assert "CREATE ROLE \"we\"\"ird\" LOGIN PASSWORD 'it''s';" in sql
    assert 'CREATE DATABASE "wh" OWNER "we""ird";' in sql


def fake_mvn(tmp_path: Path, body: str) -> Path:
    """An ``mvn`` that runs ``body`` (a shell script) and records its arguments."""
    mvn = tmp_path / "mvn"
    mvn.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "mvn.args"}\n{body}\n')
    mvn.chmod(0o755)
    return mvn


def test_a_maven_fetch_that_stalls_is_given_up_with_what_to_do_and_leaves_nothing_half_done(tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(install, "ensure_maven", lambda console: str(fake_mvn(tmp_path, "exec sleep 30")))
    monkeypatch.setattr(install, "MAVEN_TIMEOUT_S", 1)
    artifacts = install.JavaArtifacts(tmp_path / "java")
    kafka = install.MAVEN_SETS[0]
    with pytest.raises(install.SetupError, match=r"did not fetch .* run the setup again"):
        install.fetch(kafka, artifacts, Console(quiet=True))
    assert "-C" in (tmp_path / "mvn.args").read_text().split()  # checksums checked strictly
    assert not artifacts.marker(kafka.name).exists()
    assert not list((tmp_path / "java").rglob("*.partial"))


def test_a_postgres_user_that_cannot_be_created_is_a_setup_error_not_a_traceback(tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(install.postgres, "find_bindir", lambda: tmp_path)
    monkeypatch.setattr(install.postgres, "postgres_user_exists", lambda: False)
    failing = tmp_path / "bin"
    failing.mkdir()
    (failing / "useradd").write_text("#!/bin/sh\necho 'useradd: cannot lock /etc/passwd' >&2\nexit 1\n")
    (failing / "useradd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{failing}:/usr/bin:/bin")
    with pytest.raises(install.SetupError, match=r"cannot lock /etc/passwd.*create it yourself"):
        install.ensure_postgres(Console(quiet=True))
