"""``streamcart``: set up, run and inspect the local stack (DESIGN.md §7), and the entry points of its
Python processes (``gateway``, ``worker``).

Every command reads the settings once and turns a :class:`StreamcartError` into one red line and exit code 1, and
bad settings into a line per STREAMCART_* variable to fix and exit code 2. The order and product commands check
what the system would refuse before they send, then wait to see their effect: the flows only log a refusal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import typer
from pydantic import SecretStr, ValidationError
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape

from streamcart.errors import ConfigurationError, StreamcartError
from streamcart.settings import Settings, load_settings
from streamcart.text import is_digits

if TYPE_CHECKING:
    from schemas.codec import Codec
    from schemas.messages import Message
    from streamcart.audit import Report
    from streamcart.commands import CommandSender
    from streamcart.dead_letters import Claim, DeadLetter, ReplayLog, Selection
    from streamcart.domain.inventory import StockState
    from streamcart.stack import Stack

app = typer.Typer(
    help="streamcart: a Kafka-native commerce order pipeline.", no_args_is_help=True, add_completion=False
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        print(f"streamcart {version('streamcart')}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    show_version: Annotated[bool, typer.Option("--version", help="Print the version and exit.",
                                               callback=_print_version, is_eager=True)] = False,
) -> None:
    """streamcart: a Kafka-native commerce order pipeline."""
    if ctx.invoked_subcommand not in _LOGGING_PROCESSES:
        _warn_unknown_variables()


#: Commands that run a process of the stack: their stderr is their log, one JSON object per line (a worker logs the
#: variables that name no setting itself).
_LOGGING_PROCESSES = ("worker", "gateway")


# soft_wrap: long paths and messages stay on one line (for grep and copy-paste); tables still fit the width.
# Piped output (CI logs, `| less`) would otherwise be cut at 80 columns, truncating the status tables.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(soft_wrap=True, width=_WIDTH)
err_console = Console(stderr=True, soft_wrap=True, width=_WIDTH)


class CommandRefused(StreamcartError):
    """The system refuses (or refused) a command: it changed nothing."""


class NotNow(StreamcartError):
    """The API cannot answer this moment (503: partitions moving between workers); reading again will do."""


def _settings() -> Settings:
    """The settings from the environment; a bad value is a :class:`ConfigurationError` that names its variable."""
    try:
        return load_settings()
    except ValidationError as exc:
        raise ConfigurationError(describe_bad_settings(exc)) from exc


def _warn_unknown_variables() -> None:
    """A variable that names no setting (a typo's) is said before any command runs: it changes nothing."""
    from streamcart.settings import unknown_variables

    for line in unknown_variables(os.environ):
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


def describe_bad_settings(exc: ValidationError) -> str:
    """One line per problem, naming the STREAMCART_* variable to change (its value too, unless it is a secret)."""
    lines = ["bad settings (STREAMCART_* environment variables):"]
    for error in exc.errors(include_url=False):
        reason = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across settings: its message names them
            lines.append(f"  {reason}")
            continue
        name = str(error["loc"][0])
        field = Settings.model_fields.get(name)
        shown = "" if field is None or field.annotation is SecretStr else f"={error['input']!r}"
        lines.append(f"  STREAMCART_{name.upper()}{shown}: {reason}")
    return "\n".join(lines)


def _stack(*, lenient: bool = False, progress_to_stderr: bool = False) -> Stack:
    """The local stack under the settings. ``lenient`` (commands that only look at or stop what runs: `down`,
    `status`, `logs`): settings that do not validate are taken at their defaults, with a warning on stderr, rather
    than keeping a person from stopping a stack they started before a variable was set; when even that does not
    validate (a check across settings), every setting but ``STREAMCART_HOME`` (where the pids are recorded).
    ``progress_to_stderr``: the stack's progress lines go to stderr (a command whose stdout is JSON)."""
    # Imported here so `streamcart worker`/`gateway` do not load the supervision code they never use.
    from streamcart.stack import Stack

    try:
        settings = load_settings()
    except ValidationError as exc:
        if not lenient:
            raise ConfigurationError(describe_bad_settings(exc)) from exc
        settings = _lenient_settings(exc)
    out = err_console if progress_to_stderr else console
    return Stack(settings, echo=lambda line: out.print(line, markup=False))


def _lenient_settings(exc: ValidationError) -> Settings:
    def warn(taking: str) -> None:
        err_console.print(f"[yellow]{escape(describe_bad_settings(exc))}\n{taking}[/]", highlight=False)

    names = {str(error["loc"][0]) for error in exc.errors(include_url=False) if error["loc"]}
    defaults = {name: Settings.model_fields[name].default for name in names if name in Settings.model_fields}
    if len(defaults) == len(exc.errors()) and PydanticUndefined not in defaults.values():
        with contextlib.suppress(ValidationError):
            settings = load_settings(**defaults)
            warn("taking their defaults for this command")
            return settings
    home = os.environ.get("STREAMCART_HOME")
    try:
        # Nothing from the environment (a prefix no variable has) but the home, as given.
        given: dict[str, Any] = {"home": home} if home else {}
        settings = Settings(_env_prefix="STREAMCART_LENIENT_NONE_", **given)
    except ValidationError as again:
        raise ConfigurationError(describe_bad_settings(exc)) from again
    warn("taking the defaults of every setting but STREAMCART_HOME for this command")
    return settings


def _identifier(value: str) -> str:
    """A SKU, order id or customer id as the API accepts them (a ``#`` or ``/`` would change the URL it names)."""
    from api.models import PATTERN_MEANING
    from streamcart.ids import IDENTIFIER_PATTERN, is_identifier

    if not is_identifier(value):
        raise typer.BadParameter(f"{value!r} is not an id: it should be {PATTERN_MEANING[IDENTIFIER_PATTERN]}")
    return value


#: A SKU, order id or customer id argument, checked before anything is sent or read.
Id = Annotated[str, typer.Argument(callback=_identifier)]


@app.command()
def setup() -> None:
    """Fetch the Java parts with Maven, check the Java runtime, install PostgreSQL and chromium (the dashboard's
    browser test) if missing."""
    from streamcart.stack.install import run_setup

    run_setup(_settings(), console)


@app.command()
def up(
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated processes to start (e.g. kafka,postgres,registry,connect or workers)."),
    ] = None,
) -> None:
    """Start the stack in order, each process waited on by a real readiness check."""
    names = None if only is None else [name.strip() for name in only.split(",") if name.strip()]
    if names == []:  # an empty list would mean the whole stack
        raise typer.BadParameter("name at least one process", param_hint="--only")
    _up(_stack(), names)


def _up(stack: Stack, only: list[str] | None) -> None:
    from streamcart.stack.stack import keeps_running
    from streamcart.stack.views import endpoints_table

    if (weak := stack.settings.weak_jwt_secret()) is not None:
        raise ConfigurationError(weak)
    try:
        timings = stack.up(only)
    except KeyboardInterrupt:  # typer would exit 130 without a word, and half the stack would run on unnoticed
        err_console.print(f"interrupted: {keeps_running()}")
        raise typer.Exit(130) from None
    if timings:
        console.print(f"[green]up[/] in {timings['total']:.1f} s")
    console.print(endpoints_table(stack.settings, str(stack.layout.logs_dir)))


@app.command()
def down(
    purge: Annotated[bool, typer.Option(help="Also delete the stack's home folder (all data).")] = False,
) -> None:
    """Stop what `up` started, by recorded pid: workers first, Kafka last."""
    stopped = _stack(lenient=True).down(purge=purge)
    console.print(f"stopped {len(stopped)} processes" if stopped else "nothing was running")


