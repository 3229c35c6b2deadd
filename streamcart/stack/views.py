"""Rich renderings of the stack for the CLI: status, topics, and where everything is."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from rich.markup import escape
from rich.table import Table

from streamcart.connectors import ConnectorStatus
from streamcart.dead_letters import DeadLetter
from streamcart.settings import Settings
from streamcart.stack.admin import TopicInfo
from streamcart.stack.stack import ProcessStatus


def status_table(rows: list[ProcessStatus]) -> Table:
    table = Table(title="streamcart stack")
    for column in ("process", "pid", "port", "state", "health", "RSS", "uptime", "partitions", "lag"):
        table.add_column(column, justify="right" if column in ("pid", "RSS", "uptime", "lag") else "left")
    for row in rows:
        health = ""
        if row.health is not None:
            health = "[green]ok[/]" if row.health.ok else f"[red]failing[/] {row.health.detail}"
        table.add_row(
            row.name,
            str(row.pid or ""),
            ",".join(map(str, row.ports)),
            _state(row),
            health,
            f"{row.rss_bytes / 2**20:.0f} MiB" if row.rss_bytes is not None else "",
            _duration(row.uptime_s) if row.uptime_s is not None else "",
            _ranges(row.assigned) if row.assigned is not None else "",
            str(row.lag) if row.lag is not None else "",
        )
    return table


def _state(row: ProcessStatus) -> str:
    if not row.running:
        return "[dim]down[/]"
    return "[yellow]up (older code)[/]" if row.code_current is False else "[green]up[/]"


def older_code_line(rows: list[ProcessStatus]) -> str | None:
    """``status``'s line under the table when processes run code the checkout no longer has: which, and the command
    that restarts them (``None`` when none do, or nobody knows: records of a launcher that did not note the code)."""
    older = [escape(row.name) for row in rows if row.running and row.code_current is False]
    if not older:
        return None
    which, since = (f"{older[0]} runs", "it") if len(older) == 1 else (f"{', '.join(older)} run", "they")
    return (f"[yellow]{which} older code[/]: the sources changed since {since} started; "
            f"`streamcart restart {' '.join(older)}` loads them")


def dead_letters_line(rows: list[ProcessStatus]) -> str | None:
    """``status``'s line under the table: what each dead-letter topic holds, and where to look (``None`` while
    Kafka does not answer)."""
    kafka = next((row for row in rows if row.name == "kafka" and row.dead_letters is not None), None)
    if kafka is None or kafka.dead_letters is None:
        return None
    if not kafka.dead_letters:
        return "dead letters: no dead-letter topics yet (`streamcart up` or `init` creates them)"
    parts = []
    for topic, depth in sorted(kafka.dead_letters.items()):
        recent = f"[yellow]{depth.recent} in the last 24 h[/]" if depth.recent else "none in the last 24 h"
        parts.append(f"{escape(topic)} {depth.records} ({recent})")
    return f"dead letters: {'; '.join(parts)}. `streamcart dlq list` reads them (`--warehouse`: the sinks')"


def status_json(rows: list[ProcessStatus]) -> list[dict[str, Any]]:
    """``status --json``: one object per process, health flattened to ``healthy``/``health_detail``."""
    out = []
    for row in rows:
        item = asdict(row)
        health = item.pop("health")
        item["healthy"] = bool(health and health["ok"])
        item["health_detail"] = health["detail"] if health else None
        out.append(item)
    return out


def connectors_table(rows: list[ConnectorStatus]) -> Table:
    table = Table(title="warehouse sinks (Kafka Connect)")
    for column in ("connector", "state", "tasks", "lag"):
        table.add_column(column, justify="right" if column == "lag" else "left")
    for row in rows:
        colour = "green" if row.healthy else "red"
        tasks = ", ".join(f"{t.id}: {t.state}" + (f" ({t.trace})" if t.trace else "") for t in row.tasks)
        table.add_row(row.name, f"[{colour}]{row.state}[/]", tasks or "[dim]none[/]",
                      "" if row.lag is None else str(row.lag))
    return table


def topics_table(topics: list[TopicInfo]) -> Table:
    table = Table(title="topics")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("cleanup")
    table.add_column("messages", justify="right")
    for topic in topics:
        table.add_row(topic.name, str(topic.partitions), topic.cleanup_policy, str(topic.messages))
    return table


def endpoints_table(settings: Settings, logs_dir: str) -> Table:
    """Where everything of the stack listens, for the end of ``up``."""
    table = Table(title="streamcart is up")
    table.add_column("what")
    table.add_column("where")
    table.add_row("API (worker-0)", settings.worker_url(0))
    if settings.workers > 1:
        table.add_row("other workers", ", ".join(settings.worker_url(i) for i in range(1, settings.workers)))
    table.add_row("Kafka bootstrap", settings.bootstrap_servers)
    table.add_row("schema registry", settings.registry_url)
    table.add_row("Kafka Connect", settings.connect_url)
    table.add_row(
        "PostgreSQL",
        f"postgresql://{settings.postgres_user}:***@{settings.host}:{settings.postgres_port}/{settings.postgres_db}",
    )
    table.add_row("payment gateway", settings.gateway_url)
    table.add_row("logs", logs_dir)
    return table


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _ranges(numbers: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` → ``0-2,5``."""
    parts: list[str] = []
    for n in numbers:
        if parts and parts[-1].split("-")[-1] == str(n - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{n}"
        else:
            parts.append(str(n))
    return ",".join(parts) or "none"


def order_panel(order: dict[str, Any]) -> Table:
    """One order as the API shows it: status, lines with their reserved prices, payment, shipment, history."""
    title = f"order {order['order_id']} · {order['status']}"
    if order.get("cancel_reason"):
        title += f" ({order['cancel_reason']})"
    table = Table(title=title, title_justify="left")
    table.add_column("what")
    table.add_column("detail")
    if order.get("customer_id"):
        table.add_row("customer", str(order["customer_id"]))
    for line in order.get("lines", []):
        price = line.get("unit_price_cents")
        status = line.get("status", "")
        if price is not None:
            shown = f"{price / 100:.2f} {order['currency']}"
        else:
            shown = "not priced" if status == "rejected" else "not priced yet"
        table.add_row(f"line {line['sku']}", f"{line['quantity']} x {shown} ({status})")
    if order.get("total_cents") is not None:
        table.add_row("total", f"{order['total_cents'] / 100:.2f} {order['currency']}")
    if order.get("cancel_detail"):
        table.add_row("why", str(order["cancel_detail"]))
    if order.get("cancel_requested"):
        table.add_row("cancel", "asked; shipping has not answered yet")
    for part in ("payment", "shipment"):
        if order.get(part):
            table.add_row(part, ", ".join(f"{k}={v}" for k, v in order[part].items() if v is not None))
    # Each step's offset from the first: when its message was written to Kafka (the event times of a saga's steps
    # are all the placement's), or the event time for an order recorded without it. In the order they were
    # written: steps that follow from one event (a stock commit, a capture) reach the orders flow in either order.
    history = order.get("history", [])
    clock = "recorded" if history and all(entry.get("recorded") is not None for entry in history) else "time"
    if clock == "recorded":
        history = sorted(history, key=lambda entry: entry["recorded"])
    start = history[0][clock] if clock == "recorded" else order.get("placed_at") or 0
    for entry in history:
        detail = f" · {entry['detail']}" if entry.get("detail") else ""
        table.add_row(f"+{(entry[clock] - start) / 1000:.3f} s", f"{entry['event']}{detail}")
    return table


def dead_letter_counts(
    letters: list[DeadLetter], replayed: Mapping[str, int] | None, *, noun: str = "dead letters"
) -> Table:
    """How many dead letters each flow and error class has, and how many of them were replayed: what to look at
    first."""
    table = Table(title=f"{len(letters)} {noun if len(letters) != 1 else noun.removesuffix('s')}",
                  title_justify="left")
    for column in ("flow", "error", "records", *(("replayed",) if replayed is not None else ()), "last failed"):
        table.add_column(column, justify="right" if column in ("records", "replayed") else "left")
    groups: dict[tuple[str, str], list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault((letter.flow, letter.error_class), []).append(letter)
    for (flow, error), members in sorted(groups.items(), key=lambda group: -len(group[1])):
        replays = () if replayed is None else (str(sum(1 for letter in members if letter.position in replayed)),)
        table.add_row(escape(flow), escape(error), str(len(members)), *replays,
                      _when(max(letter.failed_at_ms or 0 for letter in members)))
    return table


def dead_letters_table(letters: list[DeadLetter], replayed: Mapping[str, int] | None, *, total: int,
                       noun: str = "dead letters") -> Table:
    """The dead letters, oldest failure first (the last of ``total``); ``replayed`` ``None``: letters that are
    never replayed (no column for it)."""
    title = noun if len(letters) == total else f"the last {len(letters)} of {total} {noun}"
    table = Table(title=title, title_justify="left")
    replays = ("replayed",) if replayed is not None else ()
    for column in ("at", "failed", "flow", "from", "message", "error", *replays):
        table.add_column(column, overflow="fold")
    for letter in letters:
        source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
        error = escape(f"{letter.error_class}: {letter.error}"[:300])
        if letter.replay_of:
            error += f" [dim](replay of {escape(letter.replay_of)})[/]"
        table.add_row(letter.position, _when(letter.failed_at_ms), escape(letter.flow), escape(source),
                      "(undecodable)" if letter.undecodable else escape(letter.summary), error,
                      *(() if replayed is None else
                        (_when(replayed[letter.position]) if letter.position in replayed else "",)))
    return table


def _when(ms: int | None) -> str:
    return "?" if not ms else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
