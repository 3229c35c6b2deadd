"""The warehouse's Kafka Connect sinks: render ``connectors/*.json``, register them, report their state.

Each file in ``connectors/`` is one connector as Connect's REST API takes it (``{"name": ..., "config": {...}}``)
with ``{{placeholders}}`` for what depends on the settings (``app_id``, ``topic_prefix``, ``jdbc_url``,
``postgres_user``). ``${env:...}`` references are Connect's own (its worker resolves them from its environment, so
the warehouse password never appears in a connector's config). :func:`apply` registers or updates every connector
with ``PUT /connectors/{name}/config``: running it again changes nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcart.errors import StreamcartError
from streamcart.settings import Settings

REPO_CONNECTORS = Path(__file__).resolve().parents[1] / "connectors"
TIMEOUT_S = 10.0
#: A sink this many rows or fewer behind on a partition may only be held there by rows it dead-lettered
#: (:func:`past_dead_letters`): only then is the warehouse's dead-letter topic read to know.
HELD_AT_MOST = 100
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class ConnectError(StreamcartError):
    """Kafka Connect refused a request, or could not be reached."""


@dataclass(frozen=True)
class Connector:
    """One connector: its name and rendered configuration (``file`` says where it came from)."""

    name: str
    config: dict[str, str]
    file: Path


@dataclass(frozen=True)
class TaskState:
    id: int
    state: str
    worker: str
    trace: str | None = None


@dataclass(frozen=True)
class ConnectorStatus:
    """One connector as Connect reports it, with its consumer group's lag (records not yet written)."""

    name: str
    state: str  # RUNNING, PAUSED, FAILED, UNASSIGNED, or MISSING when Connect does not know it
    tasks: tuple[TaskState, ...]
    lag: int | None

    @property
    def healthy(self) -> bool:
        return self.state == "RUNNING" and bool(self.tasks) and all(t.state == "RUNNING" for t in self.tasks)


def placeholders(settings: Settings) -> dict[str, str]:
    """The values ``{{name}}`` stands for in the connector files."""
    return {
        "app_id": settings.app_id,
        "topic_prefix": settings.topic_prefix,
        "jdbc_url": settings.jdbc_url,
        "postgres_user": settings.postgres_user,
    }


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with every ``{{name}}`` replaced; an unknown name fails rather than reaching Connect."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConnectError(f"unknown placeholder {{{{{name}}}}}; known: {', '.join(sorted(values))}")
        return values[name]

    return _PLACEHOLDER.sub(substitute, text)


def load(settings: Settings) -> list[Connector]:
    """Every connector of ``settings.connectors_dir`` (default: the repository's ``connectors/``), rendered."""
    folder = settings.connectors_dir or REPO_CONNECTORS
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ConnectError(f"no connector configurations (*.json) in {folder}")
    values = placeholders(settings)
    connectors = []
    for path in files:
        try:
            document = json.loads(render(path.read_text(), values))
            connectors.append(Connector(str(document["name"]), {k: str(v) for k, v in document["config"].items()},
                                        path))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectError(f"{path}: not a connector configuration ({exc})") from exc
    return connectors


def apply(settings: Settings) -> dict[str, str]:
    """Register or update every connector; returns ``{name: "created" | "updated" | "unchanged"}``."""
    outcomes: dict[str, str] = {}
    for connector in load(settings):
        path = f"/connectors/{_quote(connector.name)}/config"
        status, current = request(settings, "GET", path)
        if status == 200 and isinstance(current, dict):
            current.pop("name", None)
            if current == connector.config:
                outcomes[connector.name] = "unchanged"
                continue
        status, body = request(settings, "PUT", path, connector.config)
        if status not in (200, 201):
            raise ConnectError(f"Connect refused {connector.name} ({connector.file.name}): HTTP {status} {body}")
        outcomes[connector.name] = "created" if status == 201 else "updated"
    return outcomes


def status(settings: Settings, *, with_lag: bool = True) -> list[ConnectorStatus]:
    """Each connector of the configuration: its state, its tasks' states and (``with_lag``) its lag, the rows of
    its topics it has not written yet (:func:`sink_positions`)."""
    loaded = load(settings)
    positions = sink_positions(settings, loaded) if with_lag else {}
    rows = []
    for connector in loaded:
        code, body = request(settings, "GET", f"/connectors/{_quote(connector.name)}/status")
        lag = {key: max(0, end - position) for key, (position, end) in positions.items() if key[0] == group(connector)}
        if code == 404 or not isinstance(body, dict):
            rows.append(ConnectorStatus(connector.name, "MISSING", (), None))
            continue
        tasks = tuple(
            TaskState(int(t["id"]), str(t["state"]), str(t.get("worker_id", "")),
                      str(t["trace"]).splitlines()[0] if t.get("trace") else None)
            for t in body.get("tasks", [])
        )
        rows.append(ConnectorStatus(connector.name, str(body["connector"]["state"]), tasks,
                                    sum(lag.values()) if lag else None))
    return rows


def group(connector: Connector) -> str:
    """The consumer group a sink connector reads its topics with (Connect's ``connect-`` and its name)."""
    return f"connect-{connector.name}"