@app.command()
def restart(
    names: Annotated[list[str] | None, typer.Argument(metavar="NAME", show_default=False,
                                                   help="Processes to restart (e.g. worker-0 gateway).")] = None,
    workers: Annotated[bool, typer.Option("--workers", help="Every worker.")] = False,
) -> None:
    """Stop and start single processes, one after the other in the stack's start order, each waited on by its
    readiness check: what runs then has the checkout's code as it is now. The others keep running (while a worker
    restarts, the others take over its partitions)."""
    from streamcart.stack.stack import keeps_running

    wanted = [*(names or []), *(["workers"] if workers else [])]
    if not wanted:
        raise typer.BadParameter("name at least one process, or --workers", param_hint="NAME")
    stack = _stack()
    if (weak := stack.settings.weak_jwt_secret()) is not None:
        raise ConfigurationError(weak)
    for name in stack.select(wanted):
        was_running = stack.is_running(name)
        began = time.monotonic()
        try:
            stack.restart(name)
        except KeyboardInterrupt:
            err_console.print(f"interrupted while restarting {name}: {keeps_running()}")
            raise typer.Exit(130) from None
        console.print(f"{name}: {'restarted' if was_running else 'started'} ({time.monotonic() - began:.1f} s)")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Each process: pid, port, up/down, health now, memory, uptime; workers' partitions and lag; then which
    processes run older code than the checkout (edited since they started) and how many records each dead-letter
    topic holds. Exit code 0 when every process runs and passes its health check, 3 otherwise (as `systemctl
    is-active`), for scripts."""
    from streamcart.stack.views import dead_letters_line, older_code_line, status_json, status_table

    rows = _stack(lenient=True).status()
    if as_json:
        print(json.dumps(status_json(rows), indent=2))
    else:
        console.print(status_table(rows))
        for line in (older_code_line(rows), dead_letters_line(rows)):
            if line is not None:
                console.print(line)
    if not all(row.running and row.health is not None and row.health.ok for row in rows):
        raise typer.Exit(3)


@app.command()
def logs(
    process: Annotated[str | None, typer.Argument(help="One process (default: all).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines of the end to show.", min=0)] = 40,
) -> None:
    """Show the end of one process's log, or of all."""
    from streamcart.stack.procs import tail

    stack = _stack(lenient=True)
    names = [stack.spec(process).name] if process else stack.names
    paths = {name: stack.log_path(name) for name in names}
    for name, path in paths.items():
        if len(paths) > 1:
            console.rule(name)
        shown = tail(path, lines)
        for line in shown:
            print(line)
        if not shown and lines:
            what = "empty" if path.exists() else "not written yet: the process has not run in this home"
            console.print(f"[dim]{path}: {what}[/dim]", highlight=False, soft_wrap=True)
    if follow:
        _follow(paths)


def _follow(paths: dict[str, Path]) -> None:
    """Print lines appended to ``paths`` until interrupted (prefixed with the process when several)."""
    offsets = {name: path.stat().st_size if path.exists() else 0 for name, path in paths.items()}
    try:
        while True:
            for name, path in paths.items():
                if not path.exists():
                    continue
                with path.open("rb") as handle:
                    handle.seek(offsets[name] if path.stat().st_size >= offsets[name] else 0)
                    chunk = handle.read()
                    offsets[name] = handle.tell()
                for line in chunk.decode("utf-8", errors="replace").splitlines():
                    print(f"{name} | {line}" if len(paths) > 1 else line, flush=True)
            time.sleep(0.3)
    except KeyboardInterrupt:
        pass


@app.command()
def topics(
    all_topics: Annotated[bool, typer.Option("--all", help="Include Kafka's internal topics.")] = False,
) -> None:
    """Topics on the broker: partitions, cleanup policy, message counts."""
    from streamcart.stack.admin import describe_topics
    from streamcart.stack.views import topics_table

    settings = _stack().settings
    with console.status(f"asking Kafka at {settings.bootstrap_servers} …"):
        found = describe_topics(settings, include_internal=all_topics)
    console.print(topics_table(found))


@app.command()
def init(
    sinks: Annotated[bool, typer.Option("--connectors/--no-connectors", help="Also apply the warehouse sinks "
                                        "(--no-connectors: what a worker needs before it starts, without Connect).")]
    = True,
) -> None:
    """Prepare services that already run (docker-compose's and Helm's one-shot init): create the topics (and give
    existing ones the settings they lack), register the schemas, apply the warehouse sinks. Running it again
    changes nothing."""
    from schemas.registry import register_all
    from streamcart import connectors
    from streamcart.stack.admin import ensure_topics, stack_topics

    settings = _settings()
    console.print(f"topics: {ensure_topics(settings, stack_topics(settings)).summary()}")
    console.print(f"schemas: {len(register_all(settings))} registered")
    if sinks:
        for name, outcome in connectors.apply(settings).items():
            console.print(f"connector {name}: {outcome}")


connectors_app = typer.Typer(help="The warehouse's Kafka Connect sinks (connectors/*.json).")
app.add_typer(connectors_app, name="connectors")


@connectors_app.command("apply")
def connectors_apply() -> None:
    """Register or update every sink through Connect's REST API (running it again changes nothing)."""
    from streamcart import connectors

    for name, outcome in connectors.apply(_settings()).items():
        console.print(f"{name}: {outcome}")


