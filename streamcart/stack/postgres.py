"""PostgreSQL from Debian's packages, run as the ``postgres`` user inside the stack's home.

PostgreSQL refuses to run as root, and our sessions are root: every server-side command runs with
``user="postgres"`` (``subprocess`` switches uid/gid before exec, so the recorded pid *is* the postmaster).
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
from pathlib import Path

from streamcart.settings import Settings
from streamcart.stack.errors import StackError

PG_USER = "postgres"


def find_bindir() -> Path | None:
    """The directory holding ``initdb``/``postgres``: ``pg_config --bindir`` first, then Debian's layout."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    # pg_config may come from libpq-dev without a server; newest server version first.
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates.extend(versions)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def _version_key(bindir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return (0,)


def postgres_user_exists() -> bool:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return False
    return True


def pgdata(data_dir: Path) -> Path:
    return data_dir / "pgdata"


def socket_dir(data_dir: Path) -> Path:
    return data_dir / "socket"


def server_command(bindir: Path, data_dir: Path, settings: Settings) -> list[str]:
    """The postmaster itself (not pg_ctl), so the pid we record is the one to signal."""
    return [
        str(bindir / "postgres"),
        "-D", str(pgdata(data_dir)),
        "-p", str(settings.postgres_port),
        "-k", str(socket_dir(data_dir)),
        "-c", f"listen_addresses={settings.host}",
    ]  # fmt: skip


def initialize(bindir: Path, data_dir: Path, settings: Settings) -> None:
    """Create the cluster, the application role and its database, once.

    Done into a scratch folder that is renamed at the end, so an interrupted run never leaves a half-made
    cluster behind. The role and database are created in single-user mode: no server, no port, no wait.
    """
    target = pgdata(data_dir)
    if (target / "PG_VERSION").is_file():
        return
    _check_reachable_by_postgres(data_dir)
    scratch = data_dir / "pgdata.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    socket_dir(data_dir).mkdir(parents=True, exist_ok=True)
    shutil.chown(socket_dir(data_dir), PG_USER, PG_USER)
    _run_as_postgres(
        [str(bindir / "initdb"), "-D", str(scratch), "-U", PG_USER, "-E", "UTF8", "--locale=C.UTF-8",
         "--auth-local=trust", "--auth-host=scram-sha-256"],
        what="initdb",
    )  # fmt: skip
    _run_as_postgres(
        [str(bindir / "postgres"), "--single", "-j", "-D", str(scratch), "postgres"],
        what="creating the role and database",
        stdin=provisioning_sql(settings),
    )
    scratch.rename(target)


def provisioning_sql(settings: Settings) -> str:
    """SQL creating the application's login role and database (single-user mode: statements end with ';')."""
    user = quote_ident(settings.postgres_user)
    password = quote_literal(settings.postgres_password.get_secret_value())
    db = quote_ident(settings.postgres_db)
    return f"CREATE ROLE {user} LOGIN PASSWORD {password};\n\nCREATE DATABASE {db} OWNER {user};\n"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _check_reachable_by_postgres(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(data_dir, PG_USER, PG_USER)
    probe = subprocess.run(["test", "-w", str(data_dir)], user=PG_USER, check=False)
    if probe.returncode != 0:
        raise StackError(
            f"the postgres user cannot reach {data_dir}: a parent folder is not traversable by others "
            "(e.g. a 0700 temporary dir); choose another STREAMCART_HOME"
        )


def _run_as_postgres(command: list[str], *, what: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        user=PG_USER,
        group=PG_USER,
        extra_groups=[],
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise StackError(f"PostgreSQL {what} failed (exit {done.returncode}):\n{tail}")