def sink_positions(settings: Settings, sinks: Iterable[Connector] | None = None
                   ) -> dict[tuple[str, str, int], tuple[int, int]]:
    """``(group, topic, partition) → (position, end)`` for every partition each sink reads: the sink group's
    committed offset (else the partition's start) and the partition's end, the position moved past the rows the sink
    dead-lettered at the end of a partition (:func:`past_dead_letters`)."""
    from streamcart.commands import TopicMissing, sink_letter_sources  # Kafka clients only when asked
    from streamcart.stack.admin import backlogs

    offsets = backlogs(settings, {group(c): c.config["topics"].split(",") for c in (sinks or load(settings))})
    if any(0 < end - position <= HELD_AT_MOST for position, end in offsets.values()):
        with contextlib.suppress(TopicMissing):  # no dead-letter topic: nothing was dead-lettered
            offsets = past_dead_letters(offsets, sink_letter_sources(settings))
    return offsets


def past_dead_letters(offsets: Mapping[tuple[str, str, int], tuple[int, int]],
                      letters: Collection[tuple[str, str, int, int]]) -> dict[tuple[str, str, int], tuple[int, int]]:
    """``offsets`` (``(group, topic, partition) → (position, end)``), each position moved past the rows its group
    dead-lettered right there (``letters``: ``(group, topic, partition, offset)``).

    Connect commits a sink's offset on a partition only with a row the sink wrote. A row its converter could not
    read goes to the warehouse's dead-letter topic, and the sink goes on; but until a later row of that partition
    is written, the committed offset stays before it, and a quiet stack would count that sink a row behind for
    good (``streamcart audit`` would never find it quiet)."""
    moved = {}
    for (name, topic, partition), (position, end) in offsets.items():
        while position < end and (name, topic, partition, position) in letters:
            position += 1
        moved[(name, topic, partition)] = (position, end)
    return moved


@dataclass(frozen=True)
class SinkState:
    """One sink as Connect reports it: whether any instance (connector or task) failed, and the root cause."""

    name: str
    failed: bool
    reason: str | None = None


def _instances(statuses: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any]]] | None:
    """Sink ``name``'s connector and tasks, labelled, in the body of ``GET /connectors?expand=status``; ``None``
    when Connect does not list it."""
    entry = statuses.get(name)
    status = entry.get("status") if isinstance(entry, dict) else None
    if not isinstance(status, dict):
        return None
    listed = status.get("tasks")
    tasks = [t for t in listed if isinstance(t, dict)] if isinstance(listed, list) else []
    connector = status.get("connector")
    return [*([("connector", connector)] if isinstance(connector, dict) else []),
            *((f"task {t.get('id')}", t) for t in tasks)]


def sink_states(names: Iterable[str], statuses: Mapping[str, Any]) -> list[SinkState]:
    """The sinks ``names`` in the body of ``GET /connectors?expand=status`` (a sink Connect does not list: none)."""
    states = []
    for name in names:
        if (instances := _instances(statuses, name)) is None:
            continue
        failed = [i for _, i in instances if i.get("state") == "FAILED"]
        reason = next((root_cause(str(i["trace"])) for i in failed if i.get("trace")), None)
        states.append(SinkState(name, bool(failed), reason))
    return states


def root_cause(trace: str, limit: int = 300) -> str:
    """The innermost ``Caused by:`` of a Java stack trace (else its first line), cut at ``limit`` characters."""
    lines = trace.splitlines() or [""]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
    cause = causes[-1] if causes else lines[0]
    return cause if len(cause) <= limit else cause[: limit - 1] + "…"


def trouble(names: Iterable[str], statuses: Mapping[str, Any]) -> str | None:
    """What is wrong with the sinks ``names``, in one line, from ``GET /connectors?expand=status``; ``None`` when
    each is registered and its connector and every task are RUNNING."""
    problems = []
    for name in names:
        if (instances := _instances(statuses, name)) is None:
            problems.append(f"{name} not registered")
            continue
        wrong = [f"{label} {i.get('state')}" for label, i in instances if i.get("state") != "RUNNING"]
        if not any(label.startswith("task ") for label, _ in instances):
            wrong.append("no task")
        if wrong:
            reason = next((root_cause(str(i["trace"]), 120) for _, i in instances if i.get("trace")), None)
            problems.append(f"{name}: {', '.join(wrong)}" + (f" ({reason})" if reason else ""))
    return "; ".join(problems) if problems else None


def sinks_trouble(settings: Settings) -> str | None:
    """:func:`trouble` for the configured sinks, asked of Connect in one request (for ``streamcart status``)."""
    code, statuses = request(settings, "GET", "/connectors?expand=status", timeout_s=3.0)
    if code != 200 or not isinstance(statuses, dict):
        raise ConnectError(f"GET /connectors?expand=status: HTTP {code} {str(statuses)[:200]}")
    return trouble([c.name for c in load(settings)], statuses)


def restart(settings: Settings, name: str) -> None:
    """Restart a connector and all its tasks (e.g. after a task failed)."""
    code, body = request(settings, "POST", f"/connectors/{_quote(name)}/restart?includeTasks=true")
    if code not in (200, 202, 204):
        raise ConnectError(f"restarting {name}: HTTP {code} {body}")


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def request(
    settings: Settings, method: str, path: str, body: object = None, *, timeout_s: float = TIMEOUT_S
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        settings.connect_url + path, data=data, method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, http.client.HTTPException) as exc:  # refused, timed out, or an answer cut off
        raise ConnectError(f"Kafka Connect at {settings.connect_url} does not answer: {exc}") from exc
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")