@connectors_app.command("status")
def connectors_status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each sink and its tasks with their state, and the records it has yet to write (lag)."""
    from dataclasses import asdict

    from streamcart import connectors
    from streamcart.stack.views import connectors_table

    rows = connectors.status(_settings())
    if as_json:
        print(json.dumps([asdict(row) | {"healthy": row.healthy} for row in rows], indent=2))
    else:
        console.print(connectors_table(rows))
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


@app.command()
def audit(
    since: Annotated[str | None, typer.Option(help="Only the orders placed in this last while (90s, 15m, 2h, 7d) and "
                                                   "the SKUs they ordered.")] = None,
    sku: Annotated[list[str] | None, typer.Option(help="Only these SKUs and the orders with a line of one "
                                                       "(repeat).",
                                                  callback=lambda v: [_identifier(s) for s in v or []])] = None,
    wait: Annotated[float, typer.Option(callback=_finite,
                                        min=0, help="How long to wait for a quiet moment, in seconds.")] = 120.0,
    sample: Annotated[int | None, typer.Option(min=0, help="Compare this many of the latest orders with the API "
                                                           "(I7; default: every order --since or --sku selects, "
                                                           "else the latest 200 and 200 others at random).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many findings per invariant.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (every finding).")] = False,
) -> None:
    """Check DESIGN.md's invariants on everything the running stack holds: every order settled once, stock
    conserved and never oversold, money netting out at the gateway, revenue equal to the confirmed totals, the
    warehouse equal to the API, dead letters naming their source and error. Waits for a quiet moment first (stop
    the traffic). Exit code 0 when every invariant holds, 1 when one does not, 2 when the stack could not be
    audited (a part of it down, or never quiet)."""
    from streamcart import audit as auditing
    from streamcart.dead_letters import parse_age

    try:
        since_ms = None if since is None else int(time.time() * 1000) - parse_age(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    settings = _settings()
    waiting = auditing.every(5.0, lambda why: err_console.print(f"[dim]waiting for a quiet moment: {escape(why)}[/]"))

    try:
        report = auditing.audit(settings, since_ms=since_ms, skus=sku or None, sample=sample, wait_s=wait,
                                on_wait=waiting)
    except auditing.AuditUnavailable as exc:  # not a finding: exit code 2, as for a script that cannot tell
        err_console.print(f"[red]cannot audit:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps({"ok": report.ok, "checked": report.checked,
                          "findings": [vars(f) for f in report.findings]}, indent=2))
    else:
        _print_audit(report, limit)
    if not report.ok:
        raise typer.Exit(1)


def _print_audit(report: Report, limit: int) -> None:
    """Each invariant with ok or its findings (at most ``limit`` of them), and what it was checked over."""
    from streamcart.audit import INVARIANTS, NOT_CHECKED

    for name, findings in report.by_invariant().items():
        checked = report.checked[name]
        mark = "[green]ok[/]" if not findings else f"[red]{len(findings)} findings[/]"
        if not findings and checked.startswith(NOT_CHECKED):
            mark, checked = "[yellow]not checked[/]", checked.removeprefix(NOT_CHECKED)
        console.print(f"{name} {INVARIANTS[name]}: {mark} [dim]({escape(checked)})[/]")
        for finding in findings[:limit]:
            console.print(f"   {escape(finding.subject)}: {escape(finding.problem)}")
        if len(findings) > limit:
            console.print(f"   [dim]… and {len(findings) - limit} more (--limit, --json)[/]")


@app.command("check-stores")
def check_stores(
    stop_workers: Annotated[bool, typer.Option("--stop-workers", help="Stop the running workers for the check "
                                                                       "and start them again after it.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (every store).")] = False,
) -> None:
    """Read every worker's local table stores against their changelogs, Kafka running and the workers stopped:
    each partition store must hold exactly what its changelog holds up to the offset it notes, or a worker serving
    it answers and decides from older states. Exit code 0 when every store is exact, 1 when one is not, 2 when a
    worker runs (without --stop-workers) or there is no store to check."""
    from streamcart.store_check import check_stores as check
    from streamcart.store_check import left_running

    stack = _stack(progress_to_stderr=as_json)
    running = [name for name in stack.names if name.startswith("worker-") and stack.is_running(name)]
    if running and not stop_workers:
        err_console.print(f"{', '.join(running)} running: their stores are locked and changing. `streamcart "
                          "check-stores --stop-workers` stops them for the check and starts them again after it")
        raise typer.Exit(2)
    for name in running:
        stack.stop(name)
    for worker in left_running(stack.settings):
        err_console.print(f"[yellow]worker-{worker} did not stop cleanly (killed, or crashed): its stores hold what "
                          "it had written, and may be behind what it had read[/]")
    err_console.print("[dim]reading every worker's stores and their changelogs (about a second a partition)…[/]")
    try:
        reports = check(stack.settings)
    finally:
        if running:
            stack.up(running)
    if not reports:  # a check of nothing is no pass (a mistyped STREAMCART_HOME looked like one)
        err_console.print(f"no worker stores under {stack.settings.home.resolve() / 'data'}: is STREAMCART_HOME the "
                          "stack's, and have its workers run?")
        raise typer.Exit(2)
    bad = [r for r in reports if not r.exact]
    if as_json:
        print(json.dumps([{**dataclasses.asdict(r), "exact": r.exact} for r in reports], indent=2))
    else:
        for r in bad:
            console.print(f"worker-{r.worker} {r.table}[{r.partition}]: notes offset {r.offset} (changelog end "
                          f"{r.end}); {r.keys} keys, {r.missing} missing, {r.extra} extra, {r.differ} stale")
        console.print(f"{len(reports) - len(bad)} of {len(reports)} stores hold exactly their changelogs up to the "
                      "offset they note")
    raise typer.Exit(1 if bad else 0)


@app.command()
def drill(
    kills: Annotated[int, typer.Option(min=1, help="How many processes to kill, one after the other.")] = 4,
    every: Annotated[float, typer.Option(callback=_finite,
                                         min=1, help="Seconds between a process back and the next kill.")] = 15.0,
    down: Annotated[float, typer.Option(callback=_finite, min=0, help="Seconds a killed process stays down.")] = 3.0,
    rate: Annotated[float, typer.Option(callback=_finite,
                                        min=0.01, help="Orders per second the shoppers place.")] = 2.0,
    target: Annotated[list[str] | None, typer.Option(help="Kill only these (repeat; `workers` for every worker); "
                                                          "default: every process of the stack.")] = None,
    sku: Annotated[list[str] | None, typer.Option(help="Shop only these active products (repeat).",
                                                  callback=lambda v: [_identifier(s) for s in v or []])] = None,
    seed: Annotated[int | None, typer.Option(help="Make the same choices (victims, shoppers) as another run.")] = None,
) -> None:
    """Customers shop while the stack's processes are killed with SIGKILL and started again, one at a time; then
    `streamcart audit` checks every order placed meanwhile. Exit code 0 when every invariant held and every order
    the shoppers read only ever went forward, 1 when not, 2 when the audit could not run."""
    import asyncio

    from streamcart import audit as auditing
    from streamcart.drill import drill as run_drill
    from streamcart.stack.errors import StackError

    stack = _stack()
    if (weak := stack.settings.weak_jwt_secret()) is not None:
        raise ConfigurationError(weak)
    try:
        done = asyncio.run(run_drill(stack, kills=kills, every_s=every, down_s=down, rate=rate, targets=target or (),
                                     skus=sku or (), seed=seed, echo=lambda line: console.print(line, highlight=False)))
    except auditing.AuditUnavailable as exc:
        err_console.print(f"[red]cannot audit:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except asyncio.CancelledError:  # SIGTERM (drill.py): what was down has been started again
        err_console.print("drill stopped (SIGTERM)")
        raise typer.Exit(143) from None
    except StackError as exc:  # a process that did not come back: no verdict on the invariants
        err_console.print(f"[red]the drill could not go on:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    assert done.report is not None
    _print_audit(done.report, limit=20)
    _print_went_back(done.tally.went_back)
    if not done.report.ok or done.tally.went_back:
        raise typer.Exit(1)


def _print_went_back(went_back: dict[str, str], limit: int = 20) -> None:
    """The orders whose status went back on what the API had answered their shoppers (none: said so)."""
    if not went_back:
        console.print("every order the shoppers read only ever went forward", highlight=False)
        return
    console.print(f"[red]{len(went_back)} order(s) went back on what the API had answered:[/]", highlight=False)
    for order_id, change in list(went_back.items())[:limit]:
        console.print(f"  {order_id}: {change}", highlight=False)


#: How long the admin token `demo` prints stays valid.
DEMO_TOKEN_TTL_S = 12 * 3600


def seed_demo(settings: Settings) -> str:
    """Fill the running stack with the demo catalog; return an admin token to call the API with."""
    from api.auth import issue_token
    from streamcart.demo import seed

    count = seed(settings)
    console.print(f"seeded {count} demo products (`streamcart product show KB-001`)")
    return issue_token(settings.jwt_secret.get_secret_value(), "ops", ["admin"], ttl_s=DEMO_TOKEN_TTL_S)


@app.command()
def demo() -> None:
    """Start everything, seed the demo data, and say where to look."""
    stack = _stack()
    _up(stack, None)
    admin = seed_demo(stack.settings)
    url = stack.settings.worker_url(0)
    console.print(f"admin token (12 h): [bold]{admin}[/]", overflow="ignore", crop=False)
    console.print(f"the live dashboard: [bold]{url}/dashboard#token={admin}[/]", overflow="ignore", crop=False)
    console.print(
        f"The API is at [bold]{url}[/] (`{url}/docs` lists it); try `streamcart order place --line KB-001:2`, "
        "or `streamcart traffic` to watch customers shop on the dashboard. "
        "`streamcart status` shows every process, `streamcart logs -f` follows the logs, `make down` stops it all."
    )


@app.command()
def traffic(
    rate: Annotated[float, typer.Option(callback=_finite, help="Orders per second.", min=0.01)] = 2.0,
    orders: Annotated[
        int | None, typer.Option(help="Stop after this many orders (default: until Ctrl-C).", min=1)
    ] = None,
    seconds: Annotated[float | None, typer.Option(callback=_finite,
                                                  help="Stop placing after this many seconds.", min=0.01)] = None,
    seed: Annotated[int | None, typer.Option(help="Make the same choices as another run with this seed.")] = None,
    sku: Annotated[list[str] | None, typer.Option(help="Shop only these active products (repeat); default: every "
                                                       "active product but the benchmarks' (BENCH-…).",
                                                  callback=lambda v: [_identifier(s) for s in v or []])] = None,
) -> None:
    """Customers shopping through the HTTP API, to watch the saga live on the dashboard: confirmations, shipments,
    declined and flaky cards, cancels (refunds and restocks), restocks of what runs low."""
    import asyncio

    from streamcart.traffic import Tally, run

    tally = Tally()
    try:
        asyncio.run(run(_settings(), rate=rate, orders=orders, seconds=seconds, seed=seed, tally=tally,
                        skus=sku or (), echo=lambda line: console.print(line, highlight=False)))
    except KeyboardInterrupt:
        console.print("stopped: " + tally.line(), highlight=False)
    else:
        console.print("done: " + tally.line(), highlight=False)
    if tally.went_back:
        _print_went_back(tally.went_back)
    if tally.errors or tally.went_back:
        raise typer.Exit(1)


@app.command()
def token(
    sub: Annotated[
        str, typer.Option(help="The subject: a customer id (or a name for an admin).", callback=_identifier)
    ],
    role: Annotated[list[str], typer.Option(help="customer or admin; repeat for several.")],
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.", min=1)] = 3600,
) -> None:
    """Print a signed API token (HS256 with STREAMCART_JWT_SECRET) for local use."""
    from api.auth import issue_token

    unknown = set(role) - {"customer", "admin"}
    if unknown:
        raise typer.BadParameter(f"unknown role(s) {sorted(unknown)}: use customer or admin")
    settings = _settings()
    if (weak := settings.weak_jwt_secret()) is not None:
        raise ConfigurationError(weak)
    print(issue_token(settings.jwt_secret.get_secret_value(), sub, role, ttl_s=ttl))


order_app = typer.Typer(help="Place, cancel and inspect orders (commands go to Kafka; reads come from the tables).")
product_app = typer.Typer(help="The catalog and its stock.")
app.add_typer(order_app, name="order")
app.add_typer(product_app, name="product")


#: How often a command that waits for its effect reads again.
POLL_INTERVAL_S = 0.1

T = TypeVar("T")


class Remote(Protocol):
    """The running system as the order and product commands reach it (a hand-written fake in the unit tests)."""

    def get(self, path: str) -> tuple[int, object]:
        """GET ``path`` from the API as an admin: the HTTP status and the decoded JSON body."""

    def send(self, message: Message) -> None:
        """Produce ``message`` to its command topic; returns once the broker has acknowledged it."""

    def connect(self) -> None:
        """Be ready to send at once: a command's time is when it is made, and connecting takes most of a second."""


def _as_the_api_would(model: Any, body: dict[str, Any], options: dict[str, str] | None = None) -> Any:
    """``body`` checked by the API's own model of it: what the API would refuse is refused before anything is sent,
    as a usage error naming the option (``options``: a body field's option, when it is not ``--field``)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        from api.models import plain_message

        error = exc.errors()[0]
        field = str(error["loc"][0])
        option = (options or {}).get(field, "--" + field.replace("_", "-"))
        raise typer.BadParameter(plain_message(error), param_hint=option) from None


class ApiUnreachable(StreamcartError, OSError):
    """The workers' API did not answer (an OSError too, for callers that treat any connection failure alike)."""


class _LiveRemote:
    """Reads through a worker's API (which forwards to the key's owner; the next worker when one does not answer)
    and sends commands straight to Kafka."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sender: CommandSender | None = None
        self._answering: str | None = None

    def get(self, path: str) -> tuple[int, object]:
        from api.auth import issue_token
        from streamcart.stack.probes import http_get_json

        admin = issue_token(self.settings.jwt_secret.get_secret_value(), "cli", ["admin"], ttl_s=60)
        unanswered: list[str] = []
        for base in self._worker_urls():
            try:
                status, body = http_get_json(f"{base}{path}", 5.0, headers={"Authorization": f"Bearer {admin}"})
            except OSError as exc:  # a worker down (killed, restarting): any other answers for it
                unanswered.append(f"{base} ({getattr(exc, 'reason', exc)})")
                continue
            if status == 401:  # the only token this command sends is its own admin token
                raise StreamcartError(f"the API at {base} refused this command's token: "
                                      "STREAMCART_JWT_SECRET here must be the stack's")
            self._answering = base
            return status, body
        raise ApiUnreachable(f"the API does not answer on any worker ({'; '.join(unanswered)}): is the stack up "
                             "(`streamcart status`)?")

    def _worker_urls(self) -> list[str]:
        """Each worker's API, the one that answered last first."""
        urls = [self.settings.worker_url(i) for i in range(self.settings.workers)]
        if self._answering in urls:
            urls.remove(self._answering)
            urls.insert(0, self._answering)
        return urls

    def send(self, message: Message) -> None:
        self._connected().send(message)

    def connect(self) -> None:
        self._connected()

    def _connected(self) -> CommandSender:
        from confluent_kafka import KafkaException

        from streamcart.commands import CommandSender

        if self._sender is None:  # it connects to the schema registry: only once there is something to send
            sender = CommandSender(self.settings)
            try:
                sender.producer.list_topics(timeout=5)  # and to the broker
            except KafkaException as exc:
                raise StreamcartError(f"Kafka at {self.settings.bootstrap_servers} does not answer ({exc}): is the "
                                      "stack up (`streamcart status`)?") from exc
            self._sender = sender
        return self._sender


def _remote() -> Remote:
    return _LiveRemote(_settings())


@dataclass(frozen=True)
class Wait:
    """How long a command waits to see what it asked for, and the clock it waits by (a fake one in tests)."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    pause: Callable[[float], None] = time.sleep

    def until(self, read: Callable[[], T], done: Callable[[T], bool]) -> T:
        """Read until ``done`` holds or the time is up, and return the last read either way."""
        deadline = self.clock() + self.seconds
        while True:
            try:
                seen = read()
            except NotNow:
                if self.clock() >= deadline:
                    raise
            else:
                if done(seen) or self.clock() >= deadline:
                    return seen
            self.pause(POLL_INTERVAL_S)


@order_app.command("place")
def order_place(
    line: Annotated[list[str], typer.Option(help="SKU:QUANTITY; repeat for several lines.")],
    customer: Annotated[str, typer.Option(help="The customer id.", callback=_identifier)] = "c-cli",
    payment_token: Annotated[
        str, typer.Option("--token", help="Card token (see the payment gateway).")
    ] = "tok_approve",
    currency: str = "EUR",
    wait: Annotated[float, typer.Option(callback=_finite, min=0,
                                        help="Seconds to wait for the outcome (0: don't).")] = 10.0,
    email: Annotated[str | None, typer.Option(help="Send the order's email notifications here.")] = None,
    phone: Annotated[str | None, typer.Option(help="Send its SMS notifications here (E.164).")] = None,
    webhook: Annotated[str | None, typer.Option(help="POST its notifications to this http(s) URL.")] = None,
) -> None:
    """Place an order and (by default) wait for its outcome."""
    from api.models import PlaceOrderIn
    from schemas.messages import OrderLine, PlaceOrder
    from streamcart.commands import envelope
    from streamcart.ids import new_id

    lines = []
    for item in line:
        sku, _, qty = item.rpartition(":")
        if not sku or not is_digits(qty) or int(qty) < 1:
            raise typer.BadParameter(f"{item!r}: expected SKU:QUANTITY with a positive quantity", param_hint="--line")
        _identifier(sku)
        lines.append({"sku": sku, "quantity": int(qty)})
    body = {"lines": lines, "payment": {"token": payment_token}, "currency": currency, "webhook_url": webhook,
            "email": email, "phone": phone}
    checked = _as_the_api_would(PlaceOrderIn, body, {"payment": "--token", "webhook_url": "--webhook",
                                                     "lines": "--line"})
    remote = _remote()
    remote.connect()  # before the order is stamped: its saga is timed (and its deadline counted) from then
    order_id = f"o-{new_id()}"
    remote.send(PlaceOrder(**envelope(order_id), order_id=order_id, customer_id=customer,
                           lines=tuple(OrderLine(sku=x.sku, quantity=x.quantity) for x in checked.lines),
                           currency=checked.currency, payment_token=checked.payment.token, email=checked.email,
                           phone=checked.phone, webhook_url=None if webhook is None else str(checked.webhook_url)))
    console.print(f"placed [bold]{order_id}[/]")
    if wait > 0:
        try:
            _show_order(remote, order_id, Wait(wait), placed=True)
        except ApiUnreachable as exc:  # placed all the same: a second `order place` would be a second order
            raise StreamcartError(f"{order_id} is placed, but its outcome cannot be read: {exc} (`streamcart order "
                                  f"show {order_id}` once the API answers; do not place it again)") from exc


@order_app.command("show")
def order_show(
    order_id: Id, wait: Annotated[float, typer.Option(callback=_finite, min=0,
                                                      help="Wait up to S seconds for an outcome.")] = 0.0
) -> None:
    """Show an order: status, lines with prices, payment, shipment, history."""
    _show_order(_remote(), order_id, Wait(wait))


@order_app.command("cancel")
def order_cancel(
    order_id: Id,
    by: Annotated[
        str, typer.Option(help="Who asks (a customer id or an admin's name).", callback=_identifier)
    ] = "c-cli",
    wait: Annotated[float, typer.Option(callback=_finite, min=0,
                                        help="Seconds to wait until it is CANCELLED (0: don't).")] = 10.0,
) -> None:
    """Cancel an order and (by default) wait until it is CANCELLED; refused, with the reason, after dispatch."""
    cancel_order(_remote(), order_id, by, Wait(wait))


@order_app.command("reindex")
def order_reindex() -> None:
    """File every stored order in the customer index and the retention index: once, after upgrading a stack whose
    orders were stored before those indexes existed (until then they are missing from customers' order lists and
    never forgotten). Running it again changes nothing."""
    from streamcart.commands import reindex_orders

    sent = reindex_orders(_settings(), on_progress=lambda line: console.print(line))
    console.print(f"{sent} orders sent to be indexed (the workers file them as they catch up)")


def _show_order(remote: Remote, order_id: str, wait: Wait, *, placed: bool = False) -> None:
    """Print the order once it has an outcome or ``wait`` is up (it may not be readable yet just after placing:
    with ``placed``, a 404 then means the workers have not stored it yet, not that there is no such order)."""
    from streamcart.stack.views import order_panel

    def settled(response: tuple[int, object]) -> bool:
        status, body = response
        return status == 200 and isinstance(body, dict) and body.get("status") != "PENDING"

    response = wait.until(lambda: remote.get(f"/v1/orders/{order_id}"), settled)
    later = f"`streamcart order show {order_id} --wait 30` looks again; `streamcart status` shows the workers' lag"
    if placed and response[0] == 404:
        raise StreamcartError(f"order {order_id} was sent, but the workers have not stored it after "
                              f"{wait.seconds:g} s (they may be behind): {later}")
    body = _order_body(order_id, response)
    console.print(order_panel(body))
    if wait.seconds > 0 and body.get("status") == "PENDING":
        console.print(f"still PENDING after {wait.seconds:g} s: {later}")


def _order_body(order_id: str, response: tuple[int, object]) -> dict[str, Any]:
    if response[0] == 404:
        raise StreamcartError(f"order {order_id} not found")
    return _json_body(f"order {order_id}", response)


def _json_body(what: str, response: tuple[int, object]) -> dict[str, Any]:
    """The JSON object of a 200; a 503 is :class:`NotNow` (reading again will do), anything else an error."""
    status, body = response
    if status == 503:
        raise NotNow(f"{what}: the API cannot answer now (HTTP 503: {body}); try again shortly")
    if status != 200 or not isinstance(body, dict):
        raise StreamcartError(f"{what}: HTTP {status} {body}")
    return body


def cancel_order(remote: Remote, order_id: str, requested_by: str, wait: Wait) -> None:
    """Send a CancelOrder and wait until the order is CANCELLED.

    The orders flow refuses a cancel after dispatch (noting it in the order's history), so a command sent regardless
    would look done and change nothing: a cancel the order's current state rules out is refused here, with the
    domain's reason, and one that loses a race (the goods dispatched meanwhile) is reported as not done.
    """
    from schemas.messages import CancelOrder
    from streamcart.commands import envelope
    from streamcart.domain.orders import OrderStatus, cancel_refusal

    def read() -> dict[str, Any]:
        return _order_body(order_id, remote.get(f"/v1/orders/{order_id}"))

    order = read()
    if order["status"] == OrderStatus.CANCELLED:
        console.print(f"order {order_id} was cancelled already ({order.get('cancel_reason')})")
        return
    if (refusal := cancel_refusal(order["status"])) is not None:
        raise CommandRefused(f"order {order_id} cannot be cancelled: {refusal} (it is {order['status']})")
    remote.send(CancelOrder(**envelope(order_id), order_id=order_id, requested_by=requested_by))
    if wait.seconds <= 0:
        console.print(f"cancel of {order_id} sent (not waited for: `streamcart order show {order_id}`)")
        return

    def ended(seen: dict[str, Any]) -> bool:
        return seen["status"] == OrderStatus.CANCELLED or cancel_refusal(seen["status"]) is not None

    order = wait.until(read, ended)
    if (refusal := cancel_refusal(order["status"])) is not None:
        raise CommandRefused(f"order {order_id} was not cancelled: {refusal} (it was {order['status']} "
                             f"before the cancel took effect)")
    if order["status"] != OrderStatus.CANCELLED:
        raise StreamcartError(f"order {order_id} is not cancelled after {wait.seconds:g} s (it is "
                              f"{order['status']}); `streamcart order show {order_id}` shows how it ends")
    from streamcart.stack.views import order_panel

    console.print(f"[green]cancelled[/] {order_id}")
    console.print(order_panel(order))


@product_app.command("upsert")
def product_upsert(
    sku: Id,
    name: Annotated[str, typer.Option()],
    price: Annotated[int, typer.Option(help="Unit price in cents.")],
    currency: str = "EUR",
    active: bool = True,
) -> None:
    """Create or change a catalog entry."""
    from api.models import ProductIn
    from schemas.messages import UpsertProduct
    from streamcart.commands import envelope

    product = _as_the_api_would(ProductIn, {"name": name, "unit_price_cents": price, "currency": currency,
                                            "active": active}, {"unit_price_cents": "--price"})
    _remote().send(UpsertProduct(**envelope(sku), sku=sku, **product.model_dump()))
    console.print(f"upserted {sku}")


# ignore_unknown_options: a negative delta (`stock KB-001 -3`) is the argument, not an unknown option.
@product_app.command("stock", context_settings={"ignore_unknown_options": True})
def product_stock(
    sku: Id,
    delta: Annotated[int, typer.Argument(help="Units to add (negative: remove).")],
    reason: str = "cli",
    wait: Annotated[float, typer.Option(callback=_finite, min=0,
                                        help="Seconds to wait until the stock shows it (0: don't).")] = 10.0,
) -> None:
    """Adjust a SKU's stock on hand and (by default) wait until the stock shows it; refused, with the reason,
    when it would take away stock that orders hold."""
    from api.models import AdjustmentIn

    _as_the_api_would(AdjustmentIn, {"delta": delta, "reason": reason}, {"delta": "DELTA"})
    adjust_stock(_remote(), sku, delta, reason, Wait(wait))


def adjust_stock(remote: Remote, sku: str, delta: int, reason: str, wait: Wait) -> None:
    """Send an AdjustStock and wait until the SKU's stock counts it, or the inventory flow refused it.

    The domain's own decision is taken here first, on the stock as it is now: a refusal is reported with its reason
    and nothing is sent. The command's event id is the one an API client's ``Idempotency-Key`` would give it, so the
    wait asks for this very adjustment (``GET /v1/stock/{sku}/adjustments/{key}``: 200 counted, 409 refused by the
    flow, with the reason, when orders reserved the stock meanwhile): another adjustment of the SKU at the same time
    cannot fool it.
    """
    from schemas.messages import AdjustStock
    from streamcart.commands import envelope
    from streamcart.domain import inventory
    from streamcart.ids import new_id

    key = f"cli-{new_id()}"
    event_id = inventory.adjustment_id(sku, key)
    command = AdjustStock(**envelope(sku, event_id=event_id), sku=sku, delta=delta, reason=reason)

    def refusal(stock: StockState) -> str | None:
        return inventory.decide(stock, None, command, product=None).rejected

    before = _read_stock(remote, sku)
    if (why := refusal(before)) is not None:
        raise CommandRefused(f"stock of {sku} not adjusted: {why}")
    remote.send(command)
    if wait.seconds <= 0:
        console.print(f"adjustment of {sku} by {delta} sent (not waited for: `streamcart product show {sku}`)")
        return
    def counted_yet() -> dict[str, Any] | None:
        """The adjustment once the stock counts it; ``None`` (404) before. The flow's refusal of it (409) is
        :class:`CommandRefused` with the reason, a 503 :class:`NotNow`, anything else an error at once."""
        response = remote.get(f"/v1/stock/{sku}/adjustments/{key}")
        if response[0] == 409:
            raise CommandRefused(f"stock of {sku} was not adjusted: refused: {_refusal_reason(response[1])}")
        return None if response[0] == 404 else _json_body(f"adjustment of {sku}", response)

    counted = wait.until(counted_yet, lambda seen: seen is not None)
    if counted is None:
        if (why := refusal(_read_stock(remote, sku))) is not None:  # orders reserved the stock in between
            raise CommandRefused(f"stock of {sku} was not adjusted: {why}")
        raise StreamcartError(f"the stock of {sku} does not show the adjustment by {delta} after {wait.seconds:g} s; "
                              f"`streamcart product show {sku}` shows whether it lands")
    stock = counted["stock"]
    console.print(f"[green]adjusted[/] {sku} by {delta}: on hand {stock['on_hand']}, reserved {stock['reserved']}, "
                  f"available {stock['available']}")


def _refusal_reason(body: object) -> str:
    """The reason a 409 gives (``details.reason``; else its message, else the body as it came)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return str(body)
    details = error.get("details")
    reason = details.get("reason") if isinstance(details, dict) else None
    return str(reason or error.get("message") or body)


def _read_stock(remote: Remote, sku: str) -> StockState:
    """The SKU's counters as the API shows them (a SKU never stocked has none: zero, as the domain counts it)."""
    from streamcart.domain.inventory import StockState

    response = remote.get(f"/v1/stock/{sku}")
    if response[0] == 404:
        return StockState(sku=sku)
    body = _json_body(f"stock of {sku}", response)
    return StockState(sku=sku, **{name: body[name] for name in ("on_hand", "reserved", "adjusted", "sold",
                                                                  "restocked")})


@product_app.command("show")
def product_show(sku: Id) -> None:
    """A product and its stock, as one JSON document (``null`` for what there is none of yet)."""
    remote = _remote()
    shown: dict[str, object] = {}
    for part, path in (("product", f"/v1/products/{sku}"), ("stock", f"/v1/stock/{sku}")):
        status, body = remote.get(path)
        if status not in (200, 404):
            raise StreamcartError(f"{path}: HTTP {status} {json.dumps(body)}")
        shown[part] = body if status == 200 else None
    if shown["product"] is None and shown["stock"] is None:
        raise StreamcartError(f"no product and no stock {sku}")
    console.print_json(data=shown)


dlq_app = typer.Typer(help="The dead-letter topic: what failed, where and why; replay what can succeed now "
                                 "(--warehouse: the rows the warehouse sinks could not take).")
app.add_typer(dlq_app, name="dlq")

Flows = Annotated[list[str] | None, typer.Option(
    "--flow", help="Only what failed in this flow: orders, inventory, payments, shipping, analytics, notifications "
                   "(or one channel: notifications.webhook, .email, .sms; with `dlq list --warehouse`, "
                   "warehouse:<connector>). "
                   "Repeatable.")]
Errors = Annotated[list[str] | None, typer.Option(
    "--error", help="Only this error class (as `dlq list` shows it, e.g. FlowError, InvalidMessage). Repeatable.")]
SourceTopics = Annotated[list[str] | None, typer.Option(
    "--topic", help="Only records from this topic (e.g. commands.orders). Repeatable.")]
OfOrder = Annotated[str | None, typer.Option("--order", help="Only the messages of this order.")]
Since = Annotated[str | None, typer.Option(help="Only what failed in this last while: 90s, 15m, 2h, 7d.")]
Warehouse = Annotated[bool, typer.Option(
    "--warehouse", help="The warehouse's dead-letter topic instead: rows a Kafka Connect sink could not take.")]


def _selection(flows: list[str] | None, errors: list[str] | None, topics: list[str] | None, order: str | None,
               since: str | None, positions: list[str] | None = None) -> Selection:
    from streamcart.dead_letters import FLOWS, Selection, parse_age
    from streamcart.domain.notifications import Channel

    known = sorted(FLOWS) + [f"notifications.{c}" for c in (Channel.WEBHOOK, Channel.EMAIL, Channel.SMS)]
    for flow in flows or ():
        if flow not in known and not flow.startswith("warehouse:"):
            raise typer.BadParameter(f"{flow!r}: no flow is named so; one of {', '.join(known)} (or, with "
                                     "`dlq list --warehouse`, warehouse:<connector>)", param_hint="--flow")
    try:
        since_ms = None if since is None else int(time.time() * 1000) - parse_age(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    for position in positions or ():
        _position(position, "--at")
    prefix = _settings().topic_prefix  # `--topic commands.orders` whatever the stack's topic prefix
    named = {name for topic in topics or () for name in (topic, topic if topic.startswith(prefix) else prefix + topic)}
    return Selection(flows=frozenset(flows or ()), error_classes=frozenset(errors or ()), topics=frozenset(named),
                     order_id=order, positions=frozenset(positions or ()), since_ms=since_ms)


def _finite(value: float | None) -> float | None:
    """Seconds or a rate: Click's FLOAT takes ``nan`` and ``inf``, which no wait or pace can be (a wait for ``nan``
    would never end, a pace of ``nan`` would not hold anything back)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value}: expected a finite number")
    return value


def _position(text: str, hint: str) -> tuple[int, int]:
    """A dead letter's ``PARTITION:OFFSET``."""
    partition, _, offset = text.partition(":")
    if not (is_digits(partition) and is_digits(offset)) or int(partition) >= 2**31 or int(offset) >= 2**63:
        raise typer.BadParameter(f"{text!r}: expected PARTITION:OFFSET as `dlq list` shows it", param_hint=hint)
    return int(partition), int(offset)


@dataclass(frozen=True)
class _Letters:
    """The selected dead letters, the replays topic (``None``: the stack has none yet), and which letters a newer
    one stands for (their replay failed again)."""

    selected: list[DeadLetter]
    replays: ReplayLog | None
    replaced: dict[str, str]
    #: Every letter read (selected or not), oldest failure first.
    every: list[DeadLetter] = field(default_factory=list)

    @property
    def replayed(self) -> dict[str, int] | None:
        """When each letter replayed already was (``None``: the stack has no replays topic yet)."""
        return None if self.replays is None else self.replays.replayed(self.every)

    @property
    def error_classes(self) -> frozenset[str]:
        """What an ``--error`` that matched nothing could have been."""
        return frozenset(letter.error_class for letter in self.every)

    def none_match(self, selection: Selection, noun: str) -> str:
        """What to say when nothing was selected, naming the error classes there are if ``--error`` named none."""
        if selection.empty:
            return f"no {noun}"
        unknown = sorted(selection.error_classes - self.error_classes)
        if not unknown:
            return f"no {noun} match"
        there = ", ".join(sorted(self.error_classes)) or "none"
        return f"no {noun} match: no letter failed with {', '.join(unknown)} (error classes there: {there})"


def _dead_letters(settings: Settings, codec: Codec, selection: Selection, *, warehouse: bool = False,
                  whole: bool = False) -> _Letters:
    """The dead letters ``selection`` selects, read with what a listing or a replay needs. ``whole`` reads every
    letter, whatever ``--since``: a replay judges a letter by the older letters of its message too."""
    from streamcart.commands import read_dead_letters, read_replays, read_sink_letters
    from streamcart.dead_letters import ReplayLog, superseded

    what = "the warehouse's dead-letter topic" if warehouse else "the dead-letter topic"
    with console.status(f"reading {what}…") as status:
        # A letter is written as it fails: the records before --since (less a minute) need not be listed.
        since = None if selection.since_ms is None or whole else selection.since_ms - 60_000

        def progress(read: int) -> None:
            status.update(f"reading {what}… {read}")

        if warehouse:  # rows a sink could not take: never replayed
            rows = read_sink_letters(settings, since_ms=since, on_progress=progress)
            return _Letters([row for row in rows if row in selection], ReplayLog(), {}, rows)
        letters = read_dead_letters(settings, codec, since_ms=since, on_progress=progress)
        replays = read_replays(settings)
    return _Letters([letter for letter in letters if letter in selection], replays, superseded(letters), letters)


def _codec(settings: Settings) -> Codec:
    """A codec that reads (what it decodes names its schema id, fetched from the registry on first sight): reading
    dead letters registers nothing."""
    from schemas.codec import Codec
    from schemas.registry import ConfluentRegistry

    return Codec(ConfluentRegistry.from_settings(settings))


@dlq_app.command("list")
def dlq_list(
    flow: Flows = None, error: Errors = None, topic: SourceTopics = None, order: OfOrder = None, since: Since = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the latest this many (the counts cover all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (every selected record).")] = False,
    warehouse: Warehouse = False,
) -> None:
    """What was dead-lettered (kept 30 days): when, in which flow, from where, why, what it was, and whether it was
    replayed; counts by flow and error first. With --warehouse, the rows the warehouse sinks could not take."""
    from streamcart.stack.views import dead_letter_counts, dead_letters_table

    settings = _settings()
    selection = _selection(flow, error, topic, order, since)
    read = _dead_letters(settings, _codec(settings), selection, warehouse=warehouse)
    letters, replayed = read.selected, read.replayed or {}
    if as_json:
        print(json.dumps([letter.as_json(replayed.get(letter.position)) for letter in letters], indent=2))
        return
    noun = "warehouse dead letters" if warehouse else "dead letters"
    if not letters:
        console.print(read.none_match(selection, noun))
        return
    marks = None if warehouse else replayed  # rows a sink could not take are never replayed
    console.print(dead_letter_counts(letters, marks, noun=noun))
    console.print(dead_letters_table(letters[-limit:], marks, total=len(letters), noun=noun))
    if warehouse:
        console.print("[dim]`streamcart dlq show --warehouse PARTITION:OFFSET` shows one in full, with its row; rows a "
                      "sink's converter could not read are not replayed (the next write of the key replaces it)[/]")
    else:
        console.print("[dim]`streamcart dlq show PARTITION:OFFSET` shows one in full; `streamcart dlq replay` sends "
                      "them back once their cause is gone[/]")


@dlq_app.command("show")
def dlq_show(
    position: Annotated[str, typer.Argument(help="PARTITION:OFFSET of the dead letter, as `dlq list` shows it.")],
    warehouse: Warehouse = False,
) -> None:
    """One dead letter in full: its headers, and its message as JSON (with --warehouse, a row a sink could not
    take)."""
    from streamcart.commands import read_dead_letter, read_replayed

    settings = _settings()
    partition, offset = _position(position, "POSITION")
    letter = read_dead_letter(settings, _codec(settings), partition, offset, warehouse=warehouse)
    if letter is None:
        listing = "`streamcart dlq list --warehouse`" if warehouse else "`streamcart dlq list`"
        raise StreamcartError(f"no dead letter at {position} ({listing} lists them)")
    replayed_at = None if warehouse else (read_replayed(settings, [letter]) or {}).get(letter.position)
    console.print_json(data=letter.as_json(replayed_at) | {"headers": {k: v.decode(errors="replace")
                                                                       for k, v in letter.headers}})


@dlq_app.command("replay")
def dlq_replay(
    flow: Flows = None, error: Errors = None, topic: SourceTopics = None, order: OfOrder = None, since: Since = None,
    at: Annotated[list[str] | None, typer.Option(help="The dead letter at PARTITION:OFFSET. Repeatable.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter (no other selection needed).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Say what would be replayed, and send nothing.")] = False,
    again: Annotated[bool, typer.Option(help="Also send letters replayed before (not one whose replay failed "
                                             "again: the newer letter stands for it).")] = False,
    force: Annotated[bool, typer.Option(help="Replay even what the checks keep (an order not stored or settled, a "
                                             "placement past its deadline, a value that does not decode).")] = False,
) -> None:
    """Send dead letters back to the partitions they came from, for the flow that failed on them alone, once their
    cause is gone (a webhook back up, a bug fixed); only once every worker runs this version. The flows
    deduplicate a message handled already; what would act on an order the workers do not hold, or reopen a settled
    one, is kept unless --force. Exits 1 if anything selected was kept or not sent (replayed before: not)."""
    selection = _selection(flow, error, topic, order, since, at)
    if selection.empty and not every:
        raise typer.BadParameter("name what to replay (--flow, --error, --topic, --order, --since, --at), or --all")
    settings = _settings()
    codec = _codec(settings)
    read = _dead_letters(settings, codec, selection, whole=True)
    if read.replays is None:
        raise StreamcartError(_NO_REPLAYS_TOPIC.format(prefix=settings.topic_prefix))
    if not read.selected:
        console.print(read.none_match(selection, "dead letters"))
        return
    report = replay_dead_letters(read.selected, _remote(), settings, replays=read.replays, replaced=read.replaced,
                                 every=read.every, dry_run=dry_run, again=again, force=force, codec=codec)
    if report.kept or report.failed:
        raise typer.Exit(1)


@dataclass
class ReplayReport:
    """What ``streamcart dlq replay`` did with the letters it was given. ``kept`` and ``failed`` are what stays to
    be done (the command exits 1); a letter replayed before (or whose replay a newer letter stands for, or that
    another run is replaying) is ``already``, not a failure."""

    sent: int = 0
    already: int = 0
    kept: int = 0
    failed: int = 0


def replay_dead_letters(letters: list[DeadLetter], remote: Remote, settings: Settings, *,
                        replays: ReplayLog | None = None, replaced: Mapping[str, str] | None = None,
                        every: list[DeadLetter] | None = None, dry_run: bool = False, again: bool = False,
                        force: bool = False, codec: Codec | None = None,
                        sender: CommandSender | None = None) -> ReplayReport:
    """Replay what the checks let through, print each letter's fate and mark what was sent as replayed.

    ``replays`` is the replays topic as read before (default: read now); ``every`` every letter read, ``letters``
    among them (:func:`~streamcart.dead_letters.plan_replays`). Before sending, the run claims what it is about to
    send on the replays topic and sends what its claims hold (:class:`~streamcart.dead_letters.ReplayLog`): of
    runs at once, one sends each letter; the others skip it, which is no failure of theirs.
    """
    from urllib.parse import quote

    from streamcart.commands import CommandSender
    from streamcart.dead_letters import FLOWS, Limits, OrderSeen, in_log_order, plan_replays, replay_of
    from streamcart.topics import topic_specs

    def order_seen(order_id: str) -> OrderSeen:
        try:
            status, body = remote.get(f"/v1/orders/{quote(order_id, safe='')}")
        except OSError as exc:
            return OrderSeen(unknown=f"the API cannot be reached: {getattr(exc, 'reason', exc)}")
        if status == 404:
            return OrderSeen()
        if status == 200 and isinstance(body, dict) and isinstance(body.get("status"), str):
            return OrderSeen.from_api(body)
        return OrderSeen(unknown=f"the API answered {status}")

    now_ms = int(time.time() * 1000)
    limits = Limits(retention_ms=round(settings.order_retention_s * 1000),
                    idempotency_ttl_ms=round(settings.idempotency_ttl_s * 1000),
                    saga_timeout_ms=round(settings.saga_timeout_s * 1000))
    running = FLOWS if settings.analytics else FLOWS - {"analytics"}
    if replays is None:
        sender = sender or CommandSender(settings, codec)
        if (replays := sender.read_replays()) is None:
            raise StreamcartError(_NO_REPLAYS_TOPIC.format(prefix=settings.topic_prefix))
    every = letters if every is None else every
    plan = plan_replays(letters, order_seen=order_seen, now_ms=now_ms, limits=limits,
                        replayed=replays.replayed(every), replaced=replaced, every=every,
                        claimed={letter.position for letter in every if replays.holder(letter, now_ms) is not None},
                        running=running, force=force, again=again,
                        topics={spec.name: spec.partitions for spec in topic_specs(settings)})
    report = ReplayReport()
    going: list[DeadLetter] = []
    for letter, refusal in plan:
        what = escape(f"{letter.position} {letter.summary} ({letter.flow}: {letter.error_class})")
        if refusal is not None:
            _not_sent(report, what, refusal, failed=False)
        elif dry_run:
            console.print(f"would replay {what} to {letter.source_topic}[{letter.source_partition}]")
        else:
            going.append(letter)
    if going:
        sender = sender or CommandSender(settings, codec)
        going, claim = _claimed(in_log_order(going), sender, replays.end, report)
        sent: list[DeadLetter] = []
        try:
            outcomes = sender.resend(*(replay_of(letter) for letter in going), timeout_s=30.0)
            sent = [letter for letter, failure in zip(going, outcomes, strict=True) if failure is None]
            for letter, failure in zip(going, outcomes, strict=True):
                what = escape(f"{letter.position} {letter.summary}")
                if failure is None:
                    console.print(f"[green]replayed[/] {what} to {letter.source_topic}[{letter.source_partition}] "
                                  f"for {escape(letter.flow)}")
                else:
                    console.print(f"[red]not sent[/] {what}: {escape(failure)}")
            report.sent, report.failed = len(sent), report.failed + len(going) - len(sent)
            unmarked = [letter.position for letter, failure
                        in zip(sent, sender.mark_replayed(sent, now_ms), strict=True) if failure is not None]
            if unmarked:
                report.failed += len(unmarked)
                console.print(f"[red]replayed but not marked as replayed[/] (a later replay would send them again): "
                              f"{', '.join(unmarked)}")
        finally:  # what this run holds and did not send (refused, or interrupted before): another run may, at once
            if unsent := [letter for letter in going if letter not in sent]:
                sender.release(unsent, claim)
    if dry_run:
        console.print(f"{len(plan) - report.kept - report.already} of {len(plan)} would be replayed")
    else:
        console.print(f"{report.sent} of {len(plan)} replayed"
                      + (f", {report.failed} not sent or not marked" if report.failed else "")
                      + ("; a replay that fails again is dead-lettered anew, marked with the letter it replays"
                         if report.sent else ""))
    return report


def _claimed(going: list[DeadLetter], sender: CommandSender, seen_to: int,
             report: ReplayReport) -> tuple[list[DeadLetter], Claim]:
    """Claims ``going`` for this run (which planned with the replays topic read up to ``seen_to``), reads the
    replays topic to its end and returns the letters its claims hold, in their order, and the claim; says why of
    each other, counting it as failed (its claim was not acknowledged) or not (another run replays or replayed
    it)."""
    from streamcart.dead_letters import Claim, ReplayLog
    from streamcart.ids import new_id

    # Timed now, as it is written, not when the run began: planning asks the API about every order, for minutes
    # on a long list, and a claim timed then would look older than it is to other runs.
    claim = Claim(new_id(), int(time.time() * 1000), seen_to)
    failures = sender.claim(going, claim, timeout_s=30.0)
    log = (sender.read_replays() if None in failures else None) or ReplayLog()
    held: list[DeadLetter] = []
    for letter, failure in zip(going, failures, strict=True):
        lost = f"not claimed: {failure}" if failure is not None else log.lost(letter, claim.run_id)
        if lost is None:
            held.append(letter)
        else:
            _not_sent(report, escape(f"{letter.position} {letter.summary}"), lost, failed=True)
    return held, claim


def _not_sent(report: ReplayReport, what: str, why: str, *, failed: bool) -> None:
    """Count and print a letter this run does not send: ``already`` when it was (or is being) replayed otherwise,
    else ``failed`` (its claim was not taken) or ``kept`` (a check keeps it)."""
    from streamcart.dead_letters import replayed_before

    if replayed_before(why):
        report.already += 1
        console.print(f"[dim]skipped {what}: {escape(why)}[/]")
    elif failed:
        report.failed += 1
        console.print(f"[red]not sent[/] {what}: {escape(why)}")
    else:
        report.kept += 1
        console.print(f"[yellow]kept[/] {what}: {escape(why)}")


_NO_REPLAYS_TOPIC = ("no topic {prefix}dlq.replays, where replays are noted: run `streamcart init` (it creates it) "
                     "first")


bench_app = typer.Typer(help="Benchmarks against the running stack (figures, not pass/fail).")
app.add_typer(bench_app, name="bench")


@bench_app.command("saga")
def bench_saga(
    orders: Annotated[int, typer.Option(help="How many orders to place.", min=1)] = 2000,
    lines: Annotated[int, typer.Option(help="Lines per order.", min=1, max=50)] = 2,
    rate: Annotated[float, typer.Option(callback=_finite,
                                        help="Orders per second to offer (0: as fast as possible).", min=0)] = 0.0,
    timeout: Annotated[float, typer.Option(callback=_finite, help="Seconds to wait for every outcome.", min=1)] = 300.0,
    warehouse: Annotated[bool, typer.Option(help="Also time each confirmation to its row in PostgreSQL.")] = False,
    skus: Annotated[int, typer.Option(help="How many SKUs the orders spread over (a catalog's size).", min=1)] = 8,
) -> None:
    """Place orders through Kafka and report outcomes/s and place-to-outcome latency (p50/p95/p99)."""
    from rich.table import Table

    from streamcart.bench import run_saga_bench

    result = run_saga_bench(_settings(), orders=orders, lines=lines, rate=rate or None, timeout_s=timeout,
                            warehouse=warehouse, skus=skus, echo=console.print)
    table = Table(title="saga benchmark", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in result.summary().items():
        table.add_row(name, "-" if value is None else str(value))
    console.print(table)
    if any(use.name != "machine" for use in result.cpu):  # the stack runs here
        used = Table(title="CPU from the first order produced to the last outcome", title_justify="left")
        for column in ("process", "CPU (s)", "cores", "ms per order"):
            used.add_column(column, justify="left" if column == "process" else "right")
        for use in result.cpu:
            name = f"machine ({os.cpu_count()} cores, all processes)" if use.name == "machine" else use.name
            used.add_row(name, f"{use.seconds:.1f}", f"{use.cores:.2f}", f"{use.seconds * 1000 / orders:.1f}")
        console.print(used)
    if result.missing:
        raise StreamcartError(f"{result.missing} orders had no outcome within {timeout:.0f} s")


@bench_app.command("api")
def bench_api(
    kind: Annotated[str, typer.Argument(help="get: GET /v1/orders/{id} from the owner; post: POST /v1/orders.")],
    seconds: Annotated[float, typer.Option(callback=_finite, help="How long to drive the API.", min=0.1)] = 10.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.", min=1)] = 32,
    worker: Annotated[int, typer.Option(help="Which worker to drive.", min=0)] = 0,
) -> None:
    """Drive the HTTP API from this process and report requests/s and latency (p50/p99)."""
    from rich.table import Table

    from streamcart.bench_api import run_api_bench

    if kind not in ("get", "post"):
        raise typer.BadParameter(f"{kind!r}: use get or post", param_hint="KIND")
    settings = _settings()
    if worker >= settings.workers:
        raise typer.BadParameter(f"the stack runs {settings.workers} workers (0 to {settings.workers - 1})",
                                 param_hint="--worker")
    result = run_api_bench(settings, kind=kind, seconds=seconds, concurrency=concurrency, worker=worker,
                           echo=console.print)
    table = Table(title=f"API benchmark: {kind}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in result.summary().items():
        table.add_row(name, str(value))
    console.print(table)


@app.command()
def gateway() -> None:
    """Run the payment gateway in the foreground (the stack starts it as a process)."""
    from streamcart.gateway.server import run

    run(_settings())


@app.command()
def worker(
    index: Annotated[int, typer.Option(help="Which worker (its API port is api_port + index).")] = 0,
) -> None:
    """Run one streamcart worker in the foreground (the stack starts them as processes)."""
    from agents.worker import run

    run(_settings(), index)


def main(args: list[str] | None = None) -> None:
    """Console entry point (``args``: the command line, default ``sys.argv``). A StreamcartError becomes one red
    line and exit code 1, bad settings their description and exit code 2; never a traceback."""
    try:
        app(args)
    except ConfigurationError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(2) from None
    except StreamcartError as exc:
        # escape: messages carry log tails, whose "[...]" rich would otherwise read as markup.
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # typer turns one inside a command into exit code 130 itself (`up` says more)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
